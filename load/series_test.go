package load

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// seriesEnv turns on TestSeries, the runs behind docs/load.md.
const seriesEnv = "LEMONPROXY_LOAD_SERIES"

// TestSeries runs the measurements behind docs/load.md: lemonproxy serve
// (built from ./cmd/lemonproxy, a process of its own) in front of a
// private Dovecot (internal/dovecottest), beside the same load directly
// on Dovecot; the load runs in this test's process. Each run starts a
// fresh Dovecot and proxy and writes its result as JSON to
// LEMONPROXY_LOAD_OUT (default ../docs/load), named
// SCENARIO-LABEL-SIZE.json; "go run ./load/loadplot" makes the plots. As
// root, with an open-file limit of 20,000:
//
//	LEMONPROXY_LOAD_SERIES=all go test -run TestSeries -timeout 10h ./load/
//
// Environment:
//
//	LEMONPROXY_LOAD_SERIES   comma-separated: idle, idle-compress, push, resync,
//	                         fetch, fetch-compress, fetch-single, fetch-pinned,
//	                         mixed; or all (fetch-pinned only runs with the
//	                         test itself under "taskset -c 0": see below)
//	LEMONPROXY_LOAD_TARGETS  proxy, dovecot or both (default both)
//	LEMONPROXY_LOAD_SIZES    idle and push session counts (default: proxy
//	                         1000,5000,10000,15500; Dovecot 1000,5000,10000,19000;
//	                         sizes beyond the open-file limit are skipped)
//	LEMONPROXY_LOAD_MESSAGES resync mailbox sizes (default 1000,10000,100000)
//	LEMONPROXY_LOAD_MIXED    mixed: CLIENTS/DURATION[/ACCOUNTS] (default 1000/10m/200)
//	LEMONPROXY_LOAD_MAXLOAD  wait before each run until the 1-minute load average
//	                         is below this (default 1.5) and no other test binary
//	                         runs ...
//	LEMONPROXY_LOAD_WAIT     ... for at most this long (default 20m); the load
//	                         average is recorded in every result either way
//	LEMONPROXY_LOAD_ONLY     run only the runs whose name matches this regular
//	                         expression (e.g. 'idle-.*-1000$')
//	LEMONPROXY_LOAD_DRYRUN   list the runs without running them
//	LEMONPROXY_LOAD_OUT      where the JSON results go
func TestSeries(t *testing.T) {
	spec := os.Getenv(seriesEnv)
	if spec == "" {
		t.Skipf("set %s to run the measurement series (see docs/load.md)", seriesEnv)
	}
	items := map[string]bool{}
	for f := range strings.SplitSeq(spec, ",") {
		items[strings.TrimSpace(f)] = true
	}
	if items["all"] {
		for _, s := range []string{"idle", "idle-compress", "push", "resync", "fetch", "fetch-compress", "fetch-single", "fetch-pinned", "mixed"} {
			items[s] = true
		}
	}
	out := envOr("LEMONPROXY_LOAD_OUT", "../docs/load")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	targets := []string{"proxy", "dovecot"}
	if v := os.Getenv("LEMONPROXY_LOAD_TARGETS"); v != "" && v != "both" {
		targets = strings.Split(v, ",")
	}
	limit := fileLimit()
	raiseInotify(t, 20000)
	s := &series{t: t, out: out, bin: buildProxy(t)}

	sizes := func(target string) []int {
		def := "1000,5000,10000,15500"
		if target == "dovecot" {
			def = "1000,5000,10000,19000"
		}
		var ns []int
		for f := range strings.SplitSeq(envOr("LEMONPROXY_LOAD_SIZES", def), ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("LEMONPROXY_LOAD_SIZES: %q", f)
			}
			// The proxy holds a socket per client, one per watcher (a
			// fifth of the clients) and up to 1,000 pooled upstream
			// connections; the load's process one per client.
			need := uint64(n + 100)
			if target == "proxy" {
				need = uint64(n + n/5 + 1000 + 100)
			}
			if need > limit {
				t.Logf("%s with %d sessions needs about %d open files, the limit is %d: skipped", target, n, need, limit)
				continue
			}
			ns = append(ns, n)
		}
		return ns
	}
	// The runs, in order of importance; at each size the proxy and the
	// direct run follow each other, so that they meet similar machines.
	type run struct {
		name, target string
		profile      dovecottest.Profile
		accounts     int
		set          func(*Config)
		proxyCPUs    string // taskset's CPU list for the proxy ("": any)
	}
	var runs []run
	direct := func(target string, full bool) dovecottest.Profile {
		// Directly, Dovecot's full profile where the clients need QRESYNC
		// or COMPRESS; behind the proxy always the Legacy one (the
		// proxy's own QRESYNC and COMPRESS).
		if target == "dovecot" && full {
			return dovecottest.Full
		}
		return dovecottest.Legacy
	}
	for _, item := range []struct {
		name     string
		scenario string
		compress bool
	}{{"idle", "idle", false}, {"push", "push", false}, {"idle-compress", "idle", true}} {
		if !items[item.name] {
			continue
		}
		for _, n := range []int{1000, 5000, 10000, 15500, 19000} {
			for _, target := range targets {
				ns := sizes(target)
				if item.compress {
					ns = filterSizes(ns, 1000, 10000) // enough to see the difference
				}
				if !slices.Contains(ns, n) {
					continue
				}
				label := target
				if item.compress {
					label += "-compress"
				}
				runs = append(runs, run{fmt.Sprintf("%s-%s-%d", item.scenario, label, n), target, direct(target, item.compress), n / 5, func(cfg *Config) {
					cfg.Scenario, cfg.Clients, cfg.Compress, cfg.Label = item.scenario, n, item.compress, label
					cfg.Duration, cfg.Settle = 10*time.Second, 5*time.Second
					if item.scenario == "push" {
						cfg.Rate, cfg.Duration = 100, 30*time.Second
					}
				}, ""})
			}
		}
	}
	if items["resync"] {
		for f := range strings.SplitSeq(envOr("LEMONPROXY_LOAD_MESSAGES", "1000,10000,100000"), ",") {
			m, _ := strconv.Atoi(strings.TrimSpace(f))
			for _, target := range targets {
				runs = append(runs, run{fmt.Sprintf("resync-%s-%d", target, m), target, direct(target, true), 1, func(cfg *Config) {
					cfg.Scenario, cfg.Label, cfg.Clients, cfg.Messages, cfg.Changes, cfg.Rounds = "resync", target, 4, m, 15, 3
				}, ""})
			}
		}
	}
	// fetch: four clients, which keep both vCPUs busy (the figure is then
	// CPU per MB of the whole path); fetch-single: one client.
	// fetch-pinned: four clients, Dovecot and the load on CPU 0 and the
	// proxy on CPU 1, as if the proxy had a host of its own (the usual
	// deployment) while Dovecot and its clients have the same CPU as
	// when they talk directly. It needs the test started under
	// "taskset -c 0", so that Dovecot inherits that CPU.
	for _, f := range []struct {
		item    string
		comp    bool
		clients int
		suffix  string
	}{{"fetch", false, 4, ""}, {"fetch-compress", true, 4, "-compress"}, {"fetch-single", false, 1, "-1client"}, {"fetch-pinned", false, 4, "-pinned"}} {
		if !items[f.item] {
			continue
		}
		proxyCPUs := ""
		if f.item == "fetch-pinned" {
			if own := allowedCPUs(); own != "0" {
				t.Logf("fetch-pinned skipped: this process may run on CPUs %q; start it under \"taskset -c 0\"", own)
				continue
			}
			proxyCPUs = "1"
		}
		for _, target := range targets {
			label := target + f.suffix
			runs = append(runs, run{"fetch-" + label, target, direct(target, f.comp), 1, func(cfg *Config) {
				cfg.Scenario, cfg.Label, cfg.Compress = "fetch", label, f.comp
				cfg.Clients, cfg.Messages, cfg.Size, cfg.Duration = f.clients, 100, 100<<10, 30*time.Second
			}, proxyCPUs})
		}
	}
	if items["mixed"] {
		clients, dur, accounts := 1000, 10*time.Minute, 0
		if v := os.Getenv("LEMONPROXY_LOAD_MIXED"); v != "" {
			f := strings.Split(v, "/")
			clients, _ = strconv.Atoi(f[0])
			var err error
			if len(f) < 2 || len(f) > 3 || clients < 1 {
				t.Fatalf("LEMONPROXY_LOAD_MIXED=%q: want CLIENTS/DURATION[/ACCOUNTS]", v)
			}
			if dur, err = time.ParseDuration(f[1]); err != nil {
				t.Fatalf("LEMONPROXY_LOAD_MIXED=%q: %v", v, err)
			}
			if len(f) == 3 {
				accounts, _ = strconv.Atoi(f[2])
			}
		}
		if accounts < 1 {
			accounts = max(clients/5, 1)
		}
		for _, target := range targets {
			runs = append(runs, run{fmt.Sprintf("mixed-%s-%d", target, clients), target, direct(target, true), accounts, func(cfg *Config) {
				cfg.Scenario, cfg.Label, cfg.Clients, cfg.Duration, cfg.Rate = "mixed", target, clients, dur, 20
			}, ""})
		}
	}
	if only := os.Getenv("LEMONPROXY_LOAD_ONLY"); only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			t.Fatalf("LEMONPROXY_LOAD_ONLY: %v", err)
		}
		runs = slices.DeleteFunc(runs, func(r run) bool { return !re.MatchString(r.name) })
	}
	var names []string
	for _, r := range runs {
		names = append(names, r.name)
	}
	t.Logf("%d runs: %s", len(runs), strings.Join(names, " "))
	if os.Getenv("LEMONPROXY_LOAD_DRYRUN") != "" {
		return
	}
	for _, r := range runs {
		s.proxyCPUs = r.proxyCPUs
		t.Run(r.name, func(t *testing.T) { s.run(t, r.name, r.target, r.profile, r.accounts, r.set) })
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func filterSizes(ns []int, keep ...int) []int {
	var out []int
	for _, n := range ns {
		for _, k := range keep {
			if n == k {
				out = append(out, n)
			}
		}
	}
	return out
}

type series struct {
	t         *testing.T
	out       string
	bin       string
	proxyCPUs string // the current run's CPUs for the proxy (taskset -c), or ""
}

// allowedCPUs returns the CPUs this process may run on
// (Cpus_allowed_list), e.g. "0-1".
func allowedCPUs() string { return procField("/proc/self/status", "Cpus_allowed_list:") }

// run starts Dovecot (and the proxy, for target "proxy") with accounts
// u00000... (passwords p00000...), runs the load with the configuration
// set makes, and writes the result.
func (s *series) run(t *testing.T, name, target string, profile dovecottest.Profile, accounts int, set func(*Config)) {
	quiet := waitQuiet(t)
	dc := dovecottest.Start(t, profile)
	accts, err := PatternAccounts("u%05d", "p%05d", accounts)
	if err != nil {
		t.Fatal(err)
	}
	users := make(map[string]string, len(accts))
	for _, a := range accts {
		users[a.User] = a.Pass
	}
	dc.AddUsers(t, users)
	master := dovecotMaster(t, dc)
	// Registered after Start's cleanup, so it runs first: thousands of
	// imap processes take a while to log out, longer than Stop waits.
	t.Cleanup(func() { waitFewProcs(t, master, 20, 5*time.Minute) })
	sources, _ := ParseSources("127.0.0.2-127.0.0.9")
	cfg := Config{
		Target: dc.Addr, Outside: dc.Addr, Upstream: dc.Addr, DovecotPID: master,
		Accounts: accts, Sources: sources, Progress: os.Stderr, ProgressEvery: 10 * time.Second,
	}
	notes := []string{fmt.Sprintf("Dovecot %s profile (internal/dovecottest)", profile)}
	if target == "proxy" {
		addr, murl, pid := s.startProxy(t, dc.Addr)
		cfg.Target, cfg.TargetPID, cfg.TargetMetrics = addr, pid, murl
		notes = append(notes, "lemonproxy serve with its defaults in front of it, in a process of its own")
		if s.proxyCPUs != "" {
			notes = append(notes, fmt.Sprintf("the proxy on CPU %s, Dovecot and the load on CPU %s (taskset)", s.proxyCPUs, allowedCPUs()))
		}
	} else {
		notes = append(notes, "clients connected directly to Dovecot")
		if own := allowedCPUs(); own != "0-1" && own != "" {
			notes = append(notes, fmt.Sprintf("Dovecot and the load on CPU %s (taskset)", own))
		}
	}
	notes = append(notes, "the load in another process on the same machine (go test -run TestSeries ./load/)", quiet)
	cfg.Notes = notes
	set(&cfg)
	if cfg.Scenario == "resync" {
		// The tool fills the mailbox by APPEND when it is short, but one
		// APPEND at a time (Legacy has no LITERAL+) takes about an hour for
		// 100,000 messages: Dovecot syncs the growing maildir each time.
		// The same messages, written as maildir files, take seconds.
		dc.FillMailbox(t, accts[0].User, "lemonload-resync", cfg.Messages, func(i int) []byte { return message(0, i, 400, "resync") })
		cfg.Notes = append(cfg.Notes, "the mailbox's messages written as maildir files before the run (dovecottest.FillMailbox)")
	}
	res, err := Run(context.Background(), cfg)
	if res != nil {
		var b strings.Builder
		res.WriteTable(&b)
		t.Logf("\n%s", b.String())
		f, ferr := os.Create(filepath.Join(s.out, name+".json"))
		if ferr != nil {
			t.Fatal(ferr)
		}
		res.WriteJSON(f)
		f.Close()
	}
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	if res != nil && res.Errors > 0 {
		t.Errorf("%s: %d errors", name, res.Errors)
	}
}

// waitQuiet waits until the machine's load average is below
// LEMONPROXY_LOAD_MAXLOAD and no other test binary runs, for at most
// LEMONPROXY_LOAD_WAIT, and describes the machine for the result's notes.
func waitQuiet(t *testing.T) string {
	maxLoad, _ := strconv.ParseFloat(envOr("LEMONPROXY_LOAD_MAXLOAD", "1.5"), 64)
	wait, err := time.ParseDuration(envOr("LEMONPROXY_LOAD_WAIT", "20m"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	start := time.Now()
	for (LoadAvg1() >= maxLoad || len(otherTests()) > 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Second)
	}
	l, others := LoadAvg1(), otherTests()
	if l >= maxLoad || len(others) > 0 {
		t.Logf("load average %.2f, other tests running: %q after waiting %v: measuring anyway", l, others, wait)
		return fmt.Sprintf("measured on a busy machine after waiting %v: load average %.2f, other test binaries running: %s",
			time.Since(start).Round(time.Second), l, strings.Join(others, "; "))
	}
	return fmt.Sprintf("machine quiet before the run (load average %.2f, no other test binary) after waiting %v", l, time.Since(start).Round(time.Second))
}

// otherTests lists the other test binaries running on the machine
// (other engineers' runs on a shared machine): their names.
func otherTests() []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []string
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		if pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if strings.HasSuffix(argv0, ".test") {
			out = append(out, filepath.Base(argv0))
		}
	}
	return out
}

// buildProxy builds lemonproxy into a temporary directory.
func buildProxy(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "lemonproxy")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/lemonproxy/lemonproxy/cmd/lemonproxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building lemonproxy: %v\n%s", err, out)
	}
	return bin
}

// startProxy runs "lemonproxy serve" in front of upstream and returns its
// address and process.
func (s *series) startProxy(t *testing.T, upstream string) (addr, metricsURL string, pid int) {
	addr, maddr := freeAddr(t), freeAddr(t)
	metricsURL = "http://" + maddr + "/metrics"
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "lemonproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{s.bin, "serve", "-listen", addr, "-upstream", upstream, "-data", filepath.Join(dir, "data"), "-log-level", "warn", "-metrics", maddr}
	if s.proxyCPUs != "" {
		args = append([]string{"taskset", "-c", s.proxyCPUs}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
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
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if data, _ := os.ReadFile(logf.Name()); len(data) > 0 {
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			t.Logf("lemonproxy's log (%d lines), last ones:\n%s", len(lines), strings.Join(lines[max(0, len(lines)-10):], "\n"))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "* OK") {
				return addr, metricsURL, cmd.Process.Pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lemonproxy serve did not greet on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// dovecotMaster returns the PID of the Dovecot master process: the one of
// its processes this process started.
func dovecotMaster(t *testing.T, dc *dovecottest.Server) int {
	for _, pid := range dc.PIDs() {
		if st, ok := readStat(pid); ok && st.ppid == os.Getpid() {
			return pid
		}
	}
	t.Fatal("no Dovecot master process found")
	return 0
}

// waitFewProcs waits until the process tree of root has at most n
// processes.
func waitFewProcs(t *testing.T, root, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for len(treePIDs(root)) > n && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
}

// raiseInotify lifts the inotify limits Dovecot needs for thousands of
// IDLE processes (as root; otherwise Dovecot falls back to polling).
func raiseInotify(t *testing.T, sessions int) {
	for path, want := range map[string]int{
		"/proc/sys/fs/inotify/max_user_instances": 4 * sessions,
		"/proc/sys/fs/inotify/max_user_watches":   40 * sessions,
	} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if cur, _ := strconv.Atoi(strings.TrimSpace(string(data))); cur >= want {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
			t.Logf("cannot raise %s to %d: %v", path, want, err)
		}
	}
}
