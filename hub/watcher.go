package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// box is one watched mailbox: its state, its subscribers and its watcher.
//
// The box's goroutine (run, and everything it calls) is the only writer of
// its syncstate.Mailbox while it runs: the watcher's reports, the sessions'
// own STORE answers (claims, see Subscription.Own) and the full resyncs all
// go through it, one after the other, so each change gets its mod-sequence
// in the order the box decided on it and a session's own change can be told
// from a stale report of it (see claim). Sessions only read the state. A box
// without a goroutine (Hub.Refresh) is written by the goroutine refreshing
// it, and by nobody else: it is registered in Hub.boxes meanwhile, so no
// watcher starts for the mailbox until the refresh is done.
type box struct {
	hub    *Hub
	key    Key
	dial   DialFunc // guarded by hub.mu
	ctx    context.Context
	cancel context.CancelFunc

	subs       map[*Subscription]struct{} // guarded by hub.mu
	graceTimer *time.Timer                // guarded by hub.mu

	st       atomic.Pointer[syncstate.Mailbox]
	lastRead atomic.Int64  // when the upstream line behind the latest change was read (UnixNano)
	lastWait atomic.Int64  // how long of the time since then the watcher waited for the upstream's answers (ns)
	ready    chan struct{} // closed once the first full sync is done
	readyErr error
	stopped  chan struct{}
	failed   atomic.Bool // the goroutine panicked (see fail)
	// forgotten is set by Hub.ForgetAccount: the box's state must not
	// outlive it in the cache of unwatched states.
	forgotten atomic.Bool
	// gone is set by Hub.ForgetMailboxes: the mailbox was deleted or
	// renamed; its saved state goes when the box stops (dropGone).
	gone atomic.Bool
	// missing is set by the watcher when the upstream has no such mailbox
	// to select any more (deleted or renamed, outside the proxy or
	// through it): the sessions that have it selected are ended
	// (ErrMailboxGone), as Dovecot ends its own.
	missing atomic.Bool
	// live is the watcher's connection while it has one, for Resync.
	live atomic.Pointer[upstream.Conn]
	// kept is the connection a passive box refreshed on and keeps for
	// its watcher (budget.go), synced, for run's next watch; owned by the
	// box's goroutine.
	kept *watch

	wake      chan struct{} // signalled by sync and own for a watcher not reading
	syncMu    sync.Mutex
	syncReqs  []chan error   // waiting Sync calls
	claimReqs []*claimReq    // claims waiting for the box's goroutine
	conn      *upstream.Conn // current connection, for interrupting reads

	// The account's connection budget (budget.go): dropConn, set while
	// the watcher holds a connection, closes it (guarded by hub.mu, as
	// idleSubs, the subscribers that idle); lastUsed is when a session
	// last subscribed or asked for a round trip (UnixNano); passive is
	// set while the box has no connection; wantWatcher asks a passive box
	// to try for one.
	dropConn    context.CancelFunc
	idleSubs    int
	lastUsed    atomic.Int64
	passive     atomic.Bool
	wantWatcher atomic.Bool

	// Owned by the box's goroutine (see claim).
	claims map[uint32]*claim // standing claims by UID
	// added holds the new messages sessions told the box of
	// (ownchanges.go) that the watcher's connection has not reported
	// yet: each UID's mark, as a claim's.
	added    map[uint32]uint64
	trips    uint64 // round trips (NOOP) started
	needTrip bool   // a held report (or too many claims) wants a round trip
	renotify bool   // a panic may have kept sessions from hearing of a change
}

func newBox(h *Hub, key Key, dial DialFunc) *box {
	b := &box{hub: h, key: key, dial: dial, subs: map[*Subscription]struct{}{}, ready: make(chan struct{}), stopped: make(chan struct{}), wake: make(chan struct{}, 1)}
	b.ctx, b.cancel = context.WithCancel(h.ctx)
	return b
}

func (b *box) state() *syncstate.Mailbox { return b.st.Load() }

// sync asks the watcher for a round trip to the upstream and waits for it.
func (b *box) sync(ctx context.Context) error {
	return b.await(ctx, b.requestSync())
}

// requestSync asks the watcher for a round trip to the upstream; the
// channel receives its outcome.
func (b *box) requestSync() chan error {
	b.touch()
	done := make(chan error, 1)
	if b.missing.Load() {
		done <- ErrMailboxGone // no round trip can bring news of it
		return done
	}
	b.syncMu.Lock()
	b.syncReqs = append(b.syncReqs, done)
	if b.conn != nil {
		// The watcher is in IDLE, blocked in a read: wake it. Done under
		// the lock so it cannot hit a command the watcher runs after
		// leaving IDLE (see setConn).
		b.conn.SetReadDeadline(time.Unix(1, 0))
	}
	b.syncMu.Unlock()
	b.signal()
	return done
}

// await waits for the outcome of a requestSync.
func (b *box) await(ctx context.Context, done chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stopped:
		return errStopped
	}
}

// takeSyncs removes and returns the pending Sync requests.
func (b *box) takeSyncs() []chan error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	r := b.syncReqs
	b.syncReqs = nil
	return r
}

func (b *box) pendingSyncs() bool {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	return len(b.syncReqs) > 0
}

// setConn publishes the connection while the watcher idles on it (reads
// may be interrupted) and withdraws it (nil) before the watcher runs
// commands on it.
func (b *box) setConn(c *upstream.Conn) {
	b.syncMu.Lock()
	b.conn = c
	b.syncMu.Unlock()
}

// logger is the hub's logger naming the box's mailbox, made when there is
// something to log: a logger With attributes is an allocation, which
// thousands of quiet watchers should not each hold.
func (b *box) logger() *slog.Logger { return b.hub.cfg.Logger.With("watcher", b.key.Mailbox) }

// boxLog is a box's logger for the watches, made only to log (see logger).
type boxLog struct{ b *box }

func (l boxLog) Warn(msg string, args ...any) { l.b.logger().Warn(msg, args...) }

// goroutine is the box's goroutine: run, with a panic turned into the
// box's failure. It holds the box's count in Hub.wg (taken by whoever
// started it) until the box stops; a watcher that parks in IDLE hands the
// count on to its waiting goroutine (see waitParked), which runs this again.
func (b *box) goroutine(resume *watch) {
	parked := false
	defer func() {
		if !parked {
			b.hub.wg.Done()
		}
	}()
	defer recovery.RecoverLazy(recovery.Watcher, b.logger, b.fail)
	parked = b.run(resume)
}

// parkInIdle lets watchers park in IDLE (see waitParked). Only
// BenchmarkIdleReport turns it off, to compare the latency of a report
// with and without parking; it is read when a watcher is about to wait.
var parkInIdle = true

// errParked ends a watcher's serve when it parks in IDLE (see waitParked).
var errParked = errors.New("hub: watcher parked in IDLE")

// waitParked is how a watcher waits in IDLE. IDLE may last 25 minutes,
// and most watched mailboxes are quiet (a push account's INBOX, watched
// with no session), so what a watcher holds while it waits is what each
// watched mailbox costs. A goroutine blocked in the read at the bottom of
// run, serve and idleLoop keeps the stack those calls grew to (8 KiB: the
// runtime halves a stack at GC only while less than a quarter of it is in
// use, and those frames alone are more), which was most of the memory of
// an account watched for push (docs/benchmarks.md, push). So the watcher
// does not wait there: with nothing buffered, idleLoop saves where it is
// (the IDLE command's tag, when to renew it) in the watch and returns
// errParked, serve returns it keeping the connection and its context, and
// run starts waitParked, a goroutine that does nothing but wait on the
// connection with its few bytes (imapcodec.Reader.Wait) in a stack of a
// few frames, and ends. When the wait ends (the upstream's report; a
// session's request, the renewal or the watcher's stop, which interrupt
// the read with a deadline as they always did; the connection's end),
// waitParked runs the box's goroutine again, which goes on in idleLoop
// where it left off.
//
// Nothing else changes for the box: it has a goroutine all along (this
// one while parked), its connection and its subscribers; its state is
// written only by the goroutine that runs run, and waitParked touches
// only the connection's reader, which nobody else reads.
func (b *box) waitParked(w *watch) {
	w.waitErr = waitInput(w.conn.Reader())
	b.goroutine(w)
}

// waitInput is r.Wait with a panic turned into an error, which ends the
// connection as a failed read would (execServing does the same for its
// goroutine's command): the box's goroutine must run again, whatever
// happened, to close what it holds or reconnect.
func waitInput(r *imapcodec.Reader) (err error) {
	defer func() {
		if p := recover(); p != nil {
			recovery.Counted(recovery.Watcher)
			err = fmt.Errorf("hub: panic waiting in IDLE: %v", p)
		}
	}()
	return r.Wait()
}

// run is the watcher goroutine: connect, sync, watch; reconnect on failure.
// resume is the watch of a watcher that parked in IDLE and whose wait
// ended: run goes on with it. run returns true when the watcher parked
// (waitParked runs on); anything else means the box stopped.
func (b *box) run(resume *watch) (parked bool) {
	// b.ready is closed by the box's goroutine only, once (a resumed run
	// finds it closed).
	ready := func() {
		if !isReady(b.ready) {
			close(b.ready)
		}
	}
	defer func() {
		if parked {
			return
		}
		ready()
		for _, r := range b.takeSyncs() {
			r <- errStopped
		}
		for _, r := range b.takeClaims() {
			r.reply <- claimReply{err: fmt.Errorf("hub: %s in %q: %w", r, b.key.Mailbox, errStopped)}
		}
		if b.kept != nil {
			// Kept for a watcher that never ran (a panic in between).
			b.kept.conn.Close()
			b.kept = nil
		}
		b.dropGone()
		b.hub.mu.Lock()
		delete(b.hub.stopping, b)
		b.hub.mu.Unlock()
		close(b.stopped)
	}()
	log := boxLog{b}
	retried := false // the last watcher connection was a passive box's try
	for attempt := 0; ; attempt++ {
		w := resume
		resume = nil
		if w == nil {
			w = b.kept
			b.kept = nil
		}
		if w == nil {
			w = &watch{box: b, log: log}
		}
		err := b.serveGuarded(w, ready)
		if w.parked {
			go b.waitParked(w)
			return true
		}
		if b.ctx.Err() != nil {
			b.hub.keepCold(b)
			return false
		}
		if w.dropped || errors.Is(err, upstream.ErrBudget) {
			// The account's budget took the connection, or had none:
			// keep the state without one until a subscriber idles.
			if !b.passiveLoop(log, ready, retried) {
				if b.ctx.Err() != nil {
					b.hub.keepCold(b)
				}
				return false
			}
			retried, attempt = true, -1
			continue
		}
		retried = false
		if w.synced {
			attempt = 0
		}
		if !w.synced && attempt == 0 && !isReady(b.ready) {
			// The very first connection failed: the session that asked
			// is waiting; tell it rather than retry in the background.
			// The box goes first, so that a Watch after this one's
			// failure starts a new watcher instead of finding this one.
			b.readyErr = err
			b.hub.mu.Lock()
			if b.hub.boxes[b.key] == b {
				delete(b.hub.boxes, b.key)
			}
			b.hub.mu.Unlock()
			ready()
			return false
		}
		d := b.hub.backoff(attempt)
		log.Warn("watcher connection lost; reconnecting", "err", err, "delay", d)
		if !b.backOff(d) {
			return false
		}
	}
}

// vanish ends a box whose mailbox the upstream has no more (fullSync):
// its sessions hear ErrMailboxGone at once (Subscription.Err, and the
// round trips and claims they wait for), it leaves the hub at once, so that
// a Watch of the name used again (created again, renamed back) starts a
// new box instead of finding this one, and its saved state is dropped as
// it stops (dropGone), unless a new box of the name runs by then.
func (b *box) vanish() {
	b.gone.Store(true)
	b.missing.Store(true)
	b.hub.mu.Lock()
	if b.hub.boxes[b.key] == b {
		b.hub.retireLocked(b)
	}
	b.hub.mu.Unlock()
	for _, r := range b.takeSyncs() {
		r <- ErrMailboxGone
	}
	for _, r := range b.takeClaims() {
		r.reply <- claimReply{err: fmt.Errorf("hub: %s in %q: %w", r, b.key.Mailbox, ErrMailboxGone)}
	}
	b.notifyAll()
	b.cancel()
}

// serveGuarded is w.serve with a panic turned into an error: the watcher's
// connection is closed (serve's deferred calls) and the watcher reconnects
// and resyncs as after any failure; the sessions and the process go on.
func (b *box) serveGuarded(w *watch, ready func()) (err error) {
	defer recovery.RecoverLazy(recovery.Watcher, b.logger, func(perr error) {
		err = perr
		// The panic may have cut notifyAll short: the next full sync
		// tells every session, changed or not.
		b.renotify = true
	})
	return w.serve(ready)
}

// fail ends a box whose goroutine panicked outside a connection's
// lifetime: it leaves the hub (the next Watch starts a new watcher) and its
// sessions' Subscription.Err reports ErrWatcherFailed.
func (b *box) fail(error) {
	b.failed.Store(true)
	b.hub.mu.Lock()
	if b.hub.boxes[b.key] == b {
		delete(b.hub.boxes, b.key)
	}
	b.hub.mu.Unlock()
	b.cancel()
}

// backOff waits d before a reconnect, serving claims meanwhile (the state
// is still the one sessions follow); it reports false if the box stopped.
func (b *box) backOff(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		b.serveClaims()
		select {
		case <-t.C:
			return true
		case <-b.ctx.Done():
			return false
		case <-b.wake:
		}
	}
}

func isReady(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// watch is one connection's lifetime of a watcher.
type watch struct {
	box    *box
	log    interface{ Warn(string, ...any) }
	conn   *upstream.Conn
	view   []uint32 // the connection's message sequence: UIDs by seqnum
	synced bool
	// dropped: the account's budget reclaimed the connection (budget.go).
	dropped bool

	batch     syncstate.Changes
	needFetch bool
	// asked is set by a round trip that answered Sync requests: the
	// watcher then lingers out of IDLE (linger).
	asked     bool
	firstRead time.Time     // when the first line of the uncommitted batch was read
	batchWait time.Duration // time the uncommitted batch waited for the upstream's answers

	// The connection's context, its cancel (which the budget may call:
	// dropConn) and the stop of the AfterFunc that wakes a read when it
	// ends; kept here for a watcher that parks (see waitParked).
	ctx      context.Context
	drop     context.CancelFunc
	stopWake func() bool
	// parked: idleLoop returned errParked, waiting in the IDLE command
	// idleTag until renewAt; waitErr is what ended waitParked's wait.
	parked  bool
	idleTag string
	renewAt time.Time
	waitErr error
}

// serve runs the watcher on a connection, from its dial (or the one a
// passive box kept) to its end, which it closes. A watcher that parked in
// IDLE (see waitParked) returns errParked with w.parked set and everything kept;
// serve called again with that watch goes on in idleLoop.
func (w *watch) serve(ready func()) error {
	resumed := w.parked
	w.parked = false
	if !resumed {
		if err := w.open(); err != nil {
			return err
		}
	}
	defer func() {
		if !w.parked {
			w.close()
		}
	}()
	ctx, conn := w.ctx, w.conn
	if resumed {
		return w.idleLoop(ctx, true)
	}
	if !w.synced {
		if err := w.fullSync(ctx); err != nil {
			return err
		}
		w.synced = true
	}
	ready()
	if conn.Caps().Has("IDLE") {
		return w.idleLoop(ctx, false)
	}
	return w.pollLoop(ctx)
}

// open gives the watch its connection (dialled, or the one a passive box
// kept: budget.go, synced) and the connection's context.
func (w *watch) open() error {
	b := w.box
	conn := w.conn
	if conn == nil {
		b.hub.mu.Lock()
		dial := b.dial // Watch replaces it under hub.mu
		b.hub.mu.Unlock()
		// A watcher's connection is the first thing an account's budget
		// gives up: it may be refused one, and reclaimed (dropConn) later.
		c, err := dial(upstream.Optional(b.ctx))
		if err != nil {
			return err
		}
		conn = c
	}
	w.ctx, w.drop = context.WithCancel(b.ctx)
	b.hub.mu.Lock()
	b.dropConn = w.drop
	b.hub.mu.Unlock()
	w.conn = conn
	b.live.Store(conn)
	// Stopping the watcher must wake a read blocked in IDLE.
	w.stopWake = context.AfterFunc(w.ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	return nil
}

// close ends the watch's connection: logged out if the watcher was
// stopped or its connection reclaimed, closed after a failure.
func (w *watch) close() {
	b := w.box
	b.setConn(nil)
	if w.ctx.Err() != nil {
		w.conn.Logout()
	} else {
		w.conn.Close()
	}
	w.stopWake()
	b.live.Store(nil)
	b.hub.mu.Lock()
	b.dropConn = nil
	b.hub.mu.Unlock()
	w.dropped = w.ctx.Err() != nil && b.ctx.Err() == nil
	w.drop()
}

func (w *watch) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, w.box.hub.cfg.Timeout)
}

// fullSync EXAMINEs the mailbox, fetches every UID and flag set, and
// reconciles the state with it.
func (w *watch) fullSync(ctx context.Context) error {
	b := w.box
	octx, cancel := w.opCtx(ctx)
	defer cancel()
	var uidValidity uint32
	w.view, w.batch, w.needFetch = nil, syncstate.Changes{}, false
	// The upstream's RECENT count, as EXAMINE (which takes nothing) sees
	// it and as it moves during the listing: the last so many messages
	// are recent upstream (see syncstate.Recency).
	upRecent := 0
	handle := func(r *upstream.Response) {
		if r.Head.Tag == "*" && r.Head.HasNum && r.Head.Name == "RECENT" {
			upRecent = int(r.Head.Num)
		}
		w.handle(r)
	}
	err := w.conn.Select(octx, b.key.Mailbox, true, func(r *upstream.Response) {
		if r.Head.Code == "UIDVALIDITY" {
			uidValidity = upstream.ParseUIDValidity(r.Head.CodeArg)
		}
		handle(r) // EXISTS, RECENT
	})
	if err != nil {
		var se *upstream.StatusError
		if errors.As(err, &se) && se.Head.Name == "NO" && (se.Head.Code == "" || se.Head.Code == "NONEXISTENT") {
			// Deleted or renamed outside the proxy? Then its saved state
			// goes when the watcher stops, as after a DELETE through the
			// proxy (ForgetMailboxes). A mailbox created again under the
			// name while watched has a new UIDVALIDITY, so its clients
			// resync it whole anyway; its state starts again above the
			// mark then.
			if ok, lerr := w.conn.Selectable(octx, b.key.Mailbox); lerr == nil && !ok {
				b.vanish()
			}
		}
		return fmt.Errorf("hub: EXAMINE %q: %w", b.key.Mailbox, err)
	}
	// The listing goes through handle like any other response, so that
	// flag changes, expunges and new messages the upstream reports during
	// it land where they belong; the batch then holds every message's
	// latest flags.
	_, err = w.conn.Exec(octx, "UID FETCH 1:* (FLAGS)", handle)
	if err != nil {
		return fmt.Errorf("hub: UID FETCH 1:* (FLAGS) in %q: %w", b.key.Mailbox, err)
	}
	flags := make(map[uint32][]string, len(w.view))
	for _, m := range w.batch.Upsert {
		flags[m.UID] = m.Flags
	}
	w.batch = syncstate.Changes{}
	msgs := make([]syncstate.Message, 0, len(w.view))
	for _, uid := range w.view {
		if f, ok := flags[uid]; ok && uid != 0 {
			msgs = append(msgs, syncstate.Message{UID: uid, Flags: f})
		}
	}
	w.needFetch = slices.Contains(w.view, 0)
	b.forgetClaims()
	st := b.state()
	changed := false
	if st == nil {
		st = b.load(uidValidity)
	}
	if st == nil || st.UIDValidity() != uidValidity {
		if st != nil {
			w.log.Warn("UIDVALIDITY changed; dropping the old state", "old", st.UIDValidity(), "new", uidValidity)
		}
		base, err := b.newBase()
		if err != nil {
			return err
		}
		st = syncstate.NewAt(uidValidity, base)
		b.persistTo(st)
		changed = true
	}
	// A state loaded or made here is published only once it is saved:
	// sessions must not start from mod-sequences that are not on disk.
	rc, err := st.Reconcile(msgs)
	if err != nil {
		return fmt.Errorf("hub: reconciling %q: %w", b.key.Mailbox, err)
	}
	first := firstRecent(w.view, upRecent, st.MaxUID())
	if a := b.hub.takeAppended(b.key, uidValidity); a != 0 {
		first = min(first, a) // appended through the proxy: new
	}
	st.Recency().NoteUpstream(first)
	if b.st.Swap(st) != st {
		changed = true
	}
	if changed || rc || b.renotify {
		b.renotify = false
		b.notifyAll()
	}
	return nil
}

// firstRecent returns the first UID of the last n messages of view (the
// upstream's recent ones: \Recent goes to messages as they arrive, and
// they arrive with ever higher UIDs), or the UID after every known one
// when none is recent. Positions whose UID is not known yet (view holds
// 0) are skipped: those messages are new and get UIDs above every known
// one, so they are above the floor anyway.
func firstRecent(view []uint32, n int, maxUID uint32) uint32 {
	last := uint32(0)
	for _, uid := range view {
		last = max(last, uid)
	}
	if n > 0 {
		for _, uid := range view[max(len(view)-n, 0):] {
			if uid != 0 {
				return uid
			}
		}
	}
	return max(last, maxUID) + 1
}

// newBase returns the mod-sequence a state made anew starts above: where
// the Store remembers the highest it ever saved for the mailbox
// (statestore.Continuer: the shared store of cluster mode), that mark, so
// that mod-sequences continue across nodes and never depend on a node's
// clock; else Config.ModSeqBase (the clock).
func (b *box) newBase() (uint64, error) {
	if c, ok := b.hub.cfg.Store.(statestore.Continuer); ok {
		mark, known, err := c.Continue(b.storeKey())
		if err != nil {
			return 0, fmt.Errorf("hub: where mod-sequences of %q continue: %w", b.key.Mailbox, err)
		}
		if known {
			return mark, nil
		}
	}
	return b.hub.cfg.ModSeqBase(), nil
}

// storeKey is the mailbox's key in the Store.
func (b *box) storeKey() string { return b.key.storeKey() }

// storeKey is k's key in the Store: the account, NUL, the mailbox name.
func (k Key) storeKey() string { return k.Account + "\x00" + k.Mailbox }

// load returns the saved state for uidValidity, or nil.
func (b *box) load(uidValidity uint32) *syncstate.Mailbox {
	if st := b.hub.takeCold(b.key); st != nil && st.UIDValidity() == uidValidity {
		return st // its persister still saves under the same key
	}
	store := b.hub.cfg.Store
	if store == nil {
		return nil
	}
	sv, err := store.Load(b.storeKey())
	if err != nil {
		b.hub.cfg.Logger.Error("loading saved mailbox state; starting afresh", "mailbox", b.key.Mailbox, "err", err)
		return nil
	}
	if sv == nil || sv.UIDValidity != uidValidity {
		return nil
	}
	st := syncstate.Restore(sv)
	b.persistTo(st)
	return st
}

// persistTo makes st save its changes in the hub's Store and bounds its
// expunge log.
func (b *box) persistTo(st *syncstate.Mailbox) {
	st.SetLogLimits(b.hub.cfg.ExpungeLog)
	store := b.hub.cfg.Store
	if store == nil {
		return
	}
	key := b.storeKey()
	log := b.hub.cfg.Logger
	st.SetPersister(func(batch statestore.Batch) error {
		err := store.Save(key, batch)
		if err != nil {
			// ErrNoState is expected after the file was rebuilt: the
			// state retries with a full save at once.
			level := slog.LevelError
			if errors.Is(err, statestore.ErrNoState) {
				level = slog.LevelWarn
			}
			log.Log(context.Background(), level, "saving mailbox state failed; its changes are held back", "mailbox", b.key.Mailbox, "err", err)
		}
		return err
	})
}

// handle processes one untagged response from the watcher's connection.
//
// w.view is the connection's message sequence: each message's UID by
// sequence number, 0 for a message that EXISTS announced and whose UID is
// not known yet. Keeping every position, known or not, keeps sequence
// numbers right whatever order the upstream reports things in: new
// messages, expunges and flag changes (with or without UID) also arrive
// during the watcher's own FETCH commands.
func (w *watch) handle(r *upstream.Response) {
	h := r.Head
	if h.Tag != "*" || !h.HasNum {
		return
	}
	n := int(h.Num)
	switch h.Name {
	case "EXISTS":
		if n > len(w.view) {
			w.view = append(w.view, make([]uint32, n-len(w.view))...)
			w.needFetch = true
		}
	case "EXPUNGE":
		if n < 1 || n > len(w.view) {
			return
		}
		uid := w.view[n-1]
		w.view = slices.Delete(w.view, n-1, n)
		if uid != 0 {
			w.batch.Expunged = append(w.batch.Expunged, uid)
		}
	case "FETCH":
		if n < 1 {
			return
		}
		uid, flags, ok := parseFetch(r)
		if n > len(w.view) { // before its EXISTS
			w.view = append(w.view, make([]uint32, n-len(w.view))...)
		}
		switch {
		case ok && flags != nil:
			w.view[n-1] = uid
		case w.view[n-1] != 0:
			uid = w.view[n-1]
		default:
			// A message not fetched yet: the fetch reports its flags.
			w.needFetch = true
			return
		}
		if flags != nil {
			w.batch.Upsert = append(w.batch.Upsert, syncstate.Message{UID: uid, Flags: flags})
		}
	}
}

// commit applies the collected batch to the state and notifies. If the
// state cannot save the batch, nobody is told of it and the error ends the
// connection: the watcher reconnects, and its full resync reports the same
// changes again (see syncstate.Mailbox.Apply).
func (w *watch) commit() error {
	if w.needFetch && len(w.batch.Upsert) == 0 && len(w.batch.Expunged) == 0 {
		// Only an EXISTS so far: the new messages are committed after
		// the fetch, and their clock started with the EXISTS line.
		return nil
	}
	c := w.batch
	w.batch = syncstate.Changes{}
	readAt, wait := w.firstRead, w.batchWait
	w.firstRead, w.batchWait = time.Time{}, 0
	if readAt.IsZero() {
		readAt = time.Now()
	}
	w.box.lastWait.Store(int64(wait))
	w.box.lastRead.Store(readAt.UnixNano())
	w.box.orderReports(&c)
	if len(c.Upsert) == 0 && len(c.Expunged) == 0 {
		return nil
	}
	changed, err := w.box.state().Apply(c)
	if err != nil {
		return fmt.Errorf("hub: recording changes in %q: %w", w.box.key.Mailbox, err)
	}
	if changed {
		w.box.notifyAll()
	}
	return nil
}

// fetchNewCommand returns the command that fetches the messages whose UIDs
// are not known yet, those from the first unknown position on (new
// messages come last, in UID order), or "" if there are none; the fetch
// will report them, so needFetch is cleared.
func (w *watch) fetchNewCommand() string {
	w.needFetch = false
	z := slices.Index(w.view, 0)
	if z < 0 {
		return ""
	}
	from := uint32(1)
	if z > 0 {
		from = w.view[z-1] + 1
	}
	return fmt.Sprintf("UID FETCH %d:* (FLAGS)", from)
}

// fetchNew fetches the messages whose UIDs are not known yet.
func (w *watch) fetchNew(ctx context.Context) error {
	cmd := w.fetchNewCommand()
	if cmd == "" {
		return nil
	}
	octx, cancel := w.opCtx(ctx)
	defer cancel()
	sent := time.Now()
	err := w.execServing(octx, cmd)
	w.batchWait += time.Since(sent)
	return err
}

// execServing runs one of the watcher's commands and serves the claims
// that sessions make while it waits for the answer: the command's I/O
// runs on a goroutine of its own, which only collects the untagged
// responses, and they go through handle here, in order, once the tagged
// one has come. Claims used to wait for the command's round trip (the
// box's goroutine was blocked reading), and with sessions asking for
// round trips every few milliseconds that was most of each STORE's wait
// (docs/benchmarks.md, per-command overhead).
//
// Serving a claim while the answer is on its way keeps the ordering of
// claims and reports (see claim): the round trip started before the
// claim, so the claim's mark is this trip's number and only a later trip
// settles it; a report the answer carries is committed after the claim
// and ordered against it as any report read after a claim is.
func (w *watch) execServing(ctx context.Context, cmd string) error {
	var resps []*upstream.Response
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				recovery.Counted(recovery.Watcher)
				done <- fmt.Errorf("hub: panic running %q: %v", cmd, p)
			}
		}()
		_, err := w.conn.Exec(ctx, cmd, func(r *upstream.Response) { resps = append(resps, r) })
		done <- err
	}()
	for {
		select {
		case err := <-done:
			for _, r := range resps {
				w.handle(r)
			}
			return err
		case <-w.box.wake:
			w.box.serveClaims()
		}
	}
}

// answer answers Sync requests.
func answer(syncs []chan error, err error) {
	for _, s := range syncs {
		s <- err
	}
}

// poll runs NOOP (and fetches new messages), settles the claims made
// before it and answers pending Syncs.
func (w *watch) poll(ctx context.Context) error {
	syncs := w.box.takeSyncs()
	w.asked = w.asked || len(syncs) > 0
	trip := w.box.startTrip()
	octx, cancel := w.opCtx(ctx)
	err := w.execServing(octx, "NOOP")
	cancel()
	if err == nil && w.needFetch {
		err = w.fetchNew(ctx)
	}
	if cerr := w.commit(); err == nil {
		err = cerr
	}
	if err == nil {
		err = w.box.resolveClaims(trip)
	}
	answer(syncs, err)
	return err
}

// wantsTrip reports whether a Sync or a held report waits for a round trip.
func (b *box) wantsTrip() bool { return b.needTrip || b.pendingSyncs() }

func (w *watch) pollLoop(ctx context.Context) error {
	t := time.NewTicker(w.box.hub.cfg.PollInterval)
	defer t.Stop()
	for {
		w.box.serveClaims()
		if w.box.wantsTrip() {
			if err := w.poll(ctx); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := w.poll(ctx); err != nil {
				return err
			}
		case <-w.box.wake:
		}
	}
}

// idleLoop keeps IDLE running, leaving it to fetch new messages, to answer
// Sync requests and to renew it. While nothing comes it parks (see waitParked):
// resumed, it goes on in the IDLE command it parked in.
func (w *watch) idleLoop(ctx context.Context, resumed bool) error {
	renewEvery := w.box.hub.cfg.IdleRenew
	for {
		var tag string
		var renewAt, acceptBy time.Time
		inIdle := false
		if resumed {
			tag, renewAt, inIdle = w.idleTag, w.renewAt, true
		} else {
			if err := w.linger(ctx); err != nil {
				return err
			}
			tag = w.conn.NextTag()
			wr := w.conn.Writer()
			wr.WriteString(tag + " IDLE\r\n")
			if err := wr.Flush(); err != nil {
				return err
			}
			sent := time.Now()
			renewAt = sent.Add(renewEvery)
			// Until the upstream accepts the IDLE ("+"), the read waits
			// for that, up to the command timeout, whatever renewAt
			// says: a deadline already past fails every read at once
			// without reading what has arrived (net.Conn), so a
			// continuation slower than IdleRenew (a loaded machine; a
			// short idle-renew) was never read and the loop spun on the
			// timeouts for as long as the mailbox was watched, starving
			// the process.
			acceptBy = sent.Add(w.box.hub.cfg.Timeout)
			w.box.setConn(w.conn)
		}
		for {
			park := true
			if resumed {
				// What ended the parked wait: input (now buffered), a
				// deadline (a request, a stop or the renewal: the
				// checks below see which), or the connection's end.
				resumed = false
				err := w.waitErr
				w.waitErr = nil
				// Neither input nor an error (a reader that returned
				// nothing): this round reads rather than parks, so
				// that such a reader cannot make the watcher spin.
				park = err != nil || w.conn.Reader().Buffered() > 0
				if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					return err
				}
				if err != nil && ctx.Err() != nil {
					return ctx.Err()
				}
			}
			// See box.sync: the deadline is set before pending requests
			// are checked, so a request cannot slip between the two.
			if inIdle {
				w.conn.SetReadDeadline(renewAt)
			} else {
				w.conn.SetReadDeadline(acceptBy)
			}
			w.box.serveClaims()
			leave := ctx.Err() != nil || w.needFetch || !time.Now().Before(renewAt) || (inIdle && w.box.wantsTrip())
			if leave && inIdle {
				break
			}
			if ctx.Err() != nil {
				// Stopped before the upstream accepted the IDLE: the
				// connection is dropped, not waited on (the wake of
				// serve's AfterFunc may have come before the deadline
				// just set).
				return ctx.Err()
			}
			// IDLE may last 25 minutes: wait without buffers, and
			// without this goroutine's stack (see waitParked).
			w.conn.Release()
			if inIdle && park && parkInIdle && w.conn.Reader().Buffered() == 0 {
				w.idleTag, w.renewAt, w.parked = tag, renewAt, true
				return errParked
			}
			line, lit, err := w.conn.Reader().ReadLine()
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if !inIdle && !time.Now().Before(acceptBy) {
						return fmt.Errorf("upstream did not accept IDLE within %v", w.box.hub.cfg.Timeout)
					}
					continue
				}
				return err
			}
			readAt := time.Now()
			r, err := w.readRest(line, lit)
			if err != nil {
				return err
			}
			switch r.Head.Tag {
			case "+":
				inIdle = true
			case "*":
				// Only untagged data starts the batch's clock: the
				// "+ idling" continuation is not a change.
				if w.firstRead.IsZero() {
					w.firstRead = readAt
				}
				if r.Head.Name == "BYE" {
					return fmt.Errorf("upstream said BYE: %s", r.Head.Text)
				}
				w.handle(r)
				if w.conn.Reader().Buffered() == 0 {
					if err := w.commit(); err != nil {
						return err
					}
				}
			case tag:
				return fmt.Errorf("upstream ended IDLE: %s %s", r.Head.Name, r.Head.Text)
			default:
				return fmt.Errorf("unexpected response tag %q", r.Head.Tag)
			}
		}
		if err := w.leaveIdle(ctx, tag); err != nil {
			return err
		}
	}
}

// DefaultSyncLinger is the default of Config.SyncLinger: how long a
// watcher whose sessions asked for a round trip stays out of IDLE,
// answering further requests with a plain NOOP, before it goes back into
// IDLE.
//
// Sessions ask for round trips after their own EXPUNGE, APPEND, COPY and
// MOVE, at SELECT and for STATUS RECENT; each costs the watcher DONE and
// NOOP, and then IDLE again, whose continuation it must wait for before
// it can leave IDLE for the next request. A busy mailbox (ten imaptest
// clients on one account: a request every few milliseconds) kept the
// watcher in that cycle most of the time, and requests and claims queued
// behind it (docs/benchmarks.md, per-command overhead). Lingering, the
// watcher answers each request with one NOOP, at once, and serves claims
// at once. What it costs: while it lingers, changes made by others reach
// it at the next request rather than by IDLE, so a push to an idling
// client can be up to this much later. 100 ms is far below Dovecot's own
// delay in reporting changes during IDLE (about half a second), and a
// mailbox whose sessions have gone quiet is back in IDLE after it.
const DefaultSyncLinger = 100 * time.Millisecond

// linger keeps the watcher out of IDLE while sessions ask for round trips
// (see DefaultSyncLinger): it answers each with a NOOP (poll) and serves
// claims, until Config.SyncLinger passes without a request; then it polls
// once more and returns.
func (w *watch) linger(ctx context.Context) error {
	d := w.box.hub.cfg.SyncLinger
	if !w.asked || d < 0 {
		w.asked = false
		return nil
	}
	w.asked = false
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		w.box.serveClaims()
		if w.box.wantsTrip() || w.needFetch {
			if err := w.poll(ctx); err != nil {
				return err
			}
			w.asked = false
			t.Reset(d)
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			// One more round trip before IDLE: a server need not
			// report in IDLE what changed before it began (go-imap's
			// in-memory server does not; Dovecot does), and while the
			// watcher lingered, others may have changed the mailbox.
			if err := w.poll(ctx); err != nil {
				return err
			}
			if !w.asked {
				return nil
			}
			w.asked = false // a request came meanwhile: linger on
			t.Reset(d)
		case <-w.box.wake:
		}
	}
}

// leaveIdle ends the IDLE command tag and does what made the watcher leave
// it. DONE goes out in one write with the commands that follow it (RFC
// 3501 lets a client send commands without waiting for the previous
// answers): NOOP for the waiting Sync requests, UID FETCH for new messages
// whose UIDs are unknown. The upstream answers them all in one round trip
// instead of one for DONE and one for each command. The answers arrive in
// order, IDLE's tagged OK first, and every untagged response among them
// goes through handle as it comes, so the sequence view stays right
// whatever the upstream reports in between.
func (w *watch) leaveIdle(ctx context.Context, tag string) error {
	w.box.setConn(nil)
	w.conn.SetReadDeadline(time.Time{})
	wr := w.conn.Writer()
	wr.WriteString("DONE\r\n")
	var syncs []chan error
	var tags []string
	var trip uint64
	if ctx.Err() == nil {
		if w.box.wantsTrip() {
			// Taken before the NOOP is sent: the NOOP's answers
			// include every change made before these requests
			// (and before the claims standing now).
			syncs = w.box.takeSyncs()
			w.asked = w.asked || len(syncs) > 0
			trip = w.box.startTrip()
			t := w.conn.NextTag()
			wr.WriteString(t + " NOOP\r\n")
			tags = append(tags, t)
		}
		if cmd := w.fetchNewCommand(); cmd != "" {
			t := w.conn.NextTag()
			wr.WriteString(t + " " + cmd + "\r\n")
			tags = append(tags, t)
		}
	}
	err := wr.Flush()
	if err == nil {
		// Waiting for these answers is the upstream's time, not the
		// proxy's: it is recorded apart (Subscription.LastChangeWait).
		sent := time.Now()
		octx, cancel := w.opCtx(ctx)
		err = w.readUntil(octx, tag)
		for _, t := range tags {
			if err == nil {
				err = w.readUntil(octx, t)
			}
		}
		cancel()
		w.batchWait += time.Since(sent)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err == nil && w.needFetch {
		// The NOOP (or the fetch itself) reported more new messages.
		err = w.fetchNew(ctx)
	}
	if err == nil {
		err = w.commit()
	}
	if err == nil && trip != 0 {
		err = w.box.resolveClaims(trip)
	}
	if err != nil {
		answer(syncs, err)
		return err
	}
	answer(syncs, nil)
	if w.box.wantsTrip() {
		// Requests that came while the answers were on their way, or
		// reports among them that a claim holds.
		return w.poll(ctx)
	}
	return nil
}

// readRest completes a response whose first line has been read.
func (w *watch) readRest(line []byte, lit *imapcodec.LiteralHeader) (*upstream.Response, error) {
	seg := imapcodec.Segment{Text: append([]byte(nil), line...), Literal: lit}
	if lit != nil {
		seg.Text = seg.Text[:lit.Start]
	}
	segs := []imapcodec.Segment{seg}
	r := w.conn.Reader()
	for lit != nil {
		if lit.Size > r.Limits().MaxInlineLiteral {
			return nil, fmt.Errorf("literal of %d bytes in an unsolicited response", lit.Size)
		}
		data, err := r.ReadLiteral()
		if err != nil {
			return nil, err
		}
		segs[len(segs)-1].Data = data
		var next []byte
		next, lit, err = r.ReadLine()
		if err != nil {
			return nil, err
		}
		s := imapcodec.Segment{Text: append([]byte(nil), next...), Literal: lit}
		if lit != nil {
			s.Text = s.Text[:lit.Start]
		}
		segs = append(segs, s)
	}
	h, err := imapcodec.ParseResponseHead(segs[0].Text)
	if err != nil {
		return nil, err
	}
	return &upstream.Response{Head: h, Segments: segs}, nil
}

// readUntil reads responses until the tagged one for tag.
func (w *watch) readUntil(ctx context.Context, tag string) error {
	defer w.conn.Watch(ctx)()
	for {
		r, err := w.conn.ReadResponse()
		if err != nil {
			return err
		}
		switch r.Head.Tag {
		case tag:
			if r.Head.Name != "OK" {
				return fmt.Errorf("upstream answered %s: %s", r.Head.Name, r.Head.Text)
			}
			return nil
		case "*":
			w.handle(r)
		}
	}
}

// parseFetch extracts the UID and FLAGS of a FETCH response. flags is nil
// when the response has no FLAGS item; ok is false when it has no UID.
func parseFetch(r *upstream.Response) (uid uint32, flags []string, ok bool) {
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	// Skip "* n FETCH ".
	for i := 0; i < 3; i++ {
		if _, err := p.Atom(); err != nil {
			return 0, nil, false
		}
		if err := p.SP(); err != nil {
			return 0, nil, false
		}
	}
	v, err := p.Value()
	if err != nil {
		return 0, nil, false
	}
	items, isList := v.(imapcodec.List)
	if !isList {
		return 0, nil, false
	}
	for i := 0; i+1 < len(items); i += 2 {
		name, _ := items[i].(imapcodec.Atom)
		switch strings.ToUpper(string(name)) {
		case "UID":
			if a, isAtom := items[i+1].(imapcodec.Atom); isAtom {
				if n, err := strconv.ParseUint(string(a), 10, 32); err == nil {
					uid, ok = uint32(n), true
				}
			}
		case "FLAGS":
			if l, isList := items[i+1].(imapcodec.List); isList {
				flags = make([]string, 0, len(l))
				for _, f := range l {
					if a, isAtom := f.(imapcodec.Atom); isAtom {
						flags = append(flags, string(a))
					}
				}
			}
		}
	}
	return uid, flags, ok
}
