package accountwatch

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/upstream"
)

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
			w.runGuarded()
		}()
	}
	s := &Sub{w: w, fn: fn, opts: opts}
	if isNew := w.boxes0 == nil; !isNew {
		// A running watcher's last poll may be older than this
		// subscriber: events from comparing it with the next poll could
		// report changes made before the subscriber came. It joins after
		// a poll that starts now, which is its baseline. Until then it
		// counts as a subscriber for the grace period: a watcher left
		// without subscribers must not stop under it, failing the poll
		// it waits for.
		w.joining++
		if w.graceTimer != nil {
			w.graceTimer.Stop()
			w.graceTimer = nil
		}
		m.mu.Unlock()
		err := w.awaitPoll(ctx)
		m.mu.Lock()
		w.joining--
		if err != nil {
			w.graceIfUnused()
			m.mu.Unlock()
			return nil, err
		}
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

// ErrSubClosed is SetOptions' error for a subscription already closed.
var ErrSubClosed = errors.New("accountwatch: subscription closed")

// SetOptions replaces what the subscriber needs, keeping its place: a
// NOTIFY SET that replaces another keeps its subscription, so that the
// changes the next poll finds are told to it (a new subscription would
// take that poll for its baseline). Where the subscriber now needs
// ModSeqs it did not, SetOptions returns after a poll that starts now, as
// Watch does.
func (s *Sub) SetOptions(ctx context.Context, opts WatchOptions) error {
	w := s.w
	m := w.m
	m.mu.Lock()
	if _, ok := w.subs[s]; !ok {
		m.mu.Unlock()
		return ErrSubClosed
	}
	had := s.opts.ModSeqs
	s.opts = opts
	m.mu.Unlock()
	if opts.ModSeqs && !had && opts.Refresh != nil {
		return w.awaitPoll(ctx)
	}
	return nil
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
	w.graceIfUnused()
}

// graceIfUnused starts the grace period at whose end the watcher stops,
// if nobody watches the account or waits to join (see Watch). m.mu is
// held.
func (w *watcher) graceIfUnused() {
	m := w.m
	if len(w.subs) > 0 || w.joining > 0 || w.graceTimer != nil {
		return
	}
	w.graceTimer = time.AfterFunc(m.cfg.Grace, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if len(w.subs) > 0 || w.joining > 0 || m.accts[w.account] != w {
			return
		}
		delete(m.accts, w.account)
		w.cancel()
	})
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
