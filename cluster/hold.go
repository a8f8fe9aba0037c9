package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// Holds: accounts kept on this node without a session (proxy.Placement).
//
// A node owns an account while sessions of it are served here and
// releases it ReleaseAfter the last one ended. Push watches registered
// accounts while nobody is logged in, and must do so on the account's
// owner only (the owner alone writes the account's records and states,
// fenced by its epoch): it holds the accounts it watches. A hold counts
// like a session (the release loop keeps the account), is acquired as a
// hand-off is (free, already here, or from a dead owner), and is told when
// the account leaves anyway (drain, fencing, a takeover found by a fenced
// write, Close), before the account's sessions and watchers are evicted.

var _ proxy.Placement = (*Node)(nil)

// holder is one hold of an account.
type holder struct{ lost func() }

// count adds one session (h nil) or the hold h to a (n.mu held).
func (a *account) count(h *holder) {
	if h == nil {
		a.refs++
		return
	}
	if a.holders == nil {
		a.holders = make(map[*holder]struct{})
	}
	a.holders[h] = struct{}{}
}

// detachHoldersLocked takes a's holds away and returns their lost
// functions, to be called with no lock held (n.mu held).
func (a *account) detachHoldersLocked() []func() {
	var lost []func()
	for h := range a.holders {
		if h.lost != nil {
			lost = append(lost, h.lost)
		}
	}
	a.holders = nil
	return lost
}

// tellLost calls the lost functions of detached holds.
func tellLost(lost []func()) {
	for _, f := range lost {
		f()
	}
}

// HoldAccount implements proxy.Placement: it keeps acct on this node,
// acquiring it if it is free, named here, or owned by a node whose lease
// has expired.
func (n *Node) HoldAccount(ctx context.Context, acct string, lost func()) (func(), error) {
	h := &holder{lost: lost}
	for range maxRouteAttempts {
		n.mu.Lock()
		if !n.leaseValidLocked() || n.draining {
			n.mu.Unlock()
			return nil, fmt.Errorf("%w: this node takes no accounts now", proxy.ErrUnavailable)
		}
		var gone chan struct{}
		if a := n.owned[acct]; a != nil {
			if !a.leaving {
				a.count(h)
				n.mu.Unlock()
				n.use(acct, a) // a hold is of an account in use (push registrations)
				return n.holdReleaser(a, h), nil
			}
			gone = a.gone
		}
		n.mu.Unlock()
		if gone != nil {
			// Being evicted here: wait for that, then try to take it
			// anew.
			select {
			case <-gone:
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, ctx.Err())
			}
			continue
		}
		a, err := n.acquire(ctx, acct, h)
		switch {
		case errors.Is(err, errNotAcquired):
			return nil, fmt.Errorf("%w: %s", proxy.ErrHeldElsewhere, acct)
		case errors.Is(err, errNotServing):
			return nil, fmt.Errorf("%w: this node takes no accounts now", proxy.ErrUnavailable)
		case err != nil:
			return nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, err)
		}
		n.use(acct, a)
		return n.holdReleaser(a, h), nil
	}
	return nil, fmt.Errorf("%w: %s is changing hands", proxy.ErrUnavailable, acct)
}

// holdReleaser returns the function that ends the hold h of a.
func (n *Node) holdReleaser(a *account, h *holder) func() {
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if _, ok := a.holders[h]; !ok {
			return // released already, or the account left
		}
		delete(a.holders, h)
		if a.refs == 0 && len(a.holders) == 0 {
			a.idle = time.Now()
		}
	}
}

// PreferredHere implements proxy.Placement: this node has the highest
// rendezvous score for acct among the live, non-draining nodes it learnt
// of at its last renewal.
func (n *Node) PreferredHere(acct string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.draining {
		return false
	}
	p, ok := preferred(acct, n.live)
	return ok && p.name == n.cfg.Node
}

// PlacementChanged implements proxy.Placement.
func (n *Node) PlacementChanged() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.placement
}

// placementChangedLocked wakes the PlacementChanged waiters (n.mu held).
func (n *Node) placementChangedLocked() {
	close(n.placement)
	n.placement = make(chan struct{})
}

// samePeers tells whether two lists of live nodes hold the same nodes in
// the same draining states, in any order.
func samePeers(a, b []peer) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[peer]bool, len(a))
	for _, p := range a {
		m[p] = true
	}
	for _, p := range b {
		if !m[p] {
			return false
		}
	}
	return true
}
