package proxy_test

import (
	"net"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestShutdown: every client, whatever it is doing, is told "* BYE" and
// disconnected; Shutdown and Serve return; the listener is closed.
func TestShutdown(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)

	preAuth := imaptest.Dial(t, p.Addr)

	authed := imaptest.Dial(t, p.Addr)
	authed.LoginTagged("alice", "secret")

	selected := imaptest.Dial(t, p.Addr)
	selected.LoginTagged("alice", "secret")
	selected.ExpectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] SELECT completed")

	idling := imaptest.Dial(t, p.Addr)
	idling.LoginTagged("alice", "secret")
	idling.Send("i IDLE")
	idling.Expect("+ idling")

	midLiteral := imaptest.Dial(t, p.Addr)
	midLiteral.LoginTagged("alice", "secret")
	midLiteral.Send("a APPEND INBOX {100}")
	midLiteral.Expect("+ *")
	midLiteral.WriteBytes([]byte("Subject: half"))

	imaptest.WaitFor(t, "five sessions", func() bool { return p.Srv.Sessions() == 5 })
	start := time.Now()
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	for name, c := range map[string]*client{"pre-auth": preAuth, "authenticated": authed, "selected": selected, "idling": idling, "mid-literal": midLiteral} {
		imaptest.AssertLines(t, name, c.ExpectClosed(), []string{"* BYE Server shutting down"})
	}
	if n := p.Srv.Sessions(); n != 0 {
		t.Errorf("%d sessions after Shutdown", n)
	}
	if n := p.Srv.Pool().Idle(); n != 0 {
		t.Errorf("%d idle upstream connections after Shutdown", n)
	}
	if nc, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		nc.Close()
		t.Error("the listener still accepts after Shutdown")
	}
}

// TestShutdownIdle: with no clients Shutdown returns at once.
func TestShutdownIdle(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	c.ExpectClosed()
	if err := p.Shutdown(); err != nil {
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
	p := startProxy(t, baseConfig(f.addr()))
	for range 3 {
		c := imaptest.Dial(t, p.Addr)
		c.LoginTagged("u", "p")
		c.ExpectDo("s", "SELECT INBOX", "* 1 EXISTS", "* 0 RECENT", "*", "*", "*", "s OK [READ-WRITE] *")
		c.Send("f FETCH 1 BODY[]") // and never read the answer
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("Shutdown took %v with three clients that do not read", d)
	}
}
