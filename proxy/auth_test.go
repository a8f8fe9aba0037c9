package proxy_test

import (
	"encoding/base64"
	"net"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

func plainIR(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

const loggedIn = "OK [CAPABILITY " + postAuthCaps + "] *"

func TestLogin(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	const delay = 150 * time.Millisecond
	cfg.AuthFailureDelay = delay
	p := startProxy(t, cfg, proxyOpts{})

	c := dial(t, p.addr)
	start := time.Now()
	c.expectDo("a", "LOGIN alice wrong", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	if d := time.Since(start); d < delay {
		t.Errorf("failed LOGIN answered after %v, want at least %v", d, delay)
	}
	start = time.Now()
	c.expectDo("b", "LOGIN nobody secret", "b NO [AUTHENTICATIONFAILED] Authentication failed.")
	if d := time.Since(start); d < delay {
		t.Errorf("LOGIN of unknown user answered after %v, want at least %v", d, delay)
	}
	c.expectDo("c", "LOGIN", "c BAD LOGIN needs a user name and a password.")
	c.expectDo("d", "LOGIN alice", "d BAD LOGIN needs a user name and a password.")
	c.expectDo("e", "LOGIN alice secret extra", "e BAD LOGIN needs a user name and a password.")
	c.expectDo("f", "LOGIN (alice) secret", "f BAD LOGIN needs a user name and a password.")
	// The session is still usable after failures; quoted strings work.
	c.expectDo("g", `LOGIN "alice" "secret"`, "g "+loggedIn)
	c.expectDo("h", "NOOP", "h OK NOOP completed.")

	// A literal password (synchronising: the client waits for "+").
	c2 := dial(t, p.addr)
	c2.send("a LOGIN alice {6}")
	c2.expect("+ *")
	c2.send("secret")
	c2.expect("a " + loggedIn)
}

func TestAuthenticatePlain(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr), proxyOpts{})

	t.Run("SASL-IR", func(t *testing.T) {
		c := dial(t, p.addr)
		c.expectDo("a", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "a "+loggedIn)
		c.expectDo("b", "NOOP", "b OK NOOP completed.")
	})
	t.Run("SASL-IR with authzid equal to the user", func(t *testing.T) {
		c := dial(t, p.addr)
		c.expectDo("a", "authenticate plain "+plainIR("alice", "alice", "secret"), "a "+loggedIn)
	})
	t.Run("continuation", func(t *testing.T) {
		c := dial(t, p.addr)
		c.send("a AUTHENTICATE PLAIN")
		c.expect("+ ")
		c.send(plainIR("", "alice", "secret"))
		c.expect("a " + loggedIn)
	})
	t.Run("cancelled", func(t *testing.T) {
		c := dial(t, p.addr)
		c.send("a AUTHENTICATE PLAIN")
		c.expect("+ ")
		c.send("*")
		c.expect("a BAD AUTHENTICATE cancelled.")
		c.expectDo("b", "CAPABILITY", "* CAPABILITY "+preAuthCaps, "b OK Capability completed.")
	})
	t.Run("bad base64", func(t *testing.T) {
		c := dial(t, p.addr)
		c.send("a AUTHENTICATE PLAIN")
		c.expect("+ ")
		c.send("!!!not base64!!!")
		c.expect("a BAD Response is not valid base64.")
		c.expectDo("b", "AUTHENTICATE PLAIN %%%", "b BAD Initial response is not valid base64.")
		c.expectDo("c", "AUTHENTICATE PLAIN abc def", "c BAD Malformed initial response.")
		c.expectDo("d", "AUTHENTICATE", "d BAD AUTHENTICATE needs a mechanism name.")
		c.expectDo("e", "NOOP", "e OK NOOP completed.")
	})
	t.Run("literal response", func(t *testing.T) {
		c := dial(t, p.addr)
		c.send("a AUTHENTICATE PLAIN")
		c.expect("+ ")
		c.send("{4+}")
		c.send("abcd")
		c.expect("a BAD AUTHENTICATE responses are base64 lines, not literals.")
		c.expectDo("b", "NOOP", "b OK NOOP completed.")
	})
	t.Run("other mechanism", func(t *testing.T) {
		c := dial(t, p.addr)
		c.expectDo("a", "AUTHENTICATE CRAM-MD5", "a NO Unsupported authentication mechanism; use PLAIN.")
		c.expectDo("b", "AUTHENTICATE XOAUTH2 "+plainIR("", "alice", "secret"), "b NO Unsupported authentication mechanism; use PLAIN.")
		c.expectDo("c", "NOOP", "c OK NOOP completed.")
	})
	t.Run("wrong password", func(t *testing.T) {
		c := dial(t, p.addr)
		c.expectDo("a", "AUTHENTICATE PLAIN "+plainIR("", "alice", "nope"), "a NO [AUTHENTICATIONFAILED] Authentication failed.")
		// Empty initial response ("="): PLAIN needs a message.
		c.expectDo("b", "AUTHENTICATE PLAIN =", "b NO [AUTHENTICATIONFAILED] Authentication failed.")
		// An authorization identity other than the user is refused.
		c.expectDo("c", "AUTHENTICATE PLAIN "+plainIR("bob", "alice", "secret"), "c NO [AUTHENTICATIONFAILED] Authentication failed.")
		c.expectDo("d", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "d "+loggedIn)
	})
}

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	// A port that was just free: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := startProxy(t, baseConfig(addr), proxyOpts{})
	c := dial(t, p.addr)
	c.expectDo("a", "LOGIN alice secret", "a NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	c.expectDo("b", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "b NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	c.expectDo("c", "NOOP", "c OK NOOP completed.")
}

// TestPlaintextAuthPolicy simulates a client that is neither on loopback nor
// on TLS: passwords must not cross that connection unless the operator
// allows it.
func TestPlaintextAuthPolicy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	remote := net.ParseIP("203.0.113.5")

	p := startProxy(t, baseConfig(up.Addr), proxyOpts{remoteIP: remote})
	c := dial(t, p.addr)
	const disabled = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE LOGINDISABLED"
	if want := "* OK [CAPABILITY " + disabled + "] lemonproxy ready."; c.greeting != want {
		t.Fatalf("greeting %q, want %q", c.greeting, want)
	}
	c.expectDo("a", "CAPABILITY", "* CAPABILITY "+disabled, "a OK Capability completed.")
	const privacy = " NO [PRIVACYREQUIRED] Plaintext authentication is disabled on this connection; use STARTTLS."
	c.expectDo("b", "LOGIN alice secret", "b"+privacy)
	c.expectDo("c", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "c"+privacy)
	c.expectDo("d", "AUTHENTICATE PLAIN", "d"+privacy)
	c.expectDo("e", "SELECT INBOX", "e BAD SELECT not allowed before authentication; log in first.")

	cfg := baseConfig(up.Addr)
	cfg.AllowPlaintextAuth = true
	p2 := startProxy(t, cfg, proxyOpts{remoteIP: remote})
	c2 := dial(t, p2.addr)
	if want := "* OK [CAPABILITY " + preAuthCaps + "] lemonproxy ready."; c2.greeting != want {
		t.Fatalf("greeting with AllowPlaintextAuth %q, want %q", c2.greeting, want)
	}
	c2.expectDo("a", "LOGIN alice secret", "a "+loggedIn)
}
