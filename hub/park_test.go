package hub

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// parkedWatchers counts the goroutines waiting parked (waitParked) and
// those blocked in idleLoop.
func parkedWatchers() (parked, inLoop int) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "hub.(*box).waitParked(") && !strings.Contains(g, "hub.(*box).run(") {
			parked++
		}
		if strings.Contains(g, "hub.(*watch).idleLoop(") {
			inLoop++
		}
	}
	return parked, inLoop
}

// waitParkedCount waits until want watchers wait parked and none in
// idleLoop.
func waitParkedCount(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		parked, inLoop := parkedWatchers()
		if parked == want && inLoop == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d watchers parked, %d in idleLoop; want %d parked, none in idleLoop", parked, inLoop, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestParkedWatcher: a watcher in IDLE waits in a goroutine of its own
// with only the connection's wait on its stack (waitParked), not at the
// bottom of run and idleLoop, and everything that used to interrupt its
// read still reaches it: the upstream's reports, Sync requests, claims,
// the renewal of IDLE (several, with a short IdleRenew), a cut
// connection (reconnected), and the hub's Close (goleak, TestMain).
func TestParkedWatcher(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	h := testHub(t, Config{IdleRenew: 150 * time.Millisecond, Timeout: 5 * time.Second})
	n := newNotifier()
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	e.relay.waitIdle(t)
	waitParkedCount(t, 1)

	// Renewed IDLE (DONE, IDLE) several times, parked after each.
	time.Sleep(500 * time.Millisecond)
	e.relay.waitIdle(t)
	waitParkedCount(t, 1)

	e.appendMsg("alice", "INBOX", "two")
	waitFor(t, n, "the new message", func() bool { return len(sub.State().Snapshot().UIDs) == 2 })
	e.relay.waitIdle(t)
	waitParkedCount(t, 1)

	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := sub.Sync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Sync %d: %v", i, err)
		}
	}
	e.relay.waitIdle(t)
	waitParkedCount(t, 1)

	uid := sub.State().Snapshot().UIDs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, ok, err := sub.Own(ctx, uid, []string{`\Seen`})
	cancel()
	if err != nil || !ok {
		t.Fatalf("claim on a parked watcher: ok %v, %v", ok, err)
	}
	waitParkedCount(t, 1)

	// The connection cut while parked: the watcher reconnects, resyncs
	// and parks again.
	e.relay.cut()
	e.appendMsg("alice", "INBOX", "three")
	waitFor(t, n, "the message added while reconnecting", func() bool { return len(sub.State().Snapshot().UIDs) == 3 })
	e.relay.waitIdle(t)
	waitParkedCount(t, 1)
}
