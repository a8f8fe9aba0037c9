package metadata

import (
	"context"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memServer starts go-imap's in-memory server (no METADATA) with alice and
// bob.
func memServer(t *testing.T) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	for _, u := range []string{"alice", "bob"} {
		if err := up.AddUser(u, u+"pass"); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// startProxy starts the proxy with the extension in front of upAddr.
func startProxy(t *testing.T, upAddr string, e *Extension, data accountdata.Store) *imaptest.Proxy {
	t.Helper()
	return imaptest.StartProxy(t, upAddr, proxy.Config{Extensions: []proxy.Extension{e}, AccountData: data})
}

// newClient starts go-imap's server and the proxy with cfg, and logs in
// as alice.
func newClient(t *testing.T, cfg Config) *imaptest.Client {
	t.Helper()
	up := memServer(t)
	p := startProxy(t, up.Addr, New(cfg), nil)
	return imaptest.Login(t, p.Addr, "alice", "alicepass")
}

func TestCapabilities(t *testing.T) {
	c := newClient(t, Config{})
	if caps := c.Cmd("CAPABILITY")[0]; !strings.Contains(caps, " METADATA") || strings.Contains(caps, "METADATA-SERVER") {
		t.Errorf("after login: %q", caps)
	}
	e := New(Config{})
	if got := e.Capabilities(proxy.StateNotAuthenticated, nil); got != nil {
		t.Errorf("before login: %q", got)
	}
	for _, c := range []string{"METADATA", "METADATA-SERVER"} {
		if got := e.Capabilities(proxy.StateAuthenticated, map[string]string{c: c}); got != nil {
			t.Errorf("over an upstream with %s: %q (the core relays it)", c, got)
		}
	}
}

// TestRFC5464Examples: the examples of RFC 5464 4.2 and 4.3, exactly.
// The DEPTH example's entries come in the order of their names (the RFC
// names no order).
func TestRFC5464Examples(t *testing.T) {
	c := newClient(t, Config{Limits: Limits{ValueSize: 1024}})
	c.Write("a SETMETADATA INBOX (/private/comment {33}\r\n")
	c.Expect("+ *")
	c.Write("My new comment across\r\ntwo lines.)\r\n")
	c.Expect("a OK *")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/comment NIL)`, "a OK Setmetadata completed.")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/comment "My own comment" /shared/comment "Shared comment")`, "a OK Setmetadata completed.")
	c.ExpectDo("a", `SETMETADATA "" (/shared/comment "Shared comment")`, "a OK Setmetadata completed.")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/filters/values/small "SMALLER 5000" /private/filters/values/boss "FROM \"boss@example.com\"")`, "a OK Setmetadata completed.")

	// 4.2: one entry of the server, one of a mailbox, several.
	c.ExpectDo("a", `GETMETADATA "" /shared/comment`,
		`* METADATA "" (/shared/comment "Shared comment")`,
		"a OK Getmetadata completed.")
	c.ExpectDo("a", `GETMETADATA "INBOX" /private/comment`,
		`* METADATA "INBOX" (/private/comment "My own comment")`,
		"a OK Getmetadata completed.")
	c.ExpectDo("a", `GETMETADATA "INBOX" (/shared/comment /private/comment)`,
		`* METADATA "INBOX" (/shared/comment "Shared comment" /private/comment "My own comment")`,
		"a OK Getmetadata completed.")
	// 4.2.1 MAXSIZE: the RFC's example value is 2199 bytes long.
	long := strings.Repeat("x", 1000)
	c.ExpectDo("a", `SETMETADATA INBOX (/shared/comment "`+long+`")`, "a OK Setmetadata completed.")
	c.ExpectDo("a", `GETMETADATA "INBOX" (MAXSIZE 999) (/shared/comment /private/comment)`,
		`* METADATA "INBOX" (/private/comment "My own comment")`,
		"a OK [METADATA LONGENTRIES 1000] Getmetadata completed.")
	// The grammar's order (options first) too.
	c.ExpectDo("a", `GETMETADATA (MAXSIZE 999) "INBOX" (/shared/comment /private/comment)`,
		`* METADATA "INBOX" (/private/comment "My own comment")`,
		"a OK [METADATA LONGENTRIES 1000] Getmetadata completed.")
	// 4.2.2 DEPTH.
	c.ExpectDo("a", `GETMETADATA "INBOX" (DEPTH 1) (/private/filters/values)`,
		`* METADATA "INBOX" (/private/filters/values/boss "FROM \"boss@example.com\"" /private/filters/values/small "SMALLER 5000")`,
		"a OK Getmetadata completed.")
	// 4.3 errors: a value too large.
	c.ExpectDo("a", `SETMETADATA INBOX (/private/comment "`+strings.Repeat("y", 1025)+`")`,
		"a NO [METADATA MAXSIZE 1024] Value of /private/comment too large.")
}

func TestDepthAndCase(t *testing.T) {
	c := newClient(t, Config{})
	c.MustOK(`SETMETADATA "" (/Private/A "1" /private/a/b "2" /private/a/b/c "3" /private/ab "4" /shared/a "5")`)
	for _, tc := range []struct{ cmd, want string }{
		{`GETMETADATA "" /PRIVATE/A`, `* METADATA "" (/private/a "1")`},
		{`GETMETADATA "" /private/none`, `* METADATA "" (/private/none NIL)`},
		{`GETMETADATA "" /private`, `* METADATA "" (/private NIL)`},
		{`GETMETADATA (DEPTH 0) "" /private/a`, `* METADATA "" (/private/a "1")`},
		{`GETMETADATA (DEPTH 1) "" /private/a`, `* METADATA "" (/private/a "1" /private/a/b "2")`},
		{`GETMETADATA (DEPTH infinity) "" /private/a`, `* METADATA "" (/private/a "1" /private/a/b "2" /private/a/b/c "3")`},
		{`GETMETADATA (DEPTH INFINITY) "" /private`, `* METADATA "" (/private/a "1" /private/a/b "2" /private/a/b/c "3" /private/ab "4")`},
		{`GETMETADATA (DEPTH 1) "" (/private /shared)`, `* METADATA "" (/private/a "1" /private/ab "4" /shared/a "5")`},
		{`GETMETADATA (DEPTH 1 MAXSIZE 0) "" /private/a`, ``},
		{`GETMETADATA (DEPTH infinity) "" (/private/a /private/a/b)`, `* METADATA "" (/private/a "1" /private/a/b "2" /private/a/b/c "3")`},
	} {
		got := c.Cmd(tc.cmd)
		want := []string{tc.want}
		if tc.want == "" {
			want = nil
		}
		if len(got) != len(want)+1 || len(want) > 0 && got[0] != want[0] || !strings.Contains(got[len(got)-1], " OK ") {
			t.Errorf("%s:\n got %q\nwant %q", tc.cmd, got, want)
		}
	}
	// Nothing to report: no METADATA response.
	c.ExpectDo("a", `GETMETADATA (DEPTH 1) "" /private/none`, "a OK Getmetadata completed.")
	c.ExpectDo("a", `GETMETADATA "" ()`, "a OK Getmetadata completed.")
}

func TestValues(t *testing.T) {
	c := newClient(t, Config{})
	c.MustOK(`SETMETADATA "" (/private/empty "" /private/twice "1" /private/twice "2")`)
	c.ExpectDo("a", `GETMETADATA "" (/private/empty /private/twice)`,
		`* METADATA "" (/private/empty "" /private/twice "2")`, "a OK *")
	// 8-bit and multi-line values come back as literals, a NUL as a
	// literal8.
	c.Write("b SETMETADATA \"\" (/private/utf8 {2+}\r\n\xc3\xa9 /private/nul ~{3+}\r\na\x00b)\r\n")
	c.Expect("b OK *")
	c.ExpectDo("c", `GETMETADATA "" (/private/utf8 /private/nul)`,
		"* METADATA \"\" (/private/utf8 {2}\r\n\xc3\xa9 /private/nul ~{3}\r\na\x00b)", "c OK *")
	// Removing what was never set is no error.
	c.ExpectDo("d", `SETMETADATA "" (/private/never NIL)`, "d OK Setmetadata completed.")
}

func TestSyntaxErrors(t *testing.T) {
	c := newClient(t, Config{})
	for _, cmd := range []string{
		`GETMETADATA "" /private/x*`,
		`GETMETADATA "" /private/x%`,
		`GETMETADATA "" /private/`,
		`GETMETADATA "" /private//a`,
		`GETMETADATA "" /other/a`,
		`GETMETADATA "" private/a`,
		`GETMETADATA (DEPTH 2) "" /private/a`,
		`GETMETADATA (MAXSIZE -1) "" /private/a`,
		`GETMETADATA (MAXSIZE 1 MAXSIZE 2) "" /private/a`,
		`GETMETADATA (FOO 1) "" /private/a`,
		`GETMETADATA (DEPTH) "" /private/a`,
		`GETMETADATA ""`,
		`GETMETADATA "" /private/a extra`,
		`GETMETADATA "" (/private/a (x))`,
		`SETMETADATA "" /private/a "x"`,
		`SETMETADATA "" (/private/a)`,
		`SETMETADATA "" (/private "x")`,
		`SETMETADATA "" (/shared "x")`,
		`SETMETADATA "" (/private/a atom)`,
		`SETMETADATA "" (/private/a ("x"))`,
		`SETMETADATA "" (/private/a "x") extra`,
		`SETMETADATA`,
	} {
		got := c.Cmd(cmd)
		if len(got) != 1 || !strings.Contains(got[0], " BAD Error in IMAP command ") {
			t.Errorf("%s: %q, want one BAD", cmd, got)
		}
	}
	// Nothing was stored by any of them.
	c.ExpectDo("a", `GETMETADATA (DEPTH infinity) "" (/private /shared)`, "a OK *")
}

func TestNonexistentMailbox(t *testing.T) {
	c := newClient(t, Config{})
	c.ExpectDo("a", `GETMETADATA nosuch /private/comment`, "a NO [NONEXISTENT] Mailbox doesn't exist: nosuch")
	c.ExpectDo("a", `SETMETADATA nosuch (/private/comment "x")`, "a NO [NONEXISTENT] Mailbox doesn't exist: nosuch")
	c.ExpectDo("a", `GETMETADATA inbox /private/comment`, `* METADATA "inbox" (/private/comment NIL)`, "a OK *")
}

func TestLimits(t *testing.T) {
	c := newClient(t, Config{Limits: Limits{Entries: 4, ValueSize: 10, Total: 25}})
	c.ExpectDo("a", `SETMETADATA "" (/private/a "0123456789x")`, "a NO [METADATA MAXSIZE 10] Value of /private/a too large.")
	c.ExpectDo("a", `SETMETADATA "" (/private/a "0123456789" /private/b "0123456789")`, "a OK *")
	// 30 bytes in all: too much, and nothing of the command is set.
	c.ExpectDo("a", `SETMETADATA INBOX (/private/c "1" /private/d "0123456789")`, "a NO [METADATA TOOMANY] Too much metadata (at most 25 bytes per account).")
	c.ExpectDo("a", `GETMETADATA INBOX /private/c`, `* METADATA "INBOX" (/private/c NIL)`, "a OK *")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/c "1")`, "a OK *")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/d "1")`, "a OK *")
	c.ExpectDo("a", `SETMETADATA INBOX (/private/e "1")`, "a NO [METADATA TOOMANY] Too many entries (at most 4 per account).")
	// Replacing and removing stay possible at the limit.
	c.ExpectDo("a", `SETMETADATA "" (/private/a "0")`, "a OK *")
	c.ExpectDo("a", `SETMETADATA "" (/private/a NIL /private/e "e")`, "a OK *")
	c.ExpectDo("a", `GETMETADATA (DEPTH 1) "" /private`, `* METADATA "" (/private/b "0123456789" /private/e "e")`, "a OK *")
}

// TestMailboxFollows: entries go with RENAME and go away with DELETE;
// RENAME INBOX leaves INBOX's. (go-imap's server renames no child
// mailbox: children are tested over Dovecot, TestDovecot.)
func TestMailboxFollows(t *testing.T) {
	mailboxFollows(t, newClient(t, Config{}), "/")
}

// mailboxFollows runs the RENAME and DELETE scenario; children are
// tried where the upstream renames them (delim not "/").
func mailboxFollows(t *testing.T, c *imaptest.Client, delim string) {
	t.Helper()
	children := delim != "/"
	c.MustOK("CREATE a")
	c.MustOK("CREATE ab")
	c.MustOK(`SETMETADATA a (/private/x "a")`)
	c.MustOK(`SETMETADATA ab (/private/x "ab")`)
	c.MustOK(`SETMETADATA INBOX (/private/x "inbox")`)
	if children {
		c.MustOK("CREATE a" + delim + "b")
		c.MustOK(`SETMETADATA a` + delim + `b (/private/x "a/b")`)
	}
	c.MustOK("RENAME a c")
	c.ExpectDo("t", `GETMETADATA c /private/x`, `* METADATA "c" (/private/x "a")`, "t OK *")
	if children {
		c.ExpectDo("t", `GETMETADATA c`+delim+`b /private/x`, `* METADATA "c`+delim+`b" (/private/x "a/b")`, "t OK *")
		c.MustOK("DELETE c" + delim + "b")
		c.MustOK("CREATE c" + delim + "b")
		c.ExpectDo("t", `GETMETADATA c`+delim+`b /private/x`, `* METADATA "c`+delim+`b" (/private/x NIL)`, "t OK *")
	}
	c.ExpectDo("t", `GETMETADATA ab /private/x`, `* METADATA "ab" (/private/x "ab")`, "t OK *")
	c.MustOK("CREATE a")
	c.ExpectDo("t", `GETMETADATA a /private/x`, `* METADATA "a" (/private/x NIL)`, "t OK *")
	c.MustOK("DELETE c")
	c.MustOK("CREATE c")
	c.ExpectDo("t", `GETMETADATA c /private/x`, `* METADATA "c" (/private/x NIL)`, "t OK *")
	// A failed RENAME moves nothing.
	c.MustOK(`SETMETADATA c (/private/x "c")`)
	if got := c.Cmd("RENAME c ab"); !strings.Contains(got[len(got)-1], " NO ") {
		t.Fatalf("RENAME onto an existing mailbox: %q", got)
	}
	c.ExpectDo("t", `GETMETADATA ab /private/x`, `* METADATA "ab" (/private/x "ab")`, "t OK *")
	c.ExpectDo("t", `GETMETADATA c /private/x`, `* METADATA "c" (/private/x "c")`, "t OK *")
	if got := c.Cmd("RENAME INBOX saved"); !strings.Contains(got[len(got)-1], " OK ") {
		if delim == "/" {
			t.Fatalf("RENAME INBOX: %q", got)
		}
		return // Dovecot's maildir does not rename INBOX
	}
	c.ExpectDo("t", `GETMETADATA INBOX /private/x`, `* METADATA "INBOX" (/private/x "inbox")`, "t OK *")
	c.ExpectDo("t", `GETMETADATA saved /private/x`, `* METADATA "saved" (/private/x NIL)`, "t OK *")
}

// TestIsolation: the same entries and mailbox names in two accounts never
// meet.
func TestIsolation(t *testing.T) {
	up := memServer(t)
	data := accountdata.NewMemory()
	p := startProxy(t, up.Addr, New(Config{Limits: Limits{Entries: 2}}), data)
	alice := imaptest.Login(t, p.Addr, "alice", "alicepass")
	bob := imaptest.Login(t, p.Addr, "bob", "bobpass")
	alice.MustOK("CREATE work")
	bob.MustOK("CREATE work")
	alice.MustOK(`SETMETADATA work (/private/x "alice's" /shared/x "alice's shared")`)
	bob.ExpectDo("t", `GETMETADATA work (/private/x /shared/x)`, `* METADATA "work" (/private/x NIL /shared/x NIL)`, "t OK *")
	bob.ExpectDo("t", `GETMETADATA (DEPTH infinity) work (/private /shared)`, "t OK *")
	// Each account has its own count.
	bob.MustOK(`SETMETADATA work (/private/x "bob's" /private/y "bob's")`)
	alice.ExpectDo("t", `GETMETADATA work (/private/x /shared/x)`, `* METADATA "work" (/private/x "alice's" /shared/x "alice's shared")`, "t OK *")
	bob.MustOK("DELETE work")
	alice.ExpectDo("t", `GETMETADATA work /private/x`, `* METADATA "work" (/private/x "alice's")`, "t OK *")
	var accts []string
	data.Accounts(Prefix, func(a string) bool { accts = append(accts, a); return true })
	if len(accts) != 1 {
		t.Fatalf("accounts with entries after bob's DELETE: %q", accts)
	}
}

// testOwner owns entries and records what it was asked.
type testOwner struct {
	mu     sync.Mutex
	values map[string][]byte // account NUL mailbox NUL entry
	calls  []string
	refuse string
}

func (o *testOwner) GetEntry(_ context.Context, a proxy.Account, mailbox, entry string) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "get "+mailbox+" "+entry)
	return o.values[a.Name+"\x00"+mailbox+"\x00"+entry], nil
}

func (o *testOwner) SetEntry(_ context.Context, a proxy.Account, mailbox, entry string, value []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refuse != "" && string(value) == o.refuse {
		return &Refusal{Code: "CANNOT", Text: "Not a token."}
	}
	if value == nil {
		o.calls = append(o.calls, "unset "+mailbox+" "+entry)
		delete(o.values, a.Name+"\x00"+mailbox+"\x00"+entry)
		return nil
	}
	o.calls = append(o.calls, "set "+mailbox+" "+entry+" "+string(value))
	o.values[a.Name+"\x00"+mailbox+"\x00"+entry] = value
	return nil
}

func (o *testOwner) took() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.calls
	o.calls = nil
	return c
}

func assertCalls(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("owner calls %q, want %q", got, want)
	}
}

// ownerScript runs the owned-entry scenario through c: the same whether
// the proxy keeps the other entries or the upstream does.
func ownerScript(t *testing.T, c *imaptest.Client, o *testOwner, data accountdata.Store, relay bool) {
	t.Helper()
	c.ExpectDo("a", `SETMETADATA "" (/private/DeviceToken "tok1" /private/comment "c")`, "a OK *")
	assertCalls(t, o.took(), "set  /private/devicetoken tok1")
	if relay { // the owner's answer, then the upstream's
		c.ExpectDo("a", `GETMETADATA "" (/private/devicetoken /private/comment)`,
			`* METADATA "" (/private/devicetoken "tok1")`, `* METADATA "" (/private/comment *`, "a OK *")
	} else {
		c.ExpectDo("a", `GETMETADATA "" (/private/devicetoken /private/comment)`,
			`* METADATA "" (/private/devicetoken "tok1" /private/comment "c")`, "a OK *")
	}
	assertCalls(t, o.took(), "get  /private/devicetoken")
	// DEPTH reaches owned entries; MAXSIZE applies to them.
	c.ExpectDo("a", `GETMETADATA (MAXSIZE 3) "" (/private/devicetoken /private/comment)`, `* METADATA "" (/private/comment *`, "a OK [METADATA LONGENTRIES 4] *")
	assertCalls(t, o.took(), "get  /private/devicetoken")
	if !relay { // Dovecot lists no server entries with DEPTH
		c.ExpectDo("a", `GETMETADATA (DEPTH 1) "" /private`, `* METADATA "" (/private/comment "c" /private/devicetoken "tok1")`, "a OK *")
		assertCalls(t, o.took(), "get  /private/devicetoken")
	}
	// Refused: nothing of the command is set.
	o.refuse = "bad"
	c.ExpectDo("a", `SETMETADATA "" (/private/devicetoken "bad")`, "a NO [CANNOT] Not a token.")
	c.ExpectDo("a", `SETMETADATA "" (/private/devicetoken NIL)`, "a OK *")
	assertCalls(t, o.took(), "unset  /private/devicetoken")
	c.ExpectDo("a", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken NIL)`, "a OK *")
	o.took()
	// The proxy's store never holds an owned entry.
	if data != nil {
		data.List(c.T().Name(), "", func(k string, _ []byte) bool { return true })
		var bad []string
		data.Accounts("", func(a string) bool {
			data.List(a, "", func(k string, _ []byte) bool {
				if strings.Contains(k, "devicetoken") {
					bad = append(bad, k)
				}
				return true
			})
			return true
		})
		if len(bad) > 0 {
			t.Fatalf("the store holds owned entries: %q", bad)
		}
	}
}

// TestOwned: an owned entry is the owner's, over an upstream without
// METADATA (see TestDovecot for one with it).
func TestOwned(t *testing.T) {
	o := &testOwner{values: map[string][]byte{}}
	up := memServer(t)
	data := accountdata.NewMemory()
	p := startProxy(t, up.Addr, New(Config{Owned: map[string]EntryOwner{"/private/devicetoken": o}}), data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	ownerScript(t, c, o, data, false)
	// Another account's owned entry is another value.
	c.MustOK(`SETMETADATA "" (/private/devicetoken "alice")`)
	bob := imaptest.Login(t, p.Addr, "bob", "bobpass")
	bob.ExpectDo("a", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken NIL)`, "a OK *")
}

func TestOwnedNameChecked(t *testing.T) {
	e := New(Config{Owned: map[string]EntryOwner{"/private/x*": &testOwner{}}})
	if err := e.Provision(proxy.Services{Data: accountdata.NewMemory()}); err == nil {
		t.Fatal("an owned name that is no entry name was accepted")
	}
}
