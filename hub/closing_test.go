package hub

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestWatchWhileClosing: a Watch whose watcher is stopped before its first
// sync (the hub closes) fails; it never returns a subscription without a
// state (push's watchers met one at shutdown and read through it).
func TestWatchWhileClosing(t *testing.T) {
	for range 20 {
		h := New(Config{Logger: slog.New(slog.DiscardHandler)})
		dialing := make(chan struct{})
		dial := func(ctx context.Context) (*upstream.Conn, error) {
			close(dialing)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		type result struct {
			sub *Subscription
			err error
		}
		done := make(chan result, 1)
		go func() {
			sub, err := h.Watch(context.Background(), Key{"a", "INBOX"}, dial, func() {})
			done <- result{sub, err}
		}()
		<-dialing
		h.Close()
		r := <-done
		if r.err == nil {
			t.Fatalf("Watch succeeded while the hub closed; state %v", r.sub.State())
		}
		if errors.Is(r.err, context.Canceled) {
			continue // the box's readyErr, also fine
		}
	}
}
