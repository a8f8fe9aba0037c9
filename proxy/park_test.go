package proxy_test

import (
	"crypto/tls"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// parkedSessions counts the goroutines that wait for a parked session's
// socket (proxy/park.go).
func parkedSessions() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "proxy.(*idleConn).waitReadable")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestIdleSessionsPark: sessions that wait for their clients, between
// commands and in IDLE, plain, over TLS and with COMPRESS on TLS, give up
// their goroutines for a waiter each; a push, DONE, the next command and a
// burst of pipelined commands in one write (one TLS record, one deflate
// block: bytes the layers over the socket hold while the socket is empty)
// all find them, and they park again.
func TestIdleSessionsPark(t *testing.T) {
	up := startUpstream(t, memupstream.Options{Caps: append([]imap.Cap{imap.CapIdle}, memupstream.DefaultCaps...)},
		"plain", "secret", "TLS", "secret", "TLS+COMPRESS", "secret")
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	for _, mode := range []struct {
		name          string
		tls, compress bool
	}{{"plain", false, false}, {"TLS", true, false}, {"TLS+COMPRESS", true, true}} {
		t.Run(mode.name, func(t *testing.T) {
			cfg := baseConfig(up.Addr)
			cfg.Extensions = append(cfg.Extensions, compress.New())
			var opts []imaptest.Option
			if mode.tls {
				cfg.TLS = srvTLS
				opts = append(opts, imaptest.ImplicitTLS())
			}
			p := startProxy(t, cfg, opts...)
			base := parkedSessions()
			dial := func() *client {
				var c *client
				if mode.tls {
					tc, err := tls.Dial("tcp", p.Addr, cliTLS)
					if err != nil {
						t.Fatal(err)
					}
					c = imaptest.NewClient(t, tc)
				} else {
					c = imaptest.Dial(t, p.Addr)
				}
				c.MustGreetOK()
				c.MustOK("LOGIN " + mode.name + " secret")
				if mode.compress {
					c.Compress()
				}
				return c
			}
			const idlers = 3
			var cs []*client
			for i := range idlers {
				c := dial()
				c.MustOK("SELECT INBOX")
				c.Send(fmt.Sprintf("i%d IDLE", i))
				c.Expect("+ idling")
				cs = append(cs, c)
			}
			quiet := dial() // waits between commands
			imaptest.WaitFor(t, "every session to park", func() bool { return parkedSessions()-base == idlers+1 })

			// imapmemserver's IDLE starts after its "+": let the
			// watcher's settle before the change.
			time.Sleep(200 * time.Millisecond)
			msg := "Subject: parked\r\n\r\nhello\r\n"
			quiet.MustOK(fmt.Sprintf("APPEND INBOX {%d}", len(msg)), msg)
			for i, c := range cs {
				c.Expect("* 1 EXISTS")
				c.Send("DONE")
				// RECENT goes to the session that sees the message first.
				got := c.ReadUntilTagged(fmt.Sprintf("i%d", i))
				if l := got[len(got)-1]; l != fmt.Sprintf("i%d OK Idle completed.", i) || len(got) > 2 || len(got) == 2 && got[0] != "* 1 RECENT" {
					t.Fatalf("DONE: %q", got)
				}
				c.ExpectDo("n", "NOOP", "n OK NOOP completed.")
			}
			imaptest.WaitFor(t, "every session to park again", func() bool { return parkedSessions()-base == idlers+1 })

			// Many commands in one write; each answered, in order.
			const burst = 300
			var b strings.Builder
			var want []string
			for i := range burst {
				fmt.Fprintf(&b, "b%d NOOP\r\n", i)
				want = append(want, fmt.Sprintf("b%d OK NOOP completed.", i))
			}
			c := cs[0]
			c.WriteBytes([]byte(b.String()))
			c.Expect(want...)
			imaptest.WaitFor(t, "the session to park after the burst", func() bool { return parkedSessions()-base == idlers+1 })
			for _, c := range append(cs, quiet) {
				c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
			}
			imaptest.WaitFor(t, "the waiters to end", func() bool { return parkedSessions() == base })
		})
	}
}

// TestParkGraceKeepsDeadline: a command read while the session may not
// park yet (parkGrace) leaves the wait's deadline for the rest of the
// command, not the grace's: a literal that comes a while after its
// continuation request is read, as before parking (a command read whole,
// whose literal the session reads under the deadline of its wait).
func TestParkGraceKeepsDeadline(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.MustGreetOK()
	c.MustOK("LOGIN alice secret")
	c.Send("a SELECT {5}")
	c.Expect("+ Ready for literal data")
	time.Sleep(200 * time.Millisecond) // ten times the grace
	c.WriteBytes([]byte("INBOX\r\n"))
	got := c.ReadUntilTagged("a")
	if l := got[len(got)-1]; !strings.HasPrefix(l, "a OK") {
		t.Fatalf("SELECT with a slow literal: %q", got)
	}
	c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
}
