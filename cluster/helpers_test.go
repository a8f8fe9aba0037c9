package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/internal/pgtest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

var shared struct {
	once sync.Once
	pg   *pgtest.Server
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.pg != nil {
		shared.pg.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newDB returns a fresh database on the package's shared server.
func newDB(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped under -short")
	}
	shared.once.Do(func() { shared.pg, shared.err = pgtest.StartServer() })
	if errors.Is(shared.err, pgtest.ErrNotInstalled) && os.Getenv(pgtest.RequireEnv) != "1" {
		t.Skip(shared.err)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.pg.NewDatabase(t)
}

// fakeHost records evictions and serves hand-offs by answering the
// login's tag and then holding the stream until it is evicted or closed.
type fakeHost struct {
	mu       sync.Mutex
	sessions map[net.Conn]string
	evicts   chan string // every Evict's account, "" for all
	// node, if set, is told of each login it serves, as the proxy tells
	// it (proxy.LoginReporter).
	node *Node
	// frozen: Evict does nothing, as a process that is stopped (SIGSTOP,
	// a frozen VM) or cut off: its sessions' connections stay open and
	// silent.
	frozen bool
}

func newFakeHost() *fakeHost {
	return &fakeHost{sessions: make(map[net.Conn]string), evicts: make(chan string, 10000)}
}

func (f *fakeHost) ServeHandoff(conn net.Conn, h proxy.Handoff) {
	f.mu.Lock()
	f.sessions[conn] = h.Account
	node := f.node
	f.mu.Unlock()
	if node != nil {
		node.LoginSucceeded(h.Account)
	}
	fmt.Fprintf(conn, "%s OK served\r\n", h.Tag)
	var b [64]byte
	for {
		if _, err := conn.Read(b[:]); err != nil {
			break
		}
	}
	f.mu.Lock()
	delete(f.sessions, conn)
	f.mu.Unlock()
}

func (f *fakeHost) Evict(ctx context.Context, account, text string) error {
	f.mu.Lock()
	if f.frozen {
		f.mu.Unlock()
		return nil
	}
	for c, a := range f.sessions {
		if account == "" || a == account {
			fmt.Fprintf(c, "* BYE [UNAVAILABLE] %s\r\n", text)
			c.Close()
		}
	}
	f.mu.Unlock()
	f.evicts <- account
	return nil
}

// waitEvict waits for an Evict of account.
func (f *fakeHost) waitEvict(t *testing.T, account string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case a := <-f.evicts:
			if a == account {
				return
			}
		case <-deadline:
			t.Fatalf("no eviction of %q within %v", account, within)
		}
	}
}

// testNode is a Node of a test with its host and link listener.
type testNode struct {
	*Node
	host *fakeHost
	ln   net.Listener
	done chan error
}

func startNode(t *testing.T, url, name string, mod func(*Config)) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{DB: url, Node: name, Listen: ln.Addr().String(), Secret: []byte("a cluster secret for the tests, 48 bytes long..."),
		LeaseTTL: time.Second, ReleaseAfter: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Open(ctx, cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	if testTransport != nil {
		n.links = testTransport
	}
	tn := &testNode{Node: n, host: newFakeHost(), ln: ln, done: make(chan error, 1)}
	tn.host.node = n
	n.Attach(tn.host)
	go func() { tn.done <- n.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
		if err := <-tn.done; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve of %s: %v", name, err)
		}
	})
	return tn
}

// waitRenewals waits until each node has renewed its lease twice (so that
// a renewal started after the call has completed: their live lists are
// fresh).
func waitRenewals(t *testing.T, nodes ...*testNode) {
	t.Helper()
	for _, n := range nodes {
		for range 2 {
			n.mu.Lock()
			ch := n.renewed
			n.mu.Unlock()
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("node %s did not renew its lease", n.Name())
			}
		}
	}
}

// login routes a login of account on n and reads the owner's answer when
// forwarded. It returns the node that serves it ("" when refused), the
// conn (nil when local) and the release (nil when forwarded). A local
// login succeeds (LoginSucceeded), as a forwarded one does at its owner.
func login(t *testing.T, n *testNode, account string) (conn net.Conn, release func(), err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, release, err = n.Route(ctx, proxy.Handoff{Account: account, Tag: "A1", User: account, Pass: "p", Via: n.Name()})
	if err == nil && conn == nil {
		n.LoginSucceeded(account)
	}
	if err != nil || conn == nil {
		return
	}
	line, rerr := bufio.NewReader(conn).ReadString('\n')
	if rerr != nil || !strings.HasPrefix(line, "A1 OK") {
		t.Fatalf("forwarded login of %s: %q %v", account, line, rerr)
	}
	return
}

// owner reads the owner row of account.
func owner(t *testing.T, n *testNode, account string) (node string, epoch int64) {
	t.Helper()
	var nn *string
	err := n.Pool().QueryRow(context.Background(), `SELECT node, epoch FROM lp_owners WHERE account = $1`, []byte(account)).Scan(&nn, &epoch)
	if err != nil {
		t.Fatalf("owner of %s: %v", account, err)
	}
	if nn != nil {
		node = *nn
	}
	return
}

// testAdminPool opens an operator's pool on url (adminPool), closed when
// the test ends.
func testAdminPool(t *testing.T, ctx context.Context, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := adminPool(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// waitLeaseExpired waits until the database's clock has passed name's
// lease: the database itself sleeps the remaining time, so expiry is
// measured by the clock that decides it.
func waitLeaseExpired(t *testing.T, url, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := testAdminPool(t, ctx, url)
	var expired bool
	err := pool.QueryRow(ctx, `SELECT pg_sleep(GREATEST(0, EXTRACT(EPOCH FROM lease_until - now())) + 0.01) IS NULL FROM lp_nodes WHERE name = $1`, name).Scan(&expired)
	if err == nil {
		err = pool.QueryRow(ctx, `SELECT lease_until <= now() FROM lp_nodes WHERE name = $1`, name).Scan(&expired)
	}
	if err != nil || !expired {
		t.Fatalf("lease of %s: expired %v, %v", name, expired, err)
	}
}

// testTransport, when set, replaces package link (the routing tests ran
// on a stand-in before the link was written).
var testTransport transport
