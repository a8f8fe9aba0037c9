package proxy_test

import (
	"net"
	"testing"
	"time"
)

// TestShutdown: every client, whatever it is doing, is told "* BYE" and
// disconnected; Shutdown and Serve return; the listener is closed.
func TestShutdown(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)

	preAuth := dial(t, p.addr)

	authed := dial(t, p.addr)
	authed.login("alice", "secret")

	selected := dial(t, p.addr)
	selected.login("alice", "secret")
	selected.expectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] SELECT completed")

	idling := dial(t, p.addr)
	idling.login("alice", "secret")
	idling.send("i IDLE")
	idling.expect("+ idling")

	midLiteral := dial(t, p.addr)
	midLiteral.login("alice", "secret")
	midLiteral.send("a APPEND INBOX {100}")
	midLiteral.expect("+ *")
	midLiteral.write([]byte("Subject: half"))

	waitFor(t, "five sessions", func() bool { return p.srv.Sessions() == 5 })
	start := time.Now()
	if err := p.shutdown(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	for name, c := range map[string]*client{"pre-auth": preAuth, "authenticated": authed, "selected": selected, "idling": idling, "mid-literal": midLiteral} {
		assertLines(t, name, c.expectClosed(), []string{"* BYE Server shutting down"})
	}
	if n := p.srv.Sessions(); n != 0 {
		t.Errorf("%d sessions after Shutdown", n)
	}
	if n := p.srv.Pool().Idle(); n != 0 {
		t.Errorf("%d idle upstream connections after Shutdown", n)
	}
	if nc, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		nc.Close()
		t.Error("the listener still accepts after Shutdown")
	}
}

// TestShutdownIdle: with no clients Shutdown returns at once.
func TestShutdownIdle(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := dial(t, p.addr)
	c.login("alice", "secret")
	c.expectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	c.expectClosed()
	if err := p.shutdown(); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownStuckClients: clients that stop reading in the middle of a
// large response must not hold up Shutdown (the session's write deadline
// is two minutes), nor each other.
func TestShutdownStuckClients(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	f.bodySize, f.chunk = 50<<20, make([]byte, 64<<10)
	p := startProxy(t, baseConfig(f.addr()), proxyOpts{})
	for range 3 {
		c := dial(t, p.addr)
		c.login("u", "p")
		c.expectDo("s", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "s OK [READ-WRITE] *")
		c.send("f FETCH 1 BODY[]") // and never read the answer
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := p.shutdown(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("Shutdown took %v with three clients that do not read", d)
	}
}
