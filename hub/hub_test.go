package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// Watch returns only once the watcher has the mailbox's complete state.
func TestWatchWaitsForInitialSync(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	e.appendMsg("alice", "INBOX", "two", imap.FlagSeen)
	e.appendMsg("alice", "INBOX", "three", imap.FlagFlagged, "$Label1") // go-imap stores keywords lower-cased
	h := testHub(t, Config{})

	gate := make(chan struct{})
	dial := e.dial("alice", false)
	gated := func(ctx context.Context) (*upstream.Conn, error) {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return dial(ctx)
	}
	type result struct {
		sub *Subscription
		err error
	}
	done := make(chan result, 1)
	go func() {
		sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, gated, func() {})
		done <- result{sub, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Watch returned before the watcher could connect: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	// A second session of the same mailbox waits too, and gives up with
	// its context.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if _, err := h.Watch(ctx, Key{"alice", "INBOX"}, gated, func() {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Watch with an expired context: %v", err)
	}
	cancel()
	close(gate)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.sub.Close()
	st := r.sub.State()
	if got := st.Snapshot().UIDs; !reflect.DeepEqual(got, []uint32{1, 2, 3}) {
		t.Fatalf("UIDs at Watch's return: %v", got)
	}
	if got := since(st, 0); !reflect.DeepEqual(got, []string{"1:", `2:\Seen`, `3:$label1 \Flagged`}) {
		t.Fatalf("state at Watch's return: %q", got)
	}
	if st.HighestModSeq() < 4 {
		t.Fatalf("HIGHESTMODSEQ %d after 3 messages", st.HighestModSeq())
	}
	if n := h.Watchers(); n != 1 {
		t.Fatalf("Watchers() = %d, want 1", n)
	}
}

// The watcher reports changes made by another connection: new messages,
// flag changes and expunges, keyed by UID, with upstream IDLE and with
// polling.
func TestWatchNotifiesOutsideChanges(t *testing.T) {
	for _, mode := range []string{"idle", "poll"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, "alice")
			e.appendMsg("alice", "INBOX", "one")
			e.appendMsg("alice", "INBOX", "two")
			h := testHub(t, Config{PollInterval: 50 * time.Millisecond})
			n := newNotifier()
			sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", mode == "poll"), n.notify)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			st := sub.State()
			h0 := st.HighestModSeq()
			c := e.client("alice", "INBOX")
			if mode == "idle" {
				e.relay.waitIdle(t)
			}

			e.appendMsg("alice", "INBOX", "three", imap.FlagSeen)
			waitFor(t, n, "the new message", func() bool { return len(st.Snapshot().UIDs) == 3 })
			if got := since(st, h0); !reflect.DeepEqual(got, []string{`3:\Seen`}) {
				t.Fatalf("after APPEND: %q", got)
			}
			h1 := st.HighestModSeq()
			if mode == "idle" {
				e.relay.waitIdle(t)
			}

			store(t, c, 1, imap.StoreFlagsAdd, imap.FlagFlagged)
			waitFor(t, n, "the flag change", func() bool { return st.HighestModSeq() > h1 })
			if got := since(st, h1); !reflect.DeepEqual(got, []string{`1:\Flagged`}) {
				t.Fatalf("after STORE: %q", got)
			}
			h2 := st.HighestModSeq()

			expunge(t, c, 2)
			waitFor(t, n, "the expunge", func() bool { return len(st.Snapshot().UIDs) == 2 })
			// Whether or not \Deleted was seen first, the message's
			// latest state is its expunge.
			if got := since(st, h2); !reflect.DeepEqual(got, []string{"2:expunged"}) {
				t.Fatalf("after EXPUNGE: %q", got)
			}
			if got := st.Snapshot().UIDs; !reflect.DeepEqual(got, []uint32{1, 3}) {
				t.Fatalf("UIDs: %v", got)
			}
			if n.n.Load() < 3 {
				t.Fatalf("%d notifications for 3 changes", n.n.Load())
			}
			if sub.Err() != nil {
				t.Fatal(sub.Err())
			}
		})
	}
}

// Sync is a barrier: when it returns, the state holds what the upstream
// reported in answer. The watcher polls once an hour here, so without the
// barrier the state would not change at all.
func TestSyncBarrier(t *testing.T) {
	for _, mode := range []string{"idle", "poll"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, "alice")
			e.appendMsg("alice", "INBOX", "one")
			h := testHub(t, Config{PollInterval: time.Hour})
			sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", mode == "poll"), func() {})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			st := sub.State()
			c := e.client("alice", "INBOX")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for round := 1; round <= 3; round++ {
				e.appendMsg("alice", "INBOX", fmt.Sprint("new ", round))
				store(t, c, 1, imap.StoreFlagsSet, imap.Flag(fmt.Sprint("$round", round)))
				if mode == "poll" {
					time.Sleep(100 * time.Millisecond)
					if n := len(st.Snapshot().UIDs); n != round {
						t.Fatalf("round %d: the state changed (%d messages) without a poll or Sync", round, n)
					}
				}
				start := time.Now()
				if err := sub.Sync(ctx); err != nil {
					t.Fatalf("round %d: Sync: %v", round, err)
				}
				t.Logf("round %d: Sync took %v", round, time.Since(start))
				if n := len(st.Snapshot().UIDs); n != round+1 {
					t.Fatalf("round %d: %d messages after Sync, want %d", round, n, round+1)
				}
				if f, _, _ := st.Flags(1); !reflect.DeepEqual(f, []string{fmt.Sprint("$round", round)}) {
					t.Fatalf("round %d: flags of message 1 after Sync: %q", round, f)
				}
			}
			// Concurrent Syncs all return.
			var wg sync.WaitGroup
			errs := make(chan error, 20)
			for i := 0; i < 20; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- sub.Sync(ctx)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// A watcher stops a grace period after its last session left, and closes
// its upstream connection; a session that comes back within the grace
// period finds it running (no new connection).
func TestWatchGracePeriod(t *testing.T) {
	e := newEnv(t, "alice")
	const grace = 300 * time.Millisecond
	h := testHub(t, Config{Grace: grace})
	key := Key{"alice", "INBOX"}
	dial := e.dial("alice", false)
	a, err := h.Watch(context.Background(), key, dial, func() {})
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.Watch(context.Background(), key, dial, func() {})
	if err != nil {
		t.Fatal(err)
	}
	if h.Watchers() != 1 || e.relay.dials.Load() != 1 {
		t.Fatalf("two sessions: %d watchers, %d upstream connections; want 1, 1", h.Watchers(), e.relay.dials.Load())
	}
	if a.Joined() || !b.Joined() {
		t.Errorf("Joined: first %v, second %v; want false, true", a.Joined(), b.Joined())
	}
	a.Close()
	a.Close() // idempotent
	time.Sleep(2 * grace)
	if h.Watchers() != 1 || e.relay.active() != 1 {
		t.Fatalf("one session left: %d watchers, %d connections", h.Watchers(), e.relay.active())
	}
	b.Close()
	time.Sleep(grace / 3)
	if h.Watchers() != 1 {
		t.Fatalf("within the grace period: %d watchers", h.Watchers())
	}
	c, err := h.Watch(context.Background(), key, dial, func() {})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Joined() {
		t.Error("a subscription to the watcher in its grace period: Joined false")
	}
	time.Sleep(2 * grace)
	if h.Watchers() != 1 || e.relay.dials.Load() != 1 {
		t.Fatalf("back within grace: %d watchers, %d dials; want 1, 1", h.Watchers(), e.relay.dials.Load())
	}
	start := time.Now()
	c.Close()
	for h.Watchers() != 0 || e.relay.active() != 0 {
		if time.Since(start) > grace+3*time.Second {
			t.Fatalf("after the grace period: %d watchers, %d connections; want 0, 0", h.Watchers(), e.relay.active())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if el := time.Since(start); el < grace {
		t.Fatalf("the watcher stopped after %v, before the grace period of %v", el, grace)
	}
	// A new session starts a new watcher.
	d, err := h.Watch(context.Background(), key, dial, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if h.Watchers() != 1 || e.relay.dials.Load() != 2 {
		t.Fatalf("after restart: %d watchers, %d dials", h.Watchers(), e.relay.dials.Load())
	}
	if d.Joined() {
		t.Error("the subscription that started the new watcher: Joined true")
	}
}

// Watchers are keyed by account: two users with mailboxes of the same name
// get a watcher each, and one user's changes never notify the other's
// sessions or show in their state.
func TestIsolationBetweenAccounts(t *testing.T) {
	e := newEnv(t, "alice", "bob")
	e.appendMsg("bob", "INBOX", "bob's first")
	h := testHub(t, Config{})
	na, nb := newNotifier(), newNotifier()
	sa, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), na.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := h.Watch(context.Background(), Key{"bob", "INBOX"}, e.dial("bob", false), nb.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if h.Watchers() != 2 || sa.State() == sb.State() {
		t.Fatalf("%d watchers; states shared: %v", h.Watchers(), sa.State() == sb.State())
	}
	if got := sa.State().Snapshot().UIDs; len(got) != 0 {
		t.Fatalf("alice's INBOX shows bob's messages: %v", got)
	}
	bobHigh := sb.State().HighestModSeq()
	nbBefore := nb.n.Load()

	for i := 0; i < 3; i++ {
		e.relay.waitIdle(t) // see waitIdle
		e.appendMsg("alice", "INBOX", fmt.Sprint("alice ", i))
		waitFor(t, na, "alice's new message", func() bool { return len(sa.State().Snapshot().UIDs) == i+1 })
	}
	e.relay.waitIdle(t)
	ca := e.client("alice", "INBOX")
	store(t, ca, 1, imap.StoreFlagsAdd, imap.FlagSeen)
	waitFor(t, na, "alice's flag change", func() bool { f, _, _ := sa.State().Flags(1); return len(f) == 1 })
	// Bob's watcher idles on a connection of its own: give it time to
	// misbehave.
	time.Sleep(300 * time.Millisecond)
	if nb.n.Load() != nbBefore || sb.State().HighestModSeq() != bobHigh || len(sb.State().Snapshot().UIDs) != 1 {
		t.Fatalf("bob's subscription saw alice's changes: %d notifications, HIGHESTMODSEQ %d -> %d, UIDs %v",
			nb.n.Load()-nbBefore, bobHigh, sb.State().HighestModSeq(), sb.State().Snapshot().UIDs)
	}
	aliceHigh, naBefore := sa.State().HighestModSeq(), na.n.Load()
	e.appendMsg("bob", "INBOX", "bob's second")
	waitFor(t, nb, "bob's change", func() bool { return len(sb.State().Snapshot().UIDs) == 2 })
	time.Sleep(300 * time.Millisecond)
	if na.n.Load() != naBefore || sa.State().HighestModSeq() != aliceHigh {
		t.Fatalf("alice's subscription saw bob's change")
	}
	// Own through one account's subscription notifies only that
	// account's subscribers (the session's own STORE answers).
	if _, ok, err := sb.Own(context.Background(), 2, []string{`\Answered`}); !ok || err != nil {
		t.Fatalf("Own: %v, %v", ok, err)
	}
	waitFor(t, nb, "Own", func() bool { f, _, _ := sb.State().Flags(2); return len(f) == 1 })
	time.Sleep(50 * time.Millisecond)
	if na.n.Load() != naBefore {
		t.Fatal("alice was notified of bob's Own")
	}
}

// Subscription.Own records a session's first-hand changes and notifies
// every subscriber of the mailbox, itself included, before it returns; a
// claim that changes nothing notifies none and returns the mod-sequence the
// message had.
func TestWatchOwnNotifiesAll(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	h := testHub(t, Config{})
	key := Key{"alice", "INBOX"}
	n1, n2 := newNotifier(), newNotifier()
	s1, err := h.Watch(context.Background(), key, e.dial("alice", false), n1.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := h.Watch(context.Background(), key, e.dial("alice", false), n2.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s1.State() != s2.State() {
		t.Fatal("two sessions of one mailbox follow different states")
	}
	b1, b2 := n1.n.Load(), n2.n.Load()
	high := s1.State().HighestModSeq()
	modseq, ok, err := s1.Own(context.Background(), 1, []string{`\Seen`})
	if err != nil || !ok || modseq != high+1 {
		t.Fatalf("Own = %d, %v, %v; want %d, true, nil", modseq, ok, err, high+1)
	}
	if n1.n.Load() != b1+1 || n2.n.Load() != b2+1 {
		t.Fatalf("Own notified %d and %d times, want 1 and 1", n1.n.Load()-b1, n2.n.Load()-b2)
	}
	if s2.LastChangeRead().IsZero() || time.Since(s2.LastChangeRead()) > time.Second {
		t.Fatalf("LastChangeRead = %v", s2.LastChangeRead())
	}
	again, ok, err := s2.Own(context.Background(), 1, []string{`\SEEN`, `\Recent`})
	if err != nil || !ok || again != modseq {
		t.Fatalf("Own of the same flags = %d, %v, %v; want %d, true, nil", again, ok, err, modseq)
	}
	if n1.n.Load() != b1+1 || n2.n.Load() != b2+1 {
		t.Fatal("an Own that changed nothing notified")
	}
	// A message the state does not have is not brought in.
	if _, ok, err := s1.Own(context.Background(), 99, []string{`\Seen`}); ok || err != nil {
		t.Fatalf("Own of an unknown UID = %v, %v; want false, nil", ok, err)
	}
}

// When the watcher's first connection fails, Watch says so instead of
// retrying in the background, and leaves no watcher behind.
func TestWatchFirstConnectionFails(t *testing.T) {
	e := newEnv(t, "alice")
	h := testHub(t, Config{})
	errDown := errors.New("upstream down for the test")
	_, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, func(context.Context) (*upstream.Conn, error) { return nil, errDown }, func() {})
	if !errors.Is(err, errDown) {
		t.Fatalf("Watch with a failing dial: %v, want %v", err, errDown)
	}
	if n := h.Watchers(); n != 0 {
		t.Fatalf("%d watchers left after a failed Watch", n)
	}
	// The upstream refuses the connection.
	e.relay.setDown(true)
	if _, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), func() {}); err == nil {
		t.Fatal("Watch succeeded with the upstream down")
	}
	e.relay.setDown(false)
	// A mailbox the upstream does not have.
	if _, err := h.Watch(context.Background(), Key{"alice", "Nonexistent"}, e.dial("alice", false), func() {}); err == nil {
		t.Fatal("Watch of a nonexistent mailbox succeeded")
	}
	if n := h.Watchers(); n != 0 {
		t.Fatalf("%d watchers left after failed Watches", n)
	}
	// Once the upstream works, Watch does too.
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
}

// After losing its connection the watcher reconnects with backoff and
// reconciles: every change made while it was away is in the state, each
// once, with new mod-sequences; and changes after that still arrive.
func TestWatchReconnectReconciles(t *testing.T) {
	for _, mode := range []string{"idle", "poll"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, "alice")
			for i := 1; i <= 4; i++ {
				e.appendMsg("alice", "INBOX", fmt.Sprint("msg ", i))
			}
			h := testHub(t, Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, PollInterval: 50 * time.Millisecond})
			n := newNotifier()
			sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", mode == "poll"), n.notify)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			st := sub.State()
			before := st.HighestModSeq()

			e.relay.setDown(true)
			e.relay.cut()
			c := e.client("alice", "INBOX")
			e.appendMsg("alice", "INBOX", "while away", imap.FlagSeen) // UID 5
			store(t, c, 1, imap.StoreFlagsAdd, imap.FlagFlagged)
			expunge(t, c, 3)
			// A Sync while the watcher is away fails (the poll it
			// triggers finds the connection gone) or waits for its
			// context: it neither hangs nor pretends.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			if err := sub.Sync(ctx); err == nil {
				t.Fatal("Sync succeeded while the upstream was unreachable")
			}
			cancel()
			if st.HighestModSeq() != before {
				t.Fatalf("the state changed while the watcher was disconnected: %q", since(st, before))
			}
			dialsBefore := e.relay.dials.Load()
			time.Sleep(500 * time.Millisecond)
			if e.relay.dials.Load() <= dialsBefore {
				t.Fatal("the watcher did not retry while the upstream was down")
			}
			e.relay.setDown(false)
			waitFor(t, n, "reconciliation", func() bool { return st.HighestModSeq() >= before+3 })
			// \Deleted on 3 happened before its expunge: one change of 3.
			got := since(st, before)
			want := []string{`1:\Flagged`, `5:\Seen`, "3:expunged"}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("changes after reconnecting: %q, want %q", got, want)
			}
			if st.HighestModSeq() != before+3 {
				t.Fatalf("HIGHESTMODSEQ %d, want %d", st.HighestModSeq(), before+3)
			}
			if sub.Err() != nil {
				t.Fatal(sub.Err())
			}
			// The new connection watches as before.
			if mode == "idle" {
				e.relay.waitIdle(t)
			}
			h1 := st.HighestModSeq()
			e.appendMsg("alice", "INBOX", "after") // UID 6
			waitFor(t, n, "a change after reconnecting", func() bool { return st.HighestModSeq() > h1 })
			if got := since(st, h1); !reflect.DeepEqual(got, []string{"6:"}) {
				t.Fatalf("after reconnecting: %q", got)
			}
			if err := sub.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// When the mailbox's UIDVALIDITY changes while the watcher is away, the
// old state is dropped and subscribers learn it through Err.
func TestWatchUIDValidityChange(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "Box", "one")
	h := testHub(t, Config{MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	n := newNotifier()
	sub, err := h.Watch(context.Background(), Key{"alice", "Box"}, e.dial("alice", false), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	old := sub.State()
	e.relay.setDown(true)
	e.relay.cut()
	c := e.client("alice", "")
	if err := c.Delete("Box").Wait(); err != nil {
		t.Fatal(err)
	}
	e.appendMsg("alice", "Box", "new one") // creates Box afresh
	e.relay.setDown(false)
	waitFor(t, n, "the new UIDVALIDITY", func() bool { return sub.Err() != nil })
	if !errors.Is(sub.Err(), ErrUIDValidity) {
		t.Fatalf("Err = %v", sub.Err())
	}
	// Old subscribers keep the old state; a new Watch gets the new one.
	if sub.State() != old {
		t.Fatal("the subscription's state changed under it")
	}
	sub2, err := h.Watch(context.Background(), Key{"alice", "Box"}, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if sub2.State() == old || sub2.State().UIDValidity() == old.UIDValidity() || sub2.Err() != nil {
		t.Fatalf("new subscription: UIDVALIDITY %d (old %d), err %v", sub2.State().UIDValidity(), old.UIDValidity(), sub2.Err())
	}
}

// Close stops every watcher at once, also one blocked in IDLE or in its
// reconnect backoff, and closes their connections.
func TestCloseStopsWatchers(t *testing.T) {
	e := newEnv(t, "alice", "bob")
	e.appendMsg("bob", "Other", "x")
	h := New(Config{MinBackoff: time.Hour, MaxBackoff: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	for _, k := range []Key{{"alice", "INBOX"}, {"bob", "INBOX"}, {"bob", "Other"}} {
		user := k.Account
		if _, err := h.Watch(context.Background(), k, e.dial(user, k.Mailbox == "Other"), func() {}); err != nil {
			t.Fatal(err)
		}
	}
	if e.relay.active() != 3 {
		t.Fatalf("%d upstream connections for 3 watchers", e.relay.active())
	}
	// Cut off: the watchers wait out an hour's backoff.
	e.relay.setDown(true)
	e.relay.cut()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	h.Close()
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("Close took %v", el)
	}
	if e.relay.active() != 0 {
		t.Fatalf("%d connections after Close", e.relay.active())
	}
}

// Close of a hub with watchers in IDLE: the connections are closed
// promptly (the goleak check in TestMain covers the goroutines).
func TestHubCloseWhileIdling(t *testing.T) {
	e := newEnv(t, "alice")
	h := New(Config{Logger: slog.New(slog.DiscardHandler)})
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	h.Close()
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("Close took %v", el)
	}
	deadline := time.Now().Add(2 * time.Second)
	for e.relay.active() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections after Close", e.relay.active())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHubBackoff(t *testing.T) {
	h := &Hub{cfg: Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}}
	for n := 0; n < 40; n++ {
		d := 100 * time.Millisecond << min(n, 20)
		if d > 2*time.Second {
			d = 2 * time.Second
		}
		lo, hi := d/2, d
		seen := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			got := h.backoff(n)
			if got < lo || got > hi {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, got, lo, hi)
			}
			seen[got] = true
		}
		if len(seen) < 10 {
			t.Fatalf("backoff(%d) has no jitter: %d distinct values", n, len(seen))
		}
	}
}

// TestWatcherUsesLatestCredentials: a watcher reconnects with the
// credentials of the latest session to subscribe. The first session's
// password stops working (changed on the server); a second session, logged
// in with the new one, subscribes; the connection is cut; the watcher must
// come back and report changes. (It used to keep the first session's dial
// for good, and retried a login that could never succeed.)
func TestWatcherUsesLatestCredentials(t *testing.T) {
	e := newEnv(t, "alice")
	h := testHub(t, Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	var revoked atomic.Bool
	good := e.dial("alice", false)
	old := func(ctx context.Context) (*upstream.Conn, error) {
		if revoked.Load() {
			return nil, errors.New("LOGIN: NO [AUTHENTICATIONFAILED] (the old password)")
		}
		return good(ctx)
	}
	n := newNotifier()
	a, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, old, n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	revoked.Store(true)
	b, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, good, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	e.relay.cut()
	e.appendMsg("alice", "INBOX", "after the cut")
	st := a.State()
	waitFor(t, n, "the new message after the reconnect", func() bool { return len(st.Snapshot().UIDs) == 1 })
}
