package condstore_test

// BenchmarkSelectHeap checks issue 20's end-to-end figure: how much the
// proxy's live heap (after a collection) grows when a client selects a
// mailbox of 20,000 messages over Dovecot's legacy profile, and holds it
// selected (its watcher running, its state in memory).
//
//	go test -run '^$' -bench SelectHeap -benchtime 3x ./extensions/condstore/
//
// LEMON_HEAP_MESSAGES=n changes the mailbox size. Each run starts a proxy
// of its own (with a bbolt state store, as in production), logs a client
// in, measures, selects, measures again with the client still there. The
// same is done with bob's mailbox of 100 messages: what a watched mailbox
// costs whatever its size (its watcher's connection and goroutine), taken
// off to give the cost per message.

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/statestore"
)

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func BenchmarkSelectHeap(b *testing.B) {
	n := 20_000
	if v := os.Getenv("LEMON_HEAP_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 100 {
			b.Fatalf("LEMON_HEAP_MESSAGES=%q: want a number of at least 100", v)
		}
	}
	dc := dovecottest.Start(b, dovecottest.Legacy)
	const small = 100
	home := filepath.Join(dc.Dir, "home")
	benchWriteMaildir(b, home, "alice", n)
	benchWriteMaildir(b, home, "bob", small)
	// Dovecot indexes a maildir on its first SELECT: done here, directly.
	for _, u := range []struct {
		user, pass string
		n          int
	}{{"alice", "alicepass", n}, {"bob", "bobpass", small}} {
		c := benchDial(b, dc.Addr)
		c.login2(u.user, u.pass)
		c.do("SELECT INBOX", false)
		c.doCount("UID FETCH 1:* (FLAGS)", u.n)
		c.close()
	}
	// selectDelta is the growth of the live heap when user selects INBOX
	// (of want messages) on a proxy of its own.
	selectDelta := func(user, pass string, want int) float64 {
		store, err := statestore.OpenBolt(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		defer store.Close()
		p := imaptest.StartProxy(b, dc.Addr, benchProxyConfig(store))
		defer p.Shutdown()
		c := benchDial(b, p.Addr)
		defer c.close()
		c.login2(user, pass)
		c.do("NOOP", false)
		before := liveHeap()
		sel, _, _ := c.do("SELECT INBOX", true)
		if r := propParse(b, sel); r.exists != want {
			b.Fatalf("SELECT: %d EXISTS, want %d", r.exists, want)
		}
		c.do("NOOP", false)
		after := liveHeap()
		return float64(int64(after) - int64(before))
	}
	var big, fixed float64
	for range b.N {
		d := selectDelta("alice", "alicepass", n)
		f := selectDelta("bob", "bobpass", small)
		b.Logf("SELECT of %d messages: live heap +%.0f bytes (%.1f B/message); of %d: +%.0f bytes; per message beyond: %.1f B",
			n, d, d/float64(n), small, f, (d-f)/float64(n-small))
		big += d
		fixed += f
	}
	big, fixed = big/float64(b.N), fixed/float64(b.N)
	b.ReportMetric(big/float64(n), "B/msg")
	b.ReportMetric((big-fixed)/float64(n-small), "B/msg-beyond-fixed")
	b.ReportMetric(big, "B")
	b.ReportMetric(fixed, "fixed-B")
}
