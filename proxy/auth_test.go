package proxy_test

import (
	"encoding/base64"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
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
	p := startProxy(t, cfg)

	c := imaptest.Dial(t, p.Addr)
	start := time.Now()
	c.ExpectDo("a", "LOGIN alice wrong", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	if d := time.Since(start); d < delay {
		t.Errorf("failed LOGIN answered after %v, want at least %v", d, delay)
	}
	start = time.Now()
	c.ExpectDo("b", "LOGIN nobody secret", "b NO [AUTHENTICATIONFAILED] Authentication failed.")
	if d := time.Since(start); d < delay {
		t.Errorf("LOGIN of unknown user answered after %v, want at least %v", d, delay)
	}
	c.ExpectDo("c", "LOGIN", "c BAD LOGIN needs a user name and a password.")
	c.ExpectDo("d", "LOGIN alice", "d BAD LOGIN needs a user name and a password.")
	c.ExpectDo("e", "LOGIN alice secret extra", "e BAD LOGIN needs a user name and a password.")
	c.ExpectDo("f", "LOGIN (alice) secret", "f BAD LOGIN needs a user name and a password.")
	// The session is still usable after failures; quoted strings work.
	c.ExpectDo("g", `LOGIN "alice" "secret"`, "g "+loggedIn)
	c.ExpectDo("h", "NOOP", "h OK NOOP completed.")

	// A literal password (synchronising: the client waits for "+").
	c2 := imaptest.Dial(t, p.Addr)
	c2.Send("a LOGIN alice {6}")
	c2.Expect("+ *")
	c2.Send("secret")
	c2.Expect("a " + loggedIn)
}

func TestAuthenticatePlain(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr))

	t.Run("SASL-IR", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.ExpectDo("a", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "a "+loggedIn)
		c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	})
	t.Run("SASL-IR with authzid equal to the user", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.ExpectDo("a", "authenticate plain "+plainIR("alice", "alice", "secret"), "a "+loggedIn)
	})
	t.Run("continuation", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.Send("a AUTHENTICATE PLAIN")
		c.Expect("+ ")
		c.Send(plainIR("", "alice", "secret"))
		c.Expect("a " + loggedIn)
	})
	t.Run("cancelled", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.Send("a AUTHENTICATE PLAIN")
		c.Expect("+ ")
		c.Send("*")
		c.Expect("a BAD AUTHENTICATE cancelled.")
		c.ExpectDo("b", "CAPABILITY", "* CAPABILITY "+preAuthCaps, "b OK Capability completed.")
	})
	t.Run("bad base64", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.Send("a AUTHENTICATE PLAIN")
		c.Expect("+ ")
		c.Send("!!!not base64!!!")
		c.Expect("a BAD Response is not valid base64.")
		c.ExpectDo("b", "AUTHENTICATE PLAIN %%%", "b BAD Initial response is not valid base64.")
		c.ExpectDo("c", "AUTHENTICATE PLAIN abc def", "c BAD Malformed initial response.")
		c.ExpectDo("d", "AUTHENTICATE", "d BAD AUTHENTICATE needs a mechanism name.")
		c.ExpectDo("e", "NOOP", "e OK NOOP completed.")
	})
	t.Run("literal response", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.Send("a AUTHENTICATE PLAIN")
		c.Expect("+ ")
		c.Send("{4+}")
		c.Send("abcd")
		c.Expect("a BAD AUTHENTICATE responses are base64 lines, not literals.")
		c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	})
	t.Run("other mechanism", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.ExpectDo("a", "AUTHENTICATE CRAM-MD5", "a NO Unsupported authentication mechanism; use PLAIN.")
		c.ExpectDo("b", "AUTHENTICATE XOAUTH2 "+plainIR("", "alice", "secret"), "b NO Unsupported authentication mechanism; use PLAIN.")
		c.ExpectDo("c", "NOOP", "c OK NOOP completed.")
	})
	t.Run("wrong password", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.ExpectDo("a", "AUTHENTICATE PLAIN "+plainIR("", "alice", "nope"), "a NO [AUTHENTICATIONFAILED] Authentication failed.")
		// Empty initial response ("="): PLAIN needs a message.
		c.ExpectDo("b", "AUTHENTICATE PLAIN =", "b NO [AUTHENTICATIONFAILED] Authentication failed.")
		// An authorization identity other than the user is refused.
		c.ExpectDo("c", "AUTHENTICATE PLAIN "+plainIR("bob", "alice", "secret"), "c NO [AUTHENTICATIONFAILED] Authentication failed.")
		c.ExpectDo("d", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "d "+loggedIn)
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
	p := startProxy(t, baseConfig(addr))
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN alice secret", "a NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	c.ExpectDo("b", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "b NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	c.ExpectDo("c", "NOOP", "c OK NOOP completed.")
}

// TestPlaintextAuthPolicy simulates a client that is neither on loopback nor
// on TLS: passwords must not cross that connection unless the operator
// allows it.
func TestPlaintextAuthPolicy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	remote := net.ParseIP("203.0.113.5")

	p := startProxy(t, baseConfig(up.Addr), imaptest.RemoteIP(remote))
	c := imaptest.Dial(t, p.Addr)
	const disabled = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE LOGINDISABLED"
	if want := "* OK [CAPABILITY " + disabled + "] lemonproxy ready."; c.Greeting != want {
		t.Fatalf("greeting %q, want %q", c.Greeting, want)
	}
	c.ExpectDo("a", "CAPABILITY", "* CAPABILITY "+disabled, "a OK Capability completed.")
	const privacy = " NO [PRIVACYREQUIRED] Plaintext authentication is disabled on this connection; use STARTTLS."
	c.ExpectDo("b", "LOGIN alice secret", "b"+privacy)
	c.ExpectDo("c", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "c"+privacy)
	c.ExpectDo("d", "AUTHENTICATE PLAIN", "d"+privacy)
	c.ExpectDo("e", "SELECT INBOX", "e BAD SELECT not allowed before authentication; log in first.")

	cfg := baseConfig(up.Addr)
	cfg.AllowPlaintextAuth = true
	p2 := startProxy(t, cfg, imaptest.RemoteIP(remote))
	c2 := imaptest.Dial(t, p2.Addr)
	if want := "* OK [CAPABILITY " + preAuthCaps + "] lemonproxy ready."; c2.Greeting != want {
		t.Fatalf("greeting with AllowPlaintextAuth %q, want %q", c2.Greeting, want)
	}
	c2.ExpectDo("a", "LOGIN alice secret", "a "+loggedIn)
}

// TestUserNameControlChars: a user name with NUL, CR or LF is refused as
// a failed login without asking the upstream: NUL would make the proxy's
// account keys ambiguous, CR and LF could break a command line (issue #16
// item 18).
func TestUserNameControlChars(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN")
	cfg := baseConfig(f.addr())
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN {7+}\r\nali\r\nce secret", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.ExpectDo("b", "LOGIN {6+}\r\nali\x00ce secret", "b NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.ExpectDo("c", "AUTHENTICATE PLAIN "+plainIR("", "ali\nce", "secret"), "c NO [AUTHENTICATIONFAILED] Authentication failed.")
	if n := f.conns.Load(); n != 0 {
		t.Fatalf("the upstream got %d connections for refused user names", n)
	}
	c.ExpectDo("d", "LOGIN alice secret", "d OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT IDLE] logged in")
}

// TestLongUsernameRefused: a user name longer than any real one (an
// address is at most 254 bytes) is refused before it reaches the
// upstream, the failed-login limiter (which keeps it, as its account's
// key, for up to 15 minutes) or the log. A name of up to a command line
// (64 KiB) went to all three: one failed login per name made the proxy
// hold and log 64 KiB.
func TestLongUsernameRefused(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	var logs lockedBuffer
	cfg := baseConfig(up.Addr)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	long := strings.Repeat("u", 20000)
	c.ExpectDo("a", "LOGIN "+long+" wrong", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.ExpectDo("b", "AUTHENTICATE PLAIN "+plainIR("", long, "wrong"), "b NO [AUTHENTICATIONFAILED] Authentication failed.")
	if strings.Contains(logs.String(), long[:1000]) {
		t.Errorf("the user name is in the log: %d bytes of log", len(logs.String()))
	}
	// A name of the longest address still goes upstream.
	name := strings.Repeat("a", 64) + "@" + strings.Repeat("b", 189)
	c.ExpectDo("c", "LOGIN "+name+" wrong", "c NO [AUTHENTICATIONFAILED] Authentication failed.")
	if !strings.Contains(logs.String(), `msg="login failed" session=1 remote=127.0.0.1:`) || !strings.Contains(logs.String(), " user="+name+"\n") {
		t.Errorf("a %d-byte name was not checked upstream", len(name))
	}
	c.LoginTagged("alice", "secret")
}
