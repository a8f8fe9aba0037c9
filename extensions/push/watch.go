package push

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/internal/statusresp"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Watching registered accounts, with or without a session.
//
// Each registered account's first mailbox (INBOX by default) is watched
// live by the hub, as a session's selected mailbox is: one upstream
// connection, IDLE where the upstream has it (the hub polls with NOOP
// where not), shared with the account's sessions, reconnected and
// reconciled by the hub, its changes saved in the state store. A change
// makes the hub call the account's notify function, and one of a few
// goroutines looks at the state: new UIDs above the account's cursor are
// one Event. At most Config.LiveWatchers accounts are live; the others,
// and the other mailboxes of live accounts, are polled in rotation:
// PollConns goroutines take the account whose turn it is, log in, ask
// STATUS (MESSAGES UIDNEXT UIDVALIDITY) of each mailbox, compare UIDNEXT
// with the cursor, and log out. So a registered account costs at most one
// upstream connection, and accounts beyond the cap cost the pool's share.
//
// Logging in without a session: a master user (Conn.LoginAs), or the
// account's sealed credentials. An account the upstream refuses, or whose
// credentials are missing, is parked: not watched, its registrations kept,
// until the user logs in through the proxy again (StateChanged).

// regRef is what the watchers keep of a registration: whom an event is
// for. The device's data is read from the store when a push is sent.
type regRef struct {
	channel, id string
	mailboxes   []string // nil: Config.Mailboxes
}

func ref(r Registration) regRef { return regRef{r.Channel, r.ID, r.Mailboxes} }

// acct is a registered account as the watchers know it. Its fields are
// guarded by watchers.mu.
type acct struct {
	name  string
	regs  []regRef
	boxes []string // the mailboxes its registrations push, the live one first
	gone  bool     // no registration left: forgotten

	// The live watch of boxes[0].
	liveSlot bool              // holds one of the LiveWatchers slots
	waiting  bool              // in watchers.waiting, for a slot
	sub      *hub.Subscription // while watched
	starting bool              // a subscription is being made
	gen      uint64            // bumped when the live watch is given up, so a start under way is dropped
	fails    int               // starts failed in a row
	retry    *time.Timer       // the next start after a failure

	// parked: no login works (credentials missing or refused); nothing
	// is watched until a session logs in again.
	parked bool

	// hold keeps the account on this node in a cluster (nil on a single
	// node): see cluster.go.
	hold *hold

	// Polling (the mailboxes not watched live).
	pollIdx int // in watchers.polls; -1 when not there
	pollDue time.Time
	polling bool
}

// watchers keeps the registered accounts and watches them.
type watchers struct {
	e        *Extension
	startSem chan struct{}

	mu      sync.Mutex
	accts   map[string]*acct
	live    int     // accounts holding a live slot
	waiting []*acct // accounts waiting for a live slot, oldest first
	polls   pollHeap
	closed  bool

	pollWake chan struct{}

	// Changes the hub reported, looked at by a few goroutines: a set, so
	// a mailbox that changes again before it is looked at is looked at
	// once (its state then holds both changes: one Event).
	dmu       sync.Mutex
	dirty     map[*acct]bool
	dirtyList []*acct
	dwake     chan struct{}
}

// lookers is how many goroutines turn the hub's changes into Events
// (each may wait for a store write).
const lookers = 4

func (w *watchers) init(e *Extension) {
	w.e = e
	w.accts = map[string]*acct{}
	w.startSem = make(chan struct{}, e.cfg.StartConcurrency)
	w.pollWake = make(chan struct{}, 1)
	w.dirty = map[*acct]bool{}
	w.dwake = make(chan struct{}, 1)
}

func (w *watchers) start() {
	for range lookers {
		w.e.wg.Go(w.lookLoop)
	}
	for range w.e.cfg.PollConns {
		w.e.wg.Go(w.pollLoop)
	}
}

// stopAll ends every watch (Close).
func (w *watchers) stopAll() {
	w.mu.Lock()
	w.closed = true
	for _, a := range w.accts {
		w.stopLive(a)
		if a.retry != nil {
			a.retry.Stop()
			a.retry = nil
		}
		a.hold.release() // the node may give the account to another
	}
	w.mu.Unlock()
	signal(w.pollWake)
	signal(w.dwake)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// known reports whether the account is registered (loaded in memory).
func (w *watchers) known(account string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.accts[account]
	return ok
}

// loaded adds an account read from the store, kept here by h in a
// cluster (nil on a single node). It reports whether the account is
// watched now: not without registrations, nor when h was lost meanwhile.
func (w *watchers) loaded(account string, refs []regRef, h *hold) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || len(refs) == 0 || h != nil && h.lost {
		return false
	}
	a := w.accts[account]
	if a == nil {
		a = &acct{name: account, pollIdx: -1}
		w.accts[account] = a
	}
	if h != nil {
		a.hold = h
	}
	a.regs = refs
	w.update(a)
	return !a.gone
}

// registered adds or replaces one registration of a known account.
func (w *watchers) registered(account string, r regRef) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.accts[account]
	if a == nil || w.closed {
		return
	}
	a.regs = slices.DeleteFunc(a.regs, func(x regRef) bool { return x.channel == r.channel && x.id == r.id })
	a.regs = append(a.regs, r)
	a.parked = false // it just logged in
	w.update(a)
}

// unregistered removes one registration.
func (w *watchers) unregistered(account, channel, id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.accts[account]
	if a == nil {
		return
	}
	a.regs = slices.DeleteFunc(a.regs, func(x regRef) bool { return x.channel == channel && x.id == id })
	w.update(a)
}

// park stops watching an account that cannot log in.
func (w *watchers) park(account, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.accts[account]
	if a == nil || a.parked {
		return
	}
	w.e.log.Warn("not watching the account until its user logs in through the proxy", "account", logName(account), "why", why)
	a.parked = true
	w.update(a)
}

// unpark watches a parked account again (its user logged in).
func (w *watchers) unpark(account string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.accts[account]
	if a == nil || !a.parked {
		return
	}
	a.parked = false
	a.fails = 0
	w.update(a)
}

// targets returns the registrations of account that push mailbox and
// whose channel is configured. Both names are spelt as the hub keys them
// now: the live watch may have started under a spelling from before the
// account's delimiter was known (inbox.Lists, now INBOX.Lists).
func (w *watchers) targets(account, mailbox string) []regRef {
	mailbox = w.e.canonical(account, mailbox)
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.accts[account]
	if a == nil {
		return nil
	}
	var out []regRef
	for _, r := range a.regs {
		boxes := r.mailboxes
		if boxes == nil {
			boxes = w.e.cfg.Mailboxes
		}
		if _, ok := w.e.channels[r.channel]; ok && slices.ContainsFunc(boxes, func(b string) bool { return w.e.canonical(account, b) == mailbox }) {
			out = append(out, r)
		}
	}
	return out
}

// mailboxes returns the union of the registrations' mailboxes, INBOX
// first if it is among them (the live one), then in the registrations'
// order.
func (w *watchers) mailboxes(a *acct) []string {
	var out []string
	for _, r := range a.regs {
		boxes := r.mailboxes
		if boxes == nil {
			boxes = w.e.cfg.Mailboxes
		}
		for _, b := range boxes {
			if b = w.e.canonical(a.name, b); !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	if i := slices.Index(out, "INBOX"); i > 0 {
		out = append(append([]string{"INBOX"}, out[:i]...), out[i+1:]...)
	}
	return out
}

// polled returns the mailboxes of a that are polled.
func (w *watchers) polled(a *acct) []string {
	if a.liveSlot && len(a.boxes) > 0 {
		return a.boxes[1:]
	}
	return a.boxes
}

// update brings an account's watching in line with its registrations
// and state. Called with w.mu held, after every change.
func (w *watchers) update(a *acct) {
	if a.gone {
		return
	}
	if len(a.regs) == 0 || w.closed {
		w.forget(a)
		a.hold.release() // nothing to watch: no reason to keep it here
		return
	}
	boxes := w.mailboxes(a)
	if len(a.boxes) == 0 || boxes[0] != a.boxes[0] {
		w.stopLive(a) // another live mailbox
	}
	a.boxes = boxes
	if a.parked {
		w.stopLive(a)
		w.releaseSlot(a)
		w.removePoll(a)
		return
	}
	if !a.liveSlot {
		if w.live < w.e.cfg.LiveWatchers {
			a.liveSlot = true
			w.live++
			w.removeWaiting(a)
		} else if !a.waiting {
			a.waiting = true
			w.waiting = append(w.waiting, a)
		}
	}
	if a.liveSlot && a.sub == nil && !a.starting && a.retry == nil {
		w.startLive(a)
	}
	if len(w.polled(a)) > 0 {
		w.addPoll(a)
	} else {
		w.removePoll(a)
	}
}

// forget stops watching a and forgets it (w.mu held).
func (w *watchers) forget(a *acct) {
	w.stopLive(a)
	w.releaseSlot(a)
	w.removePoll(a)
	if a.retry != nil {
		a.retry.Stop()
		a.retry = nil
	}
	a.gone = true
	if w.accts[a.name] == a {
		delete(w.accts, a.name)
	}
}

// stopLive ends the live watch (w.mu held).
func (w *watchers) stopLive(a *acct) {
	a.gen++
	if a.sub != nil {
		a.sub.Close() // the hub never calls into push holding its lock
		a.sub = nil
	}
}

// releaseSlot gives the live slot to the account waiting longest.
func (w *watchers) releaseSlot(a *acct) {
	w.removeWaiting(a)
	if !a.liveSlot {
		return
	}
	a.liveSlot = false
	w.live--
	for w.live < w.e.cfg.LiveWatchers && len(w.waiting) > 0 {
		b := w.waiting[0]
		w.waiting = w.waiting[1:]
		b.waiting = false
		w.update(b)
	}
}

func (w *watchers) removeWaiting(a *acct) {
	if a.waiting {
		a.waiting = false
		w.waiting = slices.DeleteFunc(w.waiting, func(b *acct) bool { return b == a })
	}
}

// startLive subscribes to the hub's watcher of the account's first
// mailbox, in the background (w.mu held).
func (w *watchers) startLive(a *acct) {
	a.starting = true
	gen, box := a.gen, a.boxes[0]
	w.e.wg.Go(func() {
		var sub *hub.Subscription
		var err error
		select {
		case w.startSem <- struct{}{}:
			sub, err = w.e.subscribe(a.name, box, func() { w.changed(a) })
			<-w.startSem
		case <-w.e.ctx.Done():
			err = w.e.ctx.Err()
		}
		w.mu.Lock()
		a.starting = false
		if a.gen != gen || a.gone || w.closed || !a.liveSlot || a.parked {
			// Given up meanwhile.
			if sub != nil {
				sub.Close()
			}
			w.update(a)
			w.mu.Unlock()
			return
		}
		switch {
		case errors.Is(err, errNoLogin):
			w.mu.Unlock()
			w.park(a.name, err.Error())
			return
		case err != nil:
			a.fails++
			d := backoff(w.e.cfg.MinBackoff, min(w.e.cfg.MaxBackoff, time.Minute), a.fails)
			w.e.log.Warn("watching a registered account", "account", logName(a.name), "mailbox", box, "err", err, "retry_in", d)
			a.retry = time.AfterFunc(d, func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				a.retry = nil
				w.update(a)
			})
			w.mu.Unlock()
			return
		}
		a.sub = sub
		a.fails = 0
		if c := w.e.canonical(a.name, box); c != box {
			// The start learnt the account's delimiter (subscribe)
			// and watches the mailbox under the hub's spelling: so
			// does the account from now on (update restarts no
			// watch for the new spelling).
			a.boxes[0] = c
			w.update(a)
		}
		w.mu.Unlock()
		w.changed(a) // the first look sets the cursor, or finds what came while nobody watched
	})
}

// backoff returns the delay before attempt n (1-based): from lo doubling
// up to hi, the upper half jittered.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo << min(n-1, 30)
	if d <= 0 || d > hi {
		d = hi
	}
	return d/2 + rand.N(d/2+1)
}

// changed is the hub's notify function of a live account: it must not
// block.
func (w *watchers) changed(a *acct) {
	w.dmu.Lock()
	if !w.dirty[a] {
		w.dirty[a] = true
		w.dirtyList = append(w.dirtyList, a)
	}
	w.dmu.Unlock()
	signal(w.dwake)
}

// lookLoop turns the hub's changes into Events.
func (w *watchers) lookLoop() {
	for {
		w.dmu.Lock()
		var a *acct
		if len(w.dirtyList) > 0 {
			a = w.dirtyList[0]
			w.dirtyList = w.dirtyList[1:]
			delete(w.dirty, a)
		}
		more := len(w.dirtyList) > 0
		w.dmu.Unlock()
		if a == nil {
			select {
			case <-w.dwake:
				continue
			case <-w.e.ctx.Done():
				return
			}
		}
		if more {
			signal(w.dwake) // another looker takes the next
		}
		w.look(a)
	}
}

// look compares the live mailbox's state with the account's cursor.
func (w *watchers) look(a *acct) {
	w.mu.Lock()
	sub := a.sub
	var box string
	if len(a.boxes) > 0 {
		box = a.boxes[0]
	}
	w.mu.Unlock()
	if sub == nil {
		return
	}
	if err := sub.Err(); err != nil {
		// A new UIDVALIDITY, or the watcher failed: watch anew.
		w.e.log.Info("watching a registered account anew", "account", logName(a.name), "why", err)
		w.mu.Lock()
		if a.sub == sub {
			w.stopLive(a)
			w.update(a)
		}
		w.mu.Unlock()
		return
	}
	st := sub.State()
	if st == nil {
		return // a watcher stopped before its first sync (the hub is closing)
	}
	snap := st.Snapshot()
	var last uint32
	if n := len(snap.UIDs); n > 0 {
		last = snap.UIDs[n-1]
	}
	at := sub.LastChangeRead()
	if d := time.Since(at); d < 0 || d > 10*time.Second {
		at = time.Now() // not a change read just now: the state loaded at start
	}
	uids := snap.UIDs
	w.e.observe(a.name, box, observation{
		uidValidity: st.UIDValidity(),
		uidNext:     max(last, st.MaxUID()) + 1,
		messages:    uint32(len(uids)),
		at:          at,
		newSince: func(c uint32) uint32 {
			return uint32(len(uids) - sort.Search(len(uids), func(i int) bool { return uids[i] >= c }))
		},
	})
}

// pollHeap orders the polled accounts by their turn.
type pollHeap []*acct

func (h pollHeap) Len() int           { return len(h) }
func (h pollHeap) Less(i, j int) bool { return h[i].pollDue.Before(h[j].pollDue) }
func (h pollHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pollIdx, h[j].pollIdx = i, j
}
func (h *pollHeap) Push(x any) {
	a := x.(*acct)
	a.pollIdx = len(*h)
	*h = append(*h, a)
}
func (h *pollHeap) Pop() any {
	old := *h
	a := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	a.pollIdx = -1
	return a
}

// addPoll puts an account in the rotation (w.mu held); a new one's turn
// is now, to set its cursors.
func (w *watchers) addPoll(a *acct) {
	if a.pollIdx >= 0 || a.polling {
		return
	}
	if a.pollDue.IsZero() {
		a.pollDue = time.Now()
	}
	heap.Push(&w.polls, a)
	signal(w.pollWake)
}

func (w *watchers) removePoll(a *acct) {
	if a.pollIdx >= 0 {
		heap.Remove(&w.polls, a.pollIdx)
	}
}

// pollLoop is one of the PollConns pollers.
func (w *watchers) pollLoop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		var a *acct
		for a == nil {
			if w.closed {
				w.mu.Unlock()
				return
			}
			wait := time.Hour
			if len(w.polls) > 0 {
				if wait = time.Until(w.polls[0].pollDue); wait <= 0 {
					a = heap.Pop(&w.polls).(*acct)
					break
				}
			}
			w.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-w.pollWake:
			case <-timer.C:
			case <-w.e.ctx.Done():
				return
			}
			timer.Stop()
			w.mu.Lock()
		}
		a.polling = true
		boxes := slices.Clone(w.polled(a))
		if len(w.polls) > 0 && !w.polls[0].pollDue.After(time.Now()) {
			signal(w.pollWake) // the next one's turn too
		}
		w.mu.Unlock()
		err := w.e.pollAccount(a.name, boxes)
		if errors.Is(err, errNoLogin) {
			w.park(a.name, err.Error())
		} else if err != nil && w.e.ctx.Err() == nil {
			w.e.log.Warn("polling a registered account", "account", logName(a.name), "err", err)
		}
		w.mu.Lock()
		a.polling = false
		a.pollDue = time.Now().Add(w.e.cfg.PollInterval)
		w.update(a)
		w.mu.Unlock()
	}
}

// errNoLogin marks a failure to log in for an account without a session:
// no credentials kept, or the upstream refused them (or the master user's
// login for the account). The account is parked.
var errNoLogin = errors.New("push: cannot log in for the account without its session")

// loginAccount returns the account as push logs in for it. Its dial parks
// the account when the upstream refuses the login (and drops refused
// sealed credentials) before it returns, so that whoever asked (the hub's
// watcher, a poller) sees the account parked: the hub calls dial holding
// none of its locks, and parking takes no lock the callers hold.
func (e *Extension) loginAccount(account string) (proxy.Account, error) {
	if e.cfg.MasterUser != "" {
		user, ok := e.up.UserOf(account)
		if !ok {
			return proxy.Account{}, fmt.Errorf("%w: %q is not an account of this upstream", errNoLogin, logName(account))
		}
		return proxy.NewAccount(account, func(ctx context.Context) (*upstream.Conn, error) {
			c, err := e.up.Dial(ctx, account, func(ctx context.Context, c *upstream.Conn) error {
				_, err := c.LoginAs(ctx, user, e.cfg.MasterUser, e.cfg.MasterPassword)
				return err
			})
			if errors.Is(err, upstream.ErrAuthFailed) {
				e.w.park(account, "the upstream refused the master user's login for the account")
				return nil, fmt.Errorf("%w: %w", errNoLogin, err)
			}
			return c, err
		}), nil
	}
	sealed, err := e.data.Get(account, credKey)
	if errors.Is(err, accountdata.ErrNotFound) {
		return proxy.Account{}, fmt.Errorf("%w: no credentials kept", errNoLogin)
	}
	if err != nil {
		return proxy.Account{}, fmt.Errorf("push: reading the credentials: %w", err)
	}
	user, pass, err := e.seal.open(account, sealed)
	if err != nil {
		e.dropCreds(account, sealed, "the sealed credentials do not open (was the key changed?)")
		return proxy.Account{}, fmt.Errorf("%w: %w", errNoLogin, err)
	}
	return proxy.NewAccount(account, func(ctx context.Context) (*upstream.Conn, error) {
		c, err := e.up.Dial(ctx, account, func(ctx context.Context, c *upstream.Conn) error {
			_, err := c.Login(ctx, user, pass)
			return err
		})
		if errors.Is(err, upstream.ErrAuthFailed) {
			e.dropCreds(account, sealed, "the upstream refused the sealed credentials")
			return nil, fmt.Errorf("%w: %w", errNoLogin, err)
		}
		return c, err
	}), nil
}

// dropCreds removes sealed credentials that no longer work (unless a
// login stored new ones meanwhile) and parks the account.
func (e *Extension) dropCreds(account string, sealed []byte, why string) {
	unlock := e.lock(account)
	cur, err := e.data.Get(account, credKey)
	if err == nil && bytes.Equal(cur, sealed) {
		err = accountdata.Delete(e.data, account, credKey)
	} else if errors.Is(err, accountdata.ErrNotFound) {
		err = nil
	} else if err == nil {
		unlock()
		return // newer ones: the next try uses them
	}
	unlock()
	if err != nil {
		e.log.Error("dropping refused credentials", "account", logName(account), "err", err)
	}
	e.w.park(account, why+"; they were dropped")
}

// canonical spells a registered mailbox name as the hub keys it, with the
// account's delimiter if one is known yet (a poll of the account learns
// it: pollAccount).
func (e *Extension) canonical(account, box string) string {
	if e.mbox == nil {
		return box
	}
	return e.mbox.Canonical(e.ctx, account, nil, box)
}

// subscribe watches a mailbox of an account through the hub, logged in as
// push logs in for it.
//
// A name that may be another spelling of a mailbox under INBOX
// (inbox.Lists) is spelt with the account's delimiter before the watch
// starts, learnt on the connection dialled for the hub's watcher (LIST ""
// "", one round trip, no other login): the watch's first look must find
// the cursor under the name it was kept under, the hub's spelling
// (observe), or mail that came while nobody watched (the proxy was down)
// is taken for the starting point and never pushed. Without the
// delimiter, inbox.Lists may be another mailbox than INBOX.Lists, so the
// cursor cannot be matched otherwise. The connection is handed to the
// hub; if the hub has the mailbox watched already, it is logged out. A
// dial the account's connection budget refuses (the hub's watcher is the
// first thing the budget gives up) leaves the name as it is: the watch
// starts as before, and a cursor it keeps under that spelling is carried
// over once the delimiter is known (readCursor). A watch that joins a
// watcher already running has its state checked first (freshen).
func (e *Extension) subscribe(account, box string, notify func()) (*hub.Subscription, error) {
	a, err := e.loginAccount(account)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if !e.mbox.NeedsDelimiter(account, box) {
		sub, err := e.mbox.Subscribe(ctx, a, box, notify)
		if err != nil || !sub.Joined() {
			return sub, err
		}
		return e.freshen(ctx, a, box, sub, notify, nil)
	}
	c, err := a.Dial(upstream.Optional(ctx))
	if errors.Is(err, upstream.ErrBudget) {
		return e.mbox.Subscribe(ctx, a, box, notify) // nor a connection to freshen a joined watcher's state
	}
	if err != nil {
		return nil, err
	}
	box = e.mbox.Canonical(ctx, account, c, box)
	h := &handOver{c: c}
	sub, err := e.mbox.Subscribe(ctx, proxy.NewAccount(account, func(ctx context.Context) (*upstream.Conn, error) {
		if c := h.take(); c != nil {
			return c, nil
		}
		return a.Dial(ctx)
	}), box, notify)
	c = h.take() // not nil: the hub had a watcher of the mailbox already
	if err != nil || !sub.Joined() {
		if c != nil {
			c.Logout()
		}
		return sub, err
	}
	return e.freshen(ctx, a, box, sub, notify, c)
}

// freshen makes sure that sub, which joined a watcher already running
// (Subscription.Joined: one in its grace period after the watch stopped
// a moment ago, or one a session's SELECT started), follows the mailbox
// the upstream has now, before the watch's first look takes its state.
// The watcher's connection may still have a mailbox selected that was
// deleted and created again under the name outside the proxy, and
// Dovecot reports it neither in IDLE nor to a NOOP of that connection
// (a Sync, tried: it answers from the old mailbox): the first look
// would keep the old UIDVALIDITY and the watch hear of no mail in the new
// mailbox until the watcher reconnects. So the UIDVALIDITY is asked on
// another connection, c when the caller has one left over (logged out
// here), else one dialled for it: STATUS, one login and round trip per
// start onto a running watcher; a start that starts the watcher costs
// nothing more, its state is fresh. When the upstream's differs, the hub
// starts the state over (MailboxService.StateAt: Hub.Resync) and the watch
// subscribes anew, so its first look finds the new UIDVALIDITY and starts
// the cursor over (observe). A dial the account's connection budget
// refuses leaves the state unchecked (logged): the watch goes on as
// before rather than waiting for a connection sessions use.
func (e *Extension) freshen(ctx context.Context, a proxy.Account, box string, sub *hub.Subscription, notify func(), c *upstream.Conn) (*hub.Subscription, error) {
	if !imapcodec.CanQuote(box) {
		return sub, nil // checkRegistration lets no such name in
	}
	if c == nil {
		var err error
		c, err = a.Dial(upstream.Optional(ctx))
		if errors.Is(err, upstream.ErrBudget) {
			e.log.Info("a watch joined a running watcher without checking its UIDVALIDITY: no connection to spare", "account", logName(a.Name), "mailbox", box)
			return sub, nil
		}
		if err != nil {
			sub.Close()
			return nil, fmt.Errorf("push: checking the UIDVALIDITY of %q: %w", box, err)
		}
	}
	items, err := status(ctx, c, box, "UIDVALIDITY")
	c.Logout()
	switch {
	case err != nil:
		sub.Close()
		return nil, fmt.Errorf("push: checking the UIDVALIDITY of %q: %w", box, err)
	case items == nil:
		sub.Close() // the watcher's SELECT finds it gone once it reconnects
		return nil, fmt.Errorf("push: %q: no such mailbox on the upstream", box)
	}
	uv := uint32(items["UIDVALIDITY"])
	if uv == sub.State().UIDValidity() {
		return sub, nil
	}
	e.log.Info("the watched mailbox was made anew: its state starts over", "account", logName(a.Name), "mailbox", box)
	defer sub.Close() // after the new subscription: the watcher goes on
	_, release, err := e.mbox.StateAt(ctx, a, box, uv)
	if err != nil {
		return nil, err
	}
	defer release()
	return e.mbox.Subscribe(ctx, a, box, notify)
}

// handOver gives a connection dialled ahead to the first dial that wants
// it (the hub's watcher's, from its goroutine).
type handOver struct {
	mu sync.Mutex
	c  *upstream.Conn
}

func (h *handOver) take() *upstream.Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.c
	h.c = nil
	return c
}

// pollAccount logs in for account and compares each mailbox's STATUS with
// its cursor.
func (e *Extension) pollAccount(account string, boxes []string) error {
	if len(boxes) == 0 {
		return nil
	}
	a, err := e.loginAccount(account)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	c, err := a.Dial(upstream.Optional(ctx))
	if err != nil {
		return err
	}
	defer c.Logout()
	seen := make(map[string]bool, len(boxes))
	for _, box := range boxes {
		// Spelt as the hub and the cursors key it: a name given as
		// inbox.Lists is INBOX.Lists where "." is the delimiter (asked
		// of c the first time), polled once under that spelling.
		if box = e.mbox.Canonical(ctx, account, c, box); seen[box] {
			continue
		}
		seen[box] = true
		if !imapcodec.CanQuote(box) {
			continue // checkRegistration lets no such name in
		}
		items, err := status(ctx, c, box, "MESSAGES UIDNEXT UIDVALIDITY")
		if err != nil {
			return err
		}
		if items == nil {
			continue // no such mailbox (yet): nothing to announce
		}
		uidNext, messages := uint32(items["UIDNEXT"]), uint32(items["MESSAGES"])
		e.observe(account, box, observation{
			uidValidity: uint32(items["UIDVALIDITY"]),
			uidNext:     uidNext,
			messages:    messages,
			at:          time.Now(),
			newSince: func(c uint32) uint32 {
				// STATUS does not say which UIDs are new: those since
				// the cursor, at most every message there is (UIDs of
				// messages expunged meanwhile are counted, as UIDNEXT
				// moved past them).
				return min(uidNext-c, messages)
			},
		})
	}
	return nil
}

// status asks c for the STATUS items (space-separated) of box, which
// must be quotable; nil items and no error when the upstream has no such
// mailbox (NO, or no STATUS line).
func status(ctx context.Context, c *upstream.Conn, box, names string) (map[string]uint64, error) {
	var items map[string]uint64
	_, err := c.Exec(ctx, "STATUS "+string(imapcodec.AppendQuoted(nil, box))+" ("+names+")", func(r *upstream.Response) {
		if r.Head.Name == "STATUS" {
			if _, it, err := statusresp.Parse(r.Segments); err == nil {
				items = it
			}
		}
	})
	var se *upstream.StatusError
	if errors.As(err, &se) {
		return nil, nil
	}
	return items, err
}
