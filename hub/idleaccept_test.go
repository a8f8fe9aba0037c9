package hub

import (
	"context"
	"testing"
	"time"
)

// An upstream slower to accept IDLE ("+ idling") than IdleRenew: the
// watcher must still read the continuation and go on. It used to set the
// read deadline to the renewal time, already past when the continuation
// came; a read past its deadline fails without reading what has arrived,
// so the watcher never saw the "+", spun on the timeouts for as long as
// the mailbox was watched (a core burnt per watcher: the conformance
// suite's cascade of "no tagged response" on a loaded machine, where
// imapmemserver runs with a one-second IdleRenew), and answered no Sync
// and reported nothing.
func TestIdleAcceptedAfterRenewal(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	e.relay.slowIdle.Store(int64(300 * time.Millisecond))
	h := testHub(t, Config{IdleRenew: 50 * time.Millisecond, Timeout: 5 * time.Second})
	n := newNotifier()
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, e.dial("alice", false), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := sub.Sync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Sync %d: %v", i, err)
		}
	}
	e.appendMsg("alice", "INBOX", "two")
	waitFor(t, n, "the new message", func() bool { return len(sub.State().Snapshot().UIDs) == 2 })
}
