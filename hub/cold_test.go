package hub

import (
	"context"
	"testing"
	"time"
)

// TestColdStateCache: the state of a mailbox nobody watches any more stays
// in memory (bounded, least recently used first out) and is reused, and
// reconciled, when the mailbox is watched again; with the cache off it is
// dropped.
func TestColdStateCache(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache int
	}{{"on", 0}, {"off", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "alice")
			e.appendMsg("alice", "INBOX", "one")
			h := testHub(t, Config{Grace: 20 * time.Millisecond, StateCache: tc.cache})
			key := Key{"alice", "INBOX"}
			sub, err := h.Watch(context.Background(), key, e.dial("alice", false), func() {})
			if err != nil {
				t.Fatal(err)
			}
			st1 := sub.State()
			high1 := st1.HighestModSeq()
			sub.Close()
			waitFor(t, newNotifier(), "the watcher to stop", func() bool { return h.Watchers() == 0 })
			wantCold := 1
			if tc.cache < 0 {
				wantCold = 0
			}
			waitFor(t, newNotifier(), "the cold state", func() bool { return h.ColdStates() == wantCold })
			e.appendMsg("alice", "INBOX", "two") // while nobody watches

			sub, err = h.Watch(context.Background(), key, e.dial("alice", false), func() {})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			st2 := sub.State()
			if (st2 == st1) != (tc.cache >= 0) {
				t.Fatalf("state reused: %v, want %v", st2 == st1, tc.cache >= 0)
			}
			if h.ColdStates() != 0 {
				t.Fatalf("%d cold states while watched", h.ColdStates())
			}
			if got := len(st2.Snapshot().UIDs); got != 2 {
				t.Fatalf("%d messages after the re-watch, want 2 (reconciled)", got)
			}
			if tc.cache >= 0 && st2.HighestModSeq() <= high1 {
				t.Fatalf("HIGHESTMODSEQ %d after a missed append, was %d", st2.HighestModSeq(), high1)
			}
		})
	}
}

// TestForgetAccountDropsColdOnTimeout: ForgetAccount drops the account's
// states in memory even when its wait for the watchers is cut short (an
// eviction past its deadline, cluster mode). They went only after every
// watcher had stopped, so a failed eviction left them, to be taken up
// again, stale, if the account came back to the node (a second reviewer's
// reading).
func TestForgetAccountDropsColdOnTimeout(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	e.appendMsg("alice", "Work", "two")
	h := testHub(t, Config{Grace: time.Millisecond})
	sub, err := h.Watch(context.Background(), Key{"alice", "Work"}, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	waitFor(t, newNotifier(), "Work's state in memory", func() bool { return h.ColdStates() == 1 })
	live, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the eviction's deadline has passed
	h.ForgetAccount(ctx, "alice")
	if n := h.ColdStates(); n != 0 {
		t.Fatalf("%d states in memory after ForgetAccount gave up waiting", n)
	}
	waitFor(t, newNotifier(), "INBOX's watcher to stop", func() bool { return h.Watchers() == 0 })
	if n := h.ColdStates(); n != 0 {
		t.Fatalf("%d states in memory once the forgotten watcher stopped", n)
	}
}

// TestForgetAccountFindsStoppingBox: a watcher whose grace ran out is out
// of the watched boxes before its goroutine ends (it logs out upstream
// first); ForgetAccount did not see it, and the state it kept on its way
// out survived the account's eviction (a second reviewer's finding).
func TestForgetAccountFindsStoppingBox(t *testing.T) {
	u := startFake(t, false, 1, 2)
	h := testHub(t, Config{Grace: time.Millisecond, StateCache: 16})
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, u.dial(), func() {})
	if err != nil {
		t.Fatal(err)
	}
	u.mu.Lock() // the upstream is slow to answer the watcher's LOGOUT
	sub.Close()
	waitFor(t, newNotifier(), "the grace to run out", func() bool { return h.Watchers() == 0 })
	if err := h.ForgetAccount(context.Background(), "alice"); err != nil {
		u.mu.Unlock()
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	u.mu.Unlock()
	waitFor(t, newNotifier(), "the stopping watcher to end", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.stopping) == 0
	})
	if n := h.ColdStates(); n != 0 {
		t.Fatalf("%d state(s) of the forgotten account in memory", n)
	}
}
