package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/metrics"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) {
	if os.Getenv(seriesEnv) != "" {
		os.Exit(m.Run()) // the series leaves Dovecot's processes to end in their own time
	}
	goleak.VerifyTestMain(m)
}

// env is the proxy in front of go-imap's in-memory server (no IDLE,
// CONDSTORE, QRESYNC or COMPRESS of its own), with the extensions
// cmd/lemonproxy gives every session, and accounts u0, u1, ... (password
// p0, p1, ...).
type env struct {
	up    *memupstream.Server
	proxy *imaptest.Proxy
	accts []Account
}

func newEnv(t *testing.T, accounts int) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	accts, err := PatternAccounts("u%d", "p%d", accounts)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accts {
		if err := up.AddUser(a.User, a.Pass); err != nil {
			t.Fatal(err)
		}
	}
	// The extension set of cmd/lemonproxy's extensions(), with its
	// defaults; the in-memory server has no IDLE, so the watchers poll,
	// quickly for a test.
	exts := []proxy.Extension{
		&idle.Extension{},
		compress.New(),
		condstore.New(),
		notify.New(notify.Config{Accounts: accountwatch.Config{PollInterval: time.Second}}),
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: exts,
		Hub:        hub.Config{PollInterval: 50 * time.Millisecond},
	})
	return &env{up: up, proxy: p, accts: accts}
}

func (e *env) config(scenario string) Config {
	return Config{
		Scenario: scenario, Target: e.proxy.Addr, Outside: e.up.Addr, Accounts: e.accts,
		Upstream: e.up.Addr, Timeout: 10 * time.Second, Settle: 300 * time.Millisecond,
		RunTimeout: 2 * time.Minute, Label: "test",
	}
}

func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	if testing.Verbose() {
		cfg.Progress = os.Stderr
		cfg.ProgressEvery = time.Second
	}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var b strings.Builder
	res.WriteTable(&b)
	t.Logf("\n%s", b.String())
	return res
}

func metric(t *testing.T, res *Result, name string) float64 {
	t.Helper()
	v, ok := res.Metric(name)
	if !ok {
		t.Fatalf("no metric %q", name)
	}
	return v
}

func noErrors(t *testing.T, res *Result) {
	t.Helper()
	if res.Errors != 0 {
		t.Errorf("%d errors: %v %q", res.Errors, res.ErrorKinds, res.ErrorSamples)
	}
}

func TestIdle(t *testing.T) {
	for _, comp := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", comp), func(t *testing.T) {
			e := newEnv(t, 2)
			cfg := e.config("idle")
			cfg.Clients, cfg.Duration, cfg.Compress = 6, 300*time.Millisecond, comp
			cfg.TargetPID = os.Getpid() // the proxy runs in the test
			ms := httptest.NewServer(metrics.New().Handler())
			defer ms.Close()
			cfg.TargetMetrics = ms.URL + "/metrics"
			cfg.Sources, _ = ParseSources("127.0.0.2-127.0.0.3")
			res := run(t, cfg)
			noErrors(t, res)
			if n := metric(t, res, "sessions"); n != 6 {
				t.Errorf("sessions = %v, want 6", n)
			}
			// The proxy notices the closed connections soon after.
			for deadline := time.Now().Add(5 * time.Second); e.proxy.Srv.Sessions() > 0 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if got := e.proxy.Srv.Sessions(); got != 0 {
				t.Errorf("the proxy still has %d sessions after the run", got)
			}
			// Two accounts: one watcher each (plus pooled connections).
			if n := metric(t, res, "upstream-connections"); n < 2 {
				t.Errorf("upstream-connections = %v, want at least the 2 watchers", n)
			}
			// The proxy shares the test's process, whose RSS may fall
			// meanwhile (earlier tests' memory freed): then a note
			// replaces the figure.
			if _, ok := res.Metric("target-rss-per-session"); !ok && !slices.ContainsFunc(res.Notes, func(n string) bool { return strings.HasPrefix(n, "target-rss-per-session left out") }) {
				t.Errorf("neither target-rss-per-session nor a note why it is left out: %q", res.Notes)
			}
			metric(t, res, "target-heap-live-per-session")
			metric(t, res, "target-heap-inuse-per-session")
			if h := metric(t, res, "target-heap-inuse"); h < 1<<20 {
				t.Errorf("target-heap-inuse = %v B: not this process's heap", h)
			}
			if n := metric(t, res, "sessions-closed"); n != 0 {
				t.Errorf("sessions-closed = %v", n)
			}
		})
	}
}

// startOther starts a process that holds no socket, to stand for a
// -target-pid other than this process.
func startOther(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("sleep: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// TestIdleUpstreamOfTargetPID: with -target-pid, -upstream counts that
// process's connections only. The proxy runs in the test's process, so
// a target process that holds no socket has none, while the proxy's
// watchers are connected to the upstream.
func TestIdleUpstreamOfTargetPID(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	e := newEnv(t, 2)
	cfg := e.config("idle")
	cfg.Clients, cfg.Duration = 4, 100*time.Millisecond
	cfg.TargetPID = startOther(t)
	res := run(t, cfg)
	noErrors(t, res)
	if n := metric(t, res, "upstream-connections"); n != 0 {
		t.Errorf("upstream-connections = %v for a -target-pid with no socket; want 0 (the proxy's own are another process's)", n)
	}
	// A proxy of its own for this run: the first one's watchers (in
	// their grace period) and pooled connections would serve these
	// sessions too (logins take pooled connections: the login cache),
	// and only connections opened during the run count.
	e = newEnv(t, 2)
	cfg = e.config("idle")
	cfg.Clients, cfg.Duration = 4, 100*time.Millisecond
	cfg.TargetPID = os.Getpid()
	res = run(t, cfg)
	noErrors(t, res)
	if n := metric(t, res, "upstream-connections"); n < 2 {
		t.Errorf("upstream-connections = %v for the proxy's process; want at least the 2 watchers", n)
	}
}

// TestPushRSSFalls: when the target's RSS falls while the sessions open
// (it frees memory from before the run), push and idle report no memory
// per session, which would be negative, but a note saying why.
func TestPushRSSFalls(t *testing.T) {
	e := newEnv(t, 2)
	target := startOther(t)
	orig := rssOf
	var calls atomic.Int64
	rssOf = func(pid int) int64 {
		if pid == target {
			return 400<<20 - calls.Add(1)*(100<<20) // 300 MiB, then 200 MiB...
		}
		return orig(pid)
	}
	defer func() { rssOf = orig }()
	for _, scenario := range []string{"push", "idle"} {
		calls.Store(0)
		cfg := e.config(scenario)
		cfg.Clients, cfg.Rate, cfg.Duration = 4, 20, 200*time.Millisecond
		cfg.TargetPID = target
		res := run(t, cfg)
		noErrors(t, res)
		if v, ok := res.Metric("target-rss-per-session"); ok {
			t.Errorf("%s: target-rss-per-session = %v although the RSS fell", scenario, v)
		}
		for _, m := range res.Metrics {
			if strings.HasSuffix(m.Name, "-per-session") && m.Unit == "B" && m.Value < 0 {
				t.Errorf("%s: %s = %v", scenario, m.Name, m.Value)
			}
		}
		if !slices.ContainsFunc(res.Notes, func(n string) bool {
			return strings.HasPrefix(n, "target-rss-per-session left out: the target's RSS fell by 100.0 MiB")
		}) {
			t.Errorf("%s: no note on the RSS: %q", scenario, res.Notes)
		}
		if v := metric(t, res, "target-rss"); v <= 0 {
			t.Errorf("%s: target-rss = %v", scenario, v)
		}
	}
}

// A metrics endpoint that does not answer is an error of the run, not a
// silent zero.
func TestIdleMetricsUnreachable(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config("idle")
	cfg.Clients, cfg.Duration = 1, 100*time.Millisecond
	ms := httptest.NewServer(http.NotFoundHandler())
	cfg.TargetMetrics = ms.URL + "/metrics"
	ms.Close()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.ErrorKinds["metrics"] == 0 {
		t.Errorf("errors %v, want kind metrics", res.ErrorKinds)
	}
}

func TestPush(t *testing.T) {
	e := newEnv(t, 3)
	cfg := e.config("push")
	cfg.Clients, cfg.Rate, cfg.Duration = 6, 20, time.Second
	res := run(t, cfg)
	noErrors(t, res)
	appends := metric(t, res, "appends")
	if appends != 20 {
		t.Errorf("appends = %v, want 20", appends)
	}
	// Every APPEND reaches both sessions of its account.
	if got := metric(t, res, "pushes"); got != 2*appends {
		t.Errorf("pushes = %v, want %v", got, 2*appends)
	}
	if got := metric(t, res, "pushes-missing"); got != 0 {
		t.Errorf("pushes-missing = %v", got)
	}
	if p99 := metric(t, res, "push-latency-p99"); p99 <= 0 || p99 > 2000 {
		t.Errorf("push-latency-p99 = %v ms", p99)
	}
}

// TestPushDirect pushes with the target as the outside: the proxy relays
// the APPENDs and tells its own watchers.
func TestPushDirect(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config("push")
	cfg.Outside = ""
	cfg.Clients, cfg.Rate, cfg.Duration, cfg.Compress = 4, 10, time.Second, true
	res := run(t, cfg)
	noErrors(t, res)
	if got, want := metric(t, res, "pushes"), 2*metric(t, res, "appends"); got != want || got == 0 {
		t.Errorf("pushes = %v, want %v", got, want)
	}
}

func TestResync(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config("resync")
	cfg.Clients, cfg.Messages, cfg.Changes, cfg.Rounds = 2, 300, 15, 2
	res := run(t, cfg)
	noErrors(t, res)
	if !res.Params.QResync {
		t.Fatal("QRESYNC not used")
	}
	q, full := metric(t, res, "qresync-bytes-p50"), metric(t, res, "full-resync-bytes-p50")
	if q <= 0 || q >= full/3 {
		t.Errorf("QRESYNC resync %v bytes, full %v bytes", q, full)
	}
	if n := metric(t, res, "messages"); n != 300 {
		t.Errorf("messages = %v", n)
	}
	// A second run tops the mailbox up again and resyncs as well.
	cfg.Rounds = 1
	noErrors(t, run(t, cfg))
}

func TestFetch(t *testing.T) {
	e := newEnv(t, 1)
	for _, comp := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", comp), func(t *testing.T) {
			cfg := e.config("fetch")
			cfg.Clients, cfg.Messages, cfg.Size, cfg.Duration, cfg.Compress = 2, 20, 20000, 500*time.Millisecond, comp
			cfg.TargetPID = os.Getpid()
			res := run(t, cfg)
			noErrors(t, res)
			if v := metric(t, res, "throughput"); v <= 0 {
				t.Errorf("throughput = %v", v)
			}
			if v := metric(t, res, "body-bytes"); v < 20*20000 {
				t.Errorf("body-bytes = %v, want at least one pass", v)
			}
			if comp {
				if r := metric(t, res, "compression-ratio"); r < 1.5 {
					t.Errorf("compression-ratio = %v", r)
				}
			}
		})
	}
}

// skipMixedIfShort skips a mixed-scenario test under -short: each runs the
// load for seconds by design (the scenario's idle and lag windows), which
// belongs to the full tier.
func skipMixedIfShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("mixed load scenario runs for seconds; skipped under -short")
	}
}

func mixedConfig(e *env) Config {
	cfg := e.config("mixed")
	cfg.Clients, cfg.Rate, cfg.Duration = 8, 20, 6*time.Second
	cfg.IdleMin, cfg.IdleMax, cfg.MaxLag = 300*time.Millisecond, 1500*time.Millisecond, 2*time.Second
	cfg.Messages = 8
	cfg.Seed = 1
	return cfg
}

func TestMixed(t *testing.T) {
	skipMixedIfShort(t)
	e := newEnv(t, 3)
	cfg := mixedConfig(e)
	cfg.Compress = true
	res := run(t, cfg)
	noErrors(t, res)
	if !res.Params.QResync {
		t.Error("QRESYNC not used")
	}
	for _, m := range []string{"checks", "changes", "appends", "flag-changes", "expunges", "qresync-resyncs", "links-dropped", "logouts", "bodies-checked", "pushes"} {
		if metric(t, res, m) == 0 {
			t.Errorf("%s = 0", m)
		}
	}
	if n := metric(t, res, "converged"); n != 8 {
		t.Errorf("converged = %v, want 8", n)
	}
	// The tool expunged its own messages at the end.
	c := imaptest.Login(t, e.up.Addr, "u0", "p0")
	if lines := c.MustOK("SELECT INBOX"); !containsLine(lines, "* 0 EXISTS") {
		t.Errorf("INBOX after the run: %q", lines)
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// TestMixedAgainstDovecotStyleTarget: the target itself is the outside
// (changes through the proxy) and clients resync in full.
func TestMixedFullResync(t *testing.T) {
	skipMixedIfShort(t)
	e := newEnv(t, 2)
	cfg := mixedConfig(e)
	cfg.Outside, cfg.QResync, cfg.Clients, cfg.Duration = "", "off", 4, 4*time.Second
	res := run(t, cfg)
	noErrors(t, res)
	if n := metric(t, res, "full-resyncs"); n == 0 {
		t.Error("no full resyncs")
	}
}

// TestMixedDetectsBrokenPushes: between the clients and the proxy sits a
// relay that drops some of what is pushed while a client idles, as a
// broken proxy would: every new message's EXISTS, or every flag change.
// The mixed scenario must report errors.
func TestMixedDetectsBrokenPushes(t *testing.T) {
	skipMixedIfShort(t)
	for _, tc := range []struct {
		name  string
		drop  *regexp.Regexp
		kinds []string // at least one of these errors
	}{
		{"EXISTS", regexp.MustCompile(`^\* \d+ EXISTS$`), []string{"protocol", "stale", "mismatch"}},
		{"FLAGS", regexp.MustCompile(`^\* \d+ FETCH \(.*FLAGS`), []string{"stale", "mismatch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 2)
			relay := startRelay(t, e.proxy.Addr, tc.drop)
			cfg := mixedConfig(e)
			cfg.Target = relay.addr
			cfg.Clients, cfg.Duration, cfg.MaxLag = 4, 5*time.Second, time.Second
			cfg.IdleMin, cfg.IdleMax = 2*time.Second, 3*time.Second
			res := run(t, cfg)
			if relay.dropped() == 0 {
				t.Fatal("the relay dropped nothing")
			}
			found := false
			for _, k := range tc.kinds {
				found = found || res.ErrorKinds[k] > 0
			}
			if !found {
				t.Fatalf("mixed found no %v error although %d pushes were dropped (errors: %v)", tc.kinds, relay.dropped(), res.ErrorKinds)
			}
			t.Logf("%d pushes dropped, %d errors: %v", relay.dropped(), res.Errors, res.ErrorKinds)
		})
	}
}

// relay forwards connections to a target, dropping lines matching drop
// that the server sends while the client is in IDLE.
type relay struct {
	addr string
	drop *regexp.Regexp
	mu   sync.Mutex
	n    int
}

func (r *relay) dropped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func startRelay(t *testing.T, target string, drop *regexp.Regexp) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String(), drop: drop}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.Dial("tcp", target)
			if err != nil {
				cc.Close()
				continue
			}
			track(cc)
			track(sc)
			var idling sync.Mutex
			inIdle := false
			wg.Go(func() { // client to server
				defer sc.Close()
				br := bufio.NewReader(cc)
				for {
					line, err := br.ReadString('\n')
					if len(line) > 0 {
						l := strings.TrimRight(line, "\r\n")
						idling.Lock()
						switch {
						case strings.HasSuffix(strings.ToUpper(l), " IDLE"):
							inIdle = true
						case strings.EqualFold(l, "DONE"):
							inIdle = false
						}
						idling.Unlock()
						if _, err := io.WriteString(sc, line); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
			wg.Go(func() { // server to client
				defer cc.Close()
				rd := imapcodec.NewReader(sc, imapcodec.Limits{MaxLine: 1 << 20, MaxLiteral: 1 << 30})
				for {
					line, lit, err := rd.ReadLine()
					if err != nil {
						return
					}
					idling.Lock()
					drop := inIdle && lit == nil && r.drop.Match(line)
					idling.Unlock()
					if drop {
						r.mu.Lock()
						r.n++
						r.mu.Unlock()
						continue
					}
					if _, err := cc.Write(append(bytes.Clone(line), '\r', '\n')); err != nil {
						return
					}
					if lit != nil {
						if _, err := io.Copy(cc, rd.Literal()); err != nil {
							return
						}
					}
				}
			})
		}
	})
	return r
}

func TestCLI(t *testing.T) {
	e := newEnv(t, 2)
	out := filepath.Join(t.TempDir(), "idle.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{"idle", "-target", e.proxy.Addr, "-user-pattern", "u%d", "-pass-pattern", "p%d", "-accounts", "2",
		"-clients", "4", "-duration", "200ms", "-settle", "100ms", "-format", "json", "-out", out, "-label", "cli"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := ReadResult(f)
	if err != nil {
		t.Fatal(err)
	}
	if res.Scenario != "idle" || res.Label != "cli" || res.Params.Clients != 4 || res.Errors != 0 {
		t.Errorf("result: %+v", res)
	}
	if !strings.Contains(stderr.String(), "load idle") {
		t.Errorf("no progress line on stderr: %q", stderr.String())
	}

	// Table output, and a failing run: a wrong password fails the login.
	stdout.Reset()
	stderr.Reset()
	code = Main([]string{"idle", "-target", e.proxy.Addr, "-user", "u0", "-pass", "wrong-s3cret", "-clients", "1", "-quiet"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "no session could be opened") {
		t.Errorf("wrong password: exit %d, stderr %q", code, stderr.String())
	}
	// The error lines name the command, not the password.
	if out := stdout.String() + stderr.String(); strings.Contains(out, "s3cret") || !strings.Contains(out, "LOGIN u0 ***") {
		t.Errorf("wrong password: the output shows the password or not the command:\nstdout %q\nstderr %q", stdout.String(), stderr.String())
	}

	for _, args := range [][]string{
		{},
		{"nosuch", "-target", "127.0.0.1:1", "-user", "u", "-pass", "p"},
		{"idle", "-user", "u", "-pass", "p"},
		{"idle", "-target", "127.0.0.1:1"},
		{"idle", "-target", "127.0.0.1:1", "-user", "u", "-clients", "1000000"},
		{"idle", "-target", "127.0.0.1:1", "-user", "u", "-format", "xml"},
		{"idle", "-target", "127.0.0.1:1", "-user", "u", "-sources", "127.0.0.9-127.0.0.2"},
		{"idle", "-target", "127.0.0.1:1", "-user-pattern", "u%d"},
	} {
		stderr.Reset()
		if code := Main(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr %q", args, code, stderr.String())
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := &Result{Scenario: "idle", Params: Params{Clients: 3}, Metrics: []Metric{{"a", 1.5, "B"}}}
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	got, err := ReadResult(&b)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := got.Metric("a"); v != 1.5 {
		t.Errorf("metric a = %v", v)
	}
}
