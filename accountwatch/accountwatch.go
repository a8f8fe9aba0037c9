// Package accountwatch watches the mailbox list of an upstream account: which
// mailboxes exist, which are subscribed, and their STATUS counters. NOTIFY
// (RFC 5465) needs that for every mailbox a client cares about besides the
// selected one. Watching each of them with its own IDLE would cost one
// upstream connection per mailbox. Instead one connection per account,
// shared by every session of the account that set NOTIFY, polls: LIST and
// LSUB, then STATUS of each mailbox (one LIST-STATUS where the upstream
// offers it). It compares each poll with the one before and reports the
// differences as events.
//
// Polls run every Config.PollInterval and at once when the proxy learns of a
// change itself (Manager.Poke: a session created a mailbox, appended a
// message, or the hub saw new mail in INBOX), so changes made through the
// proxy are announced without waiting for the interval.
package accountwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy/upstream"
)

// Config tunes the watchers. Zero values select the defaults.
type Config struct {
	// PollInterval bounds how long a change in a mailbox waits for a
	// full poll of its account to see it (upstreams without NOTIFY): full
	// polls start PollInterval apart, so a change is seen within
	// PollInterval plus the jitter of its mailbox's place in the poll.
	// (Starting them earlier by the last poll's duration, to remove that
	// jitter, made a saturated upstream busier still: in a 1,000-account
	// benchmark on two vCPUs events then took seconds more.) Default 30 s.
	PollInterval time.Duration
	// Grace is how long a watcher lives on after its last subscriber left.
	// Default 10 s.
	Grace time.Duration
	// Timeout bounds each upstream command. Default 30 s.
	Timeout time.Duration
	// MaxMailboxes bounds how many mailboxes of one account are watched.
	// Default 10,000.
	MaxMailboxes int
	Logger       *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 30 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.MaxMailboxes <= 0 {
		c.MaxMailboxes = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Status is what STATUS says of a mailbox.
type Status struct {
	Messages, UIDNext, UIDValidity, Unseen uint32
	// UpModSeq is the upstream's HIGHESTMODSEQ where it has CONDSTORE:
	// used only to notice flag changes, never shown to clients.
	UpModSeq uint64
}

// Mailbox is one mailbox of the account.
type Mailbox struct {
	Name       string
	Delim      string // "" when the upstream has no hierarchy
	Attrs      []string
	Subscribed bool
	// Selectable is false for \Noselect and \NonExistent entries, which
	// have no STATUS.
	Selectable bool
	Status     Status
	// ModSeq is the proxy's own HIGHESTMODSEQ of the mailbox (see
	// WatchOptions.Refresh), 0 when not known.
	ModSeq uint64
	// hasStatus tells whether Status came from the upstream in this poll.
	hasStatus bool
}

// Kind is the kind of an Event.
type Kind int

const (
	Created Kind = iota
	Deleted
	Renamed
	Subscribed
	Unsubscribed
	// Messages: MESSAGES, UIDNEXT or UIDVALIDITY changed (new mail or
	// expunges).
	Messages
	// Flags: UNSEEN or the upstream's HIGHESTMODSEQ changed without a
	// change of messages.
	Flags
)

func (k Kind) String() string {
	return [...]string{"created", "deleted", "renamed", "subscribed", "unsubscribed", "messages", "flags"}[k]
}

// Event is one difference between two polls.
type Event struct {
	Kind    Kind
	Mailbox Mailbox
	OldName string // for Renamed
}

// DialFunc opens an authenticated upstream connection for the account.
type DialFunc func(ctx context.Context) (*upstream.Conn, error)

// Manager owns the account watchers.
type Manager struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	accts  map[string]*watcher
	wg     sync.WaitGroup
}

// New returns a manager. Close stops its watchers.
func New(cfg Config) *Manager {
	m := &Manager{cfg: cfg.withDefaults(), accts: map[string]*watcher{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Close stops every watcher and waits for them.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// Watchers returns the number of running watchers (each holds at most one
// upstream connection).
func (m *Manager) Watchers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.accts)
}

// Sub is one subscriber's registration.
type Sub struct {
	w    *watcher
	fn   func([]Event)
	opts WatchOptions
}

// WatchOptions say what a subscriber needs beyond the mailbox list and
// STATUS counters.
type WatchOptions struct {
	// Refresh brings the proxy's own state of a mailbox up to date on the
	// watcher's connection and returns its HIGHESTMODSEQ (the hub's
	// Refresh). Without it ModSeq stays 0.
	Refresh RefreshFunc
	// ModSeqs asks for every mailbox's ModSeq (a CONDSTORE client): each
	// mailbox is refreshed once, and again whenever it changes.
	ModSeqs bool
	// FlagChanges asks for flag changes in every mailbox. STATUS shows
	// them only through UNSEEN, or the upstream's HIGHESTMODSEQ where it
	// has CONDSTORE; without that, each timed poll refreshes every
	// mailbox, which sees every flag.
	FlagChanges bool
}

// RefreshFunc refreshes the proxy's state of a mailbox on c and returns its
// HIGHESTMODSEQ.
type RefreshFunc func(ctx context.Context, mailbox string, c *upstream.Conn) (uint64, error)

// Watch subscribes fn to the events of account and returns once the first
// poll is done, so that Mailboxes answers at once. fn is called from the
// watcher's goroutine and must not block.
func (m *Manager) Watch(ctx context.Context, account string, dial DialFunc, opts WatchOptions, fn func([]Event)) (*Sub, error) {
	m.mu.Lock()
	w := m.accts[account]
	if w == nil {
		w = &watcher{m: m, account: account, dial: dial, subs: map[*Sub]struct{}{},
			ready: make(chan struct{}), poke: make(chan []string, 1)}
		w.ctx, w.cancel = context.WithCancel(m.ctx)
		m.accts[account] = w
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			w.run()
		}()
	}
	s := &Sub{w: w, fn: fn, opts: opts}
	if isNew := w.boxes0 == nil; !isNew {
		// A running watcher's last poll may be older than this
		// subscriber: events from comparing it with the next poll could
		// report changes made before the subscriber came. It joins after
		// a poll that starts now, which is its baseline.
		m.mu.Unlock()
		if err := w.awaitPoll(ctx); err != nil {
			return nil, err
		}
		m.mu.Lock()
		if m.accts[account] != w {
			m.mu.Unlock()
			return m.Watch(ctx, account, dial, opts, fn) // it stopped meanwhile
		}
	}
	w.boxes0 = &struct{}{}
	w.subs[s] = struct{}{}
	// Connect with the latest subscriber's credentials from now on: if
	// the account's password changed, the old ones stop working (every
	// subscriber is of this account).
	w.dial = dial
	if w.graceTimer != nil {
		w.graceTimer.Stop()
		w.graceTimer = nil
	}
	m.mu.Unlock()
	select {
	case <-w.ready:
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
	if w.readyErr != nil {
		s.Close()
		return nil, w.readyErr
	}
	if opts.ModSeqs && opts.Refresh != nil {
		// A watcher started for others may not know them yet: a poll
		// that starts now, with this subscriber counted, refreshes every
		// mailbox whose ModSeq is unknown.
		if err := w.awaitPoll(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Mailboxes returns the mailboxes as of the latest poll, sorted by name.
func (s *Sub) Mailboxes() []Mailbox {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	out := make([]Mailbox, 0, len(s.w.boxes))
	for _, b := range s.w.boxes {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Mailbox) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Close ends the subscription; the watcher stops after the grace period if
// nobody else watches the account.
func (s *Sub) Close() {
	w := s.w
	m := w.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := w.subs[s]; !ok {
		return
	}
	delete(w.subs, s)
	if len(w.subs) == 0 && w.graceTimer == nil {
		w.graceTimer = time.AfterFunc(m.cfg.Grace, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			if len(w.subs) > 0 || m.accts[w.account] != w {
				return
			}
			delete(m.accts, w.account)
			w.cancel()
		})
	}
}

// Poke asks the account's watcher, if there is one, to poll now: the
// mailboxes named, or everything when none is. Pokes coalesce.
func (m *Manager) Poke(account string, mailboxes ...string) {
	m.mu.Lock()
	w := m.accts[account]
	m.mu.Unlock()
	if w == nil {
		return
	}
	if len(mailboxes) == 0 {
		mailboxes = []string{allMailboxes}
	}
	defer func() {
		if c := w.idling.Load(); c != nil {
			c.SetDeadline(time.Unix(1, 0)) // wake the IDLE wait
		}
	}()
	for {
		select {
		case w.poke <- mailboxes:
			return
		default:
		}
		// A poke is pending: merge with it.
		select {
		case old := <-w.poke:
			mailboxes = mergeNames(old, mailboxes)
		default:
		}
	}
}

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
}

func (w *watcher) log() *slog.Logger { return w.m.cfg.Logger.With("account_watcher", w.account) }

func (w *watcher) run() {
	defer func() {
		if w.conn != nil {
			w.conn.Logout()
		}
	}()
	first := true
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
				w.m.mu.Lock()
				if w.m.accts[w.account] == w {
					delete(w.m.accts, w.account)
				}
				w.m.mu.Unlock()
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
			w.dropConn()
			d = min(100*time.Millisecond<<min(failures-1, 8), w.m.cfg.PollInterval) // the first retry at once: a dropped connection is usually just that
			nextFull = time.Now().Add(d)
			w.log().Warn("account poll failed", "err", err, "retry_in", d)
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
			st, err := status(ctx, c, name)
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
			st, err := status(ctx, c, name)
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
				if st, err := status(ctx, c, name); err != nil {
					return err
				} else if st != nil {
					b.Status, b.hasStatus = *st, true
					next[name] = b
				}
			}
		}
		for name, b := range next {
			if o, ok := old[name]; ok {
				b.ModSeq = o.ModSeq
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
	var evs []Event
	if old != nil {
		evs = diff(old, next)
	}
	if opts.Refresh != nil && (opts.ModSeqs || opts.FlagChanges) {
		var err error
		if evs, err = w.refresh(ctx, c, opts, only == nil, old, next, evs); err != nil {
			return err
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
// ModSeqs are wanted), those with events, and on a timed poll every
// mailbox when flag changes are wanted and STATUS cannot show them. A
// mailbox whose ModSeq moved without an event gets a Flags event.
func (w *watcher) refresh(ctx context.Context, c *upstream.Conn, opts WatchOptions, timed bool, old, next map[string]Mailbox, evs []Event) ([]Event, error) {
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
		if b.Selectable && (everything || ch || opts.ModSeqs && b.ModSeq == 0) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
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
		if i, ok := changed[name]; ok {
			evs[i].Mailbox.ModSeq = ms
		} else if prev != 0 && ms != prev && old != nil {
			// A change STATUS did not show (yet): report it with fresh
			// counters, as new mail if they moved.
			kind := Flags
			if st, err := status(ctx, c, name); err == nil && st != nil {
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
	if !listStatus {
		for name, b := range boxes {
			if !b.Selectable {
				continue
			}
			st, err := status(ctx, c, name)
			if err != nil {
				return nil, err
			}
			if st != nil {
				b.Status, b.hasStatus = *st, true
				boxes[name] = b
			}
		}
	}
	return boxes, nil
}

// status runs STATUS for one mailbox; nil if the upstream refused (the
// mailbox went away between LIST and STATUS).
func status(ctx context.Context, c *upstream.Conn, name string) (*Status, error) {
	cmd := string(imapcodec.AppendQuoted([]byte("STATUS "), name)) + " " + statusItems(c)
	var st *Status
	tagged, err := c.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name == "STATUS" {
			if n, s, err := parseStatus(r); err == nil && n == name {
				st = s
			}
		}
	})
	if errors.As(err, new(*upstream.StatusError)) || err == nil && tagged.Head.Name != "OK" {
		return nil, nil
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

// parseList parses "* LIST (attrs) delim name [extended]".
func parseList(r *upstream.Response) (Mailbox, error) {
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	for range 2 { // "*", LIST
		if _, err := p.Atom(); err != nil {
			return Mailbox{}, err
		}
		p.SP()
	}
	v, err := p.Value()
	attrs, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return Mailbox{}, errors.New("accountwatch: bad LIST attributes")
	}
	p.SP()
	dv, err := p.Value()
	if err != nil {
		return Mailbox{}, errors.New("accountwatch: bad LIST delimiter")
	}
	delim, _ := imapcodec.AsString(dv)
	p.SP()
	nv, err := p.Value()
	name, ok := imapcodec.AsString(nv)
	if err != nil || !ok {
		return Mailbox{}, errors.New("accountwatch: bad LIST mailbox name")
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	b := Mailbox{Name: name, Delim: delim, Selectable: true}
	for _, a := range attrs {
		s, _ := a.(imapcodec.Atom)
		switch strings.ToLower(string(s)) {
		case `\noselect`, `\nonexistent`:
			b.Selectable = false
		case `\subscribed`, `\marked`, `\unmarked`:
			continue // per connection or reported separately
		}
		b.Attrs = append(b.Attrs, string(s))
	}
	return b, nil
}

// parseStatus parses "* STATUS name (item n ...)".
func parseStatus(r *upstream.Response) (string, *Status, error) {
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	for range 2 {
		if _, err := p.Atom(); err != nil {
			return "", nil, err
		}
		p.SP()
	}
	nv, err := p.Value()
	name, ok := imapcodec.AsString(nv)
	if err != nil || !ok {
		return "", nil, errors.New("accountwatch: bad STATUS mailbox")
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	p.SP()
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return "", nil, errors.New("accountwatch: bad STATUS items")
	}
	var st Status
	for i := 0; i+1 < len(l); i += 2 {
		k, _ := l[i].(imapcodec.Atom)
		a, _ := l[i+1].(imapcodec.Atom)
		n, err := strconv.ParseUint(string(a), 10, 64)
		if err != nil {
			continue
		}
		switch strings.ToUpper(string(k)) {
		case "MESSAGES":
			st.Messages = uint32(n)
		case "UIDNEXT":
			st.UIDNext = uint32(n)
		case "UIDVALIDITY":
			st.UIDValidity = uint32(n)
		case "UNSEEN":
			st.Unseen = uint32(n)
		case "HIGHESTMODSEQ":
			st.UpModSeq = n
		}
	}
	return name, &st, nil
}

// diff compares two polls. A mailbox that disappeared while one with the
// same UIDVALIDITY (and hierarchy delimiter) appeared is taken as renamed:
// servers keep a mailbox's UIDVALIDITY across RENAME.
func diff(old, next map[string]Mailbox) []Event {
	var evs []Event
	var gone, added []Mailbox
	for name, o := range old {
		if _, ok := next[name]; !ok {
			gone = append(gone, o)
		}
	}
	for name, n := range next {
		if _, ok := old[name]; !ok {
			added = append(added, n)
		}
	}
	byName := func(a, b Mailbox) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(gone, byName)
	slices.SortFunc(added, byName)
	for _, g := range gone {
		i := slices.IndexFunc(added, func(a Mailbox) bool {
			return g.Status.UIDValidity != 0 && a.Status.UIDValidity == g.Status.UIDValidity && a.Delim == g.Delim
		})
		if i < 0 {
			evs = append(evs, Event{Kind: Deleted, Mailbox: g})
			continue
		}
		evs = append(evs, Event{Kind: Renamed, Mailbox: added[i], OldName: g.Name})
		added = slices.Delete(added, i, i+1)
	}
	for _, a := range added {
		evs = append(evs, Event{Kind: Created, Mailbox: a})
		if a.Subscribed {
			evs = append(evs, Event{Kind: Subscribed, Mailbox: a})
		}
	}
	names := make([]string, 0, len(next))
	for name := range next {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := next[name]
		o, ok := old[name]
		if !ok {
			continue
		}
		switch {
		case n.Subscribed && !o.Subscribed:
			evs = append(evs, Event{Kind: Subscribed, Mailbox: n})
		case !n.Subscribed && o.Subscribed:
			evs = append(evs, Event{Kind: Unsubscribed, Mailbox: n})
		}
		switch a, b := o.Status, n.Status; {
		case a.Messages != b.Messages || a.UIDNext != b.UIDNext || a.UIDValidity != b.UIDValidity:
			evs = append(evs, Event{Kind: Messages, Mailbox: n})
		case a.Unseen != b.Unseen || a.UpModSeq != b.UpModSeq:
			evs = append(evs, Event{Kind: Flags, Mailbox: n})
		}
	}
	return evs
}
