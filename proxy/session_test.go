package proxy_test

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// What the proxy advertises against memupstream's default capabilities.
const (
	preAuthCaps  = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN"
	postAuthCaps = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT NAMESPACE UIDPLUS MOVE IDLE"
)

// newMemProxy starts memupstream with user alice and a proxy in front.
func newMemProxy(t *testing.T) (*memupstream.Server, *imaptest.Proxy) {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	return up, startProxy(t, baseConfig(up.Addr))
}

func TestGreetingAndCapability(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	if want := "* OK [CAPABILITY " + preAuthCaps + "] lemonproxy ready."; c.Greeting != want {
		t.Fatalf("greeting %q, want %q", c.Greeting, want)
	}
	c.ExpectDo("a", "CAPABILITY",
		"* CAPABILITY "+preAuthCaps,
		"a OK Capability completed.")
	c.ExpectDo("b", "CAPABILITY extra", "b BAD CAPABILITY takes no arguments.")
	c.ExpectDo("l", "LOGIN alice secret", "l OK [CAPABILITY "+postAuthCaps+"] *")
	c.ExpectDo("c", "CAPABILITY",
		"* CAPABILITY "+postAuthCaps,
		"c OK Capability completed.")
	c.ExpectDo("d", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "d OK [READ-WRITE] *")
	c.ExpectDo("e", "CAPABILITY",
		"* CAPABILITY "+postAuthCaps,
		"e OK Capability completed.")
}

// TestCapabilityFiltering checks that upstream capabilities the proxy cannot
// relay transparently are never advertised, whatever the upstream offers.
func TestCapabilityFiltering(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		upCaps, want string
	}{
		{
			upCaps: "IMAP4rev1 LITERAL+ IDLE CONDSTORE QRESYNC NOTIFY COMPRESS=DEFLATE UNSELECT NAMESPACE UIDPLUS MOVE ENABLE IMAP4rev2 UTF8=ACCEPT X-FOO THREAD=REFERENCES",
			want:   "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT NAMESPACE UIDPLUS MOVE THREAD=REFERENCES IDLE",
		},
		{
			upCaps: "IMAP4rev1 CONDSTORE",
			want:   "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT IDLE", // IDLE is the proxy's own
		},
	} {
		f := startFakeUpstream(t, tc.upCaps)
		p := startProxy(t, baseConfig(f.addr()))
		c := imaptest.Dial(t, p.Addr)
		c.ExpectDo("l", "LOGIN u p", "l OK [CAPABILITY "+tc.want+"] *")
		c.ExpectDo("c", "CAPABILITY", "* CAPABILITY "+tc.want, "c OK Capability completed.")
		for _, w := range strings.Fields(tc.want) {
			for _, bad := range []string{"CONDSTORE", "QRESYNC", "NOTIFY", "COMPRESS=DEFLATE", "IMAP4rev2", "X-FOO"} {
				if w == bad {
					t.Errorf("advertised %s", bad)
				}
			}
		}
	}
}

func TestStateMachine(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	if err := up.Append("alice", "INBOX", nil, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	c := imaptest.Dial(t, p.Addr)

	// Not authenticated.
	c.ExpectDo("a1", "SELECT INBOX", "a1 BAD SELECT not allowed before authentication; log in first.")
	c.ExpectDo("a2", "FETCH 1 FLAGS", "a2 BAD FETCH not allowed before authentication; log in first.")
	c.ExpectDo("a3", "ENABLE IDLE", "a3 BAD ENABLE not allowed before authentication; log in first.")
	c.ExpectDo("a4", "IDLE", "a4 BAD IDLE not allowed before authentication; log in first.")
	c.ExpectDo("a5", "LIST \"\" *", "a5 BAD LIST not allowed before authentication; log in first.")
	c.ExpectDo("a6", "FROBNICATE", "a6 BAD Unknown command FROBNICATE.")
	c.ExpectDo("a7", "NOOP", "a7 OK NOOP completed.")
	c.ExpectDo("a8", "STARTTLS", "a8 BAD STARTTLS not available.")
	c.ExpectDo("a9", "ID NIL", `* ID ("name" "lemonproxy" "version" "*`, "a9 OK ID completed.")
	c.ExpectDo("a10", `ID ("name" "k9" "os" NIL)`, `* ID ("name" "lemonproxy" "version" "*`, "a10 OK ID completed.")
	// RFC 2971's syntax is checked (#16.19).
	c.ExpectDo("a11", "ID "+strings.Repeat("(", 50), "a11 BAD *")
	c.ExpectDo("a12", `ID ("name")`, "a12 BAD Error in IMAP command ID: ID needs NIL or a list of field-value pairs.")
	c.ExpectDo("a13", `ID (name "x")`, "a13 BAD Error in IMAP command ID: ID fields are strings of at most 30 octets.")
	c.ExpectDo("a14", "ID", "a14 BAD Error in IMAP command ID: ID needs NIL or a parenthesised list.")

	// Authenticated.
	c.ExpectDo("b0", "LOGIN alice secret", "b0 OK [CAPABILITY "+postAuthCaps+"] *")
	c.ExpectDo("b1", "LOGIN alice secret", "b1 BAD LOGIN not allowed in the authenticated state.")
	c.ExpectDo("b2", "AUTHENTICATE PLAIN", "b2 BAD AUTHENTICATE not allowed in the authenticated state.")
	c.ExpectDo("b3", "FETCH 1 FLAGS", "b3 BAD No mailbox selected.")
	c.ExpectDo("b4", "UID FETCH 1 FLAGS", "b4 BAD No mailbox selected.")
	c.ExpectDo("b5", "CLOSE", "b5 BAD No mailbox selected.")
	c.ExpectDo("b6", "UNSELECT", "b6 BAD No mailbox selected.")
	c.ExpectDo("b7", "ENABLE X-NOTHING", "* ENABLED", "b7 OK Enabled.")
	c.ExpectDo("b8", "ENABLE", "b8 BAD ENABLE needs at least one capability name.")
	c.ExpectDo("b9", "ENABLE \"QUOTED\"", "b9 BAD ENABLE takes atoms.")
	c.ExpectDo("b10", "STARTTLS", "b10 BAD STARTTLS not allowed in the authenticated state.")
	c.ExpectDo("b11", "SELECT", "b11 BAD SELECT needs a mailbox name.")

	// Selected.
	c.ExpectDo("c0", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "c0 OK [READ-WRITE] *")
	c.ExpectDo("c1", "ENABLE X-NOTHING", "c1 BAD ENABLE not allowed in the selected state.")
	c.ExpectDo("c2", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "c2 OK FETCH completed")
	c.ExpectDo("c2u", "UID FETCH 1 (FLAGS)", "* 1 FETCH (UID 1 FLAGS ())", "c2u OK UID FETCH completed")
	c.ExpectDo("c2x", "FETCH 2 (FLAGS)", "c2x BAD *")
	c.ExpectDo("c3", "SELECT NOSUCH", "c3 NO [NONEXISTENT] No such mailbox")
	// A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
	c.ExpectDo("c4", "FETCH 1 (FLAGS)", "c4 BAD No mailbox selected.")

	// Logout.
	c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	if rest := c.ExpectClosed(); len(rest) != 0 {
		t.Fatalf("after LOGOUT: %q", rest)
	}
}

func TestLogoutBeforeLogin(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	if rest := c.ExpectClosed(); len(rest) != 0 {
		t.Fatalf("after LOGOUT: %q", rest)
	}
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })
}
