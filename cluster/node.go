package cluster

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// A Node is this process's membership of the cluster: its lease, the
// accounts it owns, and the routing of logins. It implements proxy.Router.
type Node struct {
	cfg   Config
	log   *slog.Logger
	pool  *pgxpool.Pool
	inc   int64 // incarnation: random per Open
	addr  string
	links transport

	ctx    context.Context // ended by Close and Abandon
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the node

	host atomic.Pointer[hostBox]

	mu         sync.Mutex
	validUntil time.Time // local monotonic end of the lease; zero before the first renewal
	fenced     bool      // the lease ran out: no routes, no writes until a renewal succeeds
	fenceEvict bool      // the fencing's Evict is still running
	superseded bool      // another incarnation took the name: fenced for good
	draining   bool
	// drainRetry: the drain's final release failed (the database slow
	// or away); the next renewal runs the drain again.
	drainRetry bool
	closed     bool
	owned      map[string]*account
	acquiring  map[string]chan struct{} // acquisitions in flight, closed when done
	live       []peer                   // live nodes at the last renewal
	listeners  map[net.Listener]struct{}
	linkConns  map[net.Conn]struct{}
	// forwards are the sessions forwarded to other nodes (cutForwardsLocked).
	forwards  map[*forwardedConn]struct{}
	renewGate chan struct{} // test hook: renewals wait while non-nil
	renewed   chan struct{} // closed and replaced at each successful renewal (tests)
	placement chan struct{} // closed and replaced at each change of placement (PlacementChanged)
	watchdog  *time.Timer

	linkSlots chan struct{}

	takeovers, fencedWrites, handoffsIn, renewFailures, fencings, forwardedOut atomic.Int64
}

type hostBox struct{ h Host }

// account is an account this node owns.
type account struct {
	epoch int64
	refs  int       // sessions served here
	idle  time.Time // when refs and holders last fell to 0
	// holders are the holds of the account (HoldAccount): each keeps it
	// here as a session does, and is told when the account leaves.
	holders map[*holder]struct{}
	// leaving is set while the account is evicted and released; gone is
	// closed when that is over (Route waits for it before resolving again).
	leaving bool
	gone    chan struct{}
	once    sync.Once
	// used: the row is marked used in the database (lp_owners.used), or
	// is being marked: a login succeeded, or something held the account.
	// An account released unused leaves no row (releaseRow): a client
	// logging in as made-up names must not grow lp_owners for good.
	// marked: the row is known to be marked used in the database (a
	// committed fact: acquire found it so, or a mark was committed);
	// until then each state write marks it (Hold).
	used, marked bool
}

func newAccount(epoch int64) *account {
	return &account{epoch: epoch, gone: make(chan struct{})}
}

// finish closes gone.
func (a *account) finish() { a.once.Do(func() { close(a.gone) }) }

// peer is a live node.
type peer struct {
	name, addr string
	draining   bool
}

// Open connects to the database, migrates the cluster's tables, registers
// this node with a fresh incarnation and starts renewing its lease. Attach
// a Host before serving logins or links.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if err := CheckConfig(cfg); err != nil {
		return nil, err
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.ReleaseAfter <= 0 {
		cfg.ReleaseAfter = DefaultReleaseAfter
	}
	if cfg.MaxLinks <= 0 {
		cfg.MaxLinks = DefaultMaxLinks
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	addr := cfg.Advertise
	if addr == "" {
		addr = cfg.Listen
	}
	pcfg, err := parseDB(cfg.DB)
	if err != nil {
		return nil, err
	}
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > cfg.LeaseTTL/3 {
		// A connection attempt to an unreachable database must not outlive
		// a renewal period.
		pcfg.ConnConfig.ConnectTimeout = cfg.LeaseTTL / 3
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.Node),
		pool:      pool,
		inc:       int64(binary.LittleEndian.Uint64(b[:]) >> 1),
		addr:      addr,
		links:     linkTransport{secret: cfg.Secret},
		owned:     make(map[string]*account),
		acquiring: make(map[string]chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		linkConns: make(map[net.Conn]struct{}),
		forwards:  make(map[*forwardedConn]struct{}),
		renewed:   make(chan struct{}),
		placement: make(chan struct{}),
		linkSlots: make(chan struct{}, cfg.MaxLinks),
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	start := time.Now()
	err = n.observe("register", func() error {
		_, err := pool.Exec(ctx, sqlRegister, cfg.Node, addr, n.inc, cfg.LeaseTTL.Milliseconds())
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("cluster: registering node %s: %w", cfg.Node, err)
	}
	// An earlier incarnation's unused rows: this one owns nothing yet.
	if err := n.forgetUnusedMine(ctx, pool); err != nil {
		n.log.Warn("cluster: deleting the unused rows of an earlier incarnation", "err", err)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.mu.Lock()
	n.validUntil = start.Add(n.lifetime())
	n.watchdog = time.AfterFunc(n.lifetime(), n.checkLease)
	n.mu.Unlock()
	if err := n.refreshLive(ctx); err != nil {
		n.Abandon()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n.wg.Add(2)
	go n.renewLoop()
	go n.idleLoop()
	n.log.Info("cluster node registered", "addr", addr, "incarnation", n.inc, "lease_ttl", cfg.LeaseTTL)
	return n, nil
}

// Attach sets the proxy server the node serves hand-offs on and evicts
// accounts from. Call it before Serve and before the first Route.
func (n *Node) Attach(h Host) { n.host.Store(&hostBox{h}) }

// Owns tells whether this node owns account now (for tests and
// operators' tools; the database is the authority).
func (n *Node) Owns(account string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.owned[account]
	return ok && !a.leaving && !n.fenced
}

// Pool is the node's database pool, shared with the state store
// (cluster/pgstate) so that one URL configures both.
func (n *Node) Pool() *pgxpool.Pool { return n.pool }

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Node }

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	st := Stats{Owned: len(n.owned), Fenced: n.fenced || n.superseded, Draining: n.draining}
	for _, a := range n.owned {
		st.Sessions += a.refs
		if len(a.holders) > 0 {
			st.Held++
		}
	}
	n.mu.Unlock()
	st.ForwardedOut = n.forwardedOut.Load()
	st.HandoffsIn = n.handoffsIn.Load()
	st.Takeovers = n.takeovers.Load()
	st.FencedWrites = n.fencedWrites.Load()
	st.RenewFailures = n.renewFailures.Load()
	st.Fencings = n.fencings.Load()
	return st
}

// Close leaves the cluster gracefully: it stops taking links and logins,
// evicts every session of this node (they reconnect elsewhere), releases
// the owned accounts and ends the lease at once so that no node waits out
// the TTL. It returns when all that is done or ctx ends (then what remains
// is left to the lease's expiry, as after a crash).
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.closeListenersLocked()
	var lost []func()
	for _, a := range n.owned {
		lost = append(lost, a.detachHoldersLocked()...)
	}
	n.mu.Unlock()
	tellLost(lost)

	var errs []error
	if h := n.hostOf(); h != nil {
		if err := h.Evict(ctx, "", "this proxy node is shutting down"); err != nil {
			errs = append(errs, fmt.Errorf("cluster: evicting sessions: %w", err))
		}
	}
	// The hand-offs served here end with their sessions, evicted above;
	// their links are cut below if ctx ends first.
	n.mu.Lock()
	n.owned = make(map[string]*account)
	n.mu.Unlock()
	if err := n.releaseAll(ctx); err != nil {
		errs = append(errs, fmt.Errorf("cluster: releasing accounts: %w", err))
	}
	if err := n.observe("drop_lease", func() error {
		_, err := n.pool.Exec(ctx, sqlDropLease, n.cfg.Node, n.inc)
		return err
	}); err != nil {
		errs = append(errs, fmt.Errorf("cluster: dropping the lease: %w", err))
	}
	n.stop()
	n.log.Info("cluster node left")
	return errors.Join(errs...)
}

// Abandon stops the node as a crash would, for tests: the goroutines stop,
// the links are cut, and nothing is released or written: the others take
// the accounts over when the lease has expired.
func (n *Node) Abandon() {
	n.mu.Lock()
	n.closed = true
	n.closeListenersLocked()
	n.mu.Unlock()
	n.stop()
}

// stop ends the goroutines and links and closes the pool.
func (n *Node) stop() {
	n.cancel()
	n.mu.Lock()
	if n.watchdog != nil {
		n.watchdog.Stop()
	}
	for c := range n.linkConns {
		c.Close()
	}
	if n.renewGate != nil {
		close(n.renewGate)
		n.renewGate = nil
	}
	n.mu.Unlock()
	n.wg.Wait()
	n.pool.Close()
}

func (n *Node) closeListenersLocked() {
	for ln := range n.listeners {
		ln.Close()
	}
}

func (n *Node) hostOf() Host {
	if b := n.host.Load(); b != nil {
		return b.h
	}
	return nil
}

// goLocked runs f on a goroutine of the node unless the node is closed;
// n.mu is held.
func (n *Node) goLocked(f func()) bool {
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// observe times a database operation for Config.ObserveDB.
func (n *Node) observe(op string, f func() error) error {
	if n.cfg.ObserveDB == nil {
		return f()
	}
	t := time.Now()
	err := f()
	n.cfg.ObserveDB(op, time.Since(t))
	return err
}

// dbContext bounds a database operation made for a login or a link: a
// database that hangs must not hold them past a lease's TTL.
func (n *Node) dbContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, n.cfg.LeaseTTL)
}

// CheckConfig returns the error Open would return for cfg before it
// connects: the node's name (Node) and the database URL (DB). A reload
// (SIGHUP) checks them with it, so that it refuses a file the next start
// would refuse.
func CheckConfig(cfg Config) error {
	if err := checkName(cfg.Node); err != nil {
		return err
	}
	_, err := parseDB(cfg.DB)
	return err
}

// parseDB parses the database URL.
func parseDB(url string) (*pgxpool.Config, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("cluster: database URL: %w", err)
	}
	return pcfg, nil
}

// checkName checks a node name as the internal links carry it: 1 to 255
// bytes of printable ASCII without spaces.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return errors.New("cluster: a node name of 1 to 255 bytes is needed")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("cluster: node name %q: only printable ASCII without spaces", name)
		}
	}
	return nil
}
