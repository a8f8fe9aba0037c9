package integration

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestSpellingsOfOneAccount: Dovecot folds login names to lower case
// (auth_username_format = %Lu) and takes inbox.Child for INBOX.Child, so
// the proxy counts ALICE as alice for sessions-per-user and gives both
// spellings, and both spellings of a mailbox, one watcher (issue #16 item
// 18). With username-format %u the spellings stay apart.
func TestSpellingsOfOneAccount(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, srv := startProxy(t, dc.Addr, func(c *proxy.Config) { c.Abuse.SessionsPerUser = 2 })

	a := dialRaw(t, addr)
	a.LoginTagged("alice", "alicepass")
	// Dovecot's maildir hierarchy delimiter here is ".".
	imaptest.AssertLines(t, "LIST", a.Do("l", `LIST "" ""`), []string{`* LIST (\Noselect) "." ""`, "l OK*"})
	mustOK(t, a.Do("c", "CREATE INBOX.Child"))
	b := dialRaw(t, addr)
	b.LoginTagged("ALICE", "alicepass")
	c := dialRaw(t, addr)
	c.ExpectDo("x", "LOGIN Alice alicepass", "x NO [LIMIT] Too many sessions for this account; log out elsewhere first.")

	mustOK(t, a.Do("s", "SELECT inbox.Child"))
	mustOK(t, b.Do("s", "SELECT INBOX.Child"))
	if n := srv.Hub().Watchers(); n != 1 {
		t.Fatalf("%d watchers for inbox.Child of alice and INBOX.Child of ALICE, want 1", n)
	}
	// A change through one spelling reaches the other at once.
	mustOK(t, a.Do("a", "APPEND INBOX.Child {3+}\r\nx\r\n"))
	lines := b.Do("n", "NOOP")
	if !strings.Contains(strings.Join(lines, "\n"), "* 1 EXISTS") {
		t.Fatalf("the other spelling's session did not hear of the APPEND: %q", lines)
	}
	// Other names starting with "inbox" are not folded.
	if got := a.Do("s", "SELECT inboxChild"); !strings.HasPrefix(imaptest.Tagged(got), "NO") {
		t.Fatalf("SELECT inboxChild: %q", got)
	}
}

// TestSpellingsKeptApart: with username-format %u the proxy counts each
// spelling as its own account.
func TestSpellingsKeptApart(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) {
		c.Abuse.SessionsPerUser = 1
		c.UsernameFormat = proxy.UsernameAsIs
	})
	a := dialRaw(t, addr)
	a.LoginTagged("alice", "alicepass")
	b := dialRaw(t, addr)
	b.LoginTagged("ALICE", "alicepass")
}
