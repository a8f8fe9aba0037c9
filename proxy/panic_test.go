package proxy_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// panicExt panics on XPANIC, as a bug in an extension's handler would.
type panicExt struct{}

func (panicExt) Name() string       { return "panic" }
func (panicExt) Commands() []string { return []string{"XPANIC"} }
func (panicExt) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	panic("a bug in a command handler")
}

// TestSessionPanicEndsOnlyThatSession: a panic on a session's goroutine is
// recovered at the goroutine's boundary, counted (place "session"), and
// closes that client's connection; other sessions and the process go on.
// Before, it ended the process, and every session with it.
func TestSessionPanicEndsOnlyThatSession(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{panicExt{}}})
	other := imaptest.Login(t, p.Addr, "u", "p")
	other.MustOK("SELECT INBOX")
	c := imaptest.Login(t, p.Addr, "u", "p")
	before := recovery.Count(recovery.Session)
	c.Send("a1 XPANIC")
	if line, err := c.TryReadLine(5 * time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("after the panic the client read %q, %v; want the connection closed", line, err)
	}
	// The session's own cleanup (a deferred call inside it) closes the
	// connection while the panic unwinds, before the recovery at the
	// goroutine's boundary counts it: the client may see the end first.
	for deadline := time.Now().Add(5 * time.Second); recovery.Count(recovery.Session)-before < 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := recovery.Count(recovery.Session) - before; got != 1 {
		t.Fatalf("%d session panics counted, want 1", got)
	}
	other.MustOK("NOOP")
	imaptest.Login(t, p.Addr, "u", "p").MustOK("LIST \"\" INBOX")
	deadline := time.Now().Add(5 * time.Second)
	for p.Srv.Sessions() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions open, want 2 (the panicked one gone)", p.Srv.Sessions())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
