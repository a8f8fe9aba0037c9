package proxy_test

import (
	"bufio"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

var remoteIP = net.ParseIP("203.0.113.5")

// startTLS upgrades c after a STARTTLS OK was read, checking that the server
// sent nothing more in plaintext.
func (c *client) startTLS(cfg *tls.Config) {
	c.t.Helper()
	if n := c.br.Buffered(); n > 0 {
		b, _ := c.br.Peek(n)
		c.t.Fatalf("server sent %q in plaintext after the STARTTLS OK", b)
	}
	tc := tls.Client(c.nc, cfg)
	tc.SetDeadline(time.Now().Add(ioTimeout))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.nc = tc
	c.br = bufio.NewReader(tc)
}

func TestStartTLS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := selfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	p := startProxy(t, cfg, proxyOpts{remoteIP: remoteIP})

	c := dial(t, p.addr)
	const before = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE STARTTLS LOGINDISABLED"
	if want := "* OK [CAPABILITY " + before + "] lemonproxy ready."; c.greeting != want {
		t.Fatalf("greeting %q, want %q", c.greeting, want)
	}
	c.expectDo("a", "CAPABILITY", "* CAPABILITY "+before, "a OK Capability completed.")
	c.expectDo("b", "LOGIN alice secret", "b NO [PRIVACYREQUIRED] Plaintext authentication is disabled on this connection; use STARTTLS.")
	c.expectDo("c", "STARTTLS extra", "c BAD STARTTLS takes no arguments.")
	c.expectDo("d", "STARTTLS", "d OK Begin TLS negotiation now.")
	c.startTLS(cliTLS)
	const after = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN"
	c.expectDo("e", "CAPABILITY", "* CAPABILITY "+after, "e OK Capability completed.")
	c.expectDo("f", "STARTTLS", "f BAD STARTTLS not available.")
	c.expectDo("g", "LOGIN alice secret", "g "+loggedIn)
	c.expectDo("h", "STARTTLS", "h BAD STARTTLS not allowed in the authenticated state.")
	c.expectDo("i", "NOOP", "i OK NOOP completed.")
	c.expectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	c.expectClosed()
}

// TestStartTLSInjection pipelines a command behind STARTTLS in the same
// write: it arrived in plaintext and must be discarded, not executed before
// or after the handshake (the CVE-2011-0411 class of bug).
func TestStartTLSInjection(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := selfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	p := startProxy(t, cfg, proxyOpts{})

	c := dial(t, p.addr)
	c.write([]byte("a STARTTLS\r\nb CAPABILITY\r\nc LOGIN alice secret\r\n"))
	c.expect("a OK Begin TLS negotiation now.")
	c.startTLS(cliTLS)
	// The first thing seen over TLS answers a command sent over TLS.
	c.expectDo("d", "NOOP", "d OK NOOP completed.")
	// And the injected LOGIN did not take effect.
	c.expectDo("e", "SELECT INBOX", "e BAD SELECT not allowed before authentication; log in first.")
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := selfSignedTLS(t)
	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	// Not on loopback, but on TLS: passwords are fine, STARTTLS is not
	// offered again.
	p := startProxy(t, cfg, proxyOpts{implicitTLS: true, remoteIP: remoteIP})

	c := dialTLS(t, p.addr, cliTLS)
	if want := "* OK [CAPABILITY " + preAuthCaps + "] lemonproxy ready."; c.greeting != want {
		t.Fatalf("greeting %q, want %q", c.greeting, want)
	}
	c.expectDo("a", "STARTTLS", "a BAD STARTTLS not available.")
	c.expectDo("b", "LOGIN alice secret", "b "+loggedIn)
	c.expectDo("c", "LIST \"\" *", `* LIST () "/" INBOX`, "c OK LIST completed")
}

// TestTLSMinVersion checks that a TLS 1.1 client is refused, on the implicit
// TLS listener and after STARTTLS. The proxy does not set a MinVersion on the
// caller's tls.Config; the refusal comes from crypto/tls's own default for
// servers (TLS 1.2 since Go 1.22; GODEBUG=tls10server=1 would lower it), so
// callers must set MinVersion if they depend on it (internal/config does).
func TestTLSMinVersion(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	srvTLS, cliTLS := selfSignedTLS(t)
	old := cliTLS.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11

	cfg := baseConfig(up.Addr)
	cfg.TLS = srvTLS
	implicit := startProxy(t, cfg, proxyOpts{implicitTLS: true})
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", implicit.addr, old)
	if err == nil {
		nc.Close()
		t.Fatalf("implicit TLS: a TLS 1.1 handshake succeeded (version %x)", nc.ConnectionState().Version)
	}
	t.Logf("implicit TLS, TLS 1.1 client: %v", err)
	// A modern client still gets in.
	modern := dialTLS(t, implicit.addr, cliTLS)
	modern.expectDo("a", "NOOP", "a OK NOOP completed.")
	modern.close()

	plain := startProxy(t, cfg, proxyOpts{})
	c := dial(t, plain.addr)
	c.expectDo("a", "STARTTLS", "a OK Begin TLS negotiation now.")
	tc := tls.Client(c.nc, old)
	tc.SetDeadline(time.Now().Add(ioTimeout))
	if err := tc.Handshake(); err == nil {
		t.Fatalf("STARTTLS: a TLS 1.1 handshake succeeded")
	}
	waitFor(t, "the sessions to end", func() bool { return implicit.srv.Sessions() == 0 && plain.srv.Sessions() == 0 })
}

func TestImplicitTLSWithoutConfig(t *testing.T) {
	t.Parallel()
	srv, err := proxy.NewServer(proxy.Config{Upstream: baseConfig("127.0.0.1:1").Upstream, Logger: quietLogger()})
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
