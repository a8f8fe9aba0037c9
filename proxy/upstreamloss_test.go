package proxy_test

import (
	"strings"
	"testing"
	"time"

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
	p := startProxy(t, baseConfig(fw.addr()), proxyOpts{})
	authed := dial(t, p.addr)
	authed.login("alice", "secret")
	selected := dial(t, p.addr)
	selected.login("alice", "secret")
	selected.expectDo("s", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	waitFor(t, "two pooled connections", func() bool { return p.srv.Pool().Idle() == 2 })

	fw.cut()
	time.Sleep(50 * time.Millisecond)

	retry := func(c *client, tag, command string, want ...string) {
		t.Helper()
		got := c.do(tag, command)
		if len(got) == 1 && got[0] == tag+" NO [UNAVAILABLE] Lost the connection to the upstream server." {
			got = c.do(tag, command)
		}
		assertLines(t, command+" after the upstream connections were cut", got, want)
	}
	retry(authed, "a", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "a OK STATUS completed")
	retry(selected, "b", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "b OK FETCH completed")
	// Both sessions go on normally.
	authed.expectDo("c", `LIST "" INBOX`, `* LIST () "/" INBOX`, "c OK LIST completed")
	selected.expectDo("d", "UID FETCH 1 (FLAGS)", "* 1 FETCH (UID 1 FLAGS ())", "d OK UID FETCH completed")
}

// TestUpstreamDown: the upstream goes away after a session logged in. Its
// commands get NO [UNAVAILABLE] but it is not disconnected, and it recovers
// when the upstream is back; logins meanwhile get NO [UNAVAILABLE] too.
func TestUpstreamDown(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	fw := startForwarder(t, up.Addr)
	p := startProxy(t, baseConfig(fw.addr()), proxyOpts{})
	c := dial(t, p.addr)
	c.login("alice", "secret")
	fw.refuse.Store(true)
	fw.cut()
	time.Sleep(50 * time.Millisecond)
	for i := range 2 {
		got := c.do("a", "STATUS INBOX (MESSAGES)")
		if len(got) != 1 || !strings.HasPrefix(got[0], "a NO [UNAVAILABLE] ") {
			t.Fatalf("STATUS %d with the upstream down: %q", i, got)
		}
	}
	c2 := dial(t, p.addr)
	c2.expectDo("l", "LOGIN alice secret", "l NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	fw.refuse.Store(false)
	c.expectDo("b", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 0)", "b OK STATUS completed")
	c2.expectDo("m", "LOGIN alice secret", "m "+loggedIn)
}

func TestIdleAutologout(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.IdleTimeout = 300 * time.Millisecond
	p := startProxy(t, cfg, proxyOpts{})
	for _, selectFirst := range []bool{false, true} {
		c := dial(t, p.addr)
		c.login("alice", "secret")
		if selectFirst {
			c.expectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
		}
		c.send("i IDLE")
		c.expect("+ idling")
		assertLines(t, "IDLE past the autologout timer", c.expectClosed(), []string{"* BYE Autologout; idle for too long."})
	}
	// Without IDLE too.
	c := dial(t, p.addr)
	c.login("alice", "secret")
	assertLines(t, "silent authenticated client", c.expectClosed(), []string{"* BYE Autologout; idle for too long."})
	waitFor(t, "the sessions to end", func() bool { return p.srv.Sessions() == 0 })
}
