package bench

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Environment variables that tune BenchmarkPush.
const (
	// pushAccountsEnv is the number of registered accounts (default 1000).
	pushAccountsEnv = "LEMONPROXY_BENCH_PUSH_ACCOUNTS"
	// pushPollEnv is the polling interval of the Polled sub-benchmark (a
	// Go duration, default 10s).
	pushPollEnv = "LEMONPROXY_BENCH_PUSH_POLL"
	// pushHibernateEnv sets the benchmark Dovecot's imap_hibernate_timeout
	// (a Go duration; unset: no hibernation), pushClientLimitEnv its
	// service imap client_limit (unset: 1): the set-ups providers run for
	// many idle clients. The baseline IDLE clients use the same Dovecot.
	pushHibernateEnv   = "LEMONPROXY_BENCH_DOVECOT_HIBERNATE"
	pushClientLimitEnv = "LEMONPROXY_BENCH_DOVECOT_CLIENT_LIMIT"
)

// pushDovecotOptions returns the benchmark Dovecot's options from the
// environment (pushHibernateEnv, pushClientLimitEnv).
func pushDovecotOptions(b *testing.B) dovecottest.Options {
	o := dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"}
	if s := os.Getenv(pushHibernateEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second {
			b.Fatalf("%s=%q: want a duration of a second or more", pushHibernateEnv, s)
		}
		o.HibernateAfter = d
	}
	if s := os.Getenv(pushClientLimitEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a number of clients", pushClientLimitEnv, s)
		}
		o.IMAPClientLimit = n
	}
	return o
}

// BenchmarkPush: N accounts (LEMONPROXY_BENCH_PUSH_ACCOUNTS, default
// 1,000) register a device token through the proxy (METADATA) and log
// out; the proxy watches them with no session connected, logged in as
// Dovecot's master user, over the legacy profile. Reports the upstream
// connections and the proxy's memory and goroutines per registered
// account; then each iteration is a round of one APPEND per account made
// directly on Dovecot at LEMONPROXY_BENCH_APPEND_RATE per second (default
// 100), and the push latency from the APPEND's tagged OK to the gateway's
// receipt of the token is reported over all rounds, beside Dovecot's own
// IDLE delay (direct IDLE connections on ten of the accounts). Live:
// every account watched live (one IDLE each). Polled: none live (the cap
// at 0): every account polled in rotation over 4 connections every
// LEMONPROXY_BENCH_PUSH_POLL. Run with -benchtime=Nx; see docs/push.md.
func BenchmarkPush(b *testing.B) {
	n := 1000
	if s := os.Getenv(pushAccountsEnv); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a number of accounts", pushAccountsEnv, s)
		}
	}
	poll := 10 * time.Second
	if s := os.Getenv(pushPollEnv); s != "" {
		var err error
		if poll, err = time.ParseDuration(s); err != nil || poll <= 0 {
			b.Fatalf("%s=%q: want a duration", pushPollEnv, s)
		}
	}
	b.Run(fmt.Sprintf("Live/accounts=%d", n), func(b *testing.B) { benchPush(b, n, n, poll) })
	b.Run(fmt.Sprintf("Polled/accounts=%d", n), func(b *testing.B) { benchPush(b, n, -1, poll) })
}

// pushGateway records when each account's token arrived, by account.
type pushGateway struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  [][]int64 // per account, receipt times (now())
	bad  atomic.Int64
	seen atomic.Int64
}

func newPushGateway(n int) *pushGateway {
	g := &pushGateway{got: make([][]int64, n)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := now()
		body, _ := io.ReadAll(r.Body)
		i, err := strconv.Atoi(strings.TrimPrefix(string(body), "tok-"))
		if err != nil || i < 0 || i >= len(g.got) {
			g.bad.Add(1)
			return
		}
		g.mu.Lock()
		g.got[i] = append(g.got[i], at)
		g.mu.Unlock()
		g.seen.Add(1)
	}))
	return g
}

// count returns how many pushes account i got, and the last one's time.
func (g *pushGateway) count(i int) (int, int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.got[i]) == 0 {
		return 0, 0
	}
	return len(g.got[i]), g.got[i][len(g.got[i])-1]
}

func benchPush(b *testing.B, n, live int, poll time.Duration) {
	checkFileLimit(b, min(2*n, 2000)+n+1000)
	raiseLimits(b, 2*n)
	profPrefix := os.Getenv(heapProfileEnv)
	if profPrefix != "" {
		// Fine-grained, so that the per-account allocations show.
		runtime.MemProfileRate = 512
		defer func() { runtime.MemProfileRate = 512 * 1024 }()
	}
	dopts := pushDovecotOptions(b)
	dc := dovecottest.StartWith(b, dovecottest.Legacy, dopts)
	accounts := make(map[string]string, n)
	for i := range n {
		accounts[userName(i)] = userPass(i)
	}
	dc.AddUsers(b, accounts)
	_, portStr, _ := net.SplitHostPort(dc.Addr)
	dcPort, _ := strconv.Atoi(portStr)
	g := newPushGateway(n)
	defer g.srv.Close()

	dir := b.TempDir()
	data, err := accountdata.OpenBolt(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	state, err := statestore.OpenBolt(dir)
	if err != nil {
		b.Fatal(err)
	}
	pe, err := push.New(push.Config{MasterUser: "pushmaster", MasterPassword: "masterpass",
		LiveWatchers: live, PollInterval: poll, PollConns: 4, Logger: imaptest.StderrLogger(slog.LevelError)})
	if err != nil {
		b.Fatal(err)
	}
	dt, err := devicetoken.New(pe, devicetoken.Config{Gateway: g.srv.URL + "/notify"})
	if err != nil {
		b.Fatal(err)
	}
	pe.AddChannel(dt)
	var lat []int64 // the proxy's own: hub read to gateway accepted
	var latMu sync.Mutex
	pe.OnDelivered = func(_ string, d time.Duration) {
		latMu.Lock()
		lat = append(lat, int64(d))
		latMu.Unlock()
	}
	meta := metadata.New(metadata.Config{Owned: map[string]metadata.EntryOwner{devicetoken.Entry: dt}})
	cfg := proxy.Config{
		Upstream:    upstream.Config{Timeout: time.Minute},
		Extensions:  []proxy.Extension{meta, pe},
		AccountData: data,
		Logger:      imaptest.StderrLogger(slog.LevelError),
	}
	cfg.Hub.Store = state
	p := imaptest.StartProxy(b, dc.Addr, cfg, imaptest.ShutdownTimeout(2*time.Minute))
	b.Cleanup(func() {
		p.Shutdown()
		data.Close()
		state.Close()
	})
	conns0 := upstreamTo(dcPort)
	mem0 := measureSelf()

	// Register every account's device, then log out.
	start := time.Now()
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(n, 32) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				lc, err := dialFrom(net.IPv4(127, 0, 0, byte(2+i%8)), p.Addr)
				if err == nil {
					err = lc.cmd("LOGIN "+userName(i)+" "+userPass(i), false)
					if err == nil {
						err = lc.cmd(fmt.Sprintf(`SETMETADATA "" (/private/devicetoken "tok-%d")`, i), false)
					}
					if err == nil {
						err = lc.cmd("LOGOUT", false)
					}
					lc.nc.Close()
				}
				if err != nil {
					err = fmt.Errorf("registering %s: %w", userName(i), err)
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		b.Fatal(*e)
	}
	registered := time.Since(start)
	// Every account watched: its cursor stored.
	for deadline := time.Now().Add(10*time.Minute + 2*poll); ; time.Sleep(100 * time.Millisecond) {
		missing := 0
		for i := range n {
			if _, err := data.Get(dc.Addr+"\x00"+userName(i), push.Prefix+"m/INBOX"); err != nil {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d accounts not watched after %v", missing, time.Since(start))
		}
	}
	watched := time.Since(start)
	// The registering sessions' connections wait in the pool for
	// pool-idle-timeout (5 min): closed now, as they would be by then,
	// so that what is measured is the steady state of accounts with no
	// session.
	for i := range n {
		p.Srv.Pool().CloseAccount(dc.Addr + "\x00" + userName(i))
	}
	time.Sleep(settle)
	conns := upstreamTo(dcPort) - conns0
	pooled := p.Srv.Pool().Idle()
	mem := measureSelf()
	if profPrefix != "" {
		name := profPrefix + "-" + strings.ReplaceAll(b.Name(), "/", "-")
		writeHeapProfile(b, name+".pprof")
		writeGoroutineProfile(b, name+"-goroutines.txt")
	}
	st := pe.Stats()
	perAcct := func(a, b0 uint64) float64 { return float64(int64(a)-int64(b0)) / float64(n) / 1024 }
	b.Logf("Go runtime per account after returning freed memory: holds %.1f KiB from the OS (heap in use %.1f, free heap kept %.1f, stacks %.1f, its own structures %.1f)",
		perAcct(mem.held, mem0.held), perAcct(mem.heapInuse, mem0.heapInuse), perAcct(mem.heapIdleKept, mem0.heapIdleKept), perAcct(mem.stack, mem0.stack), perAcct(mem.runtimeOwn, mem0.runtimeOwn))
	// The runtime keeps freed heap (up to its GC goal) until its
	// background scavenger returns it: what an operator sees once the
	// accounts have been watched a while, not right after all of them
	// registered at once, is the RSS a minute later, without forcing it.
	time.Sleep(time.Minute)
	runtime.GC()
	rssLater := statusKB("/proc/self/status", "VmRSS:") * 1024
	b.Logf("RSS per account a minute later (after a GC, freed memory not forced back): %.1f KiB", perAcct(rssLater, mem0.rss))
	dcPSS, _, dcProcs := procsMem(dc.PIDs())
	b.Logf("Dovecot (imap_hibernate_timeout %v, imap client_limit %d): %d processes, PSS %.1f MiB",
		dopts.HibernateAfter, max(dopts.IMAPClientLimit, 1), dcProcs, float64(dcPSS)/(1<<20))
	b.Logf("%s: %d accounts registered in %.1f s, all watched after %.1f s (%d live, %d polled); upstream: %d connections (%d pooled idle) = %.2f per account; proxy per account: heap %.1f KiB, stack %.1f KiB, RSS %.1f KiB (%.1f KiB after returning freed memory: %.1f KiB anonymous, %.1f KiB file pages), %.2f goroutines",
		b.Name(), n, registered.Seconds(), watched.Seconds(), st.LiveAccounts, st.PolledAccounts, conns, pooled, float64(conns)/float64(n),
		perAcct(mem.heapInuse, mem0.heapInuse), perAcct(mem.stack, mem0.stack), perAcct(mem.rss, mem0.rss), perAcct(mem.rssScavenged, mem0.rssScavenged), perAcct(mem.rssAnon, mem0.rssAnon), perAcct(mem.rssFile, mem0.rssFile),
		float64(mem.goroutines-mem0.goroutines)/float64(n))

	// One appending connection per account, as the other benchmarks have;
	// beyond 2,000 accounts they would not fit in this process's open
	// files beside the proxy's: then each APPEND logs in on a connection
	// of its own (the latency is still measured from its tagged OK).
	var appenders []*lineConn
	if n <= 2000 {
		appenders = openAppenders(b, dc.Addr, n)
	}
	appendOne := func(a int) error {
		if appenders != nil {
			return appendTo(appenders[a], "INBOX", a)
		}
		lc, err := dialFrom(appenderIP, dc.Addr)
		if err != nil {
			return err
		}
		defer lc.nc.Close()
		if err := lc.cmd("LOGIN "+userName(a)+" "+userPass(a), false); err != nil {
			return err
		}
		return appendTo(lc, "INBOX", a)
	}
	// Ten baseline accounts spread over the round (each round appends
	// in account order): a Dovecot that hibernates wakes connections
	// one by one as the round goes, and the first accounts of a round
	// would see it before the rest of the round loads it.
	var spread []int
	for i := range min(n, 10) {
		spread = append(spread, i*n/min(n, 10))
	}
	baselines := openBaselinesOn(b, dc.Addr, spread)
	if dopts.HibernateAfter > 0 {
		// Every IDLE, the baselines' and the watchers', hibernated.
		time.Sleep(dopts.HibernateAfter + 2*time.Second)
	}
	rate := appendRate(b)
	var e2e, base []int64
	missing := 0
	round := 0
	latMu.Lock()
	lat = nil
	latMu.Unlock()
	self0, busy0, total0 := cpuTimes()
	t0 := time.Now()
	for b.Loop() {
		round++
		for _, bl := range baselines {
			bl.existsAt.Store(0)
		}
		done := make([]int64, n)
		work := make(chan int)
		go func() {
			t0 := time.Now()
			for a := range n {
				if rate > 0 {
					time.Sleep(time.Until(t0.Add(time.Duration(float64(a) / rate * float64(time.Second)))))
				}
				work <- a
			}
			close(work)
		}()
		var awg sync.WaitGroup
		var appendErr atomic.Pointer[error]
		for range min(n, 16) {
			awg.Go(func() {
				for a := range work {
					if err := appendOne(a); err != nil {
						err = fmt.Errorf("APPEND to %s: %w", userName(a), err)
						appendErr.CompareAndSwap(nil, &err)
					}
					done[a] = now()
				}
			})
		}
		awg.Wait()
		if e := appendErr.Load(); e != nil {
			b.Fatal(*e)
		}
		deadline := time.Now().Add(2*poll + time.Minute)
		for {
			got := 0
			for a := range n {
				if c, _ := g.count(a); c >= round {
					got++
				}
			}
			if got == n || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		var roundLat []int64
		for a := range n {
			c, at := g.count(a)
			if c < round {
				missing++
				continue
			}
			roundLat = append(roundLat, max(at-done[a], 0))
		}
		for range 200 {
			if !slices.ContainsFunc(baselines, func(bl *idleBaseline) bool { return bl.existsAt.Load() == 0 }) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		for _, bl := range baselines {
			if t := bl.existsAt.Load(); t > 0 {
				base = append(base, max(t-done[bl.account], 0))
			}
		}
		e2e = append(e2e, roundLat...)
		s := summarize(roundLat)
		fmt.Fprintf(os.Stderr, "%s: round %d: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d missing)\n", b.Name(), round, ms(s.p50), ms(s.p99), ms(s.max), n-len(roundLat))
	}
	self1, busy1, total1 := cpuTimes()
	elapsed := time.Since(t0)
	latMu.Lock()
	own, nOwn := summarize(lat), len(lat)
	latMu.Unlock()
	se, sb := summarize(e2e), summarize(base)
	extra := g.seen.Load() - int64(round*n)
	b.ReportMetric(float64(conns)/float64(n), "upconns/account")
	b.ReportMetric(perAcct(mem.rss, mem0.rss), "rss-KiB/account")
	b.ReportMetric(perAcct(mem.heapInuse, mem0.heapInuse), "heap-KiB/account")
	b.ReportMetric(ms(se.p50), "push-p50-ms")
	b.ReportMetric(ms(se.p99), "push-p99-ms")
	b.ReportMetric(ms(sb.p50), "dovecot-idle-p50-ms")
	b.ReportMetric(ms(sb.p99), "dovecot-idle-p99-ms")
	b.Logf("%s over %d rounds (%d accounts, %.0f APPENDs/s):\n"+
		"  %-44s %8s %8s %8s %8s %8s\n"+
		"  %-44s %8d %8.0f %8.0f %8.0f %8.0f\n"+
		"  %-44s %8d %8.0f %8.0f %8.0f %8.0f\n"+
		"  %-44s %8d %8.1f %8.1f %8.1f %8.1f\n"+
		"  %d pushes missing, %d extra (more than one per APPEND), %d malformed; during the rounds the machine was %.0f %% busy (all processes, other helpers' too), this process (proxy, gateway, test clients) used %.0f %% of one core",
		b.Name(), round, n, rate,
		"latency (ms)", "samples", "p50", "p90", "p99", "max",
		"APPEND OK to gateway receipt (proxy push)", len(e2e), ms(se.p50), ms(se.p90), ms(se.p99), ms(se.max),
		"APPEND OK to EXISTS (Dovecot IDLE, direct)", len(base), ms(sb.p50), ms(sb.p90), ms(sb.p99), ms(sb.max),
		"the proxy's own (hub read to gateway OK)", nOwn, ms(own.p50), ms(own.p90), ms(own.p99), ms(own.max),
		missing, extra, g.bad.Load(), 100*float64(busy1-busy0)/float64(max(total1-total0, 1)), 100*(self1-self0).Seconds()/elapsed.Seconds())
	if missing > 0 {
		b.Errorf("%d pushes never arrived", missing)
	}
}
