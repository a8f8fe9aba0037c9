package imaptestrun

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// Environment variables of TestStress.
const (
	// stressEnv is the length of one stress run in seconds; unset, the
	// test is skipped.
	stressEnv = "LEMONPROXY_IMAPTEST_STRESS"
	// stressRunsEnv is how many runs per target (default 3), alternated.
	stressRunsEnv = "LEMONPROXY_IMAPTEST_STRESS_RUNS"
	// stressProfileEnv, if set, is a directory that receives CPU, heap
	// allocation, block and mutex profiles of the process (the proxy
	// runs in it) over the proxy's runs.
	stressProfileEnv = "LEMONPROXY_IMAPTEST_STRESS_PROFILE"
	// stressEventsEnv, if set, has Dovecot log every command it finishes
	// (dovecottest.Options.CommandEvents) and the test print, beside
	// each other, what Dovecot itself did for the clients directly and
	// through the proxy: the commands it ran per 1,000 of imaptest's, how
	// long each took in Dovecot and how much of that was waiting for the
	// mailbox's locks. The logging costs Dovecot CPU: take commands per
	// second from runs without it.
	stressEventsEnv = "LEMONPROXY_IMAPTEST_STRESS_EVENTS"
	// stressRelayEnv, if set, adds a third target: Dovecot through a
	// plain TCP relay (startTCPRelay), what the extra hop alone costs
	// under the stress; its rates are printed beside the direct ones.
	stressRelayEnv = "LEMONPROXY_IMAPTEST_STRESS_RELAY"
)

// stressClients is imaptest's concurrency in stress mode, as issue 20
// measured it (10 clients, checks on).
const stressClients = 10

// stressResult is one imaptest stress run: commands done per state
// (LOGIN, SELECT, FETCH...), and their total and counted latency.
type stressResult struct {
	secs float64
	// CPU each party used during the run: Dovecot (every process, also
	// those reaped), imaptest, and this process (the proxy when it is
	// the target; the harness's idle waiting otherwise).
	dovecotCPU, imaptestCPU, selfCPU time.Duration
	// Through the proxy: its pooled connections' catch-up NOOPs, and the
	// commands that went without one although the mailbox had changed
	// (proxy.Stats).
	catchUps, catchUpsSkipped int64
	ahead                     int64 // commands sent upstream ahead of their turn (proxy/ahead.go)
	count                     map[string]int
	timed                     map[string]int
	msecs                     map[string]int64
	errors                    int
	errLines                  []string
}

func (r stressResult) total() int {
	n := 0
	for _, c := range r.count {
		n += c
	}
	return n
}

// TestStress runs imaptest's stress mode (random commands by 10 clients
// on one mailbox, imaptest checking every answer against its model of the
// mailbox) against Dovecot's legacy profile directly and through
// lemonproxy over it, alternately, and prints commands per second and the
// mean latency of each command beside each other: issue 20's per-command
// figure. It fails only when a run reports errors through the proxy that
// the direct runs do not (imaptest's "Error:" lines), not on speed: a
// benchmark, not a timed test.
func TestStress(t *testing.T) {
	bin := os.Getenv(binEnv)
	secsText := os.Getenv(stressEnv)
	if bin == "" || secsText == "" {
		t.Skipf("%s and %s not set (see scripts/imaptest.sh)", binEnv, stressEnv)
	}
	secs, err := strconv.Atoi(secsText)
	if err != nil || secs <= 0 {
		t.Fatalf("%s=%q: want seconds", stressEnv, secsText)
	}
	runs := 3
	if v := os.Getenv(stressRunsEnv); v != "" {
		if runs, err = strconv.Atoi(v); err != nil || runs <= 0 {
			t.Fatalf("%s=%q: want a count", stressRunsEnv, v)
		}
	}
	dir := os.Getenv(testsEnv)
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "..", "shared", "imaptest", "src", "tests")
	}
	mbox := filepath.Join(dir, "default.mbox")

	events := os.Getenv(stressEventsEnv) != ""
	legacy := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{CommandEvents: events})
	users := map[string]string{}
	for i := range runs {
		users[fmt.Sprintf("sd-%d", i)] = password
		users[fmt.Sprintf("sp-%d", i)] = password
		users[fmt.Sprintf("sr-%d", i)] = password
	}
	legacy.AddUsers(t, users)
	lp := startLemonproxyServer(t, legacy.Addr)
	proxyAddr := lp.Addr

	if pdir := os.Getenv(stressProfileEnv); pdir != "" {
		runtime.SetBlockProfileRate(int(time.Microsecond))
		runtime.SetMutexProfileFraction(5)
		defer func() {
			runtime.SetBlockProfileRate(0)
			runtime.SetMutexProfileFraction(0)
		}()
		stop := startCPUProfile(t, filepath.Join(pdir, "cpu.pprof"))
		defer func() {
			stop()
			for _, p := range []string{"allocs", "block", "mutex"} {
				writeProfile(t, p, filepath.Join(pdir, p+".pprof"))
			}
		}()
	}

	relayAddr := ""
	if os.Getenv(stressRelayEnv) != "" {
		relayAddr = startTCPRelay(t, legacy.Addr)
	}
	var direct, proxied, relayed []stressResult
	for i := range runs {
		// A fresh user each run: imaptest's stress fills its mailbox.
		direct = append(direct, runStress(t, bin, mbox, legacy, legacy.Addr, fmt.Sprintf("sd-%d", i), secs))
		if relayAddr != "" {
			relayed = append(relayed, runStress(t, bin, mbox, legacy, relayAddr, fmt.Sprintf("sr-%d", i), secs))
		}
		st0 := lp.Srv.Stats()
		r := runStress(t, bin, mbox, legacy, proxyAddr, fmt.Sprintf("sp-%d", i), secs)
		st := lp.Srv.Stats()
		r.catchUps, r.catchUpsSkipped = st.CatchUps-st0.CatchUps, st.CatchUpsSkipped-st0.CatchUpsSkipped
		r.ahead = st.CommandsAhead - st0.CommandsAhead
		proxied = append(proxied, r)
	}
	printStress(t, direct, proxied)
	if relayed != nil {
		var b strings.Builder
		for i, r := range relayed {
			fmt.Fprintf(&b, " %.0f (%.2fx)", float64(r.total())/r.secs, float64(r.total())/r.secs/(float64(direct[i].total())/direct[i].secs))
		}
		t.Logf("through a TCP relay, commands/s each run (ratio to the direct run before it):%s", b.String())
	}
	if events {
		printDovecotCommands(t, legacy, direct, proxied)
	}
	de, pe := 0, 0
	for i := range runs {
		de += direct[i].errors
		pe += proxied[i].errors
	}
	if pe > de {
		for _, r := range proxied {
			for _, l := range r.errLines {
				t.Logf("through the proxy: %s", l)
			}
		}
		t.Errorf("imaptest reported %d errors through the proxy, %d directly", pe, de)
	}
}

// runStress runs one imaptest stress run of secs seconds against addr.
func runStress(t *testing.T, bin, mbox string, dc *dovecottest.Server, addr, user string, secs int) stressResult {
	t.Helper()
	tmp := t.TempDir()
	results := filepath.Join(tmp, "results.tsv")
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "host="+host, "port="+port, "user="+user, "pass="+password,
		"mbox="+mbox, fmt.Sprintf("clients=%d", stressClients), fmt.Sprintf("secs=%d", secs), "output="+results)
	start, dc0, self0 := time.Now(), dc.CPU(), cpustat.Self()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("imaptest stress against %s: %v\n%s", addr, err, out)
	}
	r := stressResult{secs: time.Since(start).Seconds(), count: map[string]int{}, timed: map[string]int{}, msecs: map[string]int64{}}
	r.dovecotCPU, r.selfCPU = dc.CPU()-dc0, cpustat.Self()-self0
	r.imaptestCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "Error:") {
			r.errors++
			if len(r.errLines) < 20 {
				r.errLines = append(r.errLines, l)
			}
		}
	}
	parseResults(t, results, out, &r)
	if r.total() == 0 {
		res, _ := os.ReadFile(results)
		t.Fatalf("imaptest stress against %s did nothing:\n%s\nresults:\n%s", addr, out, res)
	}
	return r
}

// stateNames finds the state names in imaptest's output: the first line
// followed by a line of as many percentages ("100%  50% ..."). It is
// usually the first line, but the errors imaptest finds while it starts
// ("Error: ...") come before it.
func stateNames(out string) []string {
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, pcts := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || len(pcts) != len(names) {
			continue
		}
		all := true
		for _, p := range pcts {
			all = all && strings.HasSuffix(p, "%")
		}
		if all {
			return names
		}
	}
	return nil
}

// parseResults reads imaptest's output= file: a header, then a line a
// second with three numbers per state shown: commands done, commands
// timed, their msecs. The header names every state, also those the run
// does not use (COPY without a second mailbox), so the states come from
// imaptest's own output instead, which names those shown ("Logi List
// Stat Sele ...", stateNames).
func parseResults(t *testing.T, path string, stdout []byte, r *stressResult) {
	t.Helper()
	states := stateNames(string(stdout))
	if len(states) == 0 {
		t.Fatalf("imaptest printed no state names:\n%s", stdout)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) != 3*len(states) {
			continue // the header
		}
		for i, s := range states {
			c, _ := strconv.Atoi(fields[3*i])
			n, _ := strconv.Atoi(fields[3*i+1])
			ms, _ := strconv.ParseInt(fields[3*i+2], 10, 64)
			r.count[s] += c
			r.timed[s] += n
			r.msecs[s] += ms
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

func printStress(t *testing.T, direct, proxied []stressResult) {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	rate := func(rs []stressResult) string {
		var out []string
		for _, r := range rs {
			out = append(out, fmt.Sprintf("%.0f", float64(r.total())/r.secs))
		}
		return strings.Join(out, " ")
	}
	fmt.Fprintf(w, "\tDovecot legacy directly\tlemonproxy over legacy\t\n")
	fmt.Fprintf(w, "commands/s (each run)\t%s\t%s\t\n", rate(direct), rate(proxied))
	// CPU per 1,000 commands, summed over the runs: what each party
	// spends for the same work, which is what the ratio comes down to
	// when the two vCPUs are busy.
	perK := func(rs []stressResult, cpu func(stressResult) time.Duration) string {
		var d time.Duration
		n := 0
		for _, r := range rs {
			d += cpu(r)
			n += r.total()
		}
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f ms", float64(d.Milliseconds())*1000/float64(n))
	}
	for _, p := range []struct {
		name string
		cpu  func(stressResult) time.Duration
	}{
		{"Dovecot CPU per 1,000 commands", func(r stressResult) time.Duration { return r.dovecotCPU }},
		{"imaptest CPU per 1,000 commands", func(r stressResult) time.Duration { return r.imaptestCPU }},
		{"test process (proxy) CPU per 1,000 commands", func(r stressResult) time.Duration { return r.selfCPU }},
	} {
		fmt.Fprintf(w, "%s\t%s\t%s\t\n", p.name, perK(direct, p.cpu), perK(proxied, p.cpu))
	}
	perKCount := func(rs []stressResult, n func(stressResult) int64) string {
		var sum, total int64
		for _, r := range rs {
			sum += n(r)
			total += int64(r.total())
		}
		if total == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", float64(sum)*1000/float64(total))
	}
	fmt.Fprintf(w, "catch-up NOOPs per 1,000 commands\t-\t%s\t\n", perKCount(proxied, func(r stressResult) int64 { return r.catchUps }))
	fmt.Fprintf(w, "catch-ups skipped per 1,000 commands\t-\t%s\t\n", perKCount(proxied, func(r stressResult) int64 { return r.catchUpsSkipped }))
	fmt.Fprintf(w, "sent ahead per 1,000 commands\t-\t%s\t\n", perKCount(proxied, func(r stressResult) int64 { return r.ahead }))
	states := map[string]bool{}
	for _, r := range append(slices.Clone(direct), proxied...) {
		for s := range r.count {
			states[s] = true
		}
	}
	mean := func(rs []stressResult, s string) string {
		var ms int64
		var n int
		for _, r := range rs {
			ms += r.msecs[s]
			n += r.timed[s]
		}
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms (%d)", float64(ms)/float64(n), n)
	}
	for _, s := range slices.Sorted(maps.Keys(states)) {
		fmt.Fprintf(w, "%s mean latency\t%s\t%s\t\n", s, mean(direct, s), mean(proxied, s))
	}
	errs := func(rs []stressResult) string {
		n := 0
		for _, r := range rs {
			n += r.errors
		}
		return strconv.Itoa(n)
	}
	fmt.Fprintf(w, "imaptest errors\t%s\t%s\t\n", errs(direct), errs(proxied))
	w.Flush()
	t.Logf("imaptest stress, %d clients, %d runs a target:\n%s", stressClients, len(direct), b.String())
}

func startCPUProfile(t *testing.T, path string) (stop func()) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

func writeProfile(t *testing.T, name, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}

// printDovecotCommands prints what Dovecot did in the runs, by command,
// for the clients directly (users sd-N) and through the proxy (sp-N):
// how many commands per 1,000 of imaptest's, their mean time in Dovecot
// and the mean part of it spent waiting for locks; then the mean number
// of commands in progress in Dovecot during a run, and the share of their
// time that was lock waits; then how Dovecot's lock waits were
// distributed, in all and by command (lockWaits).
func printDovecotCommands(t *testing.T, dc *dovecottest.Server, direct, proxied []stressResult) {
	t.Helper()
	// The log process writes the events a little after the commands end.
	time.Sleep(time.Second)
	evs, err := dc.CommandEvents()
	if err != nil {
		t.Fatal(err)
	}
	type agg struct {
		n              int
		duration, lock time.Duration
	}
	sides := [2]map[string]*agg{{}, {}} // direct, through the proxy
	var totals [2]agg
	var waits [2][]time.Duration // every nonzero lock wait
	byName := [2]map[string][]time.Duration{{}, {}}
	names := map[string]bool{}
	for _, e := range evs {
		side := 0
		switch {
		case strings.HasPrefix(e.User, "sd-"):
		case strings.HasPrefix(e.User, "sp-"):
			side = 1
		default:
			continue
		}
		a := sides[side][e.Name]
		if a == nil {
			a = &agg{}
			sides[side][e.Name] = a
		}
		a.n++
		a.duration += e.Duration
		a.lock += e.LockWait
		totals[side].n++
		totals[side].duration += e.Duration
		totals[side].lock += e.LockWait
		if e.LockWait > 0 {
			waits[side] = append(waits[side], e.LockWait)
			byName[side][e.Name] = append(byName[side][e.Name], e.LockWait)
		}
		names[e.Name] = true
	}
	clientCmds := [2]int{}
	secs := [2]float64{}
	for i, rs := range [][]stressResult{direct, proxied} {
		for _, r := range rs {
			clientCmds[i] += r.total()
			secs[i] += r.secs
		}
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "Dovecot's commands\tdirectly: per 1,000, mean, lock wait\tthrough the proxy: per 1,000, mean, lock wait\t\n")
	cell := func(side int, name string) string {
		a := sides[side][name]
		if a == nil || clientCmds[side] == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f, %.2f ms, %.2f ms", float64(a.n)*1000/float64(clientCmds[side]),
			msecs(a.duration)/float64(a.n), msecs(a.lock)/float64(a.n))
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		fmt.Fprintf(w, "%s\t%s\t%s\t\n", name, cell(0, name), cell(1, name))
	}
	inProgress := func(side int) string {
		if secs[side] == 0 || totals[side].duration == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f (%.0f %% of it lock waits)", totals[side].duration.Seconds()/secs[side],
			100*totals[side].lock.Seconds()/totals[side].duration.Seconds())
	}
	fmt.Fprintf(w, "commands in progress in Dovecot, mean\t%s\t%s\t\n", inProgress(0), inProgress(1))
	fmt.Fprintf(w, "lock waits: count, p50, p90, p99; share of wait time in waits >= 90 ms\t%s\t%s\t\n",
		lockWaits(waits[0]), lockWaits(waits[1]))
	for _, name := range slices.Sorted(maps.Keys(names)) {
		fmt.Fprintf(w, "%s lock waits\t%s\t%s\t\n", name, lockWaits(byName[0][name]), lockWaits(byName[1][name]))
	}
	w.Flush()
	t.Logf("Dovecot's own commands (imap_command_finished events; LOGIN is not among them):\n%s", b.String())
}

// lockWaits summarizes Dovecot's nonzero lock waits: how many, their
// percentiles, and what share of their total was in waits of 90 ms or
// more. Dovecot waits for a dotlock (maildir's dovecot-uidlist.lock) by
// watching the lock file with inotify and, in any case, at most a random
// 100-200 ms; a release the watch does not see costs the full timer.
func lockWaits(ws []time.Duration) string {
	if len(ws) == 0 {
		return "-"
	}
	slices.Sort(ws)
	var total, long time.Duration
	for _, w := range ws {
		total += w
		if w >= 90*time.Millisecond {
			long += w
		}
	}
	pct := func(p int) float64 { return msecs(ws[(len(ws)-1)*p/100]) }
	return fmt.Sprintf("%d, %.1f, %.1f, %.1f ms; %.0f %%", len(ws), pct(50), pct(90), pct(99),
		100*long.Seconds()/total.Seconds())
}

func msecs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestStateNames: the state names are found also when imaptest reports an
// error before printing them (a stress run once ended in "did nothing"
// because the error line was taken for the names).
func TestStateNames(t *testing.T) {
	want := []string{"Logi", "List", "Stat", "Sele"}
	for _, out := range []string{
		"Logi List Stat Sele \n100%  50%  50% 100% \n   1 2 3 4  10/ 10\n",
		"Error: sp-1[15]: Keyword used without being in FLAGS: $Label1: * 1 FETCH (UID 1 FLAGS ($Label1))\n" +
			"Logi List Stat Sele \n100%  50%  50% 100% \n                  30%\n",
	} {
		if got := stateNames(out); !slices.Equal(got, want) {
			t.Errorf("stateNames(%q) = %q, want %q", out, got, want)
		}
	}
	if got := stateNames("Error: something\n"); got != nil {
		t.Errorf("stateNames of output without states = %q, want nil", got)
	}
}
