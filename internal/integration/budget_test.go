package integration

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// countingRelay forwards TCP connections to an upstream and records the
// most that were open at once: what the upstream sees.
type countingRelay struct {
	Addr      string
	mu        sync.Mutex
	open, max int
}

func startCountingRelay(t *testing.T, upstream string) *countingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &countingRelay{Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.open++
			r.max = max(r.max, r.open)
			r.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				done := make(chan struct{})
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, u)
				// The upstream closed its side: it no longer counts
				// the connection (counted down before the proxy can
				// see the close).
				r.mu.Lock()
				r.open--
				r.mu.Unlock()
				c.Close()
				<-done
				u.Close()
			}()
		}
	}()
	return r
}

func (r *countingRelay) Max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.max
}

// TestUpstreamBudget: one session that EXAMINEs 30 mailboxes in a row
// (issue 16: a watcher per mailbox took the upstream from 16 to 316
// connections) stays within the account's budget of upstream connections
// (default 10) against a Dovecot with its default
// mail_max_userip_connections = 10, every EXAMINE succeeds, and another
// device of the same account still logs in, and both devices see each
// other's changes: the mailboxes left without a watcher catch up at the
// next command.
func TestUpstreamBudget(t *testing.T) {
	t.Parallel()
	dc := dovecottest.StartWith(t, dovecottest.Full, dovecottest.Options{MaxUserIPConnections: 10})
	relay := startCountingRelay(t, dc.Addr)
	addr, srv := startProxy(t, relay.Addr)
	const boxes = 30
	a := dialRaw(t, addr)
	a.LoginTagged("alice", "alicepass")
	for i := range boxes {
		a.MustOK(fmt.Sprintf("CREATE box%02d", i))
	}
	for i := range boxes {
		a.MustOK(fmt.Sprintf("EXAMINE box%02d", i))
	}
	b := dialRaw(t, addr)
	b.LoginTagged("alice", "alicepass")
	b.MustOK("SELECT INBOX")
	// A mailbox A left long ago (its watcher gone to the budget): B adds
	// a message, A sees it at its first command there.
	b.MustOK("APPEND box00 {3}", "a\r\n")
	got := a.MustOK("EXAMINE box00")
	if !contains(got, "* 1 EXISTS") {
		t.Errorf("EXAMINE box00 after B's APPEND: %q", got)
	}
	// A stays there; B appends again: A's NOOP reports it.
	b.MustOK("APPEND box00 {3}", "b\r\n")
	if got := a.MustOK("NOOP"); !contains(got, "* 2 EXISTS") {
		t.Errorf("NOOP after B's second APPEND: %q", got)
	}
	// A sets a flag; B, in INBOX, idles: a message B's own INBOX gets
	// from A reaches B's IDLE (INBOX has an idling session: watched).
	b.Send("i IDLE")
	b.Expect("+ *")
	a.MustOK("APPEND INBOX {3}", "c\r\n")
	b.Expect("* 1 EXISTS", "* 1 RECENT") // b, alone in INBOX, takes it (#17)
	b.Send("DONE")
	b.Expect("i OK *")
	if m := relay.Max(); m > 10 {
		t.Errorf("the upstream saw %d connections at once; the budget is 10", m)
	}
	if u := srv.Pool().Budget().Used(relay.Addr + "\x00alice"); u > 10 {
		t.Errorf("the budget counts %d connections", u)
	}
	if log := dc.LogTail(); strings.Contains(log, "Maximum number of connections") {
		t.Errorf("Dovecot refused connections:\n%s", log)
	}
	t.Logf("most upstream connections at once: %d", relay.Max())
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}
