package devicetoken_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/cluster/pgdata"
	"github.com/lemonproxy/lemonproxy/cluster/pgstate"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// pushCluster is proxy nodes with push in this process, in front of one
// Dovecot, sharing one real PostgreSQL database (cluster mode).
type pushCluster struct {
	t      *testing.T
	db     string
	dc     *dovecottest.Server
	g      *gateway
	secret []byte
	ttl    time.Duration
}

// pushNode is one node: its proxy with METADATA and push, its cluster
// membership and its shared stores.
type pushNode struct {
	name  string
	p     *imaptest.Proxy
	node  *cluster.Node
	push  *push.Extension
	data  *pgdata.Store
	state *pgstate.Store
	ln    net.Listener
	done  chan struct{}
	dead  bool
	// crashed: the cluster node was abandoned (stop does not again).
	crashed bool
}

func (c *pushCluster) start(name string) *pushNode {
	t := c.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := cluster.Open(ctx, cluster.Config{
		DB: c.db, Node: name, Listen: ln.Addr().String(), Secret: c.secret, LeaseTTL: c.ttl,
		// Far shorter than the test: an account kept only by its
		// sessions would be released many times over.
		ReleaseAfter: 100 * time.Millisecond,
		Logger:       imaptest.Logger().With("node", name),
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	state, err := pgstate.Open(ctx, node.Pool(), node)
	if err != nil {
		node.Abandon()
		t.Fatal(err)
	}
	data, err := pgdata.Open(ctx, node.Pool(), node)
	if err != nil {
		node.Abandon()
		t.Fatal(err)
	}
	pe, err := push.New(push.Config{MasterUser: masterUser, MasterPassword: masterPass,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: imaptest.Logger().With("node", name)})
	if err != nil {
		t.Fatal(err)
	}
	dt, err := devicetoken.New(pe, devicetoken.Config{Gateway: c.g.url()})
	if err != nil {
		t.Fatal(err)
	}
	pe.AddChannel(dt)
	meta := metadata.New(metadata.Config{Owned: map[string]metadata.EntryOwner{devicetoken.Entry: dt}})
	cfg := proxy.Config{Extensions: []proxy.Extension{meta, pe}, AccountData: data, Router: node}
	cfg.Hub.Store = state
	n := &pushNode{name: name, node: node, push: pe, data: data, state: state, ln: ln, done: make(chan struct{})}
	n.p = imaptest.StartProxy(t, c.dc.Addr, cfg)
	node.Attach(n.p.Srv)
	go func() { defer close(n.done); node.Serve(ln) }()
	// Before the proxy's own cleanup (cleanups run last first).
	t.Cleanup(func() { n.stop(true) })
	return n
}

// stop ends the node: gracefully (its accounts released, its lease
// dropped), or as a crash: the node stops renewing and releases nothing
// (the others wait out its lease), and its proxy stops with it.
func (n *pushNode) stop(graceful bool) {
	if n.dead {
		return
	}
	n.dead = true
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		n.node.Close(ctx)
		cancel()
	} else if !n.crashed {
		n.node.Abandon()
	}
	n.p.Shutdown()
	<-n.done
	n.state.Close()
	n.data.Close()
}

// account is the account key of user.
func (c *pushCluster) account(user string) string { return c.dc.Addr + "\x00" + user }

// seeEachOther waits until every node's list of live nodes holds all of
// them: for each of many accounts exactly one node prefers it.
func seeEachOther(t *testing.T, nodes ...*pushNode) {
	t.Helper()
	waitUntil(t, 15*time.Second, "the nodes to see each other", func() bool {
		for i := range 32 {
			k := fmt.Sprintf("probe%d", i)
			n := 0
			for _, x := range nodes {
				if x.node.PreferredHere(k) {
					n++
				}
			}
			if n != 1 {
				return false
			}
		}
		return true
	})
}

// userFor returns a user name (created at Dovecot) whose account the
// node want prefers.
func (c *pushCluster) userFor(want *pushNode, prefix string) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("%s%d", prefix, i)
		if want.node.PreferredHere(c.account(u)) {
			c.dc.AddUser(c.t, u, "pw")
			return u
		}
	}
}

// waitUntil polls cond until it holds, failing after d (cluster steps
// wait out leases and renewals: longer than imaptest.WaitFor's bound).
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pendingRecords counts the pending pushes of account in the shared store.
func pendingRecords(t *testing.T, data accountdata.Store, account string) int {
	t.Helper()
	n, err := accountdata.Count(data, account, push.Prefix+"q/")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeviceTokenCluster: push in cluster mode, two nodes and then a
// third, real PostgreSQL, Dovecot legacy with a master user. A token
// registered through node A (the account's preferred node) is watched by
// A, which holds the account past the release loop; an outside APPEND is
// one POST; another account's mail none; a token registered through A for
// an account B prefers is handed to B, which watches it. A is killed with
// a push pending (the gateway failing): B takes the account over once A's
// lease has expired, delivers the pending push, and pushes new mail. A
// drain of B moves both accounts to the node that joined, which pushes
// them.
func TestDeviceTokenCluster(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	pg := pgtest.Start(t)
	secret := make([]byte, 32)
	rand.Read(secret)
	// A 3 s lease: short for the takeover, long enough that a node on a
	// loaded machine under the race detector does not fence itself (it
	// would drop and take its accounts again: pushes may then come twice,
	// by design, and the exact counts below would not hold).
	c := &pushCluster{t: t, db: pg.NewDatabase(t), dc: dc, g: newGateway(t, nil), secret: secret, ttl: 3 * time.Second}
	a, b := c.start("a"), c.start("b")
	var all []*pushNode
	t.Cleanup(func() {
		if t.Failed() {
			// A node that fenced itself (a loaded machine stalling its
			// renewals) drops and takes its accounts again: pushes
			// may then come twice, by design.
			for _, n := range all {
				t.Logf("node %s: %+v; push %+v", n.name, n.node.Stats(), n.push.Stats())
			}
		}
	})
	all = append(all, a, b)
	seeEachOther(t, a, b)
	ua := c.userFor(a, "ua") // preferred by a
	ub := c.userFor(b, "ub") // preferred by b
	dc.AddUser(t, "other", "pw")

	// Both registrations through a: ub's session is handed over to b.
	for _, u := range []string{ua, ub} {
		cl := imaptest.Login(t, a.p.Addr, u, "pw")
		cl.MustOK(`SETMETADATA "" (/private/devicetoken "tok-` + u + `")`)
		cl.MustOK("LOGOUT")
		cl.Close()
	}
	waitCursor(t, a.data, c.account(ua), "INBOX")
	waitCursor(t, a.data, c.account(ub), "INBOX")
	if !a.node.Owns(c.account(ua)) || !b.node.Owns(c.account(ub)) {
		t.Fatalf("owners: a owns %s: %v, b owns %s: %v", ua, a.node.Owns(c.account(ua)), ub, b.node.Owns(c.account(ub)))
	}

	dc.Append(t, ua, "pw", "INBOX", nil, msg("one"))
	dc.Append(t, "other", "pw", "INBOX", nil, msg("not registered"))
	c.g.expect(t, 0, []string{"tok-" + ua}, 10*time.Second, quiet)
	// The quiet wait was many release periods: the holds kept both.
	if st := a.node.Stats(); !a.node.Owns(c.account(ua)) || st.Held != 1 || st.Sessions != 0 {
		t.Fatalf("a after the release periods: owns %s %v, %+v", ua, a.node.Owns(c.account(ua)), st)
	}
	if st := b.node.Stats(); !b.node.Owns(c.account(ub)) || st.Held != 1 {
		t.Fatalf("b: %+v", st)
	}
	if a.push.Stats().Sent["devicetoken"] != 1 || b.push.Stats().Sent["devicetoken"] != 0 {
		t.Fatalf("sent: a %v, b %v", a.push.Stats().Sent, b.push.Stats().Sent)
	}
	dc.Append(t, ub, "pw", "INBOX", nil, msg("for b"))
	c.g.expect(t, 1, []string{"tok-" + ub}, 10*time.Second, quiet)
	if b.push.Stats().Sent["devicetoken"] != 1 {
		t.Fatalf("b sent %v", b.push.Stats().Sent)
	}

	// A push pending at a when it dies.
	c.g.setStatus(http.StatusServiceUnavailable)
	dc.Append(t, ua, "pw", "INBOX", nil, msg("while the gateway is down"))
	waitUntil(t, 15*time.Second, "a failed attempt and the pending push stored", func() bool {
		return c.g.failures() > 0 && pendingRecords(t, b.data, c.account(ua)) == 1
	})
	// Killed: the node stops renewing and releases nothing, then its
	// proxy goes with its push (and the push waiting in its memory).
	killed := time.Now()
	a.node.Abandon()
	a.crashed = true
	// a renews no more: its lease ends where the database has it now.
	var left float64
	if err := b.node.Pool().QueryRow(context.Background(),
		`SELECT EXTRACT(EPOCH FROM lease_until - now()) FROM lp_nodes WHERE name = 'a'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(time.Duration(left * float64(time.Second)))
	a.stop(false)
	c.g.setStatus(http.StatusOK)
	waitUntil(t, 20*time.Second, "b to take "+ua+" over", func() bool { return b.node.Owns(c.account(ua)) })
	took := time.Now()
	t.Logf("a killed; b holds %s %v after the kill, %v after a's lease expired",
		ua, took.Sub(killed).Round(time.Millisecond), took.Sub(expiry).Round(time.Millisecond))
	if after := took.Sub(expiry); after > c.ttl {
		t.Errorf("b took the account %v after a's lease expired: more than the TTL %v", after, c.ttl)
	}
	// The pending push is b's to deliver, once.
	c.g.expect(t, 2, []string{"tok-" + ua}, 10*time.Second, quiet)
	if got := b.push.Stats().Sent["devicetoken"]; got != 2 {
		t.Fatalf("b sent %d pushes, want 2 (the pending one delivered by b)", got)
	}
	waitUntil(t, 10*time.Second, "the delivered push removed from the store", func() bool {
		return pendingRecords(t, b.data, c.account(ua)) == 0
	})
	if st := b.node.Stats(); st.Held != 2 || st.Takeovers != 1 {
		t.Fatalf("b after the takeover: %+v", st)
	}

	// New mail after the takeover: b pushes it.
	dc.Append(t, ua, "pw", "INBOX", nil, msg("after the takeover"))
	c.g.expect(t, 3, []string{"tok-" + ua}, 10*time.Second, quiet)
	if got := b.push.Stats().Sent["devicetoken"]; got != 3 {
		t.Fatalf("b sent %d pushes, want 3", got)
	}

	// A node joins; b is drained: both accounts move to the new node,
	// which watches and pushes them.
	n3 := c.start("c")
	all = append(all, n3)
	seeEachOther(t, b, n3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.Drain(ctx, c.db, "b"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "c to hold both accounts", func() bool {
		return n3.node.Owns(c.account(ua)) && n3.node.Owns(c.account(ub)) && n3.node.Stats().Held == 2
	})
	if st := b.node.Stats(); st.Held != 0 || st.Owned != 0 {
		t.Fatalf("b after its drain: %+v", st)
	}
	dc.Append(t, ua, "pw", "INBOX", nil, msg("after the drain"))
	dc.Append(t, ub, "pw", "INBOX", nil, msg("after the drain"))
	c.g.expect(t, 4, []string{"tok-" + ua, "tok-" + ub}, 10*time.Second, quiet)
	if got := n3.push.Stats().Sent["devicetoken"]; got != 2 {
		t.Fatalf("c sent %d pushes, want 2", got)
	}
}
