package proxy_test

import (
	"net"
	"strings"
	"testing"
	"time"

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
	p := startProxy(t, cfg, proxyOpts{remoteIP: net.ParseIP("203.0.113.5")})
	a := dial(t, p.addr)
	b := dial(t, p.addr)
	c := dial(t, p.addr)
	if c.greeting != "* BYE Too many connections from your address." {
		t.Fatalf("third connection: %q", c.greeting)
	}
	c.expectClosed()
	if !strings.HasPrefix(a.greeting, "* OK") || !strings.HasPrefix(b.greeting, "* OK") {
		t.Fatalf("greetings %q, %q", a.greeting, b.greeting)
	}
	a.login("alice", "secret")
	b.close()
	waitFor(t, "the closed connection's place", func() bool {
		d := dial(t, p.addr)
		defer d.close()
		return strings.HasPrefix(d.greeting, "* OK")
	})
	if got := p.srv.Stats().Errors[proxy.ErrTooManyConns]; got < 1 {
		t.Fatalf("too_many_connections counted %d", got)
	}
}

// TestSessionsPerUser: logins beyond the per-account limit get NO [LIMIT];
// a logout frees a place.
func TestSessionsPerUser(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Abuse.SessionsPerUser = 2
	p := startProxy(t, cfg, proxyOpts{})
	a := dial(t, p.addr)
	a.login("alice", "secret")
	b := dial(t, p.addr)
	b.login("alice", "secret")
	c := dial(t, p.addr)
	c.expectDo("x", "LOGIN alice secret", "x NO [LIMIT] Too many sessions for this account; log out elsewhere first.")
	a.expectDo("l", "LOGOUT", "* BYE*", "l OK*")
	waitFor(t, "the logged-out session's place", func() bool {
		return strings.HasPrefix(c.do("y", "LOGIN alice secret")[0], "y OK")
	})
}

// TestPreAuthCommands: a client that keeps talking without logging in is
// disconnected with a reason.
func TestPreAuthCommands(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Abuse.PreAuthCommands = 3
	p := startProxy(t, cfg, proxyOpts{})
	c := dial(t, p.addr)
	for i := range 3 {
		c.expectDo("n", "NOOP", "n OK NOOP completed.")
		_ = i
	}
	c.send("n NOOP")
	c.expect("* BYE Too many commands before login.")
	c.expectClosed()
}

// TestAuthFailureDelayGrows: each failure from one address doubles the
// delay before the answer, up to the maximum; a success resets it.
func TestAuthFailureDelayGrows(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.AuthFailureDelay = 40 * time.Millisecond
	cfg.Abuse.AuthFailureMaxDelay = 160 * time.Millisecond
	p := startProxy(t, cfg, proxyOpts{})
	c := dial(t, p.addr)
	var took []time.Duration
	for range 4 {
		start := time.Now()
		c.expectDo("x", "LOGIN alice wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
		took = append(took, time.Since(start))
	}
	// 40, 80, 160, 160 ms (capped), each plus a round trip upstream.
	for i, min := range []time.Duration{40, 80, 160, 160} {
		if took[i] < min*time.Millisecond || took[i] > min*time.Millisecond+time.Second {
			t.Fatalf("failure %d answered after %v, want about %v ms (all: %v)", i+1, took[i], min, took)
		}
	}
	c.login("alice", "secret")
	d := dial(t, p.addr)
	start := time.Now()
	d.expectDo("x", "LOGIN alice wrong", "x NO [AUTHENTICATIONFAILED] Authentication failed.")
	if el := time.Since(start); el > 150*time.Millisecond {
		t.Fatalf("after a success the delay did not reset: %v", el)
	}
}
