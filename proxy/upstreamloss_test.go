package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestUpstreamConnectionsCut: every upstream connection drops (an upstream
// restart). Sessions survive in both states: a command that was running on
// a dead pooled connection gets NO [UNAVAILABLE], and the next ones run on
// fresh connections.
func TestUpstreamConnectionsCut(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	if err := up.Append("alice", "INBOX", nil, testMessage("x", 100)); err != nil {
		t.Fatal(err)
	}
	fw := startForwarder(t, up.Addr)
	cfg := baseConfig(fw.addr())
	cfg.LoginCacheWindow = -1 // each login's own connection goes to the pool
	p := startProxy(t, cfg)
	authed := imaptest.Dial(t, p.Addr)
	authed.LoginTagged("alice", "secret")
	selected := imaptest.Dial(t, p.Addr)
	selected.LoginTagged("alice", "secret")
	selected.ExpectDo("s", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	imaptest.WaitFor(t, "two pooled connections", func() bool { return p.Srv.Pool().Idle() == 2 })

	fw.cut()
	time.Sleep(50 * time.Millisecond)

	retry := func(c *client, tag, command string, want ...string) {
		t.Helper()
		got := c.Do(tag, command)
		if len(got) == 1 && got[0] == tag+" NO [UNAVAILABLE] Lost the connection to the upstream server." {
			got = c.Do(tag, command)
		}
		imaptest.AssertLines(t, command+" after the upstream connections were cut", got, want)
	}
	retry(authed, "a", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "a OK STATUS completed")
	retry(selected, "b", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "b OK FETCH completed")
	// Both sessions go on normally.
	authed.ExpectDo("c", `LIST "" INBOX`, `* LIST () "/" INBOX`, "c OK LIST completed")
	selected.ExpectDo("d", "UID FETCH 1 (FLAGS)", "* 1 FETCH (UID 1 FLAGS ())", "d OK UID FETCH completed")
}

// TestUpstreamDown: the upstream goes away after a session logged in. Its
// commands get NO [UNAVAILABLE] but it is not disconnected, and it recovers
// when the upstream is back; logins meanwhile get NO [UNAVAILABLE] too.
func TestUpstreamDown(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	fw := startForwarder(t, up.Addr)
	p := startProxy(t, baseConfig(fw.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	fw.refuse.Store(true)
	fw.cut()
	time.Sleep(50 * time.Millisecond)
	for i := range 2 {
		got := c.Do("a", "STATUS INBOX (MESSAGES)")
		if len(got) != 1 || !strings.HasPrefix(got[0], "a NO [UNAVAILABLE] ") {
			t.Fatalf("STATUS %d with the upstream down: %q", i, got)
		}
	}
	c2 := imaptest.Dial(t, p.Addr)
	c2.ExpectDo("l", "LOGIN alice secret", "l NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	fw.refuse.Store(false)
	c.ExpectDo("b", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 0)", "b OK STATUS completed")
	c2.ExpectDo("m", "LOGIN alice secret", "m "+loggedIn)
}

func TestIdleAutologout(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.IdleTimeout = 300 * time.Millisecond
	p := startProxy(t, cfg)
	for _, selectFirst := range []bool{false, true} {
		c := imaptest.Dial(t, p.Addr)
		c.LoginTagged("alice", "secret")
		if selectFirst {
			c.ExpectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
		}
		c.Send("i IDLE")
		c.Expect("+ idling")
		imaptest.AssertLines(t, "IDLE past the autologout timer", c.ExpectClosed(), []string{"* BYE Autologout; idle for too long."})
	}
	// Without IDLE too.
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	imaptest.AssertLines(t, "silent authenticated client", c.ExpectClosed(), []string{"* BYE Autologout; idle for too long."})
	imaptest.WaitFor(t, "the sessions to end", func() bool { return p.Srv.Sessions() == 0 })
}
