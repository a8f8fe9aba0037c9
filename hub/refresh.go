package hub

import (
	"context"
	"fmt"

	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Refresh brings the state of a mailbox nobody watches up to date on a
// connection the caller lends (NOTIFY's account watcher: one connection
// per account instead of one watcher per mailbox), and returns it. The
// mailbox is EXAMINEd, its flags fetched and reconciled as a watcher would,
// and the connection left with no mailbox selected. The state then waits
// in the cache of unwatched states (Config.StateCache) and the Store.
//
// If a watcher runs for the mailbox, its state is returned as it is: the
// watcher keeps it current. While the refresh runs, the mailbox counts as
// watched, so a session selecting it meanwhile waits for the refresh and
// then gets a watcher of its own that starts from the refreshed state:
// there is never more than one state of a mailbox in use.
//
// The calling goroutine is the only writer of the state while it refreshes
// a mailbox without a watcher, as a watcher's goroutine is of its own (see
// box): the box registered for the refresh keeps a watcher from starting
// until the refresh is done, and no session can hand it claims before then
// (Hub.Watch returns only once the box is ready). Refreshing a watched
// mailbox asks its watcher for a round trip instead of writing its state.
func (h *Hub) Refresh(ctx context.Context, key Key, c *upstream.Conn) (*syncstate.Mailbox, error) {
	h.mu.Lock()
	if b, ok := h.boxes[key]; ok {
		watched := b.dial != nil // a real watcher runs (dial is guarded by h.mu)
		h.mu.Unlock()
		select {
		case <-b.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if st := b.state(); st != nil {
			// The watcher may not have heard of the change that made
			// the caller ask (Dovecot's IDLE lags): one round trip.
			if b.readyErr == nil && watched {
				if err := b.sync(ctx); err != nil {
					return nil, err
				}
			}
			return st, nil
		}
		return nil, fmt.Errorf("hub: no state for %q: %w", key.Mailbox, b.readyErr)
	}
	b := newBox(h, key, nil) // no goroutine: this call does the work
	h.boxes[key] = b
	h.mu.Unlock()

	w := &watch{box: b, log: h.cfg.Logger, conn: c}
	err := w.fullSync(ctx)
	if uerr := c.Unselect(ctx); err == nil && uerr != nil {
		err = fmt.Errorf("hub: leaving %q after a refresh: %w", key.Mailbox, uerr)
	}
	st := b.state()

	h.mu.Lock()
	if len(b.subs) > 0 && b.dial != nil && h.boxes[key] == b && h.ctx.Err() == nil {
		// Sessions selected the mailbox meanwhile: it gets a real
		// watcher, which starts from the state just refreshed and
		// tells them once it runs.
		h.wg.Add(1)
		go b.goroutine(nil)
		h.mu.Unlock()
	} else {
		if h.boxes[key] == b {
			delete(h.boxes, key)
		}
		// The grace timer may have retired it (a Watch that gave up
		// meanwhile): it has no goroutine whose end would take it out.
		delete(h.stopping, b)
		if _, live := h.boxes[key]; !live && st != nil && h.cold != nil && h.ctx.Err() == nil && !b.forgotten.Load() && !b.gone.Load() {
			h.cold.Add(key, st)
		}
		h.mu.Unlock()
		b.dropGone()
		b.readyErr = err
		if b.readyErr == nil && st == nil {
			b.readyErr = fmt.Errorf("hub: no state for %q", key.Mailbox)
		}
		close(b.ready)
		close(b.stopped)
		b.cancel()
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}
