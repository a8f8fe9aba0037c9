// Package cluster coordinates several lemonproxy nodes that share one user
// base through PostgreSQL (cluster mode, issue 19, docs/cluster.md).
//
// Each node holds a lease in lp_nodes, renewed every third of the lease's
// TTL; the database's clock decides when a lease has expired. Each account
// is owned by at most one node at a time, recorded in lp_owners with an
// epoch that increases at every change of hands. Writes of an account's
// state (package cluster/pgstate) run Node.Hold inside their transaction:
// the owner row is read FOR SHARE with this node's epoch, so a write from a
// node that lost the account touches nothing and a takeover waits for the
// writes in flight.
//
// A node that cannot renew its lease in time fences itself: it measures
// the lease on its own monotonic clock from the start of the last renewal
// that succeeded (the database set lease_until from a later instant, so the
// node always gives up before the others may take over), ends its sessions,
// forgets its accounts and refuses logins until a renewal succeeds again.
//
// A login is routed by account (Node.Route): served here when this node
// owns the account or takes it, else handed over the internal link
// (package cluster/link) to the owner or, for an account nobody owns, to
// its preferred node by rendezvous hashing over the live nodes, so that a
// node joining only takes accounts as they fall free.
//
// An extension keeps an account here without a session with HoldAccount
// (proxy.Placement, hold.go: push's watchers of registered accounts): a
// hold counts like a session for the release loop and is told when the
// account leaves anyway.
//
// Only plain transactions, INSERT ... ON CONFLICT and conditional UPDATE
// ... RETURNING are used: no LISTEN/NOTIFY, advisory locks or sequences, so
// that the PostgreSQL-compatible distributed databases work too.
package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// Defaults of Config.
const (
	DefaultLeaseTTL     = 10 * time.Second
	DefaultReleaseAfter = 60 * time.Second
	// DefaultMaxLinks bounds the internal links a node serves at once. Each
	// served link is a handed-over session (a goroutine and its buffers at
	// the proxy); past the bound new links are refused at once, the
	// forwarding node answers its client NO [UNAVAILABLE] and the client
	// retries. It is sized like a node's client limit, not to throttle.
	DefaultMaxLinks = 20000
)

// Config configures a Node.
type Config struct {
	// DB is the PostgreSQL URL (pgx syntax; pool settings such as
	// pool_max_conns may be given in it).
	DB string
	// Node names this node; it must be unique in the cluster and stable
	// across restarts (a restart under the same name takes its accounts
	// back without waiting for the old lease).
	Node string
	// Listen is the internal link address (-cluster-listen); Advertise is
	// the address the other nodes dial, Listen when empty.
	Listen, Advertise string
	// Secret authenticates internal links (package cluster/link).
	Secret []byte
	// LeaseTTL is how long a lease lasts without renewal; the lease is
	// renewed every LeaseTTL/3. Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// ReleaseAfter is how long an account may go without a local session
	// before it is evicted here and released, so that the cluster's
	// accounts follow their clients. Default DefaultReleaseAfter.
	ReleaseAfter time.Duration
	// MaxLinks bounds the internal links served at once. Default
	// DefaultMaxLinks.
	MaxLinks int
	// ObserveDB, when set, is told the duration of each database operation
	// (op: register, renew, live, lookup, acquire, mark_used, release,
	// hold, release_all, forget_unused, sweep_unused, drop_lease).
	ObserveDB func(op string, d time.Duration)
	// OnLiveNodes, when set, is told the number of live nodes whenever it
	// changes (found at the lease renewals), so that bounds meant for the
	// whole cluster can be shared out: the proxy's pool keeps
	// pool-idle-total idle upstream connections across the cluster, each
	// node its share.
	OnLiveNodes func(n int)
	// Logger receives the node's events; slog.Default() when nil.
	Logger *slog.Logger
}

// Host is what a Node needs of the proxy server (proxy.Server implements
// it): serving sessions handed over by other nodes, and ending the sessions
// and forgetting the in-memory state of accounts that leave this node.
type Host interface {
	// ServeHandoff serves a session handed over on conn; it returns when
	// the session ends.
	ServeHandoff(conn net.Conn, h proxy.Handoff)
	// Evict ends the sessions of account ("" for all) with BYE
	// [UNAVAILABLE] text and forgets the account's in-memory state.
	Evict(ctx context.Context, account, text string) error
}

// ErrFenced is wrapped by the errors of Hold: this node does not (or no
// longer) own the account with a valid lease, so the write must not happen.
var ErrFenced = errors.New("cluster: write fenced: this node does not own the account")

// ErrClosed is returned by Serve after Close or Abandon.
var ErrClosed = errors.New("cluster: node closed")

// Stats is a snapshot of a Node for metrics.
type Stats struct {
	// Owned counts the accounts this node owns now.
	Owned int
	// Held counts the owned accounts kept by a hold (HoldAccount: push's
	// watchers of registered accounts), with or without sessions.
	Held int
	// Sessions counts the sessions served here of owned accounts (local
	// logins and sessions handed over by other nodes).
	Sessions int
	// ForwardedOut counts the sessions of this node's clients that are
	// forwarded to another node now.
	ForwardedOut int64
	// HandoffsIn counts the sessions accepted from other nodes since start.
	HandoffsIn int64
	// Takeovers counts accounts taken from a node whose lease had expired.
	Takeovers int64
	// FencedWrites counts writes refused because the account had been
	// taken over (Hold found another epoch).
	FencedWrites int64
	// RenewFailures counts lease renewals that failed.
	RenewFailures int64
	// Fencings counts the times this node fenced itself.
	Fencings int64
	// Fenced tells whether the node is fenced now; Draining whether it is
	// draining.
	Fenced, Draining bool
}

// NodeStatus describes one node, for `lemonproxy cluster status`.
type NodeStatus struct {
	Name, Addr string
	// Started is when the node's current incarnation registered.
	Started time.Time
	// LeaseAge is the time since the last renewal; LeaseRemaining the time
	// left on the lease (negative: expired), both by the database's clock.
	LeaseAge, LeaseRemaining time.Duration
	// Live tells whether the lease is valid.
	Live     bool
	Draining bool
	// Owned counts the lp_owners rows naming the node (for a dead node:
	// the accounts the others will take over as their clients return).
	Owned int
	// Sessions and Forwarded are the node's counts at its last renewal
	// (Stats.Sessions and Stats.ForwardedOut).
	Sessions, Forwarded int
}
