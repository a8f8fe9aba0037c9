package devicetoken_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// quiet is how long a test waits to see that no (further) POST comes.
// Dovecot reports a change to an IDLE connection within about half a
// second here; the proxy adds milliseconds.
const quiet = 1500 * time.Millisecond

// TestDeviceTokenLegacy: through the proxy in front of Dovecot's legacy
// profile (no METADATA, IDLE), logged in as a master user while no
// session is connected: a token registered with SETMETADATA, the session
// gone, mail APPENDed directly to Dovecot is announced by exactly one POST
// of the token per batch (a MULTIAPPEND of three messages is one); the
// accounts never mix; a token removed with NIL is pushed no more.
func TestDeviceTokenLegacy(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	dc.AddUser(t, "carol", "carolpass")
	g := newGateway(t, []byte("gateway secret"))
	s := start(t, dc, g, options{secret: g.secret})

	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK(`SETMETADATA "" (/private/devicetoken "tok-alice")`)
	c.ExpectDo("g", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken "tok-alice")`, "g OK *")
	c.MustOK("LOGOUT")
	c.Close()
	s.register(t, "bob", "bobpass", "tok-bob")
	s.waitWatched(t, "alice")
	s.waitWatched(t, "bob")

	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("one"))
	g.expect(t, 0, []string{"tok-alice"}, 10*time.Second, quiet)

	multiAppend(t, dc, "alice", "alicepass", 3)
	g.expect(t, 1, []string{"tok-alice"}, 10*time.Second, quiet)

	// bob's mail wakes bob's device only; carol registered nothing.
	dc.Append(t, "bob", "bobpass", "INBOX", nil, msg("for bob"))
	dc.Append(t, "carol", "carolpass", "INBOX", nil, msg("for carol"))
	g.expect(t, 2, []string{"tok-bob"}, 10*time.Second, quiet)

	// Mail in another mailbox than INBOX does not push.
	dc.Append(t, "alice", "alicepass", "Archive", nil, msg("archived"))
	time.Sleep(quiet)

	c = imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK(`SETMETADATA "" (/private/devicetoken NIL)`)
	c.ExpectDo("g", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken NIL)`, "g OK *")
	c.MustOK("LOGOUT")
	c.Close()
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("after removal"))
	dc.Append(t, "bob", "bobpass", "INBOX", nil, msg("bob again"))
	g.expect(t, 3, []string{"tok-bob"}, 10*time.Second, quiet)

	st := s.push.Stats()
	if st.Registrations["devicetoken"] != 1 || st.Sent["devicetoken"] != 4 || st.Pending != 0 {
		t.Errorf("stats: %+v", st)
	}
	// Nothing of alice's is left: no registration, credential, cursor.
	if n := countRecords(t, s.data, s.account("alice")); n != 0 {
		t.Errorf("%d records of alice left after her last token went", n)
	}
}

// TestDeviceTokenSeveralDevices: each device's token is its own
// registration; one new message wakes both.
func TestDeviceTokenSeveralDevices(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{})
	s.register(t, "alice", "alicepass", "phone")
	s.register(t, "alice", "alicepass", "tablet")
	s.register(t, "alice", "alicepass", "phone") // again: replaces, not a third
	s.waitWatched(t, "alice")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("one"))
	g.expect(t, 0, []string{"phone", "tablet"}, 10*time.Second, quiet)
	if n := s.push.Stats().Registrations["devicetoken"]; n != 2 {
		t.Errorf("%d registrations, want 2", n)
	}
}

// TestDeviceTokenRefusals: malformed tokens, a mailbox entry and one
// device beyond the account's limit are refused with NO saying why, and
// nothing is stored.
func TestDeviceTokenRefusals(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{cfg: push.Config{MaxRegistrations: 2}})
	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	for _, tc := range []struct{ cmd, want string }{
		{`SETMETADATA "" (/private/devicetoken "has space")`, "t NO Malformed device token (not printable ASCII without spaces); nothing stored."},
		{`SETMETADATA "" (/private/devicetoken "")`, "t NO Malformed device token (empty); nothing stored."},
		{`SETMETADATA "" (/private/devicetoken "` + strings.Repeat("x", 4097) + `")`, "t NO Malformed device token (longer than 4096 bytes); nothing stored."},
		{`SETMETADATA "" (/private/devicetoken {3}` + "\r\na\x01b)", "t NO Malformed device token (not printable ASCII without spaces); nothing stored."},
		{`SETMETADATA INBOX (/private/devicetoken "tok")`, `t NO /private/devicetoken is a server entry: SETMETADATA "" (/private/devicetoken "token").`},
		{`SETMETADATA "" (/private/devicetoken)`, "t BAD *"},
	} {
		if strings.Contains(tc.cmd, "{3}") {
			head, lit, _ := strings.Cut(tc.cmd, "\r\n")
			c.Write("t " + head + "\r\n")
			c.Expect("+ *")
			c.Write(lit + "\r\n")
			c.Expect(tc.want)
			continue
		}
		c.ExpectDo("t", tc.cmd, tc.want)
	}
	if n := countRecords(t, s.data, s.account("alice")); n != 0 {
		t.Fatalf("%d records stored after refusals", n)
	}
	c.MustOK(`SETMETADATA "" (/private/devicetoken "one")`)
	c.MustOK(`SETMETADATA "" (/private/devicetoken "two")`)
	c.ExpectDo("t", `SETMETADATA "" (/private/devicetoken "three")`, "t NO [METADATA TOOMANY] Too many devices registered for push on this account; remove one first.")
	c.MustOK(`SETMETADATA "" (/private/devicetoken "two")`) // the same device again is no new one
	if n := s.push.Stats().Registrations["devicetoken"]; n != 2 {
		t.Fatalf("%d registrations, want 2", n)
	}
	// A command naming another entry too is refused as a whole.
	c.ExpectDo("t", `SETMETADATA "" (/private/comment "x" /private/devicetoken "bad token")`, "t NO Malformed device token*")
	c.ExpectDo("t", `GETMETADATA "" /private/comment`, `* METADATA "" (/private/comment NIL)`, "t OK *")
}

// TestDeviceTokenFull: over Dovecot's full profile, which has METADATA
// (relayed for every other entry), the token is still the proxy's: it
// never reaches Dovecot, and new mail pushes.
func TestDeviceTokenFull(t *testing.T) {
	dc := startDovecot(t, dovecottest.Full)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{})
	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK(`SETMETADATA "" (/private/devicetoken "tok-alice" /private/comment "relayed")`)
	c.ExpectDo("g", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken "tok-alice")`, "g OK *")
	c.Close()
	direct := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	direct.ExpectDo("g", `GETMETADATA "" (/private/devicetoken /private/comment)`, `* METADATA "" (/private/devicetoken NIL /private/comment {7}`+"\r\nrelayed)", "g OK *")
	s.waitWatched(t, "alice")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("one"))
	g.expect(t, 0, []string{"tok-alice"}, 10*time.Second, quiet)
}

// TestInboxChildSpelling: the mailboxes that push are configured as
// inbox.Lists and INBOX.Lists, one mailbox where "." is Dovecot's
// delimiter. It is polled under one spelling, the hub's (INBOX.Lists: its
// cursor is kept under that name, none under the other), and a message
// there pushes once (it was polled under both spellings, each with its own
// cursor).
func TestInboxChildSpelling(t *testing.T) {
	dc := startDovecot(t, dovecottest.Full)
	g := newGateway(t, []byte("gateway secret"))
	s := start(t, dc, g, options{secret: g.secret, cfg: push.Config{
		Mailboxes:    []string{"INBOX", "inbox.Lists", "INBOX.Lists"},
		PollInterval: 100 * time.Millisecond,
	}})
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("CREATE INBOX.Lists")
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")
	account := s.account("alice")
	waitCursor(t, s.data, account, "INBOX.Lists")

	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, msg("list mail"))
	g.expect(t, 0, []string{"tok-alice"}, 10*time.Second, 500*time.Millisecond)
	if _, err := s.data.Get(account, push.Prefix+"m/inbox.Lists"); err == nil {
		t.Error("a cursor kept under the spelling inbox.Lists")
	}
}

// TestInboxChildSpellingLearntLater: the one mailbox that pushes is
// configured as inbox.Lists, and no session has taught the proxy the
// account's delimiter when its live watch starts. The watch was started
// under that spelling; once a session of the account learnt the
// delimiter (its SELECT of inbox.Lists), the live watcher's changes were
// looked up under inbox.Lists, the registrations' mailboxes spelt
// INBOX.Lists, and no device matched: the mail was never pushed (its
// cursor moved on). The watch's start learns the delimiter now
// (subscribe), so its cursor is kept as INBOX.Lists from the first look,
// and the session's SELECT changes nothing.
func TestInboxChildSpellingLearntLater(t *testing.T) {
	dc := startDovecot(t, dovecottest.Full)
	g := newGateway(t, []byte("gateway secret"))
	s := start(t, dc, g, options{secret: g.secret, cfg: push.Config{
		Mailboxes: []string{"inbox.Lists"},
	}})
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("CREATE INBOX.Lists")
	s.register(t, "alice", "alicepass", "tok-alice")
	account := s.account("alice")
	waitCursor(t, s.data, account, "INBOX.Lists")

	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK("SELECT inbox.Lists")
	c.MustOK("LOGOUT")

	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, msg("list mail"))
	g.expect(t, 0, []string{"tok-alice"}, 10*time.Second, 500*time.Millisecond)
}
