package load

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
)

// clusterEnv turns on TestClusterBench, the runs behind
// docs/cluster-benchmark.md.
const clusterEnv = "LEMONPROXY_CLUSTER_BENCH"

// TestClusterBench measures cluster mode as a provider would run it: three
// "lemonproxy serve" processes (built from ./cmd/lemonproxy) sharing one
// private PostgreSQL (internal/pgtest), in front of one private Dovecot
// (internal/dovecottest, Legacy profile), behind HAProxy (Debian's
// package: mode tcp, balance roundrobin, no stickiness); and beside it the
// same load on one node without a database. As root, with an open-file
// limit of 20,000:
//
//	LEMONPROXY_CLUSTER_BENCH=all go test -run TestClusterBench -v -timeout 3h ./load/
//
// Environment:
//
//	LEMONPROXY_CLUSTER_BENCH     comma-separated: idle (figures 1-3: 10,000
//	                             idle sessions, upstream connections, memory
//	                             per node, forwarded latency; cluster and one
//	                             node), takeover (figure 4), resync (figures 5
//	                             and 6: node switch on 100,000 messages,
//	                             PostgreSQL bytes and WAL); or all
//	LEMONPROXY_CLUSTER_SESSIONS  idle sessions (10000)
//	LEMONPROXY_CLUSTER_ACCOUNTS  accounts (2000)
//	LEMONPROXY_CLUSTER_RUNS      runs of each point (3)
//	LEMONPROXY_CLUSTER_FIRSTRUN  number of the first run, for the file names (1)
//	LEMONPROXY_CLUSTER_TAKEOVER  sessions of the takeover runs (3000, 5 per account)
//	LEMONPROXY_CLUSTER_MESSAGES  messages of the resync mailbox (100000)
//	LEMONPROXY_CLUSTER_OUT       where the JSON results go (../docs/load/cluster)
//	LEMONPROXY_CLUSTER_POOL_TOTAL -pool-idle-total of each node (default: the
//	                             proxy's, 1,000 per node)
func TestClusterBench(t *testing.T) {
	spec := os.Getenv(clusterEnv)
	if spec == "" {
		t.Skipf("set %s to run the cluster benchmark (see docs/cluster-benchmark.md)", clusterEnv)
	}
	items := map[string]bool{}
	for f := range strings.SplitSeq(spec, ",") {
		items[strings.TrimSpace(f)] = true
	}
	if items["all"] {
		items["idle"], items["takeover"], items["resync"] = true, true, true
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatal("haproxy not found: apt-get install -y haproxy")
	}
	b := &cbench{
		out:      envOr("LEMONPROXY_CLUSTER_OUT", "../docs/load/cluster"),
		sessions: envInt(t, "LEMONPROXY_CLUSTER_SESSIONS", 10000),
		accounts: envInt(t, "LEMONPROXY_CLUSTER_ACCOUNTS", 2000),
		runs:     envInt(t, "LEMONPROXY_CLUSTER_RUNS", 3),
		takeover: envInt(t, "LEMONPROXY_CLUSTER_TAKEOVER", 3000),
		messages: envInt(t, "LEMONPROXY_CLUSTER_MESSAGES", 100000),
	}
	if os.Getenv("LEMONPROXY_CLUSTER_POOL_TOTAL") != "" {
		b.poolTotal = envInt(t, "LEMONPROXY_CLUSTER_POOL_TOTAL", 0)
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		t.Fatal(err)
	}
	raiseInotify(t, b.sessions)
	b.bin = buildProxy(t)
	firstRun := envInt(t, "LEMONPROXY_CLUSTER_FIRSTRUN", 1)
	for r := firstRun; r < firstRun+b.runs; r++ {
		if items["idle"] {
			// The cluster and its baseline one after the other, so that
			// they meet similar machines.
			t.Run(fmt.Sprintf("idle-cluster-r%d", r), func(t *testing.T) { b.idle(t, 3, r) })
			t.Run(fmt.Sprintf("idle-single-r%d", r), func(t *testing.T) { b.idle(t, 0, r) })
		}
		if items["takeover"] {
			t.Run(fmt.Sprintf("takeover-r%d", r), func(t *testing.T) { b.takeoverRun(t, r) })
		}
	}
	if items["resync"] {
		t.Run("resync-cluster", func(t *testing.T) { b.resync(t, 3) })
		t.Run("resync-single", func(t *testing.T) { b.resync(t, 0) })
	}
}

func envInt(t *testing.T, k string, def int) int {
	v := os.Getenv(k)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", k, v)
	}
	return n
}

type cbench struct {
	out, bin                                     string
	sessions, accounts, runs, takeover, messages int
	poolTotal                                    int // -pool-idle-total of each cluster node (0: the default)
}

// save writes one run's figures as JSON and logs them.
func (b *cbench) save(t *testing.T, name string, v map[string]any) {
	v["run"] = name
	v["time"] = time.Now().UTC().Format(time.RFC3339)
	v["loadavg-end"] = LoadAvg1()
	data, _ := json.MarshalIndent(v, "", "  ")
	t.Logf("%s:\n%s", name, data)
	if err := os.WriteFile(filepath.Join(b.out, name+".json"), append(data, '\n'), 0o644); err != nil {
		t.Error(err)
	}
}

// cenv is one set-up: Dovecot, and either one node alone (no database)
// or PostgreSQL, several nodes and HAProxy in front of them.
type cenv struct {
	t      *testing.T
	bin    string
	dir    string
	dc     *dovecottest.Server
	master int
	pg     *pgtest.Server
	db     string
	secret string
	ttl    time.Duration
	nodes  []*cnode
	front  string // where clients connect: HAProxy, or the one node
	accts  []Account
}

type cnode struct {
	name, addr, maddr string
	args              []string
	cmd               *exec.Cmd
	done              chan struct{}
}

func (n *cnode) metricsURL() string { return "http://" + n.maddr + "/metrics" }
func (n *cnode) pid() int           { return n.cmd.Process.Pid }

// startEnv starts Dovecot with accounts u00000... (passwords p00000...)
// and nodes nodes behind HAProxy (0: one node without a database, which
// clients reach directly).
func (b *cbench) startEnv(t *testing.T, nodes, accounts int, ttl time.Duration) *cenv {
	e := &cenv{t: t, bin: b.bin, dir: t.TempDir(), ttl: ttl}
	e.dc = dovecottest.Start(t, dovecottest.Legacy)
	accts, err := PatternAccounts("u%05d", "p%05d", accounts)
	if err != nil {
		t.Fatal(err)
	}
	users := make(map[string]string, len(accts))
	for _, a := range accts {
		users[a.User] = a.Pass
	}
	e.dc.AddUsers(t, users)
	e.accts = accts
	e.master = dovecotMaster(t, e.dc)
	t.Cleanup(func() { waitFewProcs(t, e.master, 20, 5*time.Minute) })
	if nodes == 0 {
		n := &cnode{name: "single", addr: freeAddr(t), maddr: freeAddr(t)}
		n.args = []string{"serve", "-listen", n.addr, "-upstream", e.dc.Addr, "-data", filepath.Join(e.dir, "data-single"),
			"-log-level", "warn", "-metrics", n.maddr}
		e.nodes = []*cnode{n}
		e.startNode(n)
		e.front = n.addr
		return e
	}
	pg, err := pgtest.StartServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	e.pg = pg
	if e.db, err = pg.CreateDatabase(); err != nil {
		t.Fatal(err)
	}
	e.secret = filepath.Join(e.dir, "secret")
	if err := os.WriteFile(e.secret, []byte(strconv.FormatInt(rand.Int64(), 36)+"-clusterbench-secret-"+strconv.FormatInt(rand.Int64(), 36)), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= nodes; i++ {
		name := "n" + strconv.Itoa(i)
		n := &cnode{name: name, addr: freeAddr(t), maddr: freeAddr(t)}
		n.args = []string{"serve", "-listen", n.addr, "-upstream", e.dc.Addr, "-data", filepath.Join(e.dir, "data-"+name),
			"-log-level", "warn", "-metrics", n.maddr,
			"-cluster-db", e.db, "-node", name, "-cluster-listen", "127.0.0.1:0", "-cluster-secret", e.secret,
			"-cluster-lease-ttl", ttl.String()}
		if b.poolTotal > 0 {
			n.args = append(n.args, "-pool-idle-total", strconv.Itoa(b.poolTotal))
		}
		e.nodes = append(e.nodes, n)
		e.startNode(n)
	}
	e.front = e.startHAProxy()
	// Each node learns the live nodes at its lease renewals: until every
	// node has renewed once after the last one joined, the first nodes
	// would keep the accounts whose preferred node they do not yet know.
	time.Sleep(ttl + 2*time.Second)
	return e
}

// startNode starts (or restarts) a node's process and waits for its
// greeting.
func (e *cenv) startNode(n *cnode) {
	t := e.t
	logf, err := os.OpenFile(filepath.Join(e.dir, n.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.bin, n.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	done := n.done
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() { n.stop(syscall.SIGTERM, time.Minute) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", n.addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "* OK") {
				return
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(filepath.Join(e.dir, n.name+".log"))
			t.Fatalf("node %s did not greet on %s; log:\n%s", n.name, n.addr, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the node's process and waits for it to end (SIGKILL after
// timeout).
func (n *cnode) stop(sig syscall.Signal, timeout time.Duration) {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(timeout):
		n.cmd.Process.Kill()
		<-n.done
	}
}

func (n *cnode) alive() bool {
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// startHAProxy runs HAProxy in front of the nodes: TCP, round robin, no
// stickiness, timeouts long enough for IDLE, a TCP health check each
// second (a dead node is out after two failed checks), and a failed
// connection retried and redispatched to another node.
//
// HAProxy holds two descriptors per session, and this machine caps a
// process at 20,000 open files (the hard limit cannot be raised here):
// so two HAProxy processes share the listening port (SO_REUSEPORT,
// HAProxy's default on Linux; the kernel spreads connections between
// them), each with at most 9,000 connections.
func (e *cenv) startHAProxy() string {
	t := e.t
	front := freeAddr(t)
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 9000
defaults
    mode tcp
    maxconn 9000
    timeout connect 5s
    timeout client 2h
    timeout server 2h
    retries 3
    option redispatch
listen imap
    bind %s
    balance roundrobin
`, front)
	for _, n := range e.nodes {
		fmt.Fprintf(&b, "    server %s %s check inter 1s fall 2 rise 2\n", n.name, n.addr)
	}
	cfg := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range haproxies {
		logf, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("haproxy%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("haproxy", "-db", "-f", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
		deadline := time.Now().Add(15 * time.Second)
		for {
			select {
			case <-done:
				data, _ := os.ReadFile(logf.Name())
				t.Fatalf("haproxy %d ended:\n%s", i, data)
			default:
			}
			c, err := rdial(front, 5*time.Second)
			if err == nil {
				c.close()
				break
			}
			if time.Now().After(deadline) {
				data, _ := os.ReadFile(logf.Name())
				t.Fatalf("haproxy on %s: %v\n%s", front, err, data)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Make sure the process is up before the next binds.
		time.Sleep(500 * time.Millisecond)
		select {
		case <-done:
			data, _ := os.ReadFile(logf.Name())
			t.Fatalf("haproxy %d ended:\n%s", i, data)
		default:
		}
	}
	return front
}

// haproxies is how many HAProxy processes share the front port.
const haproxies = 2

// owner returns the name of the node that owns user's account now, by the
// database ("" if none).
func (e *cenv) owner(ctx context.Context, conn *pgx.Conn, user string) string {
	var node *string
	err := conn.QueryRow(ctx, `SELECT node FROM lp_owners WHERE account = $1`, []byte(e.dc.Addr+"\x00"+user)).Scan(&node)
	if err != nil || node == nil {
		return ""
	}
	return *node
}

func (e *cenv) pgconn(ctx context.Context) *pgx.Conn {
	conn, err := pgx.Connect(ctx, e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *cenv) node(name string) *cnode {
	for _, n := range e.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// nodeMem is one node's memory and connections.
type nodeMem struct {
	RSS       int64   `json:"rss"`
	HeapLive  float64 `json:"heap-live"`
	HeapInuse float64 `json:"heap-inuse"`
	Upstream  int     `json:"upstream-connections"`
	Sessions  float64 `json:"sessions"`
	Forwarded float64 `json:"forwarded-sessions"`
	Owned     float64 `json:"accounts-owned"`
	Accepted  float64 `json:"sessions-accepted"`
}

func (e *cenv) measureNode(n *cnode) nodeMem {
	m := nodeMem{RSS: rssOf(n.pid()), Upstream: establishedTo(e.dc.Addr, nil, n.pid())}
	v, err := scrapeSums(n.metricsURL())
	if err != nil {
		e.t.Logf("node %s: %v", n.name, err)
	}
	m.HeapLive, m.HeapInuse = v[heapLiveMetric], v[heapInuseMetric]
	m.Sessions, m.Forwarded, m.Owned = v["lemonproxy_sessions"], v["lemonproxy_cluster_forwarded_sessions"], v["lemonproxy_cluster_accounts_owned"]
	m.Accepted = v["lemonproxy_sessions_opened_total"]
	return m
}

// scrapeSums reads a metrics page, each family summed over its series.
func scrapeSums(url string) (map[string]float64, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				out[name] += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] += m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				out[name] += m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// phaseWatch is a progress writer that tells when the load reached a
// phase.
type phaseWatch struct {
	holding chan struct{}
	once    sync.Once
}

func (p *phaseWatch) Write(b []byte) (int, error) {
	os.Stderr.Write(b)
	if strings.Contains(string(b), " holding") {
		p.once.Do(func() { close(p.holding) })
	}
	return len(b), nil
}

// idle is figures 1-3: b.sessions idle sessions of b.accounts accounts
// through HAProxy to nodes nodes (0: directly to one node), upstream
// connections and memory per node, then the latency of forwarded and
// owner sessions while they idle.
func (b *cbench) idle(t *testing.T, nodes, run int) {
	quiet := waitQuiet(t)
	e := b.startEnv(t, nodes, b.accounts, 10*time.Second)
	label := "cluster"
	if nodes == 0 {
		label = "single"
	}
	before := map[string]nodeMem{}
	for _, n := range e.nodes {
		before[n.name] = e.measureNode(n)
	}
	sources, _ := ParseSources("127.0.0.2-127.0.0.9")
	pw := &phaseWatch{holding: make(chan struct{})}
	cfg := Config{
		Scenario: "idle", Target: e.front, Accounts: e.accts, Clients: b.sessions, Sources: sources,
		Upstream: e.dc.Addr, DovecotPID: e.master, Duration: 60 * time.Second, Settle: 10 * time.Second,
		Progress: pw, ProgressEvery: time.Second, Label: label,
	}
	if nodes == 0 {
		cfg.TargetPID, cfg.TargetMetrics = e.nodes[0].pid(), e.nodes[0].metricsURL()
	}
	type ran struct {
		res *Result
		err error
	}
	resc := make(chan ran, 1)
	go func() {
		res, err := Run(context.Background(), cfg)
		resc <- ran{res, err}
	}()
	out := map[string]any{"label": label, "nodes": max(nodes, 1), "sessions": b.sessions, "accounts": b.accounts, "machine": quiet}
	var r ran
	select {
	case <-pw.holding:
		after := map[string]nodeMem{}
		per := map[string]any{}
		var rss, heap int64
		up := 0
		for _, n := range e.nodes {
			a := e.measureNode(n)
			after[n.name] = a
			bm := before[n.name]
			accepted := a.Accepted - bm.Accepted
			per[n.name] = map[string]any{
				"before": bm, "after": a,
				"rss-growth": a.RSS - bm.RSS, "heap-live-growth": a.HeapLive - bm.HeapLive,
				// A node holds the sessions it serves (its own clients'
				// and those handed to it) and the forwarded ones (its
				// clients', served elsewhere): per session held.
				"sessions-held":              a.Sessions + a.Forwarded,
				"rss-per-session-held":       float64(a.RSS-bm.RSS) / max(a.Sessions+a.Forwarded, 1),
				"heap-live-per-session-held": (a.HeapLive - bm.HeapLive) / max(a.Sessions+a.Forwarded, 1),
				"upstream-connections":       a.Upstream - bm.Upstream,
				"accepted-during-run":        accepted,
			}
			rss += a.RSS - bm.RSS
			heap += int64(a.HeapLive - bm.HeapLive)
			up += a.Upstream - bm.Upstream
		}
		out["per-node"] = per
		out["rss-growth-all-nodes-per-session"] = float64(rss) / float64(b.sessions)
		out["heap-live-growth-all-nodes-per-session"] = float64(heap) / float64(b.sessions)
		out["upstream-connections-all-nodes"] = up
		out["upstream-connections-per-session-all-nodes"] = float64(up) / float64(b.sessions)
		out["latency"] = e.latencyProbe(t, 20, 200, 10)
	case r = <-resc:
		t.Errorf("the load ended before holding: %v", r.err)
	}
	if r.res == nil && r.err == nil {
		r = <-resc
	}
	if r.res != nil {
		ms := map[string]float64{}
		for _, m := range r.res.Metrics {
			ms[m.Name] = m.Value
		}
		out["load"] = ms
		out["load-errors"] = r.res.Errors
	}
	if r.err != nil {
		out["load-error"] = r.err.Error()
	}
	if nodes > 0 && b.poolTotal > 0 {
		label += fmt.Sprintf("-pool%d", b.poolTotal)
		out["label"], out["pool-idle-total-per-node"] = label, b.poolTotal
	}
	b.save(t, fmt.Sprintf("idle-%s-%d-r%d", label, b.sessions, run), out)
}

// latencyProbe measures, for accounts accounts, NOOP round trips (noops
// each) and push latency (appends each: an APPEND from outside, from its
// tagged OK to EXISTS at the client) of a session on the account's owner
// beside one on another node (forwarded). On one node, only "owner".
func (e *cenv) latencyProbe(t *testing.T, accounts, noops, appends int) map[string]any {
	ctx := context.Background()
	var conn *pgx.Conn
	if e.pg != nil {
		conn = e.pgconn(ctx)
	}
	var mu sync.Mutex
	rtt := map[string][]float64{}
	push := map[string][]float64{}
	var errs []string
	var wg sync.WaitGroup
	for i := range accounts {
		a := e.accts[(i*97+13)%len(e.accts)]
		wg.Go(func() {
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s: %v", a.User, err))
				mu.Unlock()
			}
			targets := map[string]string{"owner": e.nodes[0].addr}
			if conn != nil {
				mu.Lock()
				o := e.owner(ctx, conn, a.User)
				mu.Unlock()
				if o == "" {
					fail(errors.New("no owner"))
					return
				}
				targets["owner"] = e.node(o).addr
				for _, n := range e.nodes {
					if n.name != o {
						targets["forwarded"] = n.addr
						break
					}
				}
			}
			cls := map[string]*rconn{}
			for kind, addr := range targets {
				c, err := rdial(addr, 30*time.Second)
				if err != nil {
					fail(err)
					return
				}
				defer c.close()
				if _, err := c.must("LOGIN " + a.User + " " + a.Pass); err != nil {
					fail(err)
					return
				}
				if _, err := c.must("SELECT INBOX"); err != nil {
					fail(err)
					return
				}
				cls[kind] = c
			}
			kinds := slices.Sorted(func(yield func(string) bool) {
				for k := range cls {
					if !yield(k) {
						return
					}
				}
			})
			for range noops {
				for _, k := range kinds {
					start := time.Now()
					if _, err := cls[k].must("NOOP"); err != nil {
						fail(err)
						return
					}
					d := ms(time.Since(start))
					mu.Lock()
					rtt[k] = append(rtt[k], d)
					mu.Unlock()
				}
			}
			for _, k := range kinds {
				if err := cls[k].startIdle(); err != nil {
					fail(err)
					return
				}
			}
			out, err := rdial(e.dc.Addr, 30*time.Second)
			if err != nil {
				fail(err)
				return
			}
			defer out.close()
			if _, err := out.must("LOGIN " + a.User + " " + a.Pass); err != nil {
				fail(err)
				return
			}
			for j := range appends {
				msg := fmt.Sprintf("From: probe@example.org\r\nSubject: probe %d\r\n\r\nlatency probe\r\n", j)
				if _, err := out.must(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg)); err != nil {
					fail(err)
					return
				}
				ok := time.Now()
				type got struct {
					k   string
					d   float64
					err error
				}
				ch := make(chan got, len(kinds))
				for _, k := range kinds {
					go func() {
						err := cls[k].waitExists(15 * time.Second)
						ch <- got{k, ms(time.Since(ok)), err}
					}()
				}
				for range kinds {
					g := <-ch
					if g.err != nil {
						fail(fmt.Errorf("%s push: %w", g.k, g.err))
						return
					}
					mu.Lock()
					push[g.k] = append(push[g.k], g.d)
					mu.Unlock()
				}
				time.Sleep(300 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	res := map[string]any{"accounts": accounts, "errors": errs}
	for k, v := range rtt {
		s := summarize(v)
		res["noop-"+k] = map[string]any{"n": len(v), "p50-ms": s.p50, "p99-ms": s.p99, "max-ms": s.max}
	}
	for k, v := range push {
		s := summarize(v)
		res["push-"+k] = map[string]any{"n": len(v), "p50-ms": s.p50, "p99-ms": s.p99, "max-ms": s.max}
	}
	return res
}

// rconn is a plain IMAP client that counts the bytes it reads.
type rconn struct {
	nc   net.Conn
	r    *bufio.Reader
	in   atomic.Int64
	tag  int
	last uint32 // highest EXISTS seen
}

func rdial(addr string, timeout time.Duration) (*rconn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := newRconn(nc)
	nc.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.line()
	if err != nil {
		nc.Close()
		return nil, err
	}
	if !strings.HasPrefix(line, "* OK") {
		nc.Close()
		return nil, fmt.Errorf("greeting %q", line)
	}
	return c, nil
}

func (c *rconn) close() { c.nc.Close() }

// line reads one response line, literals included, without CRLF.
func (c *rconn) line() (string, error) {
	var b strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		c.in.Add(int64(len(l)))
		if err != nil {
			return "", err
		}
		b.WriteString(l)
		s := strings.TrimRight(l, "\r\n")
		if strings.HasSuffix(s, "}") {
			if i := strings.LastIndexByte(s, '{'); i >= 0 {
				if n, err := strconv.Atoi(strings.TrimSuffix(s[i+1:len(s)-1], "+")); err == nil {
					buf := make([]byte, n)
					if _, err := io.ReadFull(c.r, buf); err != nil {
						return "", err
					}
					c.in.Add(int64(n))
					b.Write(buf)
					continue
				}
			}
		}
		out := strings.TrimRight(b.String(), "\r\n")
		c.noteExists(out)
		return out, nil
	}
}

func (c *rconn) noteExists(l string) {
	f := strings.Fields(l)
	if len(f) == 3 && f[0] == "*" && strings.EqualFold(f[2], "EXISTS") {
		if n, err := strconv.ParseUint(f[1], 10, 32); err == nil {
			c.last = max(c.last, uint32(n))
		}
	}
}

// cmd sends a command (which may hold non-synchronizing literals) and
// returns its responses, the tagged one last.
func (c *rconn) cmd(s string) ([]string, error) {
	c.tag++
	tag := "t" + strconv.Itoa(c.tag)
	c.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := io.WriteString(c.nc, tag+" "+s+"\r\n"); err != nil {
		return nil, err
	}
	var lines []string
	for {
		l, err := c.line()
		if err != nil {
			return lines, err
		}
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			return lines, nil
		}
	}
}

// must is cmd that wants a tagged OK.
func (c *rconn) must(s string) ([]string, error) {
	lines, err := c.cmd(s)
	if err != nil {
		return lines, err
	}
	if f := strings.Fields(lines[len(lines)-1]); len(f) < 2 || f[1] != "OK" {
		cmd, _, _ := strings.Cut(s, "\r\n")
		return lines, &rstatusError{cmd: truncate(cmd, 60), line: lines[len(lines)-1]}
	}
	return lines, nil
}

type rstatusError struct{ cmd, line string }

func (e *rstatusError) Error() string { return e.cmd + ": " + e.line }

func (c *rconn) startIdle() error {
	c.tag++
	c.nc.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(c.nc, "t"+strconv.Itoa(c.tag)+" IDLE\r\n"); err != nil {
		return err
	}
	for {
		l, err := c.line()
		if err != nil {
			return err
		}
		if strings.HasPrefix(l, "+") {
			c.nc.SetDeadline(time.Time{})
			return nil
		}
		if strings.HasPrefix(l, "t") {
			return fmt.Errorf("IDLE: %q", l)
		}
	}
}

// waitExists reads until an EXISTS above the last one seen.
func (c *rconn) waitExists(timeout time.Duration) error {
	want := c.last + 1
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	defer c.nc.SetReadDeadline(time.Time{})
	for c.last < want {
		if _, err := c.line(); err != nil {
			return err
		}
	}
	return nil
}

func bufioReader(nc net.Conn) *bufio.Reader { return bufio.NewReaderSize(nc, 64<<10) }
