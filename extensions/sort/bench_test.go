package sort

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestBenchmarkSort measures, on a mailbox of LEMONPROXY_SORT_BENCH
// messages (100000 for docs/sort.md), SORT (REVERSE ARRIVAL), ESORT COUNT
// and ESEARCH COUNT (of ALL and UNSEEN, which the proxy decides from its
// state, and of LARGER, which it asks the upstream) through the proxy
// over Dovecot's legacy profile (the proxy sorts) beside Dovecot's own on
// its full profile, first run and later runs, and what the cached keys
// cost in memory; then ESEARCH COUNT through the proxy over the full
// profile (docs/esearch.md). It runs only
// when that variable is set: filling and indexing the mailboxes takes
// minutes.
func TestBenchmarkSort(t *testing.T) {
	n := 0
	fmt.Sscan(os.Getenv("LEMONPROXY_SORT_BENCH"), &n)
	if n <= 0 {
		t.Skip("set LEMONPROXY_SORT_BENCH=100000 to run")
	}
	const runs = 5
	msg := func(i int) []byte {
		return fmt.Appendf(nil, "Date: %s\r\nFrom: User %d <user%d@example.org>\r\nTo: list@example.org\r\nSubject: Re: [list] topic %d\r\nMessage-ID: <%d@bench.example>\r\n\r\nbody %d\r\n",
			time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i*7919%n)*time.Minute).Format(time.RFC1123Z), i%997, i%997, i%5003, i, i)
	}
	full := dovecottest.Start(t, dovecottest.Full)
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	start := time.Now()
	full.FillMailbox(t, "alice", "Big", n, msg)
	legacy.FillMailbox(t, "alice", "Big", n, msg)
	t.Logf("filled two mailboxes of %d messages in %v", n, time.Since(start).Round(time.Millisecond))

	timeCmd := func(c *imaptest.Client, cmd string) (time.Duration, []string) {
		t0 := time.Now()
		lines := c.Cmd(cmd)
		d := time.Since(t0)
		if !strings.Contains(lines[len(lines)-1], " OK") {
			t.Fatalf("%s: %.200q", cmd, lines[len(lines)-1])
		}
		return d, lines
	}
	series := func(name string, c *imaptest.Client, cmd string) []time.Duration {
		var ds []time.Duration
		for range runs {
			d, _ := timeCmd(c, cmd)
			ds = append(ds, d)
		}
		t.Logf("%-48s later runs: %s", name, fmtDurations(ds))
		return ds
	}
	const sortCmd = "SORT (REVERSE ARRIVAL) UTF-8 ALL"
	const esortCmd = "SORT RETURN (COUNT) (REVERSE ARRIVAL) UTF-8 ALL"
	const esearchCmd = "SEARCH RETURN (COUNT) ALL"
	// The same with a flag key, which the proxy also decides from its
	// state, and with a size key, which goes upstream
	// (extensions/internal/statesearch).
	const esearchFlagCmd = "SEARCH RETURN (COUNT) UNSEEN"
	const esearchSizeCmd = "SEARCH RETURN (COUNT) LARGER 100"

	// Dovecot's own SORT (full profile), directly.
	d := imaptest.Dial(t, full.Addr)
	d.Timeout = 10 * time.Minute // a first SELECT or SORT of 100,000 messages
	d.MustGreetOK()
	d.MustOK("LOGIN alice alicepass")
	sel, _ := timeCmd(d, "SELECT Big")
	first, _ := timeCmd(d, sortCmd)
	t.Logf("Dovecot full: SELECT %v, first SORT %v", sel.Round(time.Millisecond), first.Round(time.Millisecond))
	series("Dovecot full, SORT (REVERSE ARRIVAL)", d, sortCmd)
	series("Dovecot full, ESORT COUNT", d, esortCmd)
	series("Dovecot full, ESEARCH COUNT", d, esearchCmd)
	series("Dovecot full, ESEARCH COUNT UNSEEN", d, esearchFlagCmd)
	series("Dovecot full, ESEARCH COUNT LARGER", d, esearchSizeCmd)

	// The legacy profile's Dovecot still executes SORT (it only does not
	// advertise it): its answer on the same files is what the proxy's
	// must be. Every INTERNALDATE is a maildir file's time, so many are
	// equal and the tie-break by sequence number is exercised too.
	l := imaptest.Dial(t, legacy.Addr)
	l.Timeout = 10 * time.Minute
	l.MustGreetOK()
	l.MustOK("LOGIN alice alicepass")
	l.MustOK("EXAMINE Big")
	_, lines := timeCmd(l, sortCmd)
	want := lines[0]
	l.MustOK("LOGOUT")

	// The proxy over the legacy profile.
	ext := New(Config{})
	cfg := proxy.Config{Extensions: []proxy.Extension{esearch.New(), ext, condstore.New()}}
	cfg.Upstream = imaptest.DefaultUpstream()
	cfg.Upstream.Timeout = 10 * time.Minute
	cfg.Hub.Timeout = 10 * time.Minute
	p := imaptest.StartProxy(t, legacy.Addr, cfg)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.Timeout = 10 * time.Minute
	sel, _ = timeCmd(c, "SELECT Big")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	first, lines = timeCmd(c, sortCmd)
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("proxy over legacy: SELECT %v, first SORT %v (fetched %d messages' keys)", sel.Round(time.Millisecond), first.Round(time.Millisecond), ext.cache.fetched.Load())
	t.Logf("heap after the first SORT: %+.1f MB (%d bytes a message: in-memory keys and the stored records)",
		float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/1e6, (int64(after.HeapAlloc)-int64(before.HeapAlloc))/int64(n))
	if lines[0] != want {
		t.Errorf("the proxy's SORT differs from Dovecot's (first 200 bytes):\n %.200q\n %.200q", lines[0], want)
	}
	series("proxy over legacy, SORT (REVERSE ARRIVAL)", c, sortCmd)
	series("proxy over legacy, ESORT COUNT", c, esortCmd)
	series("proxy over legacy, ESEARCH COUNT", c, esearchCmd)
	series("proxy over legacy, ESEARCH COUNT UNSEEN", c, esearchFlagCmd)
	series("proxy over legacy, ESEARCH COUNT LARGER", c, esearchSizeCmd)
	runtime.GC()
	runtime.ReadMemStats(&before)
	ext.cache.drop()
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("in-memory keys alone: %.1f MB (%d bytes a message)", float64(int64(before.HeapAlloc)-int64(after.HeapAlloc))/1e6, (int64(before.HeapAlloc)-int64(after.HeapAlloc))/int64(n))
	reload, _ := timeCmd(c, sortCmd)
	t.Logf("proxy over legacy, SORT after the in-memory keys were dropped (read back from the store): %v", reload.Round(time.Millisecond))
	if got := ext.cache.fetched.Load(); got != int64(n) {
		t.Errorf("fetched %d messages' keys in all, want %d (once each)", got, n)
	}

	// The proxy over the full profile, which has ESEARCH: what the state
	// decides is answered from it all the same, the rest relayed.
	pf := imaptest.StartProxy(t, full.Addr, cfg)
	cf := imaptest.Login(t, pf.Addr, "alice", "alicepass")
	cf.Timeout = 10 * time.Minute
	timeCmd(cf, "SELECT Big")
	series("proxy over full, ESEARCH COUNT", cf, esearchCmd)
	series("proxy over full, ESEARCH COUNT UNSEEN", cf, esearchFlagCmd)
	series("proxy over full, ESEARCH COUNT LARGER (relayed)", cf, esearchSizeCmd)
}

func fmtDurations(ds []time.Duration) string {
	var f []string
	for _, d := range ds {
		f = append(f, fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000))
	}
	return strings.Join(f, " ")
}
