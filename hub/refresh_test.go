package hub

import (
	"context"
	"testing"
	"time"
)

// TestRefresh: a mailbox nobody watches is brought up to date on a lent
// connection, without a watcher; its mod-sequences then continue where
// they were, and a later watcher starts from the same state.
func TestRefresh(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	h := testHub(t, Config{})
	key := Key{"alice", "INBOX"}
	c, err := e.dial("alice", false)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := h.Refresh(context.Background(), key, c)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.Snapshot().UIDs); n != 1 {
		t.Fatalf("%d messages after the first refresh", n)
	}
	if h.Watchers() != 0 || h.ColdStates() != 1 {
		t.Fatalf("after a refresh: %d watchers, %d cold states", h.Watchers(), h.ColdStates())
	}
	if c.Selected != "" {
		t.Fatalf("the lent connection still has %q selected", c.Selected)
	}
	high := st.HighestModSeq()
	e.appendMsg("alice", "INBOX", "two")
	st2, err := h.Refresh(context.Background(), key, c)
	if err != nil {
		t.Fatal(err)
	}
	if st2 != st || len(st2.Snapshot().UIDs) != 2 || st2.HighestModSeq() <= high {
		t.Fatalf("second refresh: same state %v, %d messages, HIGHESTMODSEQ %d (was %d)", st2 == st, len(st2.Snapshot().UIDs), st2.HighestModSeq(), high)
	}
	sub, err := h.Watch(context.Background(), key, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if sub.State() != st {
		t.Fatal("the watcher did not start from the refreshed state")
	}
	// With a watcher running, Refresh returns its state and leaves the
	// connection alone.
	st3, err := h.Refresh(context.Background(), key, c)
	if err != nil || st3 != st {
		t.Fatalf("refresh of a watched mailbox: %v, same %v", err, st3 == st)
	}
	_ = time.Second
}

// TestRefreshBoxLeavesStopping: a Watch that gives up while a Refresh of
// the same mailbox runs leaves the refresh's box (which has no goroutine)
// to the grace timer, which retires it among the stopping boxes; the
// refresh's end now takes it out (a second reviewer's finding: it stayed,
// with its state, for good).
func TestRefreshBoxLeavesStopping(t *testing.T) {
	u := startFake(t, false, 1, 2)
	h := testHub(t, Config{Grace: time.Millisecond, StateCache: 16})
	key := Key{"alice", "INBOX"}
	c, err := u.dial()(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u.mu.Lock() // the upstream is slow to answer the refresh
	done := make(chan error, 1)
	go func() {
		_, err := h.Refresh(context.Background(), key, c)
		done <- err
	}()
	waitFor(t, newNotifier(), "the refresh's box", func() bool { return h.Watchers() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.Watch(ctx, key, u.dial(), func() {}); err == nil {
		u.mu.Unlock()
		t.Fatal("the watch did not give up")
	}
	waitFor(t, newNotifier(), "the grace to run out", func() bool { return h.Watchers() == 0 })
	u.mu.Unlock()
	<-done // the fake answers the refresh's CLOSE with BAD: no matter
	h.mu.Lock()
	n := len(h.stopping)
	h.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d box(es) left among the stopping ones after the refresh ended", n)
	}
}
