package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Environment variables that tune the idle benchmarks.
const (
	// sessionsEnv lists the session counts, comma-separated (default
	// "1000,10000").
	sessionsEnv = "LEMONPROXY_BENCH_SESSIONS"
	// heapProfileEnv names a file prefix: each proxy benchmark writes the
	// heap profile taken with every session idle to PREFIX-NAME.pprof
	// (with runtime.MemProfileRate lowered to 512 bytes).
	heapProfileEnv = "LEMONPROXY_BENCH_HEAPPROFILE"
	// appendRateEnv paces each round's APPENDs, per second over all
	// accounts (default 100); 0 sends them all at once (16 in flight),
	// which mostly measures how Dovecot queues under a burst.
	appendRateEnv = "LEMONPROXY_BENCH_APPEND_RATE"
	// cpuProfileEnv names a file prefix: each benchmark writes a CPU
	// profile of its rounds (not of the setup) to PREFIX-NAME.pprof.
	cpuProfileEnv = "LEMONPROXY_BENCH_CPUPROFILE"
	// compressEnv, if "1", makes BenchmarkIdleProxy's sessions turn on
	// COMPRESS=DEFLATE right after LOGIN (the sub-benchmarks are then
	// named Legacy+COMPRESS and Full+COMPRESS).
	compressEnv = "LEMONPROXY_BENCH_COMPRESS"
	// tlsEnv, if "1", makes BenchmarkIdleProxy's sessions speak implicit
	// TLS to the proxy (sub-benchmarks named Legacy+TLS...), to measure
	// what TLS costs an idle session (issue 20).
	tlsEnv = "LEMONPROXY_BENCH_TLS"
	// goroutineProfileEnv names a file prefix: each proxy benchmark
	// writes the goroutine profile (stacks and counts, text) taken with
	// every session idle to PREFIX-NAME.txt, to see where an idle
	// session's goroutines wait.
	goroutineProfileEnv = "LEMONPROXY_BENCH_GOROUTINEPROFILE"
)

func compressOn(b *testing.B) bool { return envSwitch(b, compressEnv) }

func tlsOn(b *testing.B) bool { return envSwitch(b, tlsEnv) }

// envSwitch reads an environment variable that is "1" (on) or "0" or
// unset (off).
func envSwitch(b *testing.B, name string) bool {
	switch os.Getenv(name) {
	case "", "0":
		return false
	case "1":
		return true
	}
	b.Fatalf("%s=%q: want 1 or 0", name, os.Getenv(name))
	return false
}

func appendRate(b *testing.B) float64 {
	s := os.Getenv(appendRateEnv)
	if s == "" {
		return 100
	}
	r, err := strconv.ParseFloat(s, 64)
	if err != nil || r < 0 {
		b.Fatalf("%s=%q: want appends per second (0: no pacing)", appendRateEnv, s)
	}
	return r
}

// defaultSessionsPerUser is how many sessions share an account (and thus
// one watcher): 10,000 phones on 2,000 accounts.
const defaultSessionsPerUser = 5

// sessionsPerUserEnv overrides defaultSessionsPerUser (issue 20 measured
// idle TLS with 1,000 sessions on 10 accounts: 100).
const sessionsPerUserEnv = "LEMONPROXY_BENCH_SESSIONS_PER_USER"

func sessionsPerUser(b *testing.B) int {
	v := os.Getenv(sessionsPerUserEnv)
	if v == "" {
		return defaultSessionsPerUser
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a count", sessionsPerUserEnv, v)
	}
	return n
}

// settle is how long the benchmark waits after the last session went idle
// before measuring, so that the proxy's watchers have finished their
// initial syncs.
const settle = 2 * time.Second

func sessionCounts(b *testing.B) []int {
	spec := os.Getenv(sessionsEnv)
	if spec == "" {
		spec = "1000,10000"
	}
	var out []int
	for f := range strings.SplitSeq(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a comma-separated list of session counts", sessionsEnv, spec)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkIdleProxy: N clients (in a child process) log in through the
// proxy in front of Dovecot, select INBOX and IDLE, N/5 accounts. Reports
// the proxy's heap, stack, RSS, goroutines and upstream connections per idle
// session and Dovecot's memory per session behind it; then each iteration
// is a round of one APPEND per account made directly on Dovecot, and the
// push latencies (the proxy's own: Config.PushLatency; and end to end, from
// the APPEND's OK to the client's EXISTS) are reported over all rounds.
// Run with -benchtime=Nx (N rounds) and a long -timeout; see
// docs/benchmarks.md.
func BenchmarkIdleProxy(b *testing.B) {
	mode := sessionMode{compress: compressOn(b), tls: tlsOn(b)}
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		for _, n := range sessionCounts(b) {
			b.Run(fmt.Sprintf("%v%s/sessions=%d", p, mode, n), func(b *testing.B) { benchIdle(b, p, n, true, mode) })
		}
	}
}

// sessionMode is what the idle sessions speak beside IMAP.
type sessionMode struct{ compress, tls bool }

// String is the mode's suffix in benchmark and profile names:
// "+TLS+COMPRESS" and the like.
func (m sessionMode) String() string {
	s := ""
	if m.tls {
		s += "+TLS"
	}
	if m.compress {
		s += "+COMPRESS"
	}
	return s
}

// BenchmarkIdleDirect is BenchmarkIdleProxy's counterpart with the clients
// connected directly to Dovecot (Legacy profile): Dovecot's memory (PSS of
// all its processes) per idle session, and the end-to-end push latency.
func BenchmarkIdleDirect(b *testing.B) {
	for _, n := range sessionCounts(b) {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchIdle(b, dovecottest.Legacy, n, false, sessionMode{}) })
	}
}

// pushRecorder collects Config.PushLatency values while a round runs:
// samples the whole latency, own the proxy's share (the whole less the
// time the watcher waited for the upstream's answers).
type pushRecorder struct {
	mu      sync.Mutex
	active  bool
	samples []int64
	own     []int64
	round   int
}

func (r *pushRecorder) record(total, upstream time.Duration) {
	r.mu.Lock()
	if r.active {
		r.samples = append(r.samples, int64(total))
		r.own = append(r.own, int64(total-upstream))
		r.round++
	}
	r.mu.Unlock()
}

func (r *pushRecorder) start() {
	r.mu.Lock()
	r.active, r.round = true, 0
	r.mu.Unlock()
}

// stop ends a round once want pushes were recorded (or after a while) and
// returns how many were.
func (r *pushRecorder) stop(want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := r.round
		if got >= want || time.Now().After(deadline) {
			r.active = false
			r.mu.Unlock()
			return got
		}
		r.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

func benchIdle(b *testing.B, profile dovecottest.Profile, n int, viaProxy bool, mode sessionMode) {
	users := max(1, n/sessionsPerUser(b))
	checkFileLimit(b, n+users+1000)
	raiseLimits(b, n)
	profPath := ""
	if prefix := os.Getenv(heapProfileEnv); prefix != "" && viaProxy {
		runtime.MemProfileRate = 512
		defer func() { runtime.MemProfileRate = 512 * 1024 }()
		profPath = fmt.Sprintf("%s-%v%s-%d.pprof", prefix, profile, mode, n)
	}

	dc := dovecottest.Start(b, profile)
	accounts := make(map[string]string, users)
	for i := range users {
		accounts[userName(i)] = userPass(i)
	}
	dc.AddUsers(b, accounts)
	dcPSS0, dcRSS0, dcProcs0 := procsMem(dc.PIDs())
	// Registered after Start's cleanup, so it runs before Dovecot is
	// stopped, once the clients (and the proxy) are gone: thousands of
	// imap processes take a while to log out, longer than Stop waits.
	b.Cleanup(func() { waitProcesses(b, dc, dcProcs0+100, 3*time.Minute) })

	rec := &pushRecorder{}
	target := dc.Addr
	var srv *proxy.Server
	if viaProxy {
		srv, target = startProxy(b, dc.Addr, rec.record, mode.tls)
	}
	m0 := measureSelf()
	conns0 := establishedTo(dc.Addr, appenderIP)

	spec := clientSpec{
		Addr: target, Dovecot: dc.Addr, Sessions: n, Users: users,
		Sources: 8, Concurrency: 64, Appenders: 16, AppendRate: appendRate(b),
		Compress: mode.compress, TLS: mode.tls,
	}
	cl := startClients(b, spec)
	time.Sleep(settle)

	m1 := measureSelf()
	conns := establishedTo(dc.Addr, appenderIP) - conns0
	dcPSS, dcRSS, dcProcs := procsMem(dc.PIDs())
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	// b.Loop resets reported metrics when it starts: collect them here and
	// report them after the loop.
	type metric struct {
		v    float64
		unit string
	}
	var metrics []metric
	report := func(v float64, unit string) { metrics = append(metrics, metric{v, unit}) }
	if viaProxy {
		if got := srv.Sessions(); got != n {
			b.Fatalf("proxy has %d sessions, want %d", got, n)
		}
		if profPath != "" {
			writeHeapProfile(b, profPath)
		}
		if prefix := os.Getenv(goroutineProfileEnv); prefix != "" {
			writeGoroutineProfile(b, fmt.Sprintf("%s-%v%s-%d.txt", prefix, profile, mode, n))
		}
		watchers, pooled := srv.Hub().Watchers(), srv.Pool().Idle()
		b.Logf("%d sessions idle after %s s; proxy: heap in use %.0f B/session (alloc %.0f), stack %.0f B/session (%.0f once settled), RSS %.0f B/session (%.0f after FreeOSMemory), %.2f goroutines/session",
			n, cl.ready, per(m1.heapInuse, m0.heapInuse), per(m1.heapAlloc, m0.heapAlloc), per(m1.stack, m0.stack), per(m1.stackSettled, m0.stackSettled),
			per(m1.rss, m0.rssScavenged), per(m1.rssScavenged, m0.rssScavenged),
			float64(m1.goroutines-m0.goroutines)/float64(n))
		b.Logf("upstream: %d connections (%d watchers, %d pooled idle); Dovecot %d processes, PSS %.0f B/session, RSS %.0f B/session",
			conns, watchers, pooled, dcProcs, per(dcPSS, dcPSS0), per(dcRSS, dcRSS0))
		report(per(m1.heapInuse, m0.heapInuse), "heap-B/session")
		report(per(m1.stack, m0.stack), "stack-B/session")
		report(per(m1.stackSettled, m0.stackSettled), "stack-settled-B/session")
		report(per(m1.rss, m0.rssScavenged), "rss-B/session")
		report(per(m1.rssScavenged, m0.rssScavenged), "rss-scavenged-B/session")
		report(float64(m1.goroutines-m0.goroutines)/float64(n), "goroutines/session")
		report(float64(watchers)/float64(n), "watchers/session")
		report(float64(pooled)/float64(n), "pooled/session")
	} else {
		b.Logf("%d sessions idle after %s s; Dovecot direct: %d processes, PSS %.0f B/session, RSS %.0f B/session", n, cl.ready, dcProcs, per(dcPSS, dcPSS0), per(dcRSS, dcRSS0))
	}
	report(float64(conns)/float64(n), "upconns/session")
	report(per(dcPSS, dcPSS0), "dovecot-pss-B/session")

	if prefix := os.Getenv(cpuProfileEnv); prefix != "" {
		path := fmt.Sprintf("%s-%s.pprof", prefix, strings.ReplaceAll(b.Name(), "/", "-"))
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
			b.Logf("CPU profile of the rounds written to %s", path)
		}()
	}
	loadData, _ := os.ReadFile("/proc/loadavg")
	load := strings.Fields(string(loadData))
	load = load[:min(3, len(load))]
	self0, busy0, total0 := cpuTimes()
	rounds := 0
	for b.Loop() {
		rounds++
		first := len(rec.samples)
		rec.start()
		line := cl.do("ROUND")
		pushes := 0
		pushInfo := ""
		if viaProxy {
			pushes = rec.stop(n)
			ps, po := summarize(rec.samples[first:]), summarize(rec.own[first:])
			pushInfo = fmt.Sprintf("; proxy push p50 %.2f ms, p99 %.2f ms, max %.2f ms (without the upstream's answers: p50 %.2f ms, p99 %.2f ms)",
				ms(ps.p50), ms(ps.p99), ms(ps.max), ms(po.p50), ms(po.p99))
		}
		var got, missing int
		var appendMs, roundMs float64
		var p50, p90, p99, mx, probe50, probe99 int64
		fmt.Sscan(strings.TrimPrefix(line, "ROUND "), &got, &missing, &appendMs, &roundMs, &p50, &p90, &p99, &mx, &probe50, &probe99)
		// Straight to stderr: the testing package keeps only the first
		// ten lines a benchmark logs.
		fmt.Fprintf(os.Stderr, "%s: round %d: %d EXISTS (%d missing), %d proxy pushes; appends took %.0f ms, round %.0f ms; end to end p50 %d ms, p99 %d ms, max %d ms; Dovecot NOOP p50 %.1f ms, p99 %.1f ms%s\n",
			b.Name(), rounds, got, missing, pushes, appendMs, roundMs, p50/1000, p99/1000, mx/1000, float64(probe50)/1e3, float64(probe99)/1e3, pushInfo)
		if missing > 0 {
			b.Errorf("round %d: %d sessions saw no EXISTS", rounds, missing)
		}
	}
	self1, busy1, total1 := cpuTimes()
	machineBusy := 100 * float64(busy1-busy0) / float64(max(total1-total0, 1))
	proxyCPU := float64(self1-self0) / float64(time.Millisecond) / float64(rounds)
	b.Logf("during the rounds the machine was %.0f%% busy (load average before: %s); this process (the proxy) used %.0f ms of CPU per round (%.1f µs per push)",
		machineBusy, strings.Join(load, " "), proxyCPU, 1000*proxyCPU/float64(n))
	report(machineBusy, "machine-busy-%")
	if viaProxy {
		report(proxyCPU*1000/float64(n), "proxy-cpu-us/push")
	}
	for _, m := range metrics {
		b.ReportMetric(m.v, m.unit)
	}
	if viaProxy {
		s := summarize(rec.samples)
		b.Logf("proxy push latency over %d pushes: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms",
			len(rec.samples), ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max))
		b.ReportMetric(float64(s.p50)/1e3, "push-p50-us")
		b.ReportMetric(float64(s.p90)/1e3, "push-p90-us")
		b.ReportMetric(float64(s.p99)/1e3, "push-p99-us")
		b.ReportMetric(float64(s.max)/1e3, "push-max-us")
		o := summarize(rec.own)
		b.Logf("of which the proxy's own (less the watcher's wait for Dovecot's answers): p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms",
			ms(o.p50), ms(o.p90), ms(o.p99), ms(o.max))
		b.ReportMetric(float64(o.p99)/1e3, "push-own-p99-us")
	}
	var count, p50, p90, p99, mx, closed, probe50, probe99 int64
	fmt.Sscan(strings.TrimPrefix(cl.do("STATS"), "STATS "), &count, &p50, &p90, &p99, &mx, &closed, &probe50, &probe99)
	b.Logf("end to end over %d pushes: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms; %d sessions closed; Dovecot NOOP round trip p50 %.2f ms, p99 %.2f ms",
		count, float64(p50)/1e3, float64(p90)/1e3, float64(p99)/1e3, float64(mx)/1e3, closed, float64(probe50)/1e3, float64(probe99)/1e3)
	b.ReportMetric(float64(probe50)/1e3, "noop-p50-ms")
	b.ReportMetric(float64(probe99)/1e3, "noop-p99-ms")
	b.ReportMetric(float64(p50)/1e3, "e2e-p50-ms")
	b.ReportMetric(float64(p90)/1e3, "e2e-p90-ms")
	b.ReportMetric(float64(p99)/1e3, "e2e-p99-ms")
	b.ReportMetric(float64(mx)/1e3, "e2e-max-ms")
	if closed > 0 {
		b.Errorf("%d sessions were closed during the benchmark", closed)
	}
}

// waitProcesses waits until Dovecot is down to at most n live processes.
func waitProcesses(b *testing.B, dc *dovecottest.Server, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		live := liveProcs(dc.PIDs())
		if live <= n {
			return
		}
		if time.Now().After(deadline) {
			b.Logf("Dovecot still has %d processes after %v", live, timeout)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func writeHeapProfile(b *testing.B, path string) {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
	b.Logf("heap profile written to %s", path)
}

// writeGoroutineProfile writes the goroutines' stacks, grouped by stack
// (pprof's debug=1 text), to path: which goroutines an idle account keeps,
// and where they wait.
func writeGoroutineProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 1); err != nil {
		b.Fatal(err)
	}
	b.Logf("goroutine profile written to %s", path)
}

// startProxy runs a proxy in front of Dovecot in this process. It stays a
// wrapper for the benchmark's settings: thousands of sessions need minute-long
// upstream and shutdown timeouts, and errors must show whatever LEMON_TEST_LOG
// says.
func startProxy(b *testing.B, upstreamAddr string, push func(total, upstream time.Duration), useTLS bool) (*proxy.Server, string) {
	cfg := proxy.Config{
		Upstream:    upstream.Config{Timeout: time.Minute},
		Extensions:  []proxy.Extension{idle.New(), compress.New()},
		Logger:      imaptest.StderrLogger(slog.LevelError),
		PushLatency: push,
	}
	// Many sessions on few accounts (LEMONPROXY_BENCH_SESSIONS_PER_USER)
	// must not meet the abuse limit of 50 sessions per account.
	cfg.Abuse.SessionsPerUser = 1 << 20
	opts := []imaptest.Option{imaptest.ShutdownTimeout(time.Minute)}
	if useTLS {
		cfg.TLS, _ = imaptest.SelfSignedTLS(b)
		opts = append(opts, imaptest.ImplicitTLS())
	}
	p := imaptest.StartProxy(b, upstreamAddr, cfg, opts...)
	return p.Srv, p.Addr
}

// clients is the child process holding the client sessions.
type clients struct {
	b     *testing.B
	in    io.WriteCloser
	out   *bufio.Scanner
	ready string // seconds it took to open the sessions
}

// startClients re-executes the test binary as the client process and waits
// until every session is idle.
func startClients(b *testing.B, spec clientSpec) *clients {
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	c := &clients{b: b, in: in, out: bufio.NewScanner(out)}
	c.out.Buffer(make([]byte, 64<<10), 1<<20)
	line := c.read()
	ready, ok := strings.CutPrefix(line, "READY ")
	if !ok {
		b.Fatalf("client process: %s", line)
	}
	_, c.ready, _ = strings.Cut(ready, " ")
	return c
}

func (c *clients) read() string {
	for c.out.Scan() {
		line := c.out.Text()
		if strings.HasPrefix(line, "FAIL") {
			c.b.Fatalf("client process: %s", line)
		}
		if strings.HasPrefix(line, "READY") || strings.HasPrefix(line, "ROUND") || strings.HasPrefix(line, "STATS") {
			return line
		}
	}
	c.b.Fatalf("client process ended: %v", c.out.Err())
	return ""
}

// do sends a command to the client process and returns its answer.
func (c *clients) do(command string) string {
	if _, err := io.WriteString(c.in, command+"\n"); err != nil {
		c.b.Fatal(err)
	}
	return c.read()
}
