package proxy_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestConnsPerIP: connections from one address beyond the limit are told
// why and closed; the others go on, and a closed one frees its place.
func TestConnsPerIP(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.AllowPlaintextAuth = true
	cfg.Abuse.ConnsPerIP = 2
	p := startProxy(t, cfg, imaptest.RemoteIP(net.ParseIP("203.0.113.5")))
	a := imaptest.Dial(t, p.Addr)
	b := imaptest.Dial(t, p.Addr)
	c := imaptest.Dial(t, p.Addr)
	if c.Greeting != "* BYE Too many connections from your address." {
		t.Fatalf("third connection: %q", c.Greeting)
	}
	c.ExpectClosed()
	if !strings.HasPrefix(a.Greeting, "* OK") || !strings.HasPrefix(b.Greeting, "* OK") {
		t.Fatalf("greetings %q, %q", a.Greeting, b.Greeting)
	}
	a.LoginTagged("alice", "secret")
	b.Close()
	imaptest.WaitFor(t, "the closed connection's place", func() bool {
		d := imaptest.Dial(t, p.Addr)
		defer d.Close()
		return strings.HasPrefix(d.Greeting, "* OK")
	})
	if got := p.Srv.Stats().Errors[proxy.ErrTooManyConns]; got < 1 {
		t.Fatalf("too_many_connections counted %d", got)
	}
}

// TestSessionsPerUser: logins beyond the per-account limit get NO [LIMIT];
// a logout frees a place.
func TestSessionsPerUser(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Abuse.SessionsPerUser = 2
	p := startProxy(t, cfg)
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("x", "LOGIN alice secret", "x NO [LIMIT] Too many sessions for this account; log out elsewhere first.")
	a.ExpectDo("l", "LOGOUT", "* BYE*", "l OK*")
	imaptest.WaitFor(t, "the logged-out session's place", func() bool {
		return strings.HasPrefix(c.Do("y", "LOGIN alice secret")[0], "y OK")
	})
}

// TestPreAuthCommands: a client that keeps talking without logging in is
// disconnected with a reason.
func TestPreAuthCommands(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Abuse.PreAuthCommands = 3
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	for i := range 3 {
		c.ExpectDo("n", "NOOP", "n OK NOOP completed.")
		_ = i
	}
	c.Send("n NOOP")
	c.Expect("* BYE Too many commands before login.")
	c.ExpectClosed()
}

// TestAuthFailureDelayGrows: each failure from one address doubles the
// delay before the answer, up to the maximum. A success forgets the
// account's failures but not the address's (issue #16 item 10: another
// account's success reset them).
func TestAuthFailureDelayGrows(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret", "bob", "pw")
	cfg := baseConfig(up.Addr)
	cfg.AuthFailureDelay = 40 * time.Millisecond
	cfg.Abuse.AuthFailureMaxDelay = 160 * time.Millisecond
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	var took []time.Duration
	for range 4 {
		start := time.Now()
		c.ExpectDo("x", "LOGIN alice wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
		took = append(took, time.Since(start))
	}
	// 40, 80, 160, 160 ms (capped), the round trip upstream included.
	for i, min := range []time.Duration{40, 80, 160, 160} {
		if took[i] < min*time.Millisecond || took[i] > min*time.Millisecond+time.Second {
			t.Fatalf("failure %d answered after %v, want about %v ms (all: %v)", i+1, took[i], min, took)
		}
	}
	d := imaptest.Dial(t, p.Addr)
	d.LoginTagged("bob", "pw")
	e := imaptest.Dial(t, p.Addr)
	start := time.Now()
	e.ExpectDo("x", "LOGIN alice wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
	if el := time.Since(start); el < 160*time.Millisecond {
		t.Fatalf("another account's success reset the address's delay: %v", el)
	}
}

// startSlowUpstream starts a server that refuses every login after
// delay, as Dovecot does with its own auth_failure_delay.
func startSlowUpstream(t *testing.T, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				fmt.Fprintf(nc, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] slow\r\n")
				br := bufio.NewReader(nc)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					tag, rest, _ := strings.Cut(line, " ")
					if strings.HasPrefix(strings.ToUpper(rest), "CAPABILITY") {
						fmt.Fprintf(nc, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n%s OK done\r\n", tag)
						continue
					}
					time.Sleep(delay)
					fmt.Fprintf(nc, "%s NO [AUTHENTICATIONFAILED] no\r\n", tag)
				}
			})
		}
	})
	return ln.Addr().String()
}

// TestAuthFailureDelayIncludesUpstream: the upstream's own time to refuse
// a login counts in the proxy's delay instead of adding to it.
func TestAuthFailureDelayIncludesUpstream(t *testing.T) {
	cfg := baseConfig(startSlowUpstream(t, 500*time.Millisecond))
	cfg.AuthFailureDelay = 600 * time.Millisecond
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	start := time.Now()
	c.ExpectDo("x", "LOGIN alice wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
	if el := time.Since(start); el < 600*time.Millisecond || el >= time.Second {
		t.Fatalf("failure answered after %v; want 600 ms, the upstream's 500 ms included", el)
	}
}

// TestAuthFailuresAcrossConnections: failed logins from one address on
// parallel connections wait their turn, so they take as long as on one
// connection, whether they guess one account or many (issue #16 item 10:
// 16 in parallel took 8 s, 111 s on one connection).
func TestAuthFailuresAcrossConnections(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.AllowPlaintextAuth = true
	cfg.AuthFailureDelay = 40 * time.Millisecond
	cfg.Abuse.AuthFailureMaxDelay = 160 * time.Millisecond
	parallel := func(t *testing.T, p *imaptest.Proxy, users []string) time.Duration {
		conns := make([]*imaptest.Client, len(users))
		for i := range conns {
			conns[i] = imaptest.Dial(t, p.Addr)
		}
		start := time.Now()
		for i, c := range conns {
			c.Send("x LOGIN " + users[i] + " wrong")
		}
		for _, c := range conns {
			c.Expect("x NO [AUTHENTICATIONFAILED] Authentication failed.")
		}
		return time.Since(start)
	}
	t.Run("one account", func(t *testing.T) {
		p := startProxy(t, cfg, imaptest.RemoteIP(net.ParseIP("203.0.113.5")))
		// One after the other: 40 + 80 + 160 + 160 + 160 + 160 ms.
		if el := parallel(t, p, []string{"alice", "alice", "alice", "alice", "alice", "alice"}); el < 760*time.Millisecond {
			t.Fatalf("6 failures in parallel answered in %v, want at least 760 ms", el)
		}
	})
	t.Run("many accounts", func(t *testing.T) {
		p := startProxy(t, cfg, imaptest.RemoteIP(net.ParseIP("203.0.113.6")))
		// Four at once from an address without failures (40, 80, 160,
		// 160 ms), then one after the other: 160 + 160 ms.
		if el := parallel(t, p, []string{"u1", "u2", "u3", "u4", "u5", "u6"}); el < 480*time.Millisecond {
			t.Fatalf("6 failures in parallel answered in %v, want at least 480 ms", el)
		}
	})
	t.Run("one account from many addresses", func(t *testing.T) {
		var n atomic.Int32
		p := startProxy(t, cfg, imaptest.RemoteIPFunc(func() net.IP { return net.IPv4(203, 0, 113, byte(10+n.Add(1))) }))
		if el := parallel(t, p, []string{"alice", "alice", "alice", "alice"}); el < 400*time.Millisecond {
			t.Fatalf("4 failures of one account from 4 addresses answered in %v, want at least 400 ms", el)
		}
	})
}

// TestPreAuthTimeoutPerConnection: preauth-timeout bounds the time from
// connecting to logging in, not the time between two commands: a client
// that sends a NOOP more often than the timeout is still disconnected when
// it runs out (issue #16 item 11), and so is one in the middle of an
// AUTHENTICATE exchange.
func TestPreAuthTimeoutPerConnection(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.PreAuthTimeout = 600 * time.Millisecond
	cfg.Abuse.PreAuthCommands = -1
	p := startProxy(t, cfg)

	c := imaptest.Dial(t, p.Addr)
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		c.Send("n NOOP")
		l := c.ReadLine()
		if l == "* BYE Autologout; idle for too long." {
			break
		}
		if l != "n OK NOOP completed." {
			t.Fatalf("NOOP answered %q", l)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.ExpectClosed()
	if el := time.Since(start); el < 500*time.Millisecond || el > 2*time.Second {
		t.Fatalf("a client sending NOOP every 200 ms was disconnected after %v, want about 600 ms", el)
	}

	// AUTHENTICATE's continuation lines are bounded by the same deadline.
	d := imaptest.Dial(t, p.Addr)
	start = time.Now()
	d.Send("a AUTHENTICATE PLAIN")
	d.Expect("+ ")
	imaptest.AssertLines(t, "AUTHENTICATE never answered", d.ExpectClosed(), []string{"* BYE Autologout; idle for too long."})
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("AUTHENTICATE without a response ended after %v", el)
	}

	// Logged in in time: the timeout no longer applies.
	e := imaptest.Dial(t, p.Addr)
	e.LoginTagged("alice", "secret")
	time.Sleep(800 * time.Millisecond)
	e.ExpectDo("n", "NOOP", "n OK*")
}

// TestConnsPerIPv6Prefix: an IPv6 client has a /64 of its own (a phone
// on a mobile network, a home behind its router), and may send from any
// of its 2^64 addresses: counted per address, conns-per-ip bounded
// nothing, so connections are counted per /64. Another /64 is another
// client.
func TestConnsPerIPv6Prefix(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Abuse.ConnsPerIP = 2
	var n atomic.Int32
	ips := []string{"2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3", "2001:db8:0:2::1"}
	p := startProxy(t, cfg, imaptest.RemoteIPFunc(func() net.IP { return net.ParseIP(ips[n.Add(1)-1]) }))
	a := imaptest.Dial(t, p.Addr)
	b := imaptest.Dial(t, p.Addr)
	c := imaptest.Dial(t, p.Addr)
	if !strings.HasPrefix(a.Greeting, "* OK") || !strings.HasPrefix(b.Greeting, "* OK") {
		t.Fatalf("greetings %q, %q", a.Greeting, b.Greeting)
	}
	if c.Greeting != "* BYE Too many connections from your address." {
		t.Fatalf("third connection from 2001:db8:0:1::/64: %q", c.Greeting)
	}
	c.ExpectClosed()
	if d := imaptest.Dial(t, p.Addr); !strings.HasPrefix(d.Greeting, "* OK") {
		t.Fatalf("connection from another /64: %q", d.Greeting)
	}
}

// TestAuthFailuresIPv6Prefix: the failed-login delay of an address holds
// for its whole /64 (Dovecot's auth penalty takes a /48): a guesser that
// moves to the next address of its own /64 waits all the same.
func TestAuthFailuresIPv6Prefix(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.AllowPlaintextAuth = true
	cfg.AuthFailureDelay = 400 * time.Millisecond
	var n atomic.Int32
	p := startProxy(t, cfg, imaptest.RemoteIPFunc(func() net.IP {
		return net.ParseIP(fmt.Sprintf("2001:db8:0:1::%x", n.Add(1)))
	}))
	a := imaptest.Dial(t, p.Addr)
	a.ExpectDo("x", "LOGIN user1 wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
	// Another account from another address of the /64: its check waits
	// for the first failure's delay to pass, then fails with a doubled
	// one.
	b := imaptest.Dial(t, p.Addr)
	start := time.Now()
	b.ExpectDo("y", "LOGIN user2 wrong", "y NO [AUTHENTICATIONFAILED] Authentication failed.")
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Fatalf("second failure from the same /64 answered after %v; want at least 800ms (the address's doubled delay)", el)
	}
}
