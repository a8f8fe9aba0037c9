package proxy_test

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

var remoteIP = net.ParseIP("203.0.113.5")

func TestStartTLS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	p := startProxy(t, cfg, imaptest.RemoteIP(remoteIP))

	c := imaptest.Dial(t, p.Addr)
	const before = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE STARTTLS LOGINDISABLED"
	if want := "* OK [CAPABILITY " + before + "] lemonproxy ready."; c.Greeting != want {
		t.Fatalf("greeting %q, want %q", c.Greeting, want)
	}
	c.ExpectDo("a", "CAPABILITY", "* CAPABILITY "+before, "a OK Capability completed.")
	c.ExpectDo("b", "LOGIN alice secret", "b NO [PRIVACYREQUIRED] Plaintext authentication is disabled on this connection; use STARTTLS.")
	c.ExpectDo("c", "STARTTLS extra", "c BAD STARTTLS takes no arguments.")
	c.ExpectDo("d", "STARTTLS", "d OK Begin TLS negotiation now.")
	c.StartTLS(cliTLS)
	const after = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN"
	c.ExpectDo("e", "CAPABILITY", "* CAPABILITY "+after, "e OK Capability completed.")
	c.ExpectDo("f", "STARTTLS", "f BAD STARTTLS not available.")
	c.ExpectDo("g", "LOGIN alice secret", "g "+loggedIn)
	c.ExpectDo("h", "STARTTLS", "h BAD STARTTLS not allowed in the authenticated state.")
	c.ExpectDo("i", "NOOP", "i OK NOOP completed.")
	c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	c.ExpectClosed()
}

// TestStartTLSInjection pipelines a command behind STARTTLS in the same
// write: it arrived in plaintext and must be discarded, not executed before
// or after the handshake (the CVE-2011-0411 class of bug).
func TestStartTLSInjection(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	p := startProxy(t, cfg)

	c := imaptest.Dial(t, p.Addr)
	c.WriteBytes([]byte("a STARTTLS\r\nb CAPABILITY\r\nc LOGIN alice secret\r\n"))
	c.Expect("a OK Begin TLS negotiation now.")
	c.StartTLS(cliTLS)
	// The first thing seen over TLS answers a command sent over TLS.
	c.ExpectDo("d", "NOOP", "d OK NOOP completed.")
	// And the injected LOGIN did not take effect.
	c.ExpectDo("e", "SELECT INBOX", "e BAD SELECT not allowed before authentication; log in first.")
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	// Not on loopback, but on TLS: passwords are fine, STARTTLS is not
	// offered again.
	p := startProxy(t, cfg, imaptest.ImplicitTLS(), imaptest.RemoteIP(remoteIP))

	c := imaptest.DialTLS(t, p.Addr, cliTLS)
	if want := "* OK [CAPABILITY " + preAuthCaps + "] lemonproxy ready."; c.Greeting != want {
		t.Fatalf("greeting %q, want %q", c.Greeting, want)
	}
	c.ExpectDo("a", "STARTTLS", "a BAD STARTTLS not available.")
	c.ExpectDo("b", "LOGIN alice secret", "b "+loggedIn)
	c.ExpectDo("c", "LIST \"\" *", `* LIST () "/" INBOX`, "c OK LIST completed")
}

// TestTLSMinVersion checks that a TLS 1.1 client is refused, on the implicit
// TLS listener and after STARTTLS. The proxy does not set a MinVersion on the
// caller's tls.Config; the refusal comes from crypto/tls's own default for
// servers (TLS 1.2 since Go 1.22; GODEBUG=tls10server=1 would lower it), so
// callers must set MinVersion if they depend on it (internal/config does).
func TestTLSMinVersion(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	old := cliTLS.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11

	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	implicit := startProxy(t, cfg, imaptest.ImplicitTLS())
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: imaptest.IOTimeout}, "tcp", implicit.Addr, old)
	if err == nil {
		nc.Close()
		t.Fatalf("implicit TLS: a TLS 1.1 handshake succeeded (version %x)", nc.ConnectionState().Version)
	}
	t.Logf("implicit TLS, TLS 1.1 client: %v", err)
	// A modern client still gets in.
	modern := imaptest.DialTLS(t, implicit.Addr, cliTLS)
	modern.ExpectDo("a", "NOOP", "a OK NOOP completed.")
	modern.Close()

	plain := startProxy(t, cfg)
	c := imaptest.Dial(t, plain.Addr)
	c.ExpectDo("a", "STARTTLS", "a OK Begin TLS negotiation now.")
	tc := tls.Client(c.Conn, old)
	tc.SetDeadline(time.Now().Add(imaptest.IOTimeout))
	if err := tc.Handshake(); err == nil {
		t.Fatalf("STARTTLS: a TLS 1.1 handshake succeeded")
	}
	imaptest.WaitFor(t, "the sessions to end", func() bool { return implicit.Srv.Sessions() == 0 && plain.Srv.Sessions() == 0 })
}

func TestImplicitTLSWithoutConfig(t *testing.T) {
	t.Parallel()
	srv, err := proxy.NewServer(proxy.Config{Upstream: baseConfig("127.0.0.1:1").Upstream, Logger: imaptest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := srv.Serve(ln, true); err == nil {
		t.Fatal("Serve with implicit TLS and no TLS config succeeded")
	}
	if err := srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
}
