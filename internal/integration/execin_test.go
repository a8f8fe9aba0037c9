package integration

import (
	"context"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// seenAfterExamine marks a message \Seen from the hook of every UID
// SEARCH, after an ExecIn that left the held connection with the session's
// mailbox EXAMINEd; the tagged answer's text says how the STORE went.
type seenAfterExamine struct{}

func (seenAfterExamine) Name() string       { return "seen-after-examine" }
func (seenAfterExamine) Commands() []string { return []string{"UID SEARCH"} }
func (seenAfterExamine) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		if _, err := s.ExecIn(ctx, "INBOX", "NOOP", nil); err != nil {
			h.Text = "ExecIn: " + err.Error()
			return
		}
		if _, err := s.Exec(ctx, `UID STORE 1 +FLAGS.SILENT (\Seen)`, nil); err != nil {
			h.Text = "Exec: " + err.Error()
			return
		}
		h.Text = "stored"
	})
	return next(ctx, x)
}

// TestExecAfterExecInReadOnly: a hook's ExecIn leaves the held connection
// with the session's own mailbox EXAMINEd; an Exec after it runs on the
// mailbox as the session selected it, read-write (Dovecot refuses a STORE
// on a read-only connection). proxy TestExecAfterExecIn has the case of
// another mailbox.
func TestExecAfterExecInReadOnly(t *testing.T) {
	srv := dovecottest.Start(t, dovecottest.Legacy)
	srv.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: a\r\n\r\na\r\n"))
	addr, _ := startProxy(t, srv.Addr, func(c *proxy.Config) {
		c.Extensions = append(c.Extensions, seenAfterExamine{})
	})
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("a", "UID SEARCH SEEN", "* SEARCH", "a OK stored")
	c.ExpectDo("b", "UID SEARCH SEEN", "* SEARCH 1", "b OK stored")
}
