package integration

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/cluster/pgstate"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// A testCluster is several proxy nodes in this process, in front of one
// Dovecot, sharing one real PostgreSQL database: the whole of cluster mode
// but the process boundary (cmd/lemonproxy's cluster tests cross that one:
// kill -9, SIGSTOP).
type testCluster struct {
	t      *testing.T
	pg     *pgtest.Server
	db     string
	dc     *dovecottest.Server
	secret []byte
	ttl    time.Duration
	nodes  map[string]*testNode
	mu     sync.Mutex
	// edit, if set, changes each node's proxy configuration.
	edit func(*proxy.Config)
	// releaseAfter is the nodes' cluster-release-after (default an
	// hour: accounts stay where they are during a test).
	releaseAfter time.Duration
}

// testNode is one node: its proxy server, its cluster node and the
// address clients dial.
type testNode struct {
	name  string
	addr  string
	proxy *imaptest.Proxy
	node  *cluster.Node
	store *pgstate.Store
	once  sync.Once
	down  atomic.Bool // stopped: its memory says nothing any more
}

// startCluster starts PostgreSQL and n nodes named n1..nN in front of dc,
// with lease TTL ttl.
func startCluster(t *testing.T, dc *dovecottest.Server, n int, ttl time.Duration) *testCluster {
	t.Helper()
	return startClusterWith(t, dc, n, ttl, nil)
}

// startClusterWith is startCluster with each node's proxy configuration
// changed by edit.
func startClusterWith(t *testing.T, dc *dovecottest.Server, n int, ttl time.Duration, edit func(*proxy.Config)) *testCluster {
	t.Helper()
	pg := pgtest.Start(t)
	secret := make([]byte, 32)
	rand.Read(secret)
	c := &testCluster{t: t, pg: pg, db: pg.NewDatabase(t), dc: dc, secret: secret, ttl: ttl, nodes: map[string]*testNode{}, edit: edit}
	for i := 1; i <= n; i++ {
		c.startNode("n" + strconv.Itoa(i))
	}
	return c
}

// startNode starts (or restarts) the node called name.
func (c *testCluster) startNode(name string) *testNode {
	t := c.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := cluster.Open(ctx, cluster.Config{
		DB: c.db, Node: name, Listen: ln.Addr().String(), Secret: c.secret,
		LeaseTTL: c.ttl, ReleaseAfter: cmp.Or(c.releaseAfter, time.Hour), Logger: imaptest.Logger().With("node", name),
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	store, err := pgstate.Open(ctx, node.Pool(), node)
	if err != nil {
		node.Abandon()
		ln.Close()
		t.Fatal(err)
	}
	n := &testNode{name: name, node: node, store: store}
	cfg := proxy.Config{
		Extensions: []proxy.Extension{idle.New(), condstore.New()},
		Router:     node,
		Hub:        hubConfig(store),
	}
	if c.edit != nil {
		c.edit(&cfg)
	}
	n.proxy = imaptest.StartProxy(t, c.dc.Addr, cfg)
	n.addr = n.proxy.Addr
	node.Attach(n.proxy.Srv)
	served := make(chan struct{})
	go func() { defer close(served); node.Serve(ln) }()
	// Cleanups run last first: this one, before the proxy's shutdown.
	t.Cleanup(func() {
		n.stop(true)
		<-served
	})
	c.mu.Lock()
	c.nodes[name] = n
	c.mu.Unlock()
	return n
}

// stop ends the node: gracefully (its accounts released, its lease
// dropped), or as a crash (nothing released: the others wait out its
// lease). Either way its clients are disconnected.
func (n *testNode) stop(graceful bool) {
	n.once.Do(func() {
		n.down.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if graceful {
			n.node.Close(ctx)
		} else {
			n.node.Abandon()
		}
		n.proxy.Shutdown()
		n.store.Close()
	})
}

// node returns the node called name.
func (c *testCluster) node(name string) *testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}

// owner returns the node that owns user's account now, by the database,
// or "" if none does.
func (c *testCluster) owner(user string) string {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, n := range c.nodes {
		if !n.down.Load() && n.node.Owns(c.dc.Addr+"\x00"+user) {
			return name
		}
	}
	return ""
}

// hubConfig is the hub configuration of the tests' nodes.
func hubConfig(store *pgstate.Store) hub.Config {
	return hub.Config{Store: store, PollInterval: 300 * time.Millisecond}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loginRetry logs in through addr, retrying while the cluster answers NO
// [UNAVAILABLE] (an account between owners) as a client would, and
// returns the client and how long it took.
func loginRetry(t *testing.T, addr, user, pass string, within time.Duration) (*imaptest.Client, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		c := imaptest.Dial(t, addr)
		c.MustGreetOK()
		lines := c.Cmd("LOGIN " + user + " " + pass)
		tagged := lines[len(lines)-1]
		if strings.Contains(tagged, " OK ") {
			return c, time.Since(start)
		}
		c.Close()
		if !strings.Contains(tagged, "[UNAVAILABLE]") {
			t.Fatalf("login through %s: %q", addr, lines)
		}
		if time.Since(start) > within {
			t.Fatalf("login through %s still refused after %v: %q", addr, within, lines)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterSharedWatcher: sessions of one account on three nodes share
// one watcher and one pool, those of the account's owner, as on a single
// node; a message appended outside reaches every session.
func TestClusterSharedWatcher(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	c := startCluster(t, dc, 3, 5*time.Second)
	var idlers []*imaptest.Client
	for _, name := range []string{"n1", "n2", "n3"} {
		for range 3 {
			cl := imaptest.Login(t, c.node(name).addr, "alice", "alicepass")
			cl.MustOK("SELECT INBOX")
			cl.Write("i IDLE\r\n")
			if line := cl.ReadLine(); !strings.HasPrefix(line, "+ ") {
				t.Fatalf("IDLE through %s: %q", name, line)
			}
			idlers = append(idlers, cl)
		}
	}
	owner := c.owner("alice")
	if owner == "" {
		t.Fatal("nobody owns alice with her sessions open")
	}
	watchers := 0
	for _, name := range []string{"n1", "n2", "n3"} {
		w := c.node(name).proxy.Srv.Hub().Watchers()
		watchers += w
		if name != owner && w != 0 {
			t.Errorf("node %s (not the owner %s) runs %d watchers", name, owner, w)
		}
	}
	if watchers != 1 {
		t.Fatalf("%d watchers in the cluster, want 1", watchers)
	}
	// Login connections go back to the owner's pool, which keeps two once
	// the surplus grace has passed: a watcher and two pooled, as one node.
	waitUntil(t, 10*time.Second, "upstream connections down to one node's 3", func() bool { return upstreamConns(t, dc.Addr) <= 3 })
	dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(1, "to every node"))
	for i, cl := range idlers {
		if line := cl.ReadLine(); line != "* 1 EXISTS" {
			t.Fatalf("session %d: %q, want * 1 EXISTS", i, line)
		}
	}
	if n := upstreamConns(t, dc.Addr); n > 3 {
		t.Fatalf("%d upstream connections for 9 sessions on 3 nodes, want at most 3 (one node's)", n)
	}
}

// resyncBytes is the size of a command's answer on the wire.
func resyncBytes(lines []string) int {
	n := 0
	for _, l := range lines {
		n += len(l) + 2
	}
	return n
}

// uidRange returns the UIDs from..to.
func uidRange(from, to uint32) []uint32 {
	var out []uint32
	for u := from; u <= to; u++ {
		out = append(out, u)
	}
	return out
}

// TestClusterNodeSwitch: a QRESYNC client that synced through one node
// and comes back through another after 15 changes in a 2,000-message
// mailbox gets exactly the changes: through a node that forwards it to the
// owner, and through a node that took the account over from the owner,
// which starts from the state in PostgreSQL.
func TestClusterNodeSwitch(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	const n = 2000
	dc.FillMailbox(t, "alice", "Big", n, func(i int) []byte { return sampleMessage(i+1, "message "+strconv.Itoa(i+1)) })
	c := startCluster(t, dc, 3, 5*time.Second)
	uids := uidRange(1, n)

	first := csLogin(t, c.node("n1").addr, "QRESYNC")
	r := first.selectMailbox("SELECT Big", uids)
	known := r.highestModSeq(t)
	uv := r.codes["UIDVALIDITY"][0]
	first.MustOK("LOGOUT")
	owner := c.owner("alice")

	// 15 changes made outside: 10 flag changes, 5 expunges.
	d := csDirect(t, dc, "Big")
	d.MustOK("UID STORE 1:10 +FLAGS (\\Flagged)")
	d.MustOK("UID STORE 1991:1995 +FLAGS (\\Deleted)")
	d.MustOK("EXPUNGE")
	d.Close()

	resync := func(through string) (csResp, int) {
		t.Helper()
		cl := csLogin(t, c.node(through).addr, "QRESYNC")
		defer cl.Close()
		lines := cl.Cmd(fmt.Sprintf("SELECT Big (QRESYNC (%s %d))", uv, known))
		if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
			t.Fatalf("QRESYNC through %s: %q", through, lines)
		}
		r := csClassify(t, lines)
		csWantUIDs(t, "VANISHED (EARLIER) through "+through, r.earlier, uidRange(1991, 1995)...)
		csWantUIDs(t, "FETCH through "+through, r.fetchUIDs(), uidRange(1, 10)...)
		for _, f := range r.fetches {
			csWantFlags(t, "flags", f.flags, `\flagged`)
		}
		return r, resyncBytes(lines)
	}
	other := "n1"
	if owner == other {
		other = "n2"
	}
	viaForward, size := resync(other)
	t.Logf("resync through %s (forwarded to the owner %s): %d bytes", other, owner, size)
	if size > 2048 {
		t.Errorf("resync of 15 changes: %d bytes, want at most 2 KB", size)
	}

	// The owner leaves; whoever takes the account starts from PostgreSQL.
	c.node(owner).stop(true)
	next := "n1"
	for next == owner {
		next = "n" + strconv.Itoa(int(next[1]-'0')+1)
	}
	viaTakeover, size := resync(next)
	t.Logf("resync through %s after %s left: %d bytes, owner now %s", next, owner, size, c.owner("alice"))
	if size > 2048 {
		t.Errorf("resync of 15 changes after the switch: %d bytes, want at most 2 KB", size)
	}
	if a, b := viaForward.highestModSeq(t), viaTakeover.highestModSeq(t); a != b {
		t.Errorf("HIGHESTMODSEQ %d through the owner, %d after the takeover: the same state must give the same numbers", a, b)
	}
	fa, fb := viaForward.byUID(t), viaTakeover.byUID(t)
	for uid, f := range fa {
		if fb[uid].modseq != f.modseq {
			t.Errorf("UID %d: MODSEQ %d through the owner, %d after the takeover", uid, f.modseq, fb[uid].modseq)
		}
	}
}

// TestClusterCrashTakeover: the owner of an account dies (no release, no
// lease drop) while its clients IDLE through every node and changes are
// made; the clients come back through the other nodes, which take the
// account over once the dead node's lease has expired (by the database's
// clock), and each resync reports every change, with mod-sequences that
// only went up.
func TestClusterCrashTakeover(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	uids := csSeed(t, dc, "INBOX", 5)
	const ttl = 2 * time.Second
	c := startCluster(t, dc, 3, ttl)
	type idler struct {
		c     *csClient
		known uint64
		via   string
	}
	var idlers []idler
	var uv string
	for _, name := range []string{"n1", "n2", "n3"} {
		cl := csLogin(t, c.node(name).addr, "QRESYNC")
		r := cl.selectMailbox("SELECT INBOX", uids)
		uv = r.codes["UIDVALIDITY"][0]
		cl.Write("i IDLE\r\n")
		if line := cl.ReadLine(); !strings.HasPrefix(line, "+ ") {
			t.Fatalf("IDLE: %q", line)
		}
		idlers = append(idlers, idler{cl, r.highestModSeq(t), name})
	}
	owner := c.owner("alice")
	c.node(owner).stop(false) // a crash: nothing released
	crashed := time.Now()

	d := csDirect(t, dc, "INBOX")
	added := csAppend(t, d, "INBOX", 2)
	d.MustOK(fmt.Sprintf("UID STORE %d +FLAGS (\\Answered)", uids[0]))
	d.MustOK(fmt.Sprintf("UID STORE %d +FLAGS (\\Deleted)", uids[1]))
	d.MustOK("EXPUNGE")
	d.Close()

	var takeover time.Duration
	for i, id := range idlers {
		id.c.Close()
		via := id.via
		if via == owner {
			via = "n1"
			if via == owner {
				via = "n2"
			}
		}
		cl, _ := loginRetry(t, c.node(via).addr, "alice", "alicepass", 4*ttl)
		if i == 0 {
			takeover = time.Since(crashed)
		}
		cs := &csClient{Client: cl, t: t}
		cs.MustOK("ENABLE QRESYNC")
		lines := cs.Cmd(fmt.Sprintf("SELECT INBOX (QRESYNC (%s %d))", uv, id.known))
		if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
			t.Fatalf("resync through %s: %q", via, lines)
		}
		r := csClassify(t, lines)
		csWantUIDs(t, "VANISHED (EARLIER)", r.earlier, uids[1])
		csWantUIDs(t, "FETCH", r.fetchUIDs(), append([]uint32{uids[0]}, added...)...)
		if h := r.highestModSeq(t); h <= id.known {
			t.Fatalf("HIGHESTMODSEQ went from %d to %d across the takeover", id.known, h)
		}
		cl.Close()
	}
	t.Logf("crash of %s: first login served again after %v (lease TTL %v)", owner, takeover, ttl)
	if takeover > ttl+3*time.Second {
		t.Errorf("takeover took %v, want within the TTL %v plus the reconcile", takeover, ttl)
	}
	if now := c.owner("alice"); now == owner || now == "" {
		t.Fatalf("alice owned by %q after the crash of %s", now, owner)
	}
}

// TestClusterDatabaseDown: PostgreSQL stopped and started while changes
// keep coming from outside: while it is down no change that could not be
// stored reaches a client, logins are refused cleanly with NO
// [UNAVAILABLE], the nodes fence themselves within their lease (BYE
// [UNAVAILABLE]); when it is back everything recovers by itself and a
// resync reports every change made meanwhile, and nothing else.
func TestClusterDatabaseDown(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	uids := csSeed(t, dc, "INBOX", 3)
	const ttl = 2 * time.Second
	c := startCluster(t, dc, 2, ttl)
	cl := csLogin(t, c.node("n1").addr, "QRESYNC")
	r := cl.selectMailbox("SELECT INBOX", uids)
	known, uv := r.highestModSeq(t), r.codes["UIDVALIDITY"][0]
	cl.Write("i IDLE\r\n")
	if line := cl.ReadLine(); !strings.HasPrefix(line, "+ ") {
		t.Fatalf("IDLE: %q", line)
	}

	// The load: an outside change every 100 ms until told to stop, a new
	// message or a flag on one of the first messages, recorded.
	changed := map[uint32]bool{}
	stop := make(chan struct{})
	done := make(chan struct{})
	d := csDirect(t, dc, "INBOX")
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if i%2 == 0 {
				msg := sampleMessage(100+i, "during the outage")
				lines := d.Cmd(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg))
				if m := csAppendUIDRE.FindStringSubmatch(imaptest.Tagged(lines)); m != nil {
					uid, _ := strconv.ParseUint(m[1], 10, 32)
					changed[uint32(uid)] = true
				}
			} else {
				uid := uids[i/2%len(uids)]
				d.Cmd(fmt.Sprintf("UID STORE %d +FLAGS (\\Flagged)", uid))
				changed[uid] = true
			}
		}
	}()

	if err := c.pg.Stop(); err != nil {
		t.Fatal(err)
	}
	// The watcher sees the changes but cannot store them: the client must
	// hear nothing of them, only the BYE of the fenced node.
	deadline := time.Now().Add(ttl + 5*time.Second)
	for {
		line, err := cl.TryReadLine(time.Until(deadline))
		if err != nil {
			t.Fatalf("no BYE within the lease: %v", err)
		}
		if strings.HasPrefix(line, "* BYE [UNAVAILABLE]") {
			break
		}
		t.Fatalf("told %q while the database was down", line)
	}
	for _, n := range []string{"n1", "n2"} {
		other := imaptest.Dial(t, c.node(n).addr)
		other.MustGreetOK()
		if lines := other.Cmd("LOGIN alice alicepass"); !strings.Contains(imaptest.Tagged(lines), "NO [UNAVAILABLE]") {
			t.Fatalf("login through %s with the database down: %q", n, lines)
		}
		other.Close()
	}
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	back, after := loginRetry(t, c.node("n2").addr, "alice", "alicepass", 30*time.Second)
	t.Logf("logins served again %v after the database came back", after)
	time.Sleep(500 * time.Millisecond) // a few changes after the recovery too
	close(stop)
	<-done
	d.Close()

	cs := &csClient{Client: back, t: t}
	cs.MustOK("ENABLE QRESYNC")
	lines := cs.Cmd(fmt.Sprintf("SELECT INBOX (QRESYNC (%s %d))", uv, known))
	rr := csClassify(t, lines)
	if len(rr.earlier) != 0 {
		t.Fatalf("VANISHED after the outage, nothing was expunged: %q", lines)
	}
	var want []uint32
	for uid := range changed {
		want = append(want, uid)
	}
	slices.Sort(want)
	csWantUIDs(t, "FETCH after the outage (every change, nothing else)", rr.fetchUIDs(), want...)
	truth := csDirectFlags(t, dc, "INBOX")
	for _, f := range rr.fetches {
		csWantFlags(t, fmt.Sprintf("UID %d", f.uid), f.flags, csNormFlags(truth[f.uid])...)
	}
	if rr.highestModSeq(t) <= known {
		t.Fatalf("HIGHESTMODSEQ did not grow: %q", lines)
	}
	t.Logf("%d changes during the run, all reported once", len(want))
}

// TestFailedLoginsLeaveNoOwnerRows: logins route (and so take their
// account, a row in lp_owners for a name never seen) before the upstream
// checks the credentials, and the rows stayed for good: a client trying
// made-up names grew the shared database without bound (a reviewer's
// finding). Once released, the account of a login that never succeeded
// leaves no row; that of a login that did keeps it, free.
func TestFailedLoginsLeaveNoOwnerRows(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	c := &testCluster{t: t, dc: dc, ttl: 2 * time.Second, nodes: map[string]*testNode{}, releaseAfter: 100 * time.Millisecond}
	c.pg = pgtest.Start(t)
	c.db = c.pg.NewDatabase(t)
	c.secret = make([]byte, 32)
	rand.Read(c.secret)
	n := c.startNode("n1")
	for _, l := range []struct{ user, pass, want string }{
		{"nosuchuser1", "wrong", "NO"}, {"nosuchuser2", "wrong", "NO"}, {"alice", "wrong", "NO"}, {"alice", "alicepass", "OK"},
	} {
		cl := imaptest.Dial(t, n.addr)
		cl.MustGreetOK()
		if got := imaptest.Tagged(cl.Cmd("LOGIN " + l.user + " " + l.pass)); !strings.HasPrefix(got, l.want) {
			t.Fatalf("LOGIN %s %s: %q, want %s", l.user, l.pass, got, l.want)
		}
		cl.Close()
	}
	imaptest.WaitFor(t, "every account released", func() bool { return n.node.Stats().Owned == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := n.node.Pool().Query(ctx, `SELECT account, node IS NULL FROM lp_owners ORDER BY account`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var acct []byte
		var free bool
		if err := rows.Scan(&acct, &free); err != nil {
			t.Fatal(err)
		}
		user := acct[bytes.LastIndexByte(acct, 0)+1:] // the key is address NUL user
		got = append(got, fmt.Sprintf("%s free=%v", user, free))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !strings.HasSuffix(got[0], "alice free=true") {
		t.Errorf("lp_owners after the releases: %q, want alice's row alone, free", got)
	}
}
