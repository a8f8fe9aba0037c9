package imaptestrun

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// latencyEnv is how many rounds TestLatency runs per target; unset, the
// test is skipped.
const latencyEnv = "LEMONPROXY_IMAPTEST_LATENCY"

// latencyCommands is one round of TestLatency: a client's life in short,
// each command timed from its first byte sent to its tagged answer read.
var latencyCommands = []string{"LOGIN", "SELECT", "APPEND", "FETCH", "STORE", "STORE.SILENT", "EXPUNGE", "NOOP", "STATUS", "LOGOUT"}

// TestLatency measures what one command costs through the proxy beyond the
// extra hop, without contention: one client, one command at a time, against
// Dovecot's legacy profile directly, through a plain TCP relay (the extra
// loopback hop and nothing else) and through lemonproxy, the rounds of the
// three interleaved; it prints the median (p50) and p90 of each command per
// target (and p99) and the proxy's p50 beyond the relay's: issue 20's "added latency
// per command at p50 under 1 ms beyond the extra loopback hop". A
// benchmark, not a timed test: it fails only on a command that fails.
func TestLatency(t *testing.T) {
	roundsText := os.Getenv(latencyEnv)
	if roundsText == "" {
		t.Skipf("%s not set", latencyEnv)
	}
	rounds, err := strconv.Atoi(roundsText)
	if err != nil || rounds <= 0 {
		t.Fatalf("%s=%q: want a count", latencyEnv, roundsText)
	}
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	targets := []struct{ name, addr string }{
		{"Dovecot legacy directly", legacy.Addr},
		{"through a TCP relay", startTCPRelay(t, legacy.Addr)},
		{"through lemonproxy", startLemonproxy(t, legacy.Addr)},
	}
	users := map[string]string{}
	for i := range targets {
		users[fmt.Sprintf("lat-%d", i)] = password
	}
	legacy.AddUsers(t, users)
	times := make([]map[string][]time.Duration, len(targets))
	for i := range times {
		times[i] = map[string][]time.Duration{}
	}
	for r := range rounds {
		for i, tg := range targets {
			latencyRound(t, tg.addr, fmt.Sprintf("lat-%d", i), r, times[i])
		}
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "p50 / p90 / p99 (ms)\t")
	for _, tg := range targets {
		fmt.Fprintf(w, "%s\t", tg.name)
	}
	fmt.Fprintf(w, "proxy p50 beyond the relay's\t\n")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	for _, c := range latencyCommands {
		fmt.Fprintf(w, "%s\t", c)
		for i := range targets {
			p50, p90, p99 := percentiles(times[i][c])
			fmt.Fprintf(w, "%s / %s / %s\t", ms(p50), ms(p90), ms(p99))
		}
		relay, _, _ := percentiles(times[1][c])
		proxied, _, _ := percentiles(times[2][c])
		fmt.Fprintf(w, "%s\t\n", ms(proxied-relay))
	}
	w.Flush()
	t.Logf("one client, %d rounds a target:\n%s", rounds, b.String())
}

// latencyRound runs one round of latencyCommands as user at addr and adds
// each command's time to times.
func latencyRound(t *testing.T, addr, user string, round int, times map[string][]time.Duration) {
	t.Helper()
	timed := func(name string, f func()) {
		start := time.Now()
		f()
		times[name] = append(times[name], time.Since(start))
	}
	c := imaptest.Dial(t, addr)
	defer c.Close()
	c.MustGreetOK()
	timed("LOGIN", func() { c.MustOK("LOGIN " + user + " " + password) })
	timed("SELECT", func() { c.MustOK("SELECT INBOX") })
	msg := fmt.Sprintf("From: a@example.org\r\nSubject: round %d\r\nMessage-ID: <r%d@example.org>\r\n\r\nbody\r\n", round, round)
	timed("APPEND", func() { c.MustOK(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg)) })
	c.MustOK("NOOP") // the APPEND's EXISTS, whoever reports it
	timed("FETCH", func() { c.MustOK("FETCH 1:* (UID FLAGS)") })
	timed("STORE", func() { c.MustOK(`STORE 1 +FLAGS (\Seen)`) })
	timed("STORE.SILENT", func() { c.MustOK(`STORE 1 +FLAGS.SILENT (\Deleted)`) })
	timed("EXPUNGE", func() { c.MustOK("EXPUNGE") })
	timed("NOOP", func() { c.MustOK("NOOP") })
	timed("STATUS", func() { c.MustOK("STATUS INBOX (MESSAGES UNSEEN RECENT)") })
	timed("LOGOUT", func() { c.MustOK("LOGOUT") })
}

// percentiles returns the median and the 90th and 99th percentiles of ds.
func percentiles(ds []time.Duration) (p50, p90, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*9/10], s[len(s)*99/100]
}

// startTCPRelay starts a plain TCP relay to target, closed when the test
// ends: the extra hop a proxy adds, with nothing else.
func startTCPRelay(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
