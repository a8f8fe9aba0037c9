package hub

import (
	"context"
	"testing"
	"time"
)

// TestFresh: a mailbox is fresh only while its live watcher has a
// completed round trip that began within Config.Fresh, not merely one in
// flight; never when nobody watches it, never with a negative window.
func TestFresh(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := Key{"alice", "INBOX"}
	for _, c := range []struct {
		name  string
		fresh time.Duration
	}{{"window", time.Second}, {"off", -1}} {
		t.Run(c.name, func(t *testing.T) {
			u := startFake(t, true, 10)
			h := testHub(t, Config{SyncLinger: -1, Fresh: c.fresh})
			if h.Fresh(key) {
				t.Fatal("a mailbox nobody watches is fresh")
			}
			sub, _ := watchLogged(t, h, u.dial(), 10)
			u.expect("IDLE")
			if h.Fresh(key) {
				t.Fatal("fresh after the start, before any round trip")
			}
			// A round trip in flight does not count: the NOOP's answer
			// is held until release.
			release := u.holdNextNoop()
			defer release()
			done := make(chan error, 1)
			go func() { done <- sub.Sync(ctx) }()
			u.expect("DONE")
			u.expect("NOOP held")
			if h.Fresh(key) {
				t.Fatal("fresh while the round trip is unanswered")
			}
			release()
			u.expect("NOOP")
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got, want := h.Fresh(key), c.fresh > 0; got != want {
				t.Fatalf("right after a completed round trip: fresh %v, want %v", got, want)
			}
			u.expect("IDLE")
			// A new connection is not fresh until it completes a
			// round trip of its own.
			u.cut()
			u.expect("IDLE")
			if h.Fresh(key) {
				t.Fatal("fresh on a new connection from the old one's round trip")
			}
			if err := sub.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			u.expect("DONE")
			u.expect("NOOP")
			u.expect("IDLE")
			if got, want := h.Fresh(key), c.fresh > 0; got != want {
				t.Fatalf("after the new connection's round trip: fresh %v, want %v", got, want)
			}
			if c.fresh > 0 {
				time.Sleep(c.fresh + 100*time.Millisecond)
				if h.Fresh(key) {
					t.Fatal("still fresh after the window passed")
				}
			}
		})
	}
}

// TestFreshWhileWatched: Fresh may be asked while other sessions
// subscribe to the same mailbox (run under -race).
func TestFreshWhileWatched(t *testing.T) {
	u := startFake(t, true, 10)
	h := testHub(t, Config{})
	key := Key{"alice", "INBOX"}
	sub, _ := watchLogged(t, h, u.dial(), 10)
	defer sub.Close()
	stop, done := make(chan struct{}), make(chan struct{})
	asked := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			h.Fresh(key)
			if i == 0 {
				close(asked)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	<-asked
	for range 50 {
		s, err := h.Watch(context.Background(), key, u.dial(), func() {})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	close(stop)
	<-done
}
