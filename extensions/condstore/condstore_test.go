package condstore_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is go-imap's in-memory server (no CONDSTORE, QRESYNC or IDLE of its
// own) with user alice and n messages in INBOX, and the proxy in front.
// The proxy's state gives the n messages mod-sequences 2..n+1 (a new state
// starts at 1), so HIGHESTMODSEQ after SELECT is n+1.
type env struct {
	up *memupstream.Server
	p  *imaptest.Proxy
}

func newEnv(t *testing.T, n int) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := up.Append("alice", "INBOX", nil, fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i+1, i+1)); err != nil {
			t.Fatal(err)
		}
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{idle.New(), condstore.New()},
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
	return &env{up: up, p: p}
}

func (e *env) login(t *testing.T) *imaptest.Client {
	return imaptest.Login(t, e.p.Addr, "alice", "secret")
}

// step is a command and the exact responses expected (the tag of the last
// line is left out: "OK ..." matches "cN OK ...").
type step struct {
	cmd  string
	want []string
}

func run(t *testing.T, c *imaptest.Client, steps []step) {
	t.Helper()
	for _, s := range steps {
		got := c.Cmd(s.cmd)
		last := imaptest.Tagged(got)
		got = append(got[:len(got)-1:len(got)-1], last)
		if !slices.Equal(got, s.want) {
			t.Fatalf("%s:\n got  %q\n want %q", s.cmd, got, s.want)
		}
	}
}

// selectLines are the in-memory server's SELECT responses for INBOX with n
// messages, none seen, rewritten by the proxy as they are.
func selectHead(n, uidNext int, flags string) []string {
	return []string{
		fmt.Sprintf("* %d EXISTS", n), "* 0 RECENT", "* OK [UNSEEN 1] First unseen message",
		"* OK [UIDVALIDITY 1] UIDs valid", fmt.Sprintf("* OK [UIDNEXT %d] Predicted next UID", uidNext),
		"* FLAGS (" + flags + ")", "* OK [PERMANENTFLAGS (" + strings.TrimSpace(flags+` \*`) + ")] Permanent flags",
	}
}

// TestCapabilityAndEnable: both words after login, not before (RFC 7162
// 3 and 3.2.3: ENABLE QRESYNC enables CONDSTORE too, listed once).
func TestCapabilityAndEnable(t *testing.T) {
	e := newEnv(t, 0)
	c := imaptest.Dial(t, e.p.Addr)
	c.MustGreetOK()
	if caps := c.Cmd("CAPABILITY")[0]; strings.Contains(caps, "CONDSTORE") {
		t.Errorf("before login: %q", caps)
	}
	c.MustOK("LOGIN alice secret")
	caps := c.Cmd("CAPABILITY")[0]
	if !strings.Contains(caps, " CONDSTORE") || !strings.Contains(caps, " QRESYNC") {
		t.Errorf("after login: %q", caps)
	}
	run(t, c, []step{
		{"ENABLE QRESYNC", []string{"* ENABLED QRESYNC", "OK Enabled."}},
		{"ENABLE CONDSTORE QRESYNC", []string{"* ENABLED", "OK Enabled."}},
	})
}

// TestHighestModSeqNeverZero: an empty mailbox has HIGHESTMODSEQ 1 (RFC 7162
// 3.1.2.1 forbids 0), CONDSTORE on SELECT enables it.
func TestHighestModSeqNeverZero(t *testing.T) {
	e := newEnv(t, 0)
	c := e.login(t)
	got := c.MustOK("SELECT INBOX (CONDSTORE)")
	if !slices.Contains(got, "* OK [HIGHESTMODSEQ 1] Highest") {
		t.Fatalf("%q", got)
	}
	// Plain SELECT after CONDSTORE was enabled by SELECT (CONDSTORE):
	// still reported, after [CLOSED] for the mailbox it closes.
	got = c.MustOK("EXAMINE INBOX")
	if got[0] != "* OK [CLOSED] Previous mailbox closed." || !slices.Contains(got, "* OK [HIGHESTMODSEQ 1] Highest") {
		t.Fatalf("%q", got)
	}
}

// TestNoCondStoreNoModSeq: a client that never enables CONDSTORE sees
// HIGHESTMODSEQ on SELECT (RFC 7162 3.1.2.1: with every SELECT), but no
// MODSEQ and plain EXPUNGE.
func TestNoCondStoreNoModSeq(t *testing.T) {
	e := newEnv(t, 2)
	c := e.login(t)
	run(t, c, []step{
		{"SELECT INBOX", append(selectHead(2, 3, ""), "* OK [HIGHESTMODSEQ 3] Highest", "OK [READ-WRITE] SELECT completed")},
		{"STORE 1 +FLAGS (\\Deleted)", []string{`* 1 FETCH (FLAGS (\Deleted))`, "OK STORE completed"}},
		{"EXPUNGE", []string{"* 1 EXPUNGE", "OK EXPUNGE completed"}},
	})
}

// TestRFCFlow walks RFC 7162's commands against a mailbox of 3 messages
// (mod-sequences 2, 3, 4) with exact responses.
func TestRFCFlow(t *testing.T) {
	e := newEnv(t, 3)
	c := e.login(t)
	run(t, c, []step{
		{"ENABLE QRESYNC", []string{"* ENABLED QRESYNC", "OK Enabled."}},
		{"SELECT INBOX", append(selectHead(3, 4, ""), "* OK [HIGHESTMODSEQ 4] Highest", "OK [READ-WRITE] SELECT completed")},
		// 3.1.4: MODSEQ on request, and UID in every FETCH response.
		{"FETCH 1:3 (MODSEQ)", []string{"* 1 FETCH (UID 1 MODSEQ (2))", "* 2 FETCH (UID 2 MODSEQ (3))", "* 3 FETCH (UID 3 MODSEQ (4))", "OK FETCH completed"}},
		// A STORE gives the message a new, larger mod-sequence.
		{"STORE 1 +FLAGS (\\Seen)", []string{`* 1 FETCH (UID 1 MODSEQ (5) FLAGS (\Seen))`, "OK STORE completed"}},
		// 3.1.4.1: CHANGEDSINCE returns only what changed after it.
		{"FETCH 1:* (FLAGS) (CHANGEDSINCE 3)", []string{`* 1 FETCH (UID 1 MODSEQ (5) FLAGS (\Seen))`, `* 3 FETCH (UID 3 MODSEQ (4) FLAGS ())`, "OK FETCH completed"}},
		{"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5)", []string{"OK Fetch completed."}},
		// 3.1.3: UNCHANGEDSINCE refuses messages changed since, with
		// [MODIFIED] in the client's numbering...
		{"STORE 1,2 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Flagged)", []string{"* 2 FETCH (UID 2 MODSEQ (6))", "OK [MODIFIED 1] STORE completed"}},
		{"UID STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS (\\Answered)", []string{"OK [MODIFIED 1:3] Conditional STORE failed."}},
		// ...and .SILENT still reports the new MODSEQ.
		{"UID STORE 3 (UNCHANGEDSINCE 4) -FLAGS.SILENT (\\Seen)", []string{"* 3 FETCH (UID 3 MODSEQ (4))", "OK UID STORE completed"}},
		// 3.1.5: MODSEQ search key and the (MODSEQ n) result.
		{"SEARCH MODSEQ 5", []string{"* SEARCH 1 2 (MODSEQ 6)", "OK SEARCH completed"}},
		{`UID SEARCH MODSEQ "/flags/\\seen" all 5`, []string{"* SEARCH 1 2 (MODSEQ 6)", "OK UID SEARCH completed"}},
		{"SEARCH MODSEQ 7", []string{"* SEARCH", "OK SEARCH completed"}},
		{"SEARCH NOT MODSEQ 5", []string{"* SEARCH 3 (MODSEQ 4)", "OK SEARCH completed"}},
		// 3.1.6: STATUS HIGHESTMODSEQ.
		{"STATUS INBOX (MESSAGES HIGHESTMODSEQ)", []string{"* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ 6)", "OK STATUS completed"}},
		{"STATUS INBOX (HIGHESTMODSEQ)", []string{"* STATUS INBOX (HIGHESTMODSEQ 6)", "OK STATUS completed"}},
		// 3.2.10: VANISHED instead of EXPUNGE once QRESYNC is on.
		{"STORE 2:3 +FLAGS.SILENT (\\Deleted)", []string{"* 2 FETCH (UID 2 MODSEQ (7))", "* 3 FETCH (UID 3 MODSEQ (8))", "OK STORE completed"}},
		{"EXPUNGE", []string{"* VANISHED 2:3", "OK [HIGHESTMODSEQ 10] EXPUNGE completed"}}, // 3.2.7
		// 3.2.6: UID FETCH VANISHED reports expunges up to the highest UID.
		{"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4 VANISHED)", []string{"* VANISHED (EARLIER) 2:3", `* 1 FETCH (UID 1 MODSEQ (5) FLAGS (\Seen))`, "OK UID FETCH completed"}},
		{"UID FETCH 1:2 (FLAGS) (CHANGEDSINCE 6 VANISHED)", []string{"* VANISHED (EARLIER) 2", "OK Fetch completed."}},
	})
}

// TestQResyncSelect: a client that knew the mailbox at mod-sequence 4 gets
// exactly what changed since, VANISHED (EARLIER) first (RFC 7162 3.2.5).
func TestQResyncSelect(t *testing.T) {
	e := newEnv(t, 4)
	c := e.login(t)
	c.MustOK("SELECT INBOX")
	c.MustOK("STORE 2 +FLAGS (\\Flagged)")          // modseq 6
	c.MustOK("STORE 1,3 +FLAGS.SILENT (\\Deleted)") // 7, 8
	c.MustOK("EXPUNGE")                             // 9, 10
	c.MustOK("LOGOUT")

	c = e.login(t)
	run(t, c, []step{
		{"ENABLE QRESYNC", []string{"* ENABLED QRESYNC", "OK Enabled."}},
		{"SELECT INBOX (QRESYNC (1 5))", append(selectHead(2, 5, `\flagged`),
			"* OK [HIGHESTMODSEQ 10] Highest", "* VANISHED (EARLIER) 1,3", `* 1 FETCH (UID 2 FLAGS (\Flagged) MODSEQ (6))`,
			"OK [READ-WRITE] SELECT completed")},
		// Known UIDs narrow VANISHED to what the client has.
		{"EXAMINE INBOX (QRESYNC (1 5 2:3))", append(append([]string{"* OK [CLOSED] Previous mailbox closed."}, selectHead(2, 5, `\flagged`)...),
			"* OK [HIGHESTMODSEQ 10] Highest", "* VANISHED (EARLIER) 3", `* 1 FETCH (UID 2 FLAGS (\Flagged) MODSEQ (6))`,
			"OK [READ-ONLY] EXAMINE completed")},
		// Up to date: nothing to report.
		{"EXAMINE INBOX (QRESYNC (1 10 1:4 (1:3 2:4)))", append(append([]string{"* OK [CLOSED] Previous mailbox closed."}, selectHead(2, 5, `\flagged`)...),
			"* OK [HIGHESTMODSEQ 10] Highest", "OK [READ-ONLY] EXAMINE completed")},
		// A mod-sequence the state never handed out: everything the
		// client may hold is resynchronised.
		{"EXAMINE INBOX (QRESYNC (1 99))", append(append([]string{"* OK [CLOSED] Previous mailbox closed."}, selectHead(2, 5, `\flagged`)...),
			"* OK [HIGHESTMODSEQ 10] Highest", "* VANISHED (EARLIER) 1,3", `* 1 FETCH (UID 2 FLAGS (\Flagged) MODSEQ (6))`, `* 2 FETCH (UID 4 FLAGS () MODSEQ (5))`,
			"OK [READ-ONLY] EXAMINE completed")},
		{"EXAMINE INBOX (QRESYNC (1 99 2:6))", append(append([]string{"* OK [CLOSED] Previous mailbox closed."}, selectHead(2, 5, `\flagged`)...),
			"* OK [HIGHESTMODSEQ 10] Highest", "* VANISHED (EARLIER) 3,5:6", `* 1 FETCH (UID 2 FLAGS (\Flagged) MODSEQ (6))`, `* 2 FETCH (UID 4 FLAGS () MODSEQ (5))`,
			"OK [READ-ONLY] EXAMINE completed")},
		// Another UIDVALIDITY: the client must resync in full; nothing
		// else is said.
		{"EXAMINE INBOX (QRESYNC (7 5))", append(append([]string{"* OK [CLOSED] Previous mailbox closed."}, selectHead(2, 5, `\flagged`)...),
			"* OK [HIGHESTMODSEQ 10] Highest", "OK [READ-ONLY] EXAMINE completed")},
	})
}

// TestBadInput: malformed RFC 7162 arguments get BAD, and the session and
// its selected mailbox survive (RFC 7162 3.1.3, 3.1.4.1, 3.2.5, 3.2.6).
func TestBadInput(t *testing.T) {
	e := newEnv(t, 2)
	c := e.login(t)
	bad := []string{
		"SELECT INBOX (QRESYNC (1 1))", // QRESYNC not enabled
	}
	for _, cmd := range bad {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, "BAD ") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	bad = []string{
		"SELECT INBOX (QRESYNC (1 0))",
		"SELECT INBOX (QRESYNC (0 1))",
		"SELECT INBOX (QRESYNC (1))",
		"SELECT INBOX (QRESYNC (1 x))",
		"SELECT INBOX (QRESYNC (1 1 a:b))",
		"SELECT INBOX (QRESYNC (1 1 1:2 (1)))",
		"SELECT INBOX (QRESYNC (1 1 1:5 (1:3 1:5)))", // seq-match sets of different sizes (#16.19)
		"SELECT INBOX (QRESYNC 1 1)",
		"SELECT INBOX (QRESYNC (1 99999999999999999999))",
		"SELECT INBOX (CONDSTORE (1))",
		"SELECT INBOX (FOO)",
		"SELECT INBOX (CONDSTORE CONDSTORE)",
		"SELECT INBOX CONDSTORE",
		"FETCH 1 (FLAGS) (CHANGEDSINCE 0)",
		"FETCH 1 (FLAGS) (CHANGEDSINCE)",
		"FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", // not UID FETCH
		"UID FETCH 1 (FLAGS) (VANISHED)",            // no CHANGEDSINCE
		"UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 FOO)",
		"UID FETCH 1 (FLAGS) CHANGEDSINCE 1",
		"STORE 1 (UNCHANGEDSINCE x) +FLAGS (\\Seen)",
		"STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)",
		"STORE 1 (FOO 1) +FLAGS (\\Seen)",
		"SEARCH MODSEQ x",
		`SEARCH MODSEQ "/flags/\\seen" nonsense 5`,
		`SEARCH MODSEQ "/bogus" all 5`,
	}
	for _, cmd := range bad {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, "BAD ") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
	// Still selected, still answering.
	if got := c.MustOK("FETCH 1:2 (MODSEQ)"); len(got) != 3 {
		t.Errorf("after bad input: %q", got)
	}
}

// TestOutsideChanges: changes by another session of the same account reach
// a CONDSTORE client as FETCH with UID and MODSEQ, and expunges as VANISHED
// with QRESYNC or EXPUNGE with CONDSTORE only (RFC 7162 3.1.4, 3.2.10).
func TestOutsideChanges(t *testing.T) {
	e := newEnv(t, 3)
	q := e.login(t)
	q.MustOK("ENABLE QRESYNC")
	q.MustOK("SELECT INBOX")
	cs := e.login(t)
	cs.MustOK("SELECT INBOX (CONDSTORE)")
	other := e.login(t)
	other.MustOK("SELECT INBOX")
	other.MustOK("STORE 2 +FLAGS (\\Answered)") // modseq 5
	other.MustOK("STORE 3 +FLAGS (\\Deleted)")  // 6
	other.MustOK("EXPUNGE")                     // 7
	// The expunge (7) comes after the flag change (5): the batch ends with
	// HIGHESTMODSEQ, so that a client keeping the highest MODSEQ it was
	// told does not resync from 5 and hear of UID 3 again (#16.15).
	run(t, q, []step{{"NOOP", []string{"* VANISHED 3", `* 2 FETCH (UID 2 MODSEQ (5) FLAGS (\Answered))`, "* OK [HIGHESTMODSEQ 7] Highest", "OK NOOP completed."}}})
	run(t, cs, []step{{"NOOP", []string{"* 3 EXPUNGE", `* 2 FETCH (UID 2 MODSEQ (5) FLAGS (\Answered))`, "OK NOOP completed."}}})
}
