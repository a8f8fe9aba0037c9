package hub

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
)

// TestWatcherPanicIsRecovered: a panic on a watcher's goroutine (here in a
// session's notify function, as a bug there would) is recovered, counted
// (place "watcher"), and costs the watcher its connection only: it
// reconnects, every session hears of the change the panic interrupted the
// telling of, and later changes still arrive. Before, the process died.
func TestWatcherPanicIsRecovered(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	h := testHub(t, Config{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	var armed atomic.Bool
	bad, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), func() {
		if armed.CompareAndSwap(true, false) {
			panic("a bug in a session's notify")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	n := newNotifier()
	good, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	before := recovery.Count(recovery.Watcher)
	dials := e.relay.dials.Load()
	e.relay.waitIdle(t)
	armed.Store(true)
	told := n.n.Load()
	e.appendMsg("alice", "INBOX", "two")
	st := good.State()
	waitFor(t, n, "the second message", func() bool { return len(st.Snapshot().UIDs) == 2 })
	deadline := time.Now().Add(5 * time.Second)
	for recovery.Count(recovery.Watcher) == before || e.relay.dials.Load() == dials || n.n.Load() == told {
		if time.Now().After(deadline) {
			t.Fatalf("panics counted %d, dials %d, notified %d: want a recovered panic, a reconnect and a notification",
				recovery.Count(recovery.Watcher)-before, e.relay.dials.Load()-dials, n.n.Load()-told)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := recovery.Count(recovery.Watcher) - before; got != 1 {
		t.Fatalf("%d watcher panics counted, want 1", got)
	}
	e.appendMsg("alice", "INBOX", "three")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := good.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(st.Snapshot().UIDs); got != 3 {
		t.Fatalf("%d messages after the reconnect, want 3", got)
	}
	if err := good.Err(); err != nil {
		t.Fatal(err)
	}
}
