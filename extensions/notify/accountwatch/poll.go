package accountwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// awaitPoll asks for a full poll and waits until one that started after
// the call is done.
// A failed poll (a lost connection, an incomplete LIST) is retried a few
// times: the watcher reconnects at once.
func (w *watcher) awaitPoll(ctx context.Context) error {
	var err error
	for range 5 {
		ch := make(chan error, 1)
		w.mu.Lock()
		w.waiters = append(w.waiters, ch)
		w.mu.Unlock()
		w.m.Poke(w.account)
		select {
		case err = <-ch:
			if err == nil {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-w.ctx.Done():
			if isClosed(w.ready) && w.readyErr != nil {
				return w.readyErr // its first poll failed (stopFirst)
			}
			return w.ctx.Err()
		}
	}
	return err
}

// allMailboxes in a poke means a full poll.
const allMailboxes = "\x00all"

func mergeNames(a, b []string) []string {
	if slices.Contains(a, allMailboxes) || slices.Contains(b, allMailboxes) {
		return []string{allMailboxes}
	}
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// watcher polls one account.
type watcher struct {
	m       *Manager
	account string
	dial    DialFunc // guarded by m.mu
	ctx     context.Context
	cancel  context.CancelFunc

	subs       map[*Sub]struct{} // guarded by m.mu
	graceTimer *time.Timer       // guarded by m.mu
	// joining counts the Watch calls waiting for their first poll
	// (guarded by m.mu): the watcher does not stop under them.
	joining int

	ready    chan struct{}
	readyErr error
	poke     chan []string
	// boxes0 is set (guarded by m.mu) once the watcher has a subscriber;
	// later subscribers wait for a poll first (see Watch). waiters are
	// told when the next full poll that starts after they came is done.
	boxes0  *struct{}
	waiters []chan error

	mu    sync.Mutex
	boxes map[string]Mailbox
	conn  *upstream.Conn // used by the watcher goroutine only
	// notifySet records that the upstream's NOTIFY is set on conn;
	// idling holds conn while it waits in IDLE, for Poke to interrupt.
	notifySet bool
	idling    atomic.Pointer[upstream.Conn]
	// serverBug holds the mailboxes whose STATUS failed as on a
	// connection that saw them deleted and made the watcher reconnect
	// (reconnect: after a poll); see status. Used by the watcher
	// goroutine only.
	serverBug   map[string]bool
	reconnect   bool
	reconnected time.Time // the last reconnection for reconnect
}

func (w *watcher) log() *slog.Logger { return w.m.cfg.Logger.With("account_watcher", w.account) }

func (w *watcher) run() {
	defer func() {
		if w.conn != nil {
			w.conn.Logout()
		}
	}()
	first := !isClosed(w.ready) // false when run again after a panic
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	var only []string
	waitIdle := false // wait in the upstream's IDLE with its NOTIFY set
	// Full polls start every PollInterval whatever partial polls (pokes,
	// the upstream's NOTIFY) happen in between. (Restarting the interval
	// after every partial poll let an account poked more often than that
	// go without a full poll, so changes in its other mailboxes waited.)
	var nextFull time.Time
	for {
		if waitIdle && time.Until(nextFull) > 0 {
			names, err := w.idleWait(time.Until(nextFull))
			if w.ctx.Err() != nil {
				return
			}
			if err != nil {
				w.log().Info("upstream NOTIFY wait failed; polling", "err", err)
				w.dropConn()
			}
			only = names
		} else {
			select {
			case <-w.ctx.Done():
				if first {
					w.readyErr = w.ctx.Err()
					close(w.ready)
				}
				return
			case <-timer.C:
				only = nil
			case names := <-w.poke:
				only = names
			}
		}
		if time.Until(nextFull) <= 0 {
			only = nil // a full poll is due
		}
		if slices.Contains(only, allMailboxes) {
			only = nil
		}
		began := time.Now()
		err := w.poll(only)
		if first {
			first = false
			w.readyErr = err
			close(w.ready)
			if err != nil {
				w.stopFirst()
				return
			}
		}
		if only == nil {
			nextFull = began.Add(w.m.cfg.PollInterval)
		}
		d := max(time.Until(nextFull), 0)
		waitIdle = false
		if err != nil {
			failures++
			w.reconnect = false // it does now
			w.dropConn()
			d = min(100*time.Millisecond<<min(failures-1, 8), w.m.cfg.PollInterval) // the first retry at once: a dropped connection is usually just that
			nextFull = time.Now().Add(d)
			w.log().Warn("account poll failed", "err", err, "retry_in", d)
		} else if w.reconnect && time.Since(w.reconnected) >= w.m.cfg.PollInterval {
			// A STATUS failed as Dovecot's do on a connection that saw
			// the mailbox deleted: poll again at once on a new
			// connection (see status), but not more than once per
			// PollInterval, whatever the upstream answers.
			failures = 0
			w.reconnect = false
			w.reconnected = time.Now()
			w.dropConn()
			d = 0
		} else {
			failures = 0
			caps := w.conn.Caps()
			waitIdle = caps.Has("NOTIFY") && caps.Has("IDLE")
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(d)
	}
}

// runGuarded runs the watcher, and runs it again a second later if it
// panics: the panic is logged and counted, the watcher's connection closed,
// and its subscribers and the process go on. A watcher that panics before
// its first poll is done fails its first Watch instead.
func (w *watcher) runGuarded() {
	for {
		var perr error
		func() {
			defer recovery.Recover(recovery.AccountWatcher, w.log(), func(err error) { perr = err })
			w.run()
		}()
		if perr == nil {
			return
		}
		w.dropConn()
		if !isClosed(w.ready) {
			w.readyErr = perr
			close(w.ready)
			w.stopFirst()
			return
		}
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// stopFirst takes the watcher, whose first poll failed (readyErr), off
// the account and ends its context: the subscribers that came during that
// poll to join it (see Watch) wait for a poll it will never run, and are
// told readyErr (awaitPoll).
func (w *watcher) stopFirst() {
	w.m.mu.Lock()
	if w.m.accts[w.account] == w {
		delete(w.m.accts, w.account)
	}
	w.m.mu.Unlock()
	w.cancel()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (w *watcher) dropConn() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
	w.notifySet = false
}

// notifyCmd is what the watcher asks of an upstream that has NOTIFY: its
// events only wake the watcher, which then polls; what clients hear is
// always made by the proxy (Dovecot 2.3's NOTIFY departs from RFC 5465).
const notifyCmd = "NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))"

// idleWait waits in IDLE, with the upstream's NOTIFY set, for the upstream
// to report a change, for a poke, or for d. It returns what to poll: the
// mailboxes named by the upstream's STATUS events or the poke, or nil for
// everything.
func (w *watcher) idleWait(d time.Duration) ([]string, error) {
	c := w.conn
	ctx, cancel := context.WithTimeout(w.ctx, w.m.cfg.Timeout)
	if !w.notifySet {
		// Once per connection: Dovecot 2.3 delivers nothing after a
		// second NOTIFY SET on a connection.
		if _, err := c.Exec(ctx, notifyCmd, nil); err != nil {
			cancel()
			return nil, fmt.Errorf("NOTIFY SET: %w", err)
		}
		w.notifySet = true
	}
	cancel()
	tag := c.NextTag()
	c.SetDeadline(time.Now().Add(w.m.cfg.Timeout))
	c.Writer().WriteString(tag + " IDLE\r\n")
	if err := c.Writer().Flush(); err != nil {
		return nil, err
	}
	r, err := c.ReadResponse()
	if err != nil {
		return nil, err
	}
	if r.Head.Tag != "+" {
		return nil, fmt.Errorf("IDLE refused: %s %s", r.Head.Name, r.Head.Text)
	}
	deadline := time.Now().Add(d)
	var names []string
	full := false
	note := func(r *upstream.Response) {
		if r.Head.Tag != "*" {
			return
		}
		if r.Head.Name == "STATUS" {
			if name, _, err := parseStatus(r); err == nil {
				names = append(names, name)
				return
			}
		}
		if r.Head.Name != "OK" || r.Head.Code != "" { // "* OK Still here" is no news
			full = true
		}
	}
	w.idling.Store(c)
	// Stopping the watcher must not wait for the IDLE to time out.
	stopWake := context.AfterFunc(w.ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stopWake()
	for len(names) == 0 && !full {
		// A poke interrupts the read by moving the deadline (Poke).
		select {
		case p := <-w.poke:
			names = append(names, p...)
			continue
		default:
		}
		if !time.Now().Before(deadline) {
			full = true
			break
		}
		c.SetDeadline(deadline)
		r, err := c.WaitResponse()
		if w.ctx.Err() != nil {
			w.idling.Store(nil)
			return nil, w.ctx.Err()
		}
		if err != nil {
			if isTimeout(err) && !c.Broken() {
				continue
			}
			w.idling.Store(nil)
			return nil, err
		}
		note(r)
	}
	w.idling.Store(nil)
	c.SetDeadline(time.Now().Add(w.m.cfg.Timeout))
	c.Writer().WriteString("DONE\r\n")
	if err := c.Writer().Flush(); err != nil {
		return nil, err
	}
	for {
		r, err := c.ReadResponse()
		if err != nil {
			return nil, err
		}
		if r.Head.Tag == tag {
			break
		}
		note(r)
	}
	if full {
		return nil, nil
	}
	return names, nil
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// poll asks the upstream for the account's mailboxes (or only the named
// ones' STATUS) and reports the differences.
func (w *watcher) poll(only []string) (err error) {
	ctx, cancel := context.WithTimeout(w.ctx, w.m.cfg.Timeout)
	defer cancel()
	if only == nil {
		w.mu.Lock()
		waiters := w.waiters
		w.waiters = nil
		w.mu.Unlock()
		defer func() {
			for _, ch := range waiters {
				ch <- err
			}
		}()
	}
	if w.conn == nil || w.conn.Broken() {
		w.m.mu.Lock()
		dial := w.dial
		w.m.mu.Unlock()
		c, err := dial(ctx)
		if err != nil {
			return fmt.Errorf("accountwatch: dial: %w", err)
		}
		w.conn = c
	}
	c := w.conn
	w.mu.Lock()
	old := w.boxes
	w.mu.Unlock()
	var next map[string]Mailbox
	if only != nil && old != nil {
		next = make(map[string]Mailbox, len(old))
		for k, v := range old {
			next[k] = v
		}
		for _, name := range only {
			b, ok := next[name]
			if !ok || !b.Selectable {
				continue
			}
			st, err := w.status(ctx, c, name, false)
			if err != nil {
				return err
			}
			if st != nil {
				b.Status, b.hasStatus = *st, true
				next[name] = b
			}
		}
	} else {
		var err error
		if next, err = w.list(ctx, c); err != nil {
			return err
		}
		// A mailbox missing from LIST is gone only if STATUS says so too.
		// A LIST that leaves out a mailbox that still exists cannot be
		// trusted at all (Dovecot 2.3 answers LIST with INBOX alone while
		// its mailbox list index is being rebuilt after a RENAME): the
		// poll is dropped and retried, rather than reporting deletions,
		// or a rename as a deletion and a creation.
		for name, o := range old {
			if _, ok := next[name]; ok || !o.Selectable {
				continue
			}
			st, err := w.status(ctx, c, name, false)
			if err != nil {
				return err
			}
			if st != nil {
				return fmt.Errorf("accountwatch: LIST left out %q, which exists: incomplete", name)
			}
		}
		// A new mailbox without STATUS (LIST-STATUS skipped it) gets one:
		// its UIDVALIDITY tells a rename from a creation.
		for name, b := range next {
			if _, ok := old[name]; !ok && b.Selectable && !b.hasStatus && old != nil {
				if st, err := w.status(ctx, c, name, true); err != nil {
					return err
				} else if st != nil {
					b.Status, b.hasStatus = *st, true
					next[name] = b
				}
			}
		}
		listStatus := c.Caps().Has("LIST-STATUS")
		for name, b := range next {
			if o, ok := old[name]; ok {
				b.ModSeq = o.ModSeq
				if b.Selectable && !b.hasStatus && listStatus {
					// LIST-STATUS left it out (Dovecot does when its
					// STATUS fails): ask, to learn why (see status).
					if st, err := w.status(ctx, c, name, true); err != nil {
						return err
					} else if st != nil {
						b.Status, b.hasStatus = *st, true
					}
				}
				if b.Selectable && !b.hasStatus {
					// No STATUS this time (the mailbox is going away,
					// or the upstream skipped it): not a change.
					b.Status = o.Status
				}
				next[name] = b
			}
		}
	}
	w.m.mu.Lock()
	subs := make([]*Sub, 0, len(w.subs))
	var opts WatchOptions
	for s := range w.subs {
		subs = append(subs, s)
		if s.opts.Refresh != nil {
			opts.Refresh = s.opts.Refresh
		}
		opts.ModSeqs = opts.ModSeqs || s.opts.ModSeqs
		opts.FlagChanges = opts.FlagChanges || s.opts.FlagChanges
	}
	w.m.mu.Unlock()
	if !opts.ModSeqs && !opts.FlagChanges {
		// Nobody follows the mod-sequences, and no refresh keeps them
		// up to date: carried over, they would go stale, and a
		// subscriber asking for them later (a NOTIFY SET with
		// FlagChange, a CONDSTORE client) would be told old ones.
		// Unknown, they are refreshed when someone asks again.
		for name, b := range next {
			b.ModSeq = 0
			next[name] = b
		}
	}
	var evs []Event
	if old != nil {
		evs = diff(old, next)
	}
	if opts.Refresh != nil && (opts.ModSeqs || opts.FlagChanges) {
		var err error
		if evs, err = w.refresh(ctx, c, opts, only, old, next, evs); err != nil {
			return err
		}
	}
	if only == nil {
		// Forgotten once the mailbox is gone or its counters came, by
		// STATUS or with LIST-STATUS (where no STATUS ran, the entry
		// stayed, and the mailbox failing again on the new connection
		// made no reconnection).
		for name := range w.serverBug {
			if b, ok := next[name]; !ok || b.hasStatus {
				delete(w.serverBug, name)
			}
		}
	}
	w.mu.Lock()
	w.boxes = next
	w.mu.Unlock()
	if len(evs) > 0 && old != nil {
		for _, s := range subs {
			s.fn(evs)
		}
	}
	return nil
}

// refresh brings the proxy's state of the mailboxes that need it up to
// date and records their ModSeq in next: those never refreshed (when
// ModSeqs are wanted), those with events, those a poke named (only: a
// session changed them, perhaps only their flags) and on a timed poll
// (only is nil) every mailbox when flag changes are wanted and STATUS
// cannot show them. A mailbox whose ModSeq moved without an event gets a
// Flags event; a Flags event for the upstream's HIGHESTMODSEQ alone stands
// only if the ModSeq moved too.
func (w *watcher) refresh(ctx context.Context, c *upstream.Conn, opts WatchOptions, only []string, old, next map[string]Mailbox, evs []Event) ([]Event, error) {
	timed := only == nil
	changed := map[string]int{} // name -> index of its Messages/Flags event
	for i, ev := range evs {
		if ev.Kind == Messages || ev.Kind == Flags {
			changed[ev.Mailbox.Name] = i
		}
	}
	everything := timed && opts.FlagChanges && !c.Caps().Has("CONDSTORE")
	names := make([]string, 0, len(next))
	for name, b := range next {
		_, ch := changed[name]
		poked := opts.FlagChanges && slices.Contains(only, name)
		if b.Selectable && (everything || ch || poked || opts.ModSeqs && b.ModSeq == 0) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	drop := map[int]bool{} // indices of evs told of no change
	for _, name := range names {
		ms, err := opts.Refresh(ctx, name, c)
		if err != nil {
			if c.Broken() {
				return evs, fmt.Errorf("accountwatch: refreshing %q: %w", name, err)
			}
			w.log().Debug("refresh failed", "mailbox", name, "err", err)
			continue
		}
		b := next[name]
		prev := b.ModSeq
		b.ModSeq = ms
		next[name] = b
		i, ok := changed[name]
		if ok && evs[i].Kind == Flags && prev != 0 && old[name].Status.Unseen == b.Status.Unseen {
			// Only the upstream's HIGHESTMODSEQ moved. Dovecot moves it
			// before an APPEND's message is visible, and a STATUS in
			// between shows it alone: not a flag change unless the
			// proxy's state, which holds every message's flags, moved
			// too, and then told as below.
			drop[i] = true
			ok = false
		}
		if ok {
			evs[i].Mailbox.ModSeq = ms
		} else if prev != 0 && ms != prev && old != nil {
			// A change STATUS did not show (yet): report it with fresh
			// counters, as new mail if they moved.
			kind := Flags
			if st, err := w.status(ctx, c, name, false); err == nil && st != nil {
				o := old[name].Status
				if st.Messages != o.Messages || st.UIDNext != o.UIDNext || st.UIDValidity != o.UIDValidity {
					kind = Messages
				}
				b.Status, b.hasStatus = *st, true
				next[name] = b
			}
			evs = append(evs, Event{Kind: kind, Mailbox: b})
		}
	}
	if len(drop) > 0 {
		kept := evs[:0]
		for i, ev := range evs {
			if !drop[i] {
				kept = append(kept, ev)
			}
		}
		evs = kept
	}
	return evs, nil
}

// statusItems are asked of every mailbox; HIGHESTMODSEQ only where the
// upstream has CONDSTORE.
func statusItems(c *upstream.Conn) string {
	if c.Caps().Has("CONDSTORE") {
		return "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)"
	}
	return "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"
}

// list runs LIST (with STATUS where LIST-STATUS is offered) and LSUB.
func (w *watcher) list(ctx context.Context, c *upstream.Conn) (map[string]Mailbox, error) {
	boxes := map[string]Mailbox{}
	listStatus := c.Caps().Has("LIST-STATUS")
	cmd := `LIST "" "*"`
	if listStatus {
		cmd += " RETURN (STATUS " + statusItems(c) + ")"
	}
	var perr error
	tagged, err := c.Exec(ctx, cmd, func(r *upstream.Response) {
		switch r.Head.Name {
		case "LIST":
			b, err := parseList(r)
			if err != nil {
				perr = err
				return
			}
			if len(boxes) < w.m.cfg.MaxMailboxes {
				boxes[b.Name] = b
			}
		case "STATUS":
			name, st, err := parseStatus(r)
			if err == nil {
				if b, ok := boxes[name]; ok {
					b.Status, b.hasStatus = *st, true
					boxes[name] = b
				}
			}
		}
	})
	if err := commandErr(cmd, tagged, err); err != nil {
		return nil, err
	}
	if perr != nil {
		return nil, perr
	}
	if !listStatus {
		for name, b := range boxes {
			if !b.Selectable {
				continue
			}
			st, err := w.status(ctx, c, name, true)
			if err != nil {
				return nil, err
			}
			if st != nil {
				b.Status, b.hasStatus = *st, true
				boxes[name] = b
			}
		}
	}
	// The subscriptions are read after the counters: a client that
	// SUBSCRIBEs and then sees new mail arrive expects the new mail's
	// event, and a poll whose counters were newer than its subscription
	// list reported it for a mailbox still unsubscribed, which the
	// client's (subscribed ...) filter dropped, and the next poll found
	// no change to report (lost, not late). Read this way round, counters
	// that show the new mail come with a list that has the SUBSCRIBE.
	// (With LIST-STATUS the counters come with LIST, before LSUB too.)
	tagged, err = c.Exec(ctx, `LSUB "" "*"`, func(r *upstream.Response) {
		if r.Head.Name != "LSUB" {
			return
		}
		if b, err := parseList(r); err == nil {
			if have, ok := boxes[b.Name]; ok {
				have.Subscribed = true
				boxes[b.Name] = have
			}
		}
	})
	if err := commandErr("LSUB", tagged, err); err != nil {
		return nil, err
	}
	return boxes, nil
}

// status runs STATUS for one mailbox; nil if the upstream refused (the
// mailbox went away between LIST and STATUS). listed says that this
// poll's LIST, on c, gave the mailbox as selectable.
//
// A STATUS refused with NO [SERVERBUG], or refused at all for a mailbox
// listed, makes the watcher reconnect after the poll, once per mailbox
// until its counters come again (see poll): Dovecot 2.3.19, on a
// connection that saw a mailbox deleted while others stayed below it,
// refuses STATUS of the mailbox created again under that name for as long
// as the connection lasts (NO [SERVERBUG] the first time, then NO "Mailbox
// was deleted under us"), and the mailbox's changes were never seen. A
// mailbox that fails on every connection costs one reconnection, and the
// watcher reconnects so at most once per PollInterval (see run).
func (w *watcher) status(ctx context.Context, c *upstream.Conn, name string, listed bool) (*Status, error) {
	cmd := string(imapcodec.AppendQuoted([]byte("STATUS "), name)) + " " + statusItems(c)
	var st *Status
	tagged, err := c.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name == "STATUS" {
			if n, s, err := parseStatus(r); err == nil && n == name {
				st = s
			}
		}
	})
	var se *upstream.StatusError
	if errors.As(err, &se) || err == nil && tagged.Head.Name != "OK" {
		code := ""
		if se != nil {
			code = se.Head.Code
		} else {
			code = tagged.Head.Code
		}
		if (code == "SERVERBUG" || listed) && !w.serverBug[name] {
			if w.serverBug == nil {
				w.serverBug = map[string]bool{}
			}
			w.serverBug[name] = true
			w.reconnect = true
		}
		return nil, nil
	}
	if err == nil && st != nil {
		delete(w.serverBug, name)
	}
	if err != nil {
		return nil, fmt.Errorf("accountwatch: STATUS: %w", err)
	}
	return st, nil
}

func commandErr(cmd string, tagged *upstream.Response, err error) error {
	if err != nil {
		return fmt.Errorf("accountwatch: %s: %w", cmd, err)
	}
	if tagged.Head.Name != "OK" {
		return fmt.Errorf("accountwatch: %s: %s %s", cmd, tagged.Head.Name, tagged.Head.Text)
	}
	return nil
}
