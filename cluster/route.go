package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// maxRouteAttempts bounds the re-resolutions of one login: an owner that
// answers NOTOWNER has just lost or released the account, and the next
// lookup finds the new state; more than a few in a row means the account
// is changing hands right now, and the client had better retry.
const maxRouteAttempts = 3

var (
	_ proxy.Router = (*Node)(nil)
	_ proxy.Owner  = (*Node)(nil)
)

// Route places a login (proxy.Router): served here when this node owns
// the account or acquires it, else handed over to the owner, or for an
// account nobody live owns, to its preferred node, which acquires it on
// receiving the hand-off. A node that cannot be reached while its lease is
// valid makes the login fail with proxy.ErrUnavailable: the account is
// taken over only once the lease has expired, and the client retries.
func (n *Node) Route(ctx context.Context, h proxy.Handoff) (net.Conn, func(), error) {
	acct := h.Account
	if h.Via == "" {
		h.Via = n.cfg.Node
	}
	// refused names the nodes that turned down this account while it was
	// free: they do not take accounts now (draining, or fenced), whatever
	// this node's list of live nodes, renewed every TTL/3, still says.
	// Right after a drain that list makes the drained node the preferred
	// one for its old accounts, and every try of a login would go there
	// again until the renewal, ending in NO [UNAVAILABLE].
	var refused []string
	for range maxRouteAttempts {
		n.mu.Lock()
		if !n.leaseValidLocked() {
			n.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: this node is fenced", proxy.ErrUnavailable)
		}
		if a := n.owned[acct]; a != nil {
			if !a.leaving {
				a.refs++
				n.mu.Unlock()
				return nil, n.releaser(a), nil
			}
			// The account is being evicted here: wait for that, then
			// find where it goes.
			gone := a.gone
			n.mu.Unlock()
			select {
			case <-gone:
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, ctx.Err())
			}
			continue
		}
		n.mu.Unlock()

		d, err := n.resolve(ctx, acct, refused)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, err)
		}
		if d.local {
			a, err := n.acquire(ctx, acct, nil)
			if errors.Is(err, errNotAcquired) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, err)
			}
			return nil, n.releaser(a), nil
		}
		conn, kind, err := n.links.dial(ctx, d.addr, n.cfg.Node, h)
		if err != nil {
			if d.owner {
				return nil, nil, fmt.Errorf("%w: owner %s of %s unreachable: %v", proxy.ErrUnavailable, d.node, acct, err)
			}
			// The preferred node of a free account cannot be reached (it
			// may have just died): take the account here rather than
			// refuse the login. If it did acquire it before the link
			// broke, this acquisition fails and the next lookup finds it.
			n.log.Warn("cluster: preferred node unreachable", "node", d.node, "account", acct, "err", err)
			a, err := n.acquire(ctx, acct, nil)
			if errors.Is(err, errNotAcquired) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, err)
			}
			return nil, n.releaser(a), nil
		}
		switch kind {
		case replyOK:
			return n.forwarded(conn, d.node), nil, nil
		case replyNotOwner:
			if !d.owner {
				refused = append(refused, d.node)
			}
			continue
		}
		if d.owner {
			return nil, nil, fmt.Errorf("%w: node %s cannot serve %s now", proxy.ErrUnavailable, d.node, acct)
		}
		// The preferred node of a free account refuses it (fenced: its
		// lease lapsed, which this node's list of live nodes, renewed
		// every TTL/3, may not know yet): take the account here, as when
		// it cannot be reached.
		n.log.Warn("cluster: preferred node cannot serve", "node", d.node, "account", acct)
		a, err := n.acquire(ctx, acct, nil)
		if errors.Is(err, errNotAcquired) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", proxy.ErrUnavailable, err)
		}
		return nil, n.releaser(a), nil
	}
	return nil, nil, fmt.Errorf("%w: %s is changing hands", proxy.ErrUnavailable, acct)
}

// forwardedConn counts a forwarded session until the proxy closes it.
type forwardedConn struct {
	net.Conn
	n    *Node
	once sync.Once
	// to is the owner the session is forwarded to, since when it
	// accepted it (cutForwards).
	to    string
	since time.Time
}

// forwarded counts and registers a session that node accepted on conn.
func (n *Node) forwarded(conn net.Conn, node string) *forwardedConn {
	fc := &forwardedConn{Conn: conn, n: n, to: node, since: time.Now()}
	n.forwardedOut.Add(1)
	n.mu.Lock()
	n.forwards[fc] = struct{}{}
	n.mu.Unlock()
	return fc
}

// cutForwardsLocked returns the forwarded sessions to close after a
// renewal that sent its query of the live nodes at asked and found live:
// those forwarded to a node not among them since before asked. Such an
// owner's lease had expired by the database's clock while the session was
// open: if it still runs, it fenced itself and ended the session (but its
// BYE may never come: a process stopped, a network cut, power lost
// behind a switch); if not, nothing will ever answer, and TCP may not
// tell for a long while. Another node takes the account over meanwhile;
// cut here, the client reconnects and reaches it. A session forwarded
// after asked may be to an owner that has just come back: it is left to
// the next renewal.
func (n *Node) cutForwardsLocked(live []peer, asked time.Time) []*forwardedConn {
	var cut []*forwardedConn
	for fc := range n.forwards {
		if fc.since.Before(asked) && !slices.ContainsFunc(live, func(p peer) bool { return p.name == fc.to }) {
			cut = append(cut, fc)
		}
	}
	return cut
}

// CloseWrite half-closes the link, so the owner reads the end of the
// client's stream while its own last bytes still come back.
func (c *forwardedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func (c *forwardedConn) Close() error {
	c.once.Do(func() {
		c.n.forwardedOut.Add(-1)
		c.n.mu.Lock()
		delete(c.n.forwards, c)
		c.n.mu.Unlock()
	})
	return c.Conn.Close()
}

// decision is where an account is to be served.
type decision struct {
	local bool
	// node and addr name the node to hand the session to; owner tells
	// whether it owns the account (else it is the preferred node of a free
	// account).
	node, addr string
	owner      bool
}

// resolve finds where acct is to be served, by one lookup of its owner.
// A free account goes to its preferred node among the live ones, leaving
// out those in refused (see Route).
func (n *Node) resolve(ctx context.Context, acct string, refused []string) (decision, error) {
	dctx, cancel := n.dbContext(ctx)
	defer cancel()
	var owner, addr *string
	var live *bool
	err := n.observe("lookup", func() error {
		err := n.pool.QueryRow(dctx, sqlLookup, []byte(acct)).Scan(&owner, &addr, &live)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return decision{}, err
	}
	n.mu.Lock()
	draining := n.draining
	peers := n.live
	n.mu.Unlock()
	switch {
	case owner != nil && *owner == n.cfg.Node && !draining:
		// Named here but forgotten (fenced, or an earlier incarnation's):
		// re-acquire under a new epoch.
		return decision{local: true}, nil
	case owner != nil && *owner != n.cfg.Node && live != nil && *live:
		return decision{node: *owner, addr: *addr, owner: true}, nil
	}
	if owner != nil && live != nil && !*live {
		// The database says the owner's lease has expired; the list of
		// live nodes, learnt at this node's last renewal, may still name
		// it. The database is the fresher: the dead owner is not
		// preferred.
		refused = append(slices.Clip(refused), *owner)
	}
	if len(refused) > 0 {
		peers = slices.DeleteFunc(slices.Clone(peers), func(p peer) bool { return slices.Contains(refused, p.name) })
	}
	p, ok := preferred(acct, peers)
	switch {
	case !ok && draining:
		return decision{}, errors.New("no live node takes accounts")
	case !ok, p.name == n.cfg.Node:
		return decision{local: true}, nil
	}
	return decision{node: p.name, addr: p.addr}, nil
}

// preferred picks the live, non-draining node with the highest
// rendezvous score for account: every node computes the same choice from
// the same list, and a node joining or leaving moves only the accounts it
// gains or loses.
func preferred(account string, nodes []peer) (peer, bool) {
	var best peer
	var bestScore uint64
	found := false
	for _, p := range nodes {
		if p.draining {
			continue
		}
		s := score(p.name, account)
		if !found || s > bestScore || (s == bestScore && p.name < best.name) {
			best, bestScore, found = p, s, true
		}
	}
	return best, found
}

// score is the rendezvous weight of (node, account): FNV-1a over both,
// separated by a zero byte, mixed by MurmurHash3's finalizer (FNV alone
// spreads similar names poorly in the high bits). It must never change:
// every node of a cluster has to agree on it.
func score(node, account string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(node))
	f.Write([]byte{0})
	f.Write([]byte(account))
	h := f.Sum64()
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9e34a4fa98b
	h ^= h >> 33
	return h
}
