package bench

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Environment variables that tune BenchmarkNotify.
const (
	// notifyAccountsEnv is the number of accounts of the large
	// sub-benchmarks (default 100); the small ones have one.
	notifyAccountsEnv = "LEMONPROXY_BENCH_ACCOUNTS"
	// notifyPollEnv is the account watchers' poll interval (a Go
	// duration, default 10s).
	notifyPollEnv = "LEMONPROXY_BENCH_NOTIFY_POLL"
)

// notifyMailboxes is how many mailboxes each account has: INBOX and
// Box01 ... Box49.
const notifyMailboxes = 50

// notifyEvents is what each session asks for.
const notifyEvents = "NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))"

func notifyAccounts(b *testing.B) int {
	s := os.Getenv(notifyAccountsEnv)
	if s == "" {
		return 100
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a number of accounts", notifyAccountsEnv, s)
	}
	return n
}

func notifyPoll(b *testing.B) time.Duration {
	s := os.Getenv(notifyPollEnv)
	if s == "" {
		return 10 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a duration", notifyPollEnv, s)
	}
	return d
}

// BenchmarkNotify: accounts with 50 mailboxes each, one session per
// account with NOTIFY on personal, through the proxy in front of Dovecot
// (Legacy: the account watcher polls every LEMONPROXY_BENCH_NOTIFY_POLL;
// Full: it also waits in the upstream's IDLE with the upstream's NOTIFY set,
// which wakes it at once). Reports the upstream connections per account
// (target: at most 2 besides the pool's idle ones) and, over the rounds, the
// latency from an outside APPEND's tagged OK on Dovecot to the session's
// STATUS line: for INBOX (target: Dovecot's own IDLE delay, measured beside
// it on direct IDLE connections, plus at most 50 ms) and for another mailbox
// (target: at most the poll interval). Each iteration is one round: one
// APPEND to INBOX, then one to another mailbox, per account. Run with
// -benchtime=Nx; see docs/benchmarks.md.
func BenchmarkNotify(b *testing.B) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		for _, n := range []int{1, notifyAccounts(b)} {
			b.Run(fmt.Sprintf("%v/accounts=%d", p, n), func(b *testing.B) { benchNotify(b, p, n) })
		}
	}
}

// notifySession is one client session with NOTIFY set.
type notifySession struct {
	account int
	lc      *lineConn
	mu      sync.Mutex
	status  map[string]statusSeen // by mailbox, the latest STATUS
}

type statusSeen struct {
	at       int64 // now()
	messages int
}

var statusLineRE = regexp.MustCompile(`^\* STATUS "?([^" ]+)"? \(MESSAGES (\d+) `)

// read notes every STATUS line until the connection ends.
func (s *notifySession) read(closed *atomic.Int64) {
	for {
		line, err := s.lc.readLine()
		if err != nil {
			closed.Add(1)
			return
		}
		if m := statusLineRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[2])
			s.mu.Lock()
			s.status[m[1]] = statusSeen{now(), n}
			s.mu.Unlock()
		}
	}
}

func (s *notifySession) seen(mailbox string) statusSeen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status[mailbox]
}

// idleBaseline is a direct IDLE connection on an account's INBOX: how long
// Dovecot itself takes to tell of new mail.
type idleBaseline struct {
	account  int
	lc       *lineConn
	existsAt atomic.Int64
}

func benchNotify(b *testing.B, profile dovecottest.Profile, n int) {
	checkFileLimit(b, 4*n+1000)
	raiseLimits(b, n)
	poll := notifyPoll(b)
	dc := dovecottest.Start(b, profile)
	accounts := make(map[string]string, n)
	for i := range n {
		accounts[userName(i)] = userPass(i)
	}
	dc.AddUsers(b, accounts)
	makeMailboxes(b, dc, n)
	_, portStr, _ := net.SplitHostPort(dc.Addr)
	dcPort, _ := strconv.Atoi(portStr)

	ext := notify.New(notify.Config{Accounts: accountwatch.Config{PollInterval: poll}})
	srv, addr := startNotifyProxy(b, dc.Addr, ext)
	conns0 := upstreamTo(dcPort)

	// One session per account, NOTIFY on personal.
	start := time.Now()
	sessions := make([]*notifySession, n)
	setTimes := make([]int64, n) // how long each NOTIFY SET took: the account's first poll
	var closed atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	next := atomic.Int64{}
	for range min(n, 32) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				lc, err := dialFrom(net.IPv4(127, 0, 0, byte(2+i%8)), addr)
				if err == nil {
					if err = lc.cmd("LOGIN "+userName(i)+" "+userPass(i), false); err == nil {
						t := now()
						err = lc.cmd(notifyEvents, false)
						setTimes[i] = now() - t
					}
				}
				if err != nil {
					err = fmt.Errorf("session %d: %w", i, err)
					failed.CompareAndSwap(nil, &err)
					return
				}
				lc.nc.SetDeadline(time.Time{})
				s := &notifySession{account: i, lc: lc, status: map[string]statusSeen{}}
				sessions[i] = s
				go s.read(&closed)
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}
	b.Cleanup(func() {
		for _, s := range sessions {
			s.lc.nc.Close()
		}
	})
	ready := time.Since(start)
	set := summarize(setTimes)
	time.Sleep(settle)

	// Upstream connections, before the appenders and baselines (which
	// connect from appenderIP anyway) are opened.
	conns := upstreamTo(dcPort) - conns0
	pooled := srv.Pool().Idle()
	acctWatchers, hubWatchers := ext.Accounts().Watchers(), srv.Hub().Watchers()
	perAccount := float64(conns-pooled) / float64(n)
	b.Logf("%v, %d accounts x %d mailboxes, poll every %v: sessions ready after %.1f s (NOTIFY SET, which waits for the account's first poll, took p50 %.0f ms, max %.0f ms); upstream: %d connections = %d pooled idle + %d (%.2f per account; %d account watchers, %d hub watchers)",
		profile, n, notifyMailboxes, poll, ready.Seconds(), ms(set.p50), ms(set.max), conns, pooled, conns-pooled, perAccount, acctWatchers, hubWatchers)
	if perAccount > 2 {
		b.Errorf("%.2f upstream connections per account besides the pool, want at most 2", perAccount)
	}

	appenders := openAppenders(b, dc.Addr, n)
	baselines := openBaselines(b, dc.Addr, min(n, 10))
	counts := make([]map[string]int, n) // messages appended so far, per account and mailbox
	for i := range counts {
		counts[i] = map[string]int{}
	}
	rate := appendRate(b)
	var inbox, other, base []int64
	var missing int
	round := 0
	for b.Loop() {
		round++
		for _, bl := range baselines {
			bl.existsAt.Store(0)
		}
		lat, miss, done := notifyRound(b, sessions, appenders, counts, "INBOX", rate, 30*time.Second)
		inbox = append(inbox, lat...)
		missing += miss
		// The direct IDLE connections may hear of it later than the
		// sessions did.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if !slices.ContainsFunc(baselines, func(bl *idleBaseline) bool { return bl.existsAt.Load() == 0 }) {
				break
			}
		}
		for _, bl := range baselines {
			if t := bl.existsAt.Load(); t > 0 {
				base = append(base, max(t-done[bl.account], 0))
			}
		}
		box := fmt.Sprintf("Box%02d", 1+(round-1)%(notifyMailboxes-1))
		lat2, miss2, _ := notifyRound(b, sessions, appenders, counts, box, rate, poll+30*time.Second)
		other = append(other, lat2...)
		missing += miss2
		i, o := summarize(lat), summarize(lat2)
		fmt.Fprintf(os.Stderr, "%s: round %d: INBOX p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d missing); %s p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d missing)\n",
			b.Name(), round, ms(i.p50), ms(i.p99), ms(i.max), miss, box, ms(o.p50), ms(o.p99), ms(o.max), miss2)
	}
	si, so, sb := summarize(inbox), summarize(other), summarize(base)
	b.ReportMetric(float64(conns)/float64(n), "upconns/account")
	b.ReportMetric(ms(set.p50), "notify-set-p50-ms")
	b.ReportMetric(perAccount, "upconns-unpooled/account")
	b.ReportMetric(ms(si.p50), "inbox-p50-ms")
	b.ReportMetric(ms(si.p99), "inbox-p99-ms")
	b.ReportMetric(ms(sb.p50), "dovecot-idle-p50-ms")
	b.ReportMetric(ms(si.p50-sb.p50), "inbox-over-idle-p50-ms")
	b.ReportMetric(ms(so.p50), "other-p50-ms")
	b.ReportMetric(ms(so.p99), "other-p99-ms")
	b.ReportMetric(ms(so.max), "other-max-ms")
	b.Logf("%s over %d rounds (%d accounts, poll %v):\n"+
		"  %-34s %8s %8s %8s %8s %8s\n"+
		"  %-34s %8d %8.0f %8.0f %8.0f %8.0f\n"+
		"  %-34s %8d %8.0f %8.0f %8.0f %8.0f\n"+
		"  %-34s %8d %8.0f %8.0f %8.0f %8.0f\n"+
		"  upstream connections per account: %.2f besides %d pooled idle (target <= 2); %d events missing; %d sessions closed",
		b.Name(), round, n, poll,
		"latency (ms)", "samples", "p50", "p90", "p99", "max",
		"INBOX, proxy NOTIFY STATUS", len(inbox), ms(si.p50), ms(si.p90), ms(si.p99), ms(si.max),
		"INBOX, Dovecot IDLE EXISTS (direct)", len(base), ms(sb.p50), ms(sb.p90), ms(sb.p99), ms(sb.max),
		"other mailbox, proxy NOTIFY STATUS", len(other), ms(so.p50), ms(so.p90), ms(so.p99), ms(so.max),
		perAccount, pooled, missing, closed.Load())
	if missing > 0 {
		b.Errorf("%d events never arrived", missing)
	}
	if c := closed.Load(); c > 0 {
		b.Errorf("%d sessions were closed", c)
	}
}

// notifyRound appends one message to mailbox of every account directly on
// Dovecot (paced at rate per second, 16 in flight) and waits until every
// session has the STATUS that reports it, or until timeout. It returns the
// latencies (ns, from the APPEND's tagged OK to the STATUS line), the number
// of sessions that never heard of it, and when each APPEND completed.
func notifyRound(b *testing.B, sessions []*notifySession, appenders []*lineConn, counts []map[string]int, mailbox string, rate float64, timeout time.Duration) ([]int64, int, []int64) {
	n := len(sessions)
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
	var wg sync.WaitGroup
	var appendErr atomic.Pointer[error]
	for range min(n, 16) {
		wg.Go(func() {
			for a := range work {
				if err := appendTo(appenders[a], mailbox, a); err != nil {
					err = fmt.Errorf("APPEND to %s/%s: %w", userName(a), mailbox, err)
					appendErr.CompareAndSwap(nil, &err)
				}
				done[a] = now()
			}
		})
	}
	wg.Wait()
	if p := appendErr.Load(); p != nil {
		b.Fatal(*p)
	}
	for a := range n {
		counts[a][mailbox]++
	}
	deadline := time.Now().Add(timeout)
	for {
		got := 0
		for a, s := range sessions {
			if s.seen(mailbox).messages >= counts[a][mailbox] {
				got++
			}
		}
		if got == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var lat []int64
	missing := 0
	for a, s := range sessions {
		st := s.seen(mailbox)
		if st.messages < counts[a][mailbox] {
			missing++
			continue
		}
		lat = append(lat, max(st.at-done[a], 0))
	}
	return lat, missing, done
}

func appendTo(lc *lineConn, mailbox string, account int) error {
	msg := fmt.Sprintf("From: bench <bench@example.org>\r\nTo: %s@example.org\r\nSubject: notify\r\nMessage-ID: <n%d.%d@example.org>\r\n\r\nHello.\r\n",
		userName(account), account, now())
	lc.seq++
	tag := fmt.Sprintf("a%d", lc.seq)
	lc.nc.SetDeadline(time.Now().Add(roundTimeout))
	if _, err := fmt.Fprintf(lc.nc, "%s APPEND %s {%d+}\r\n%s\r\n", tag, mailbox, len(msg), msg); err != nil {
		return err
	}
	return lc.await(tag, false)
}

// openAppenders logs one direct connection per account in to Dovecot, from
// appenderIP.
func openAppenders(b *testing.B, dovecot string, n int) []*lineConn {
	out := make([]*lineConn, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	for a := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			lc, err := dialFrom(appenderIP, dovecot)
			if err == nil {
				if err = lc.cmd("LOGIN "+userName(a)+" "+userPass(a), false); err != nil {
					lc.nc.Close()
				}
			}
			if err != nil {
				errs[a] = fmt.Errorf("appender %d: %w", a, err)
				return
			}
			lc.nc.SetDeadline(time.Time{})
			out[a] = lc
		})
	}
	wg.Wait()
	b.Cleanup(func() {
		for _, lc := range out {
			if lc != nil {
				lc.nc.Close()
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// openBaselines opens direct IDLE connections on the INBOX of the first n
// accounts, from appenderIP.
func openBaselines(b *testing.B, dovecot string, n int) []*idleBaseline {
	accounts := make([]int, n)
	for i := range accounts {
		accounts[i] = i
	}
	return openBaselinesOn(b, dovecot, accounts)
}

// openBaselinesOn is openBaselines on the given accounts.
func openBaselinesOn(b *testing.B, dovecot string, accounts []int) []*idleBaseline {
	var out []*idleBaseline
	for _, a := range accounts {
		lc, err := dialFrom(appenderIP, dovecot)
		if err == nil {
			err = lc.cmd("LOGIN "+userName(a)+" "+userPass(a), false)
		}
		if err == nil {
			err = lc.cmd("SELECT INBOX", false)
		}
		if err == nil {
			err = lc.cmd("IDLE", true)
		}
		if err != nil {
			b.Fatalf("baseline IDLE for %s: %v", userName(a), err)
		}
		lc.nc.SetDeadline(time.Time{})
		bl := &idleBaseline{account: a, lc: lc}
		out = append(out, bl)
		go func() {
			for {
				line, err := lc.readLine()
				if err != nil {
					return
				}
				if strings.HasPrefix(line, "* ") && strings.HasSuffix(line, " EXISTS") {
					bl.existsAt.Store(now())
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, bl := range out {
			bl.lc.nc.Close()
		}
	})
	return out
}

// makeMailboxes gives each account Box01 ... Box49 besides INBOX, written
// straight into the maildirs (Maildir++ folders: Dir/home/USER/Maildir/.Name)
// before anyone logs in: creating tens of thousands of mailboxes through
// IMAP would take longer than the benchmark. The directories belong to
// the user the mail processes run as, the owner of Dir/home.
func makeMailboxes(b *testing.B, dc *dovecottest.Server, n int) {
	home := filepath.Join(dc.Dir, "home")
	fi, err := os.Stat(home)
	if err != nil {
		b.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	uid, gid := int(st.Uid), int(st.Gid)
	mkdir := func(path string) {
		if err := os.Mkdir(path, 0o700); err != nil && !os.IsExist(err) {
			b.Fatal(err)
		}
		if os.Geteuid() == 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := range n {
		dir := filepath.Join(home, userName(i))
		mkdir(dir)
		md := filepath.Join(dir, "Maildir")
		mkdir(md)
		folders := []string{md}
		for m := 1; m < notifyMailboxes; m++ {
			f := filepath.Join(md, fmt.Sprintf(".Box%02d", m))
			mkdir(f)
			folders = append(folders, f)
		}
		for _, f := range folders {
			for _, sub := range []string{"cur", "new", "tmp"} {
				mkdir(filepath.Join(f, sub))
			}
		}
	}
}

// upstreamTo counts the ESTABLISHED TCP connections to 127.0.0.1:port (where
// Dovecot listens) that do not come from appenderIP: the proxy's. Only the
// exact address is matched: a client socket elsewhere on loopback can have
// Dovecot's port number as its own port (see internal/integration's
// upstreamConns).
func upstreamTo(port int) int {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return -1
	}
	want := hexIP(net.IPv4(127, 0, 0, 1)) + fmt.Sprintf(":%04X", port)
	skip := hexIP(appenderIP) + ":"
	n := 0
	for _, l := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 4 || f[3] != "01" || f[2] != want || strings.HasPrefix(f[1], skip) {
			continue
		}
		n++
	}
	return n
}

// startNotifyProxy runs a proxy with IDLE, CONDSTORE/QRESYNC and NOTIFY in
// front of Dovecot in this process.
func startNotifyProxy(b *testing.B, upstreamAddr string, ext *notify.Extension) (*proxy.Server, string) {
	p := imaptest.StartProxy(b, upstreamAddr, proxy.Config{
		Upstream:   upstream.Config{Timeout: time.Minute},
		Extensions: []proxy.Extension{idle.New(), condstore.New(), ext},
		Logger:     imaptest.StderrLogger(slog.LevelError),
	}, imaptest.ShutdownTimeout(time.Minute))
	return p.Srv, p.Addr
}
