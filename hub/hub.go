// Package hub watches mailboxes on the upstream server on behalf of every
// client session that has them selected: one watcher, and one upstream
// connection, per (account, mailbox), however many sessions watch it.
//
// A watcher keeps its mailbox EXAMINEd on a connection of its own, with IDLE
// running where the upstream offers it (renewed before the 29-minute limit)
// and NOOP polling where it does not. It turns what the upstream reports
// (EXISTS, EXPUNGE, FETCH FLAGS) into changes keyed by UID in the mailbox's
// syncstate.Mailbox, and tells each watching session that there is news by
// calling its notify function. Sessions then pull the changes since the
// mod-sequence they last saw, when the protocol lets them tell their client:
// nothing is queued per session, so a slow client cannot hold up the hub or
// make it drop anything.
//
// # One writer per mailbox
//
// A mailbox's state has one writer: the mailbox's own goroutine (the
// watcher). What the watcher reads from the upstream, what sessions learn
// first-hand from the answers to their own STORE commands, and full resyncs
// all become changes there, one after the other. A session hands its STORE
// answer to the watcher as a claim (Subscription.Own) and waits for the
// mod-sequence the watcher gave it. This matters because the watcher's
// connection reports the session's change again later, and may report the
// message's older flags first (Dovecot delays IDLE notifications): were the
// session to write the state itself, that stale report would undo its
// change and the next report redo it, and every session would hear of two
// changes that were not. The watcher instead holds reports that contradict
// a standing claim until a round trip to the upstream (NOOP) that started
// after the claim has completed; the connection's latest report is then
// the truth, whether the contradiction was stale or a later change by
// someone else (see claim). Hub.Refresh writes the state of a mailbox that
// has no watcher, and is its only writer meanwhile.
//
// When the connection drops, the watcher reconnects with exponential backoff
// and jitter and reconciles the whole mailbox (UID FETCH 1:* (FLAGS)) with
// the state, so every change made meanwhile is reported. A watcher stops a
// grace period after its last session left.
//
// Everything is keyed by the authenticated upstream identity: a watcher of
// one account never feeds another account's sessions.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Config tunes the hub. Zero values select the defaults.
type Config struct {
	// PollInterval is how often a watcher polls with NOOP when the upstream
	// has no IDLE. Default 30 s.
	PollInterval time.Duration
	// IdleRenew is how long an upstream IDLE runs before it is renewed.
	// Default 25 minutes (RFC 2177 allows servers to drop at 30).
	IdleRenew time.Duration
	// Grace is how long a watcher lives on after its last session left, so
	// a client that re-selects at once finds it warm. Default 10 s.
	Grace time.Duration
	// SyncLinger is how long a watcher whose sessions asked for a round
	// trip (Sync) stays out of IDLE, answering further requests with a
	// plain NOOP, before it goes back into IDLE (see
	// DefaultSyncLinger). Negative: back into IDLE at once.
	SyncLinger time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay. Defaults 200 ms
	// and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds each of the watcher's own commands. Default 30 s.
	Timeout time.Duration
	// Store, if set, persists every mailbox's state (mod-sequences survive
	// a restart); a watcher starts from the saved state and reconciles it
	// with the upstream.
	Store statestore.Store
	// ModSeqBase gives the mod-sequence a new mailbox state starts from.
	// The default, the clock in microseconds, puts a state made anew (the
	// saved one was lost, or the mailbox was never seen) above every
	// mod-sequence an older state of the mailbox handed out, so that
	// clients holding one get a full resync rather than an incomplete one
	// (see syncstate.Mailbox.Base). Tests set it to return 1 for readable
	// numbers.
	ModSeqBase func() uint64
	// StateCache is how many states of mailboxes nobody watches any more
	// stay in memory (least recently used first out), so that a mailbox
	// selected again soon starts from memory instead of the Store; it is
	// still reconciled with the upstream. States of mailboxes beyond it
	// cost disk only. Default 256; negative keeps none.
	StateCache int
	// ExpungeLog bounds every state's expunge log (see
	// syncstate.LogLimits); zero values keep everything.
	ExpungeLog syncstate.LogLimits
	// Pool, if set, is the upstream pool whose Budget bounds each
	// account's connections: watchers dial through it (upstream.Optional:
	// a watcher is what the hub gives up first), the hub's least recently
	// used watchers are reclaimed for other connections of the account,
	// and a mailbox left without a watcher is kept up to date on
	// connections lent from the pool (see box.passiveLoop).
	Pool   *upstream.Pool
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 30 * time.Second
	}
	if c.StateCache == 0 {
		c.StateCache = 256
	}
	if c.ModSeqBase == nil {
		c.ModSeqBase = func() uint64 { return uint64(time.Now().UnixMicro()) }
	}
	if c.IdleRenew <= 0 {
		c.IdleRenew = 25 * time.Minute
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	if c.SyncLinger == 0 {
		c.SyncLinger = DefaultSyncLinger
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 200 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Key identifies a watched mailbox: the authenticated upstream identity
// and the mailbox name.
type Key struct {
	Account string
	Mailbox string
}

// DialFunc opens an authenticated upstream connection for a watcher.
type DialFunc func(ctx context.Context) (*upstream.Conn, error)

// Hub owns all watchers.
type Hub struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	boxes  map[Key]*box
	// stopping holds the boxes taken out of boxes (their grace over, or
	// their connection reclaimed) whose goroutine has not ended yet, so
	// that ForgetAccount finds them too: one ending after it would put
	// its state back among the cold ones.
	stopping map[*box]struct{}
	wg       sync.WaitGroup
	// cold holds the states of recently unwatched mailboxes (nil when
	// Config.StateCache is negative).
	cold *lru.Cache[Key, *syncstate.Mailbox]
	// appended remembers messages appended through the proxy to
	// mailboxes it has no recency for (see NoteAppended).
	appended *lru.Cache[Key, appendedUIDs]
	// changes counts batches of changes fanned out, notified the
	// subscriptions told of them (for metrics).
	changes, notified atomic.Int64
}

// Counts returns how many batches of changes the watchers fanned out, and
// to how many subscriptions in all, since the hub started.
func (h *Hub) Counts() (changes, notified int64) { return h.changes.Load(), h.notified.Load() }

// New returns a hub. Close stops its watchers.
func New(cfg Config) *Hub {
	h := &Hub{cfg: cfg.withDefaults(), boxes: map[Key]*box{}, stopping: map[*box]struct{}{}}
	if h.cfg.StateCache > 0 {
		h.cold, _ = lru.New[Key, *syncstate.Mailbox](h.cfg.StateCache)
	}
	h.appended, _ = lru.New[Key, appendedUIDs](maxAppended)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if h.cfg.Pool != nil {
		h.cfg.Pool.Budget().AddReclaimer(h.reclaim)
	}
	return h
}

// keepCold remembers the state of a watcher that stopped because nobody
// watches its mailbox any more.
// A newer watcher of the same mailbox may already run (it started from the
// Store, and its state is ahead of this one): then this one is dropped.
func (h *Hub) keepCold(b *box) {
	st := b.state()
	if st == nil || h.cold == nil || h.ctx.Err() != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// Under h.mu, which ForgetAccount marks the boxes under before it
	// drops the cold states: marked first, this one stays out; added
	// first, it is dropped with the others.
	if b.forgotten.Load() || b.gone.Load() {
		return
	}
	if _, live := h.boxes[b.key]; !live {
		h.cold.Add(b.key, st)
	}
}

// takeCold returns and forgets a remembered state, or nil.
func (h *Hub) takeCold(k Key) *syncstate.Mailbox {
	if h.cold == nil {
		return nil
	}
	st, ok := h.cold.Peek(k)
	if ok {
		h.cold.Remove(k)
	}
	return st
}

// ColdStates returns how many unwatched mailbox states are held in memory.
func (h *Hub) ColdStates() int {
	if h.cold == nil {
		return 0
	}
	return h.cold.Len()
}

// ForgetAccount stops every watcher of account ("" for every account) at once, whoever still
// subscribes (their Subscription.Err then reports ErrWatcherFailed), and
// drops the account's mailbox states from memory, so that the next Watch
// or Refresh starts from the Store. With a shared Store (cluster mode)
// another node may change the account's states once this node gave the
// account up: a state kept in memory here would be stale. It returns when
// the watchers have stopped, or with ctx's error.
func (h *Hub) ForgetAccount(ctx context.Context, account string) error {
	h.mu.Lock()
	var boxes []*box
	for k, b := range h.boxes {
		if account != "" && k.Account != account {
			continue
		}
		boxes = append(boxes, b)
		delete(h.boxes, k)
		if b.graceTimer != nil {
			b.graceTimer.Stop()
			b.graceTimer = nil
		}
		b.forgotten.Store(true)
	}
	for b := range h.stopping {
		if account == "" || b.key.Account == account {
			b.forgotten.Store(true)
		}
	}
	h.mu.Unlock()
	// The states in memory go first, whatever the wait below: one kept
	// past a failed eviction would be taken, without a look at the Store,
	// when the account came back, behind the mod-sequences another node
	// handed out meanwhile (a second reviewer's reading). The boxes are
	// marked forgotten: none puts its state back on its way out.
	if h.cold != nil {
		for _, k := range h.cold.Keys() {
			if account == "" || k.Account == account {
				h.cold.Remove(k)
			}
		}
	}
	for _, b := range boxes {
		b.failed.Store(true)
		b.cancel()
	}
	for _, b := range boxes {
		select {
		case <-b.stopped:
		case <-ctx.Done():
			return fmt.Errorf("hub: forgetting account: %w", ctx.Err())
		}
	}
	return nil
}

// ForgetMailboxes drops the saved states of account's mailbox name, and,
// when below is not "", of every mailbox whose name begins with it (name
// and its hierarchy delimiter: those a RENAME moves with it): the proxy
// calls it once the upstream deleted or renamed them. A state saved under
// a name nobody selects again would otherwise stay in the Store for
// good, and a client renaming a large mailbox again and again (selecting
// it under each name) would fill the Store with copies of it. A mailbox
// being watched keeps its state until its watcher stops (it notices the
// mailbox gone, or nobody watches it), and then drops it; one selected
// later under the same name starts a new state above every mod-sequence
// the old one gave (Config.ModSeqBase, or the Store's mark). Errors are
// logged: a state left behind costs disk, nothing else.
func (h *Hub) ForgetMailboxes(account, name, below string) {
	match := func(m string) bool { return m == name || below != "" && strings.HasPrefix(m, below) }
	h.mu.Lock()
	live := map[string]bool{}
	for k, b := range h.boxes {
		if k.Account == account && match(k.Mailbox) {
			b.gone.Store(true)
			live[k.Mailbox] = true
		}
	}
	if h.cold != nil {
		for _, k := range h.cold.Keys() {
			if k.Account == account && match(k.Mailbox) {
				h.cold.Remove(k)
			}
		}
	}
	h.mu.Unlock()
	store := h.cfg.Store
	if store == nil {
		return
	}
	keys := []string{Key{account, name}.storeKey()}
	if below != "" {
		more, err := store.Keys(Key{account, below}.storeKey())
		if err != nil {
			h.cfg.Logger.Warn("listing the saved states of a renamed mailbox's children; they stay", "mailbox", name, "err", err)
		}
		keys = append(keys, more...)
	}
	for _, k := range keys {
		if live[k[len(account)+1:]] {
			continue // dropped when its watcher stops
		}
		if err := store.Drop(k); err != nil {
			h.cfg.Logger.Warn("dropping the saved state of a deleted or renamed mailbox", "mailbox", k[len(account)+1:], "err", err)
		}
	}
}

// Saved reports whether the Store holds a state saved under account's
// mailbox name: the proxy asks before it looks into whether a mailbox
// whose SELECT failed is gone (ForgetMailboxes), so that a client
// selecting names that never existed costs the Store a read and the
// upstream nothing.
func (h *Hub) Saved(account, name string) bool {
	if h.cfg.Store == nil {
		return false
	}
	key := Key{account, name}.storeKey()
	keys, err := h.cfg.Store.Keys(key)
	return err == nil && slices.Contains(keys, key)
}

// retireLocked takes b out of the watched boxes while its goroutine ends
// (see stopping); h.mu is held.
func (h *Hub) retireLocked(b *box) {
	delete(h.boxes, b.key)
	h.stopping[b] = struct{}{}
}

// Persistent reports whether the hub saves states (Config.Store).
func (h *Hub) Persistent() bool { return h.cfg.Store != nil }

// dropGone drops the saved state of a box whose mailbox was deleted or
// renamed (ForgetMailboxes) once the box stops, unless a newer box of the
// same name runs (the name was used again): its saves are the state now.
func (b *box) dropGone() {
	h := b.hub
	if !b.gone.Load() || h.cfg.Store == nil || h.ctx.Err() != nil {
		return
	}
	h.mu.Lock()
	_, live := h.boxes[b.key]
	h.mu.Unlock()
	if live {
		return
	}
	if err := h.cfg.Store.Drop(b.storeKey()); err != nil {
		h.cfg.Logger.Warn("dropping the saved state of a deleted or renamed mailbox", "mailbox", b.key.Mailbox, "err", err)
	}
}

// Close stops every watcher and waits for them.
func (h *Hub) Close() {
	h.cancel()
	h.wg.Wait()
}

// Watchers returns the number of running watchers.
func (h *Hub) Watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.boxes)
}

// ErrUIDValidity is reported by Subscription.Err when the mailbox's
// UIDVALIDITY changed under the session: its UIDs mean nothing any more.
var ErrUIDValidity = errors.New("the mailbox's UIDVALIDITY changed")

// Subscription is one session's interest in a mailbox.
type Subscription struct {
	box    *box
	notify func()
	state  *syncstate.Mailbox // the state the session started with
	idle   bool               // guarded by hub.mu; see SetIdle
	joined bool               // see Joined
}

// Watch subscribes to a mailbox, starting its watcher if needed, and waits
// until the watcher has the mailbox's complete state. notify is called
// (from the watcher's goroutine; it must not block) whenever the state
// changed.
func (h *Hub) Watch(ctx context.Context, key Key, dial DialFunc, notify func()) (*Subscription, error) {
	h.mu.Lock()
	b, ok := h.boxes[key]
	if !ok {
		b = newBox(h, key, dial)
		h.boxes[key] = b
		h.wg.Add(1)
		go b.goroutine(nil)
	}
	// The watcher (re)connects with the credentials of the latest
	// session to subscribe (a box of Refresh has none until then): if
	// the account's password changes, sessions that logged in with the
	// new one keep the watcher going once the old one stops working.
	// Every subscriber is of the same upstream account (the key).
	b.dial = dial
	sub := &Subscription{box: b, notify: notify, joined: ok}
	b.subs[sub] = struct{}{}
	b.touch()
	if b.graceTimer != nil {
		b.graceTimer.Stop()
		b.graceTimer = nil
	}
	h.mu.Unlock()

	select {
	case <-b.ready:
	case <-ctx.Done():
		sub.Close()
		return nil, ctx.Err()
	case <-b.stopped:
		sub.Close()
		return nil, fmt.Errorf("hub: watcher for %q stopped", key.Mailbox)
	}
	if err := b.readyErr; err != nil {
		sub.Close()
		return nil, err
	}
	sub.state = b.state()
	if sub.state == nil {
		// The box stopped before its first sync (the hub is closing, or
		// the account was forgotten): ready is closed on the way out
		// without a state.
		sub.Close()
		return nil, fmt.Errorf("hub: watcher for %q stopped", key.Mailbox)
	}
	return sub, nil
}

// State returns the mailbox state the subscription follows.
func (s *Subscription) State() *syncstate.Mailbox { return s.state }

// Joined reports whether Watch found the mailbox's watcher running (in
// its grace period, or with other subscribers) rather than starting it.
// Such a state is only as fresh as the watcher's connection: Dovecot does
// not tell a connection that has the mailbox selected that another one
// deleted it and created it again, so the state may be of the old
// mailbox, as of its UIDVALIDITY, until something makes the watcher start
// over (Resync). A session learns the UIDVALIDITY from its own SELECT; a
// subscriber without one that must not follow the old mailbox (push)
// asks the upstream on another connection when it joined.
func (s *Subscription) Joined() bool { return s.joined }

// ErrWatcherFailed is reported by Subscription.Err when the mailbox's
// watcher ended on a panic: the session cannot hear of changes any more.
var ErrWatcherFailed = errors.New("hub: the mailbox's watcher failed")

// ErrMailboxGone is reported by Subscription.Err once the watcher found
// that the upstream has no such mailbox to select any more: it was deleted
// or renamed (outside the proxy, or by another session). The session can
// do nothing more in it; Dovecot ends a session whose selected mailbox was
// deleted with a BYE, and so does the proxy.
var ErrMailboxGone = errors.New("hub: the mailbox was deleted")

// Err returns ErrUIDValidity once the mailbox's UIDVALIDITY changed,
// ErrMailboxGone once it was found gone, and ErrWatcherFailed once its
// watcher failed.
func (s *Subscription) Err() error {
	if s.box.failed.Load() {
		return ErrWatcherFailed
	}
	if s.box.missing.Load() {
		return ErrMailboxGone
	}
	if s.box.state() != s.state {
		return ErrUIDValidity
	}
	return nil
}

// Sync makes the watcher ask the upstream for news now (ending IDLE or
// polling early) and returns once every change the upstream reported in
// answer is in the state. A session calls it after changing the mailbox
// through its own connection (EXPUNGE, MOVE, APPEND), so its client hears
// of the change before the command's tagged OK, as with a direct connection.
func (s *Subscription) Sync(ctx context.Context) error {
	return s.box.sync(ctx)
}

// A PendingSync is a round trip asked of a mailbox's watcher ahead of
// time (Hub.SyncSoon).
type PendingSync struct {
	box  *box
	done chan error
}

// State returns the mailbox's state as its watcher has it at the moment
// (nil before the watcher's first sync).
func (p *PendingSync) State() *syncstate.Mailbox { return p.box.state() }

// SyncSoon asks the watcher of key for a round trip now, if the mailbox is
// watched and its watcher ready, without waiting for it; nil otherwise.
// A session about to SELECT the mailbox asks before it sends its SELECT
// upstream, and waits for the answer (Subscription.Await) once it has
// subscribed: the round trip, which must start after the command arrived
// (see Subscription.Sync), then overlaps the SELECT instead of following
// it.
func (h *Hub) SyncSoon(key Key) *PendingSync {
	h.mu.Lock()
	b := h.boxes[key]
	watched := b != nil && b.dial != nil // not a Refresh's box
	h.mu.Unlock()
	if !watched || !isReady(b.ready) || b.readyErr != nil {
		return nil
	}
	return &PendingSync{box: b, done: b.requestSync()}
}

// Await waits for p, a round trip asked by SyncSoon, as Sync waits for
// its own. If p is nil or was asked of another watcher than the
// subscription's (the mailbox's watcher started over in between), it
// does a Sync instead.
func (s *Subscription) Await(ctx context.Context, p *PendingSync) error {
	if p == nil || p.box != s.box {
		return s.box.sync(ctx)
	}
	return s.box.await(ctx, p.done)
}

// Resync makes the watcher of key start over, on a new connection with a
// full sync, because a session was told a UIDVALIDITY by the upstream that
// the state does not have: the mailbox was deleted and re-created under
// the watcher, whose connection may still show the old one (Dovecot keeps
// it selected until the connection syncs, and may then only say BYE). It
// returns once the box's state has uidValidity, or with an error when ctx
// ends first. Sessions that have the old state find out from
// Subscription.Err (ErrUIDValidity) at their next delivery.
func (h *Hub) Resync(ctx context.Context, key Key, uidValidity uint32) error {
	h.mu.Lock()
	b := h.boxes[key]
	h.mu.Unlock()
	if b == nil {
		return nil // nobody watches: the next Watch starts afresh
	}
	if st := b.state(); st != nil && st.UIDValidity() == uidValidity {
		return nil
	}
	if c := b.live.Load(); c != nil {
		c.Abort() // the watcher's read or command fails: it reconnects
	}
	select {
	case b.wake <- struct{}{}: // a polling watcher, not reading
	default:
	}
	for {
		if st := b.state(); st != nil && st.UIDValidity() == uidValidity {
			return nil
		}
		// A round trip of the box: a watcher answers once it has
		// reconnected and synced in full; a box without a watcher (see
		// passiveLoop) refreshes on a lent connection.
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		err := b.sync(sctx)
		cancel()
		if st := b.state(); st != nil && st.UIDValidity() == uidValidity {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hub: %q did not resync to UIDVALIDITY %d: %w", key.Mailbox, uidValidity, errors.Join(ctx.Err(), err))
		case <-b.stopped:
			return errors.New("hub: watcher stopped")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// LastChangeRead returns when the watcher read the upstream line that led to
// the latest change, for measuring the proxy's own push latency.
func (s *Subscription) LastChangeRead() time.Time {
	return time.Unix(0, s.box.lastRead.Load())
}

// LastChangeWait returns how much of the time since LastChangeRead the
// watcher spent waiting for the upstream's answers (leaving IDLE, fetching
// the UIDs of new messages): the upstream's share of the push latency.
func (s *Subscription) LastChangeWait() time.Duration {
	return time.Duration(s.box.lastWait.Load())
}

// SetIdle says whether the subscriber waits for pushes (its client idles:
// IDLE, NOTIFY) rather than hearing of changes at its commands. Watchers
// of mailboxes with idling subscribers are the last the budget reclaims,
// and a mailbox left without a watcher gets one back as soon as the
// budget allows once a subscriber idles.
func (s *Subscription) SetIdle(idle bool) {
	b := s.box
	h := b.hub
	h.mu.Lock()
	if _, ok := b.subs[s]; !ok || s.idle == idle {
		h.mu.Unlock()
		return
	}
	s.idle = idle
	if idle {
		b.idleSubs++
	} else {
		b.idleSubs--
	}
	h.mu.Unlock()
	if idle && b.passive.Load() {
		b.wantWatcher.Store(true)
		b.signal()
	}
}

// Passive reports whether the mailbox has no watcher connection now (the
// account's budget is used up): its state is then brought up to date only
// when someone asks (Sync), so a session catches up before each command.
func (s *Subscription) Passive() bool { return s.box.passive.Load() }

// Close ends the subscription; the watcher stops after the grace period if
// nobody else watches.
func (s *Subscription) Close() {
	b := s.box
	h := b.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := b.subs[s]; !ok {
		return
	}
	delete(b.subs, s)
	if s.idle {
		b.idleSubs--
	}
	if len(b.subs) == 0 && b.graceTimer == nil {
		b.graceTimer = time.AfterFunc(h.cfg.Grace, func() {
			h.mu.Lock()
			if len(b.subs) > 0 || h.boxes[b.key] != b {
				h.mu.Unlock()
				return
			}
			h.retireLocked(b)
			h.mu.Unlock()
			b.cancel()
		})
	}
}

// notifyAll tells every subscriber that the state changed.
func (b *box) notifyAll() {
	b.hub.mu.Lock()
	subs := make([]*Subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.hub.mu.Unlock()
	b.hub.changes.Add(1)
	b.hub.notified.Add(int64(len(subs)))
	for _, s := range subs {
		s.notify()
	}
}

// backoff returns the delay before reconnect attempt n (0-based): doubling
// from MinBackoff up to MaxBackoff, with full jitter in its upper half so
// that many watchers cut off together do not reconnect in lockstep.
func (h *Hub) backoff(n int) time.Duration {
	d := h.cfg.MinBackoff << min(n, 20)
	if d <= 0 || d > h.cfg.MaxBackoff {
		d = h.cfg.MaxBackoff
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Unclaimed returns how many messages of a watched mailbox are recent and
// unclaimed (syncstate.Recency), after a round trip of its watcher so that
// messages the upstream has just been given count; ok is false when no
// watcher has the mailbox's state (nobody selected it lately), and the
// caller must take the upstream's word. It answers STATUS RECENT. early,
// if not nil, is a round trip asked for when the STATUS command arrived
// (SyncSoon), which does as well: it waits for that one instead.
// uidValidity, if not 0, is the mailbox's UIDVALIDITY as the upstream has
// just told it: a state of another UIDVALIDITY is of a mailbox deleted and
// created again under the name (outside the proxy, and unseen by the
// watcher's round trip), and ok is false.
func (h *Hub) Unclaimed(ctx context.Context, key Key, early *PendingSync, uidValidity uint32) (n int, ok bool) {
	h.mu.Lock()
	b := h.boxes[key]
	watched := b != nil && b.dial != nil // not a Refresh's box
	h.mu.Unlock()
	if !watched || !isReady(b.ready) || b.readyErr != nil {
		return 0, false
	}
	st := b.state()
	if st == nil || !st.Recency().Known() || uidValidity != 0 && st.UIDValidity() != uidValidity {
		return 0, false
	}
	// On failure the state is as the watcher last saw it.
	if early != nil && early.box == b {
		_ = b.await(ctx, early.done)
	} else {
		_ = b.sync(ctx)
	}
	if b.state() != st {
		return 0, false // the mailbox was re-created meanwhile
	}
	return st.Recency().Unclaimed(st.Snapshot().UIDs), true
}

// maxAppended bounds how many mailboxes' appended messages the hub
// remembers (NoteAppended); the least recently noted go first.
const maxAppended = 4096

// appendedUIDs is the first UID appended through the proxy to a mailbox
// at one UIDVALIDITY.
type appendedUIDs struct{ uidValidity, first uint32 }

// NoteAppended records that the messages from UID first on were appended
// through the proxy to a mailbox (the APPEND's APPENDUID said so): they
// are new, whatever the upstream says of its \Recent when the mailbox's
// watcher first looks (a pooled connection may have selected the mailbox
// and taken it, and a server without \Recent never reports any). Where
// the hub already has the mailbox's recency in memory, the watcher sees
// the messages arrive above its floor anyway, and nothing is recorded.
func (h *Hub) NoteAppended(key Key, uidValidity, first uint32) {
	if first == 0 {
		return
	}
	h.mu.Lock()
	b := h.boxes[key]
	h.mu.Unlock()
	if b != nil {
		if st := b.state(); st != nil && st.UIDValidity() == uidValidity && st.Recency().Known() {
			return
		}
	}
	if h.cold != nil {
		if st, ok := h.cold.Peek(key); ok && st.UIDValidity() == uidValidity && st.Recency().Known() {
			return
		}
	}
	if prev, ok := h.appended.Peek(key); ok && prev.uidValidity == uidValidity {
		first = min(first, prev.first)
	}
	h.appended.Add(key, appendedUIDs{uidValidity, first})
}

// takeAppended returns and forgets the first UID appended through the
// proxy to key at uidValidity, or 0.
func (h *Hub) takeAppended(key Key, uidValidity uint32) uint32 {
	a, ok := h.appended.Peek(key)
	if !ok {
		return 0
	}
	h.appended.Remove(key)
	if a.uidValidity != uidValidity {
		return 0
	}
	return a.first
}
