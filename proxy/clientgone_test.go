package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestIdleEndedByLineWithLiteral: a client that ends IDLE with a line
// carrying a literal header is answered BAD, and the literal is not left
// pending in the reader: it was, and the next command's first bytes were
// taken for the literal the client had never been invited to send (a
// third reviewer's finding). A non-synchronising literal, which comes
// anyway, is read and dropped.
func TestIdleEndedByLineWithLiteral(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.MustOK("SELECT INBOX")
	for i, end := range []string{"DONE {5}", "DONE {5+}\r\nabcde"} {
		tag := fmt.Sprintf("i%d", i)
		c.Send(tag + " IDLE")
		c.Expect("+ idling")
		c.Send(end)
		c.Expect(tag + " BAD Expected DONE.")
		c.Send("n1 NOOP")
		c.Expect("n1 OK NOOP completed.")
	}
}

// TestClientGoneMidInlineFetch: a client that vanishes while the proxy
// relays the answers of a FETCH whose bodies are under the inline limit
// (read whole, written through the session's buffer). The upstream
// connection is in the middle of the FETCH's answers and must not go back
// to the pool, as it did (a third reviewer's finding): the next command of
// the account leased on it read the old FETCH's answers as its own.
func TestClientGoneMidInlineFetch(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	msg := testMessage("small", 30<<10)
	for range 200 {
		if err := up.Append("alice", "INBOX", nil, msg); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.MustOK("SELECT INBOX")
	if err := c.Conn.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	c.Send("f FETCH 1:* (BODY.PEEK[])")
	c.Conn.SetReadDeadline(time.Now().Add(imaptest.IOTimeout))
	if _, err := io.CopyN(io.Discard, c.R, 100<<10); err != nil {
		t.Fatal(err)
	}
	c.Close()
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })
	t.Logf("idle pooled connections after the cut: %d", p.Srv.Pool().Idle())

	c2 := imaptest.Dial(t, p.Addr)
	c2.LoginTagged("alice", "secret")
	got := c2.Do("s", `LIST "" "*"`)
	t.Logf("second session's LIST: %d lines, first %q, last %q", len(got), got[0][:min(len(got[0]), 80)], got[len(got)-1])
	if len(got) != 2 || !strings.HasPrefix(got[0], "* LIST ") || !strings.HasPrefix(got[1], "s OK") {
		t.Fatalf("the next command of the account was not answered as its own")
	}
}

// TestClientGoneMidList: as TestClientGoneMidInlineFetch with a long
// LIST, whose answers' rest reached the account's next session that
// leased the pooled connection.
func TestClientGoneMidList(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	for i := range 1000 {
		if err := up.Append("alice", fmt.Sprintf("box%05d-%s", i, strings.Repeat("x", 6000)), nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	if err := c.Conn.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	c.Send(`l LIST "" "*"`)
	c.Conn.SetReadDeadline(time.Now().Add(imaptest.IOTimeout))
	if _, err := io.CopyN(io.Discard, c.R, 50<<10); err != nil {
		t.Fatal(err)
	}
	c.Close()
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })

	c2 := imaptest.Dial(t, p.Addr)
	c2.LoginTagged("alice", "secret")
	got := c2.Do("s", `LIST "" "INBOX"`)
	t.Logf("second session's LIST INBOX: %d lines, first %q, last %q", len(got), got[0][:min(len(got[0]), 80)], got[len(got)-1])
	if len(got) != 2 || !strings.HasSuffix(got[0], " INBOX") || !strings.HasPrefix(got[1], "s OK") {
		t.Fatalf("the next command of the account was not answered as its own")
	}
}

// panicFilterExt panics on one LIST response, as a bug in a response
// filter would, in the middle of a command's answers.
type panicFilterExt struct{}

func (panicFilterExt) Name() string { return "panicfilter" }
func (panicFilterExt) FilterResponse(s *proxy.Session, resp *proxy.Response) *proxy.Response {
	if resp.Head.Name == "LIST" && bytes.Contains(resp.Segments[0].Text, []byte("box005")) {
		panic("a bug in a response filter")
	}
	return resp
}

// TestPanicMidAnswersClosesConnection: a panic recovered in the middle
// of relaying a command's answers ends that session; its upstream
// connection, still in the middle of those answers, went back to the
// pool, and the account's next command read the rest as its own. It is
// closed now (a third reviewer's finding).
func TestPanicMidAnswersClosesConnection(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	for i := range 40 {
		if err := up.Append("alice", fmt.Sprintf("box%03d", i), nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := baseConfig(up.Addr)
	cfg.Extensions = append(cfg.Extensions, panicFilterExt{})
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.Send(`l LIST "" "*"`)
	for {
		if _, err := c.TryReadLine(5 * time.Second); err != nil {
			break
		}
	}
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })

	c2 := imaptest.Dial(t, p.Addr)
	c2.LoginTagged("alice", "secret")
	got := c2.Do("s", `LIST "" "INBOX"`)
	t.Logf("second session's LIST INBOX: %d lines, first %q, last %q", len(got), got[0], got[len(got)-1])
	if len(got) != 2 || !strings.HasSuffix(got[0], " INBOX") || !strings.HasPrefix(got[1], "s OK") {
		t.Fatalf("the next command of the account was not answered as its own")
	}
}
