package casesearch_test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/casesearch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// benchMessage is message i (from 1) of the benchmark's mailbox: every
// hundredth has an encoded "Straße" subject, every thousandth "café" in
// its body, sender7 sent every fiftieth.
func benchMessage(i int) []byte {
	subject := fmt.Sprintf("Report %d on the weekly numbers", i)
	if i%100 == 0 {
		subject = fmt.Sprintf("=?UTF-8?Q?Stra=C3=9Fe_und_Stra=C3=9Fe_{%d}?=", i)
	}
	msg := fmt.Sprintf("From: Sender %d <sender%d@example.org>\r\nTo: alice@example.org\r\nSubject: %s\r\nDate: Mon, 2 Feb 2026 10:00:00 +0000\r\nMessage-ID: <%d@example.org>\r\n\r\n%s",
		i, i%50, subject, i, strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 30))
	if i%1000 == 0 {
		msg += "The caf\u00e9 is open.\r\n"
	}
	return []byte(msg)
}

// benchSearches are the searches timed: the proxy's evaluation gets the
// upper-case strings, the reference the lower-case ones (the same
// answer).
var benchSearches = []struct{ evaluated, reference string }{
	{`SEARCH CHARSET UTF-8 SUBJECT "STRAßE"`, `SEARCH CHARSET UTF-8 SUBJECT "straße"`},
	{`SEARCH FROM "SENDER7@"`, `SEARCH FROM "sender7@"`},
	{`SEARCH CHARSET UTF-8 BODY "CAFÉ"`, `SEARCH CHARSET UTF-8 BODY "café"`},
}

// TestBenchmarkSearch measures what the proxy's evaluation costs:
// benchSearches over LEMONPROXY_CASESEARCH_BENCH messages (10,000 in
// docs/i18nlevel.md), five runs each after a first,
//
//   - in front of go-imap's in-memory server: through the proxy
//     evaluating them and through one relaying them (UpstreamCasemap;
//     go-imap's answer is the same for these strings);
//   - with LEMONPROXY_CASESEARCH_BENCH_DOVECOT=1 also Dovecot: through
//     the proxy evaluating them over the legacy profile, and Dovecot's
//     own search on the full profile, directly.
//
// It logs the median time, the bytes the evaluation read from the
// upstream and what the process allocated (the in-memory server runs in
// this process too: a relayed search's allocations are its own
// baseline). Every answer is checked.
//
//	LEMONPROXY_CASESEARCH_BENCH=10000 go test ./extensions/casesearch -run TestBenchmarkSearch -v
func TestBenchmarkSearch(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("LEMONPROXY_CASESEARCH_BENCH"))
	if n <= 0 {
		t.Skip("set LEMONPROXY_CASESEARCH_BENCH to the number of messages")
	}
	type target struct {
		name, addr, user, pass, mailbox string
		evaluating                      bool
	}
	eval := casesearch.New(casesearch.Config{})
	chain := extensions(casesearch.Config{})
	chain[0] = eval
	var targets []target

	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if err := up.Append("alice", "INBOX", nil, benchMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	targets = append(targets,
		target{"imapmemserver, proxy evaluating", imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: chain}).Addr, "alice", "secret", "INBOX", true},
		target{"imapmemserver, proxy relaying", imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: extensions(casesearch.Config{UpstreamCasemap: true})}).Addr, "alice", "secret", "INBOX", false})
	if os.Getenv("LEMONPROXY_CASESEARCH_BENCH_DOVECOT") == "1" {
		legacy := dovecottest.Start(t, dovecottest.Legacy)
		full := dovecottest.Start(t, dovecottest.Full)
		for _, dc := range []*dovecottest.Server{legacy, full} {
			dc.FillMailbox(t, "alice", "Bench", n, func(i int) []byte { return benchMessage(i + 1) })
		}
		targets = append(targets,
			target{"Dovecot legacy, proxy evaluating", imaptest.StartProxy(t, legacy.Addr, proxy.Config{Extensions: chain}).Addr, "alice", "alicepass", "Bench", true},
			target{"Dovecot full, directly", full.Addr, "alice", "alicepass", "Bench", false})
	}
	for _, q := range benchSearches {
		answers := map[string]bool{}
		for _, tg := range targets {
			cmd := q.reference
			if tg.evaluating {
				cmd = q.evaluated
			}
			c := imaptest.Login(t, tg.addr, tg.user, tg.pass)
			c.Timeout = 5 * time.Minute
			c.MustOK("SELECT " + tg.mailbox)
			c.Do("w", cmd) // warm: the hub's state, the connections, Dovecot's cache
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			alloc := ms.TotalAlloc
			before := eval.BytesRead()
			const runs = 5
			var times []time.Duration
			var got []string
			for range runs {
				start := time.Now()
				got = c.Do("t", cmd)
				times = append(times, time.Since(start))
			}
			runtime.ReadMemStats(&ms)
			c.Close()
			if len(got) != 2 || !strings.HasPrefix(got[1], "t OK") {
				t.Fatalf("%s %s: %q", tg.name, cmd, got)
			}
			answers[got[0]] = true
			slices.Sort(times)
			t.Logf("%-33s %-40s %3d matches: median %4d ms (%v); read %d bytes a search; allocated %.1f MB a search",
				tg.name, cmd, strings.Count(got[0], " ")-1, times[runs/2].Milliseconds(), times,
				(eval.BytesRead()-before)/runs, float64(ms.TotalAlloc-alloc)/runs/1e6)
		}
		if len(answers) != 1 {
			t.Errorf("%s: different answers %v", q.evaluated, answers)
		}
	}
}
