package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// lifetime is how long the node trusts a renewal, from the moment it was
// sent: the TTL less a margin for the two clocks' rates and the fencing's
// own latency. The database set lease_until = now() + TTL at an instant
// after the renewal was sent, so the node gives up before any other node
// may consider the lease expired.
func (n *Node) lifetime() time.Duration {
	return n.cfg.LeaseTTL - n.cfg.LeaseTTL/10
}

// renewLoop renews the lease every TTL/3 over a connection of its own: a
// pool exhausted by state writes must not cost the node its lease.
func (n *Node) renewLoop() {
	defer n.wg.Done()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(ctx)
			cancel()
		}
	}()
	period := n.cfg.LeaseTTL / 3
	t := time.NewTimer(period)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		gate := n.renewGate
		n.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-n.ctx.Done():
				return
			}
		}
		start := time.Now()
		var err error
		conn, err = n.renew(conn, start)
		if err != nil {
			n.renewFailures.Add(1)
			n.log.Warn("cluster lease renewal failed", "err", err)
			if conn != nil {
				ctx, cancel := context.WithTimeout(n.ctx, time.Second)
				conn.Close(ctx)
				cancel()
				conn = nil
			}
		}
		// The next renewal is timed from this one's start, so that a slow
		// database does not stretch the period.
		next := period - time.Since(start)
		if err != nil {
			// Try again sooner: the lease is running out.
			next = min(next, period/2)
		}
		t.Reset(max(next, time.Millisecond))
	}
}

var errSuperseded = errors.New("another incarnation of this node name has registered")

// renew renews the lease once and refreshes the live nodes.
func (n *Node) renew(conn *pgx.Conn, start time.Time) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL/3)
	defer cancel()
	if conn == nil {
		var err error
		conn, err = pgx.ConnectConfig(ctx, n.pool.Config().ConnConfig)
		if err != nil {
			return nil, err
		}
	}
	st := n.Stats()
	var draining bool
	err := n.observe("renew", func() error {
		return conn.QueryRow(ctx, sqlRenew, n.cfg.Node, n.inc, n.cfg.LeaseTTL.Milliseconds(),
			st.Sessions, st.ForwardedOut, st.Owned).Scan(&draining)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		n.supersede()
		return conn, errSuperseded
	}
	if err != nil {
		return conn, err
	}
	asked := time.Now()
	live, err := n.queryLive(ctx, conn)
	if err != nil {
		return conn, err
	}
	n.mu.Lock()
	cut := n.cutForwardsLocked(live, asked)
	n.mu.Unlock()
	for _, fc := range cut {
		n.log.Warn("cluster: cutting a session forwarded to a node whose lease expired", "node", fc.to)
		fc.Close()
	}
	n.mu.Lock()
	fenced := !n.leaseValidLocked() && !n.superseded && !n.closed
	n.mu.Unlock()
	if fenced {
		// The fencing forgot the owned accounts without releasing them,
		// and the node takes none until this renewal ends it: the unused
		// rows naming it are garbage now.
		if err := n.forgetUnusedMine(ctx, conn); err != nil {
			n.log.Warn("cluster: deleting the unused rows left by the fencing", "err", err)
		}
	}
	until := start.Add(n.lifetime())
	if !time.Now().Before(until) {
		return conn, fmt.Errorf("renewal took %v, past the lease", time.Since(start))
	}
	n.mu.Lock()
	if n.superseded || n.closed {
		n.mu.Unlock()
		return conn, nil
	}
	// A lease that ran out before this renewal (a pause: SIGSTOP, a VM
	// frozen) fences the node even if the watchdog has not run yet: the
	// accounts may have been taken over meanwhile, and renewing must not
	// carry the old beliefs on.
	n.leaseValidLocked()
	n.validUntil = until
	n.setLiveLocked(live)
	n.watchdog.Reset(time.Until(until))
	if n.fenced && !n.fenceEvict {
		n.fenced = false
		n.placementChangedLocked()
		n.log.Info("cluster lease renewed: node serving again")
	}
	startDrain := draining && (!n.draining || n.drainRetry)
	n.draining = draining
	if startDrain {
		n.drainRetry = false
		n.goLocked(n.drain)
	}
	close(n.renewed)
	n.renewed = make(chan struct{})
	n.mu.Unlock()
	return conn, nil
}

// queryDB is what queryLive needs of a connection or the pool.
type queryDB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (n *Node) queryLive(ctx context.Context, db queryDB) ([]peer, error) {
	var live []peer
	err := n.observe("live", func() error {
		rows, err := db.Query(ctx, sqlLive)
		if err != nil {
			return err
		}
		live, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (peer, error) {
			var p peer
			err := r.Scan(&p.name, &p.addr, &p.draining)
			return p, err
		})
		return err
	})
	return live, err
}

func (n *Node) refreshLive(ctx context.Context) error {
	live, err := n.queryLive(ctx, n.pool)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.setLiveLocked(live)
	n.mu.Unlock()
	return nil
}

// setLiveLocked records the live nodes and, when their number changed,
// tells Config.OnLiveNodes (in a goroutine of its own: it may take locks
// of the proxy's).
func (n *Node) setLiveLocked(live []peer) {
	changed := len(live) != len(n.live)
	if !samePeers(live, n.live) {
		n.placementChangedLocked()
	}
	n.live = live
	if changed && n.cfg.OnLiveNodes != nil && len(live) > 0 {
		count := len(live)
		n.goLocked(func() { n.cfg.OnLiveNodes(count) })
	}
}

// checkLease runs when the lease's local lifetime ends without a newer
// renewal (the watchdog timer).
func (n *Node) checkLease() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.leaseValidLocked()
}

// leaseValidLocked tells whether the node may act as a member now, and
// fences it when its lease has run out. Route, the link server and Hold
// call it before acting: a process that was stopped (SIGSTOP, a long
// pause) wakes with stale beliefs, and finds out here before the watchdog
// has had its turn.
func (n *Node) leaseValidLocked() bool {
	if n.closed || n.superseded {
		return false
	}
	if n.fenced || n.fenceEvict {
		return false
	}
	if time.Now().Before(n.validUntil) {
		return true
	}
	n.fenceLocked("the lease expired before it could be renewed")
	return false
}

// fenceLocked fences the node: every owned account is forgotten (a later
// login re-acquires it under a new epoch) and every session ends with BYE
// [UNAVAILABLE]. Routes are refused until the eviction is over and a
// renewal has succeeded.
func (n *Node) fenceLocked(why string) {
	if n.fenced {
		return
	}
	n.fenced = true
	n.fencings.Add(1)
	n.log.Error("cluster node fenced: ending its sessions", "why", why, "accounts", len(n.owned))
	var lost []func()
	for _, a := range n.owned {
		lost = append(lost, a.detachHoldersLocked()...)
		if !a.leaving {
			a.leaving = true
			a.finish()
		}
	}
	n.owned = make(map[string]*account)
	h := n.hostOf()
	if h == nil {
		n.goLocked(func() { tellLost(lost) })
		return
	}
	n.fenceEvict = n.goLocked(func() {
		// The holders first: they stop using their accounts before the
		// core forgets them.
		tellLost(lost)
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL)
		defer cancel()
		if err := h.Evict(ctx, "", "this proxy node lost its cluster lease"); err != nil {
			n.log.Warn("cluster fencing: evicting sessions", "err", err)
		}
		n.mu.Lock()
		n.fenceEvict = false
		if n.fenced && time.Now().Before(n.validUntil) {
			// A renewal succeeded during the eviction.
			n.fenced = false
			n.placementChangedLocked()
			n.log.Info("cluster lease renewed: node serving again")
		}
		n.mu.Unlock()
	})
}

// supersede fences the node for good: another process registered under
// its name.
func (n *Node) supersede() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.superseded {
		return
	}
	n.fenceLocked(errSuperseded.Error())
	n.superseded = true
}
