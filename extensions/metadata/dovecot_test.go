package metadata

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestDovecotLegacy: in front of Dovecot's Legacy profile (no METADATA
// advertised) the proxy keeps the entries; they follow RENAME of a parent
// mailbox to its children (Dovecot's delimiter is ".").
func TestDovecotLegacy(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	data := accountdata.NewMemory()
	o := &testOwner{values: map[string][]byte{}}
	p := startProxy(t, dc.Addr, New(Config{Owned: map[string]EntryOwner{"/private/devicetoken": o}}), data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0]; !strings.Contains(caps, " METADATA") {
		t.Fatalf("capabilities: %q", caps)
	}
	c.MustOK(`SETMETADATA INBOX (/private/comment "My own comment" /shared/comment "Shared comment")`)
	c.ExpectDo("a", `GETMETADATA "INBOX" (/shared/comment /private/comment)`,
		`* METADATA "INBOX" (/shared/comment "Shared comment" /private/comment "My own comment")`,
		"a OK Getmetadata completed.")
	c.ExpectDo("a", `GETMETADATA nosuch /private/comment`, "a NO [NONEXISTENT] Mailbox doesn't exist: nosuch")
	// The entries are the proxy's: Dovecot (which runs METADATA commands
	// even unadvertised, with no dictionary here) holds none.
	if n, _ := accountdata.Count(data, c.T().Name(), ""); n != 0 {
		t.Fatalf("records under the test's name: %d", n)
	}
	var accts []string
	data.Accounts(Prefix, func(a string) bool { accts = append(accts, a); return true })
	if len(accts) != 1 {
		t.Fatalf("accounts with entries: %q", accts)
	}
	mailboxFollows(t, c, ".")
	ownerScript(t, c, o, data, false)

	// bob's view of the same names is empty.
	bob := imaptest.Login(t, p.Addr, "bob", "bobpass")
	bob.ExpectDo("a", `GETMETADATA INBOX (/private/comment /shared/comment)`, `* METADATA "INBOX" (/private/comment NIL /shared/comment NIL)`, "a OK *")
}

// TestDovecotFull: in front of Dovecot's Full profile (METADATA with a
// dictionary) the commands are relayed and Dovecot keeps the entries; an
// owned entry is still the owner's and never reaches Dovecot.
func TestDovecotFull(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	data := accountdata.NewMemory()
	o := &testOwner{values: map[string][]byte{}}
	p := startProxy(t, dc.Addr, New(Config{Owned: map[string]EntryOwner{"/private/devicetoken": o}}), data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0]; strings.Count(caps, " METADATA") != 1 {
		t.Fatalf("capabilities: %q", caps)
	}
	c.MustOK(`SETMETADATA INBOX (/private/comment "My own comment")`)
	// Dovecot's own answer: a literal, relayed as it came.
	c.ExpectDo("a", `GETMETADATA INBOX /private/comment`, "* METADATA INBOX (/private/comment {14}\r\nMy own comment)", "a OK Getmetadata completed*")
	direct := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	direct.ExpectDo("a", `GETMETADATA INBOX /private/comment`, "* METADATA INBOX (/private/comment {14}\r\nMy own comment)", "a OK *")

	ownerScript(t, c, o, data, true)
	c.MustOK(`SETMETADATA "" (/private/devicetoken "tok2")`)
	direct.ExpectDo("a", `GETMETADATA "" (/private/devicetoken /private/comment)`, `* METADATA "" (/private/devicetoken NIL /private/comment {1}`+"\r\nc)", "a OK *")
	if n, _ := accountdata.Count(data, "", ""); n != 0 {
		t.Fatal("records in the proxy's store")
	}
	var accts []string
	data.Accounts("", func(a string) bool { accts = append(accts, a); return true })
	if len(accts) != 0 {
		t.Fatalf("the proxy stored entries over an upstream with METADATA: %q", accts)
	}
	// Dovecot renames entries itself.
	c.MustOK("CREATE a")
	c.MustOK(`SETMETADATA a (/private/x "a")`)
	c.MustOK("RENAME a b")
	c.ExpectDo("t", `GETMETADATA b /private/x`, "* METADATA b (/private/x {1}\r\na)", "t OK *")
}

// TestRestart: entries kept in accountdata.db survive a restart of the
// proxy.
func TestRestart(t *testing.T) {
	up := memServer(t)
	dir := t.TempDir()
	run := func(script func(c *imaptest.Client)) {
		data, err := accountdata.OpenBolt(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, up.Addr, New(Config{}), data)
		script(imaptest.Login(t, p.Addr, "alice", "alicepass"))
		if err := p.Shutdown(); err != nil {
			t.Fatal(err)
		}
		if err := data.Close(); err != nil {
			t.Fatal(err)
		}
	}
	run(func(c *imaptest.Client) {
		c.MustOK(`SETMETADATA INBOX (/private/comment "kept")`)
		c.MustOK(`SETMETADATA "" (/shared/comment "kept too")`)
	})
	run(func(c *imaptest.Client) {
		c.ExpectDo("a", `GETMETADATA INBOX /private/comment`, `* METADATA "INBOX" (/private/comment "kept")`, "a OK *")
		c.ExpectDo("a", `GETMETADATA "" /shared/comment`, `* METADATA "" (/shared/comment "kept too")`, "a OK *")
	})
}
