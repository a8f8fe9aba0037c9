package esearch_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rfcMailbox is INBOX for RFC 4731 section 4's examples: messages 2, 10
// and 11 are the flagged ones not from Smith (1 and 5 are flagged but from
// Smith), 1 to 3 are seen, so the first unseen is 4. Every INTERNALDATE is
// today, after 1-Feb-1994.
var rfcMailbox = []struct {
	from  string
	flags []imap.Flag
}{
	{"Smith <smith@example.org>", []imap.Flag{imap.FlagFlagged, imap.FlagSeen}},
	{"Jones <jones@example.org>", []imap.Flag{imap.FlagFlagged, imap.FlagSeen}},
	{"Jones <jones@example.org>", []imap.Flag{imap.FlagSeen}},
	{"Jones <jones@example.org>", nil},
	{"Smith <smith@example.org>", []imap.Flag{imap.FlagFlagged}},
	{"Jones <jones@example.org>", nil},
	{"Jones <jones@example.org>", nil},
	{"Jones <jones@example.org>", nil},
	{"Jones <jones@example.org>", nil},
	{"Jones <jones@example.org>", []imap.Flag{imap.FlagFlagged}},
	{"Jones <jones@example.org>", []imap.Flag{imap.FlagFlagged}},
}

// newProxy starts go-imap's in-memory server (no ESEARCH, no SEARCHRES)
// with alice's INBOX as rfcMailbox, and the proxy with esearch and
// condstore in front, in the order chain.go has them.
func newProxy(t *testing.T) *imaptest.Proxy {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i, m := range rfcMailbox {
		msg := fmt.Appendf(nil, "From: %s\r\nSubject: message %d\r\n\r\nbody %d\r\n", m.from, i+1, i+1)
		if err := up.Append("alice", "INBOX", m.flags, msg); err != nil {
			t.Fatal(err)
		}
	}
	return imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{esearch.New(), condstore.New()},
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
}

func login(t *testing.T, p *imaptest.Proxy) *imaptest.Client {
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	return c
}

// TestCapabilities: ESEARCH and SEARCHRES after login only, over an
// upstream that has neither.
func TestCapabilities(t *testing.T) {
	p := newProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.MustGreetOK()
	if caps := c.Cmd("CAPABILITY")[0]; strings.Contains(caps, "ESEARCH") || strings.Contains(caps, "SEARCHRES") {
		t.Errorf("before login: %q", caps)
	}
	c.MustOK("LOGIN alice secret")
	caps := c.Cmd("CAPABILITY")[0]
	if !strings.Contains(caps, " ESEARCH") || !strings.Contains(caps, " SEARCHRES") {
		t.Errorf("after login: %q", caps)
	}
}

// TestRFC4731Examples: section 4's examples, exactly, but A285's, whose
// UIDs TestRFC4731UIDExample reproduces.
func TestRFC4731Examples(t *testing.T) {
	c := login(t, newProxy(t))
	c.ExpectDo("A282", `SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`,
		`* ESEARCH (TAG "A282") MIN 2 COUNT 3`, "A282 OK *")
	c.ExpectDo("A283", `SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`,
		`* ESEARCH (TAG "A283") ALL 2,10:11`, "A283 OK *")
	c.ExpectDo("A284", `SEARCH RETURN (MIN) UNSEEN`,
		`* ESEARCH (TAG "A284") MIN 4`, "A284 OK *")
}

// TestRFC4731UIDExample: A285 of section 4, in a mailbox whose UIDs run
// from 7 to 3800.
func TestRFC4731UIDExample(t *testing.T) {
	if testing.Short() {
		t.Skip("3800 messages")
	}
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser("alice", "secret")
	for i := range 3800 {
		up.Append("alice", "INBOX", nil, fmt.Appendf(nil, "Subject: %d\r\n\r\nx\r\n", i+1))
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{esearch.New()}})
	c := login(t, p)
	c.MustOK(`STORE 1:6 +FLAGS.SILENT (\Deleted)`)
	c.MustOK("EXPUNGE")
	c.ExpectDo("A285", "UID SEARCH RETURN (MIN MAX) 1:5000",
		`* ESEARCH (TAG "A285") UID MIN 7 MAX 3800`, "A285 OK *")
}

// TestResults: the forms of RFC 4731 3.1 beyond the examples: UID results,
// COUNT 0 and no other item when nothing matched, CHARSET with a literal,
// options in any case, unknown options refused.
func TestResults(t *testing.T) {
	c := login(t, newProxy(t))
	for _, tc := range []struct{ cmd, want string }{
		{"UID SEARCH RETURN (ALL) FLAGGED", `* ESEARCH (TAG "t") UID ALL 1:2,5,10:11`},
		{"UID SEARCH RETURN (min max count all) FLAGGED", `* ESEARCH (TAG "t") UID MIN 1 MAX 11 COUNT 5 ALL 1:2,5,10:11`},
		{"SEARCH RETURN (MIN MAX ALL) 1000", `* ESEARCH (TAG "t")`},
		{"SEARCH RETURN (COUNT) 1000", `* ESEARCH (TAG "t") COUNT 0`},
		{"UID SEARCH RETURN () 1000", `* ESEARCH (TAG "t") UID`},
		{"UID SEARCH RETURN (COUNT) CHARSET UTF-8 FROM jones", `* ESEARCH (TAG "t") UID COUNT 9`},
		{"SEARCH RETURN (ALL) NOT SEEN", `* ESEARCH (TAG "t") ALL 4:11`},
	} {
		c.ExpectDo("t", tc.cmd, tc.want, "t OK *")
	}
	got := c.Cmd("SEARCH RETURN (COUNT) CHARSET UTF-8 FROM {5}", "Jones")
	tag := strings.Fields(got[len(got)-1])[0]
	imaptest.AssertLines(t, "literal", got[1:], []string{`* ESEARCH (TAG "` + tag + `") COUNT 9`, tag + " OK *"})
	c.ExpectDo("t", "SEARCH RETURN (PARTIAL 1:10) ALL", "t BAD Error in IMAP command SEARCH: Unknown RETURN option PARTIAL.")
	c.ExpectDo("t", "SEARCH RETURN MIN ALL", "t BAD Error in IMAP command SEARCH: RETURN needs a list of options.")
	// A plain SEARCH is still a plain SEARCH.
	c.ExpectDo("t", "SEARCH FLAGGED", "* SEARCH 1 2 5 10 11", "t OK *")
}

// TestRFC5182Examples: section 2's examples (2.2 1, 4 and 5, with this
// mailbox's numbers), and 2.4's rules for SAVE with MIN and MAX.
func TestRFC5182Examples(t *testing.T) {
	c := login(t, newProxy(t))
	// Example 1: SAVE alone answers no ESEARCH; FETCH $ fetches the result.
	c.ExpectDo("A282", `SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`, "A282 OK *")
	// (UID only: go-imap's server lists a message's flags in no fixed
	// order, and the proxy relays them as they come.)
	c.ExpectDo("A283", "FETCH $ (UID)",
		`* 2 FETCH (UID 2)`,
		`* 10 FETCH (UID 10)`,
		`* 11 FETCH (UID 11)`, "A283 OK *")
	// "$" as search keys, in both forms.
	c.ExpectDo("A284", "SEARCH $ UNSEEN", "* SEARCH 10 11", "A284 OK *")
	c.ExpectDo("A285", "UID SEARCH UID $ SEEN", "* SEARCH 2", "A285 OK *")
	c.ExpectDo("A286", "UID FETCH $ (UID)",
		"* 2 FETCH (UID 2)", "* 10 FETCH (UID 10)", "* 11 FETCH (UID 11)", "A286 OK *")
	// 2.4: SAVE with MIN saves MIN's message; with MIN and MAX both; with
	// COUNT the whole result.
	c.ExpectDo("A287", `SEARCH RETURN (MIN SAVE) FLAGGED NOT FROM "Smith"`, `* ESEARCH (TAG "A287") MIN 2`, "A287 OK *")
	c.ExpectDo("A288", "SEARCH $", "* SEARCH 2", "A288 OK *")
	c.ExpectDo("A289", `SEARCH RETURN (MIN MAX SAVE) FLAGGED NOT FROM "Smith"`, `* ESEARCH (TAG "A289") MIN 2 MAX 11`, "A289 OK *")
	c.ExpectDo("A290", "SEARCH $", "* SEARCH 2 11", "A290 OK *")
	c.ExpectDo("A291", `SEARCH RETURN (MIN COUNT SAVE) FLAGGED NOT FROM "Smith"`, `* ESEARCH (TAG "A291") MIN 2 COUNT 3`, "A291 OK *")
	c.ExpectDo("A292", "SEARCH $", "* SEARCH 2 10 11", "A292 OK *")
	// A failing SEARCH with SAVE: BAD leaves "$" as it was...
	c.ExpectDo("A293", "SEARCH RETURN (SAVE) FLAGGED (", "A293 BAD *")
	c.ExpectDo("A294", "SEARCH $", "* SEARCH 2 10 11", "A294 OK *")
	// ...NO empties it (example 5): COPY and STORE of "$" then act on
	// nothing and succeed.
	c.ExpectDo("A295", "SEARCH RETURN (SAVE) CHARSET X-NO-SUCH-CHARSET FLAGGED", "A295 NO *")
	c.ExpectDo("A296", `COPY $ "Trash"`, "A296 OK COPY completed, no messages.")
	c.ExpectDo("A297", `STORE $ +FLAGS.SILENT (\Deleted)`, "A297 OK STORE completed, no messages.")
	c.ExpectDo("A298", "FETCH $ (FLAGS)", "A298 OK FETCH completed, no messages.")
	c.ExpectDo("A299", "SEARCH $", "* SEARCH", "A299 OK *")
}

// TestSavedFollowsExpunge: the saved result names messages, not numbers:
// after an expunge "$" is the same messages under their new numbers, and
// the expunged one is gone (RFC 5182 2.1). SELECT, CLOSE and UNSELECT
// empty it.
func TestSavedFollowsExpunge(t *testing.T) {
	c := login(t, newProxy(t))
	c.MustOK(`UID SEARCH RETURN (SAVE) FLAGGED NOT FROM "Smith"`) // UIDs 2, 10, 11
	c.MustOK(`STORE 1 +FLAGS.SILENT (\Deleted)`)
	c.MustOK(`UID STORE 10 +FLAGS.SILENT (\Deleted)`)
	c.MustOK("EXPUNGE")
	c.ExpectDo("a", "FETCH $ (UID)", "* 1 FETCH (UID 2)", "* 9 FETCH (UID 11)", "a OK *")
	c.ExpectDo("b", "SEARCH $", "* SEARCH 1 9", "b OK *")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("c", "FETCH $ (UID)", "c OK FETCH completed, no messages.")
	c.MustOK("SEARCH RETURN (SAVE) ALL")
	c.MustOK("UNSELECT")
	c.MustOK("EXAMINE INBOX")
	c.ExpectDo("d", "UID FETCH $ (UID)", "d OK UID FETCH completed, no messages.")
	c.ExpectDo("e", "UID SEARCH $", "* SEARCH", "e OK *")
}

// TestModSeq: with CONDSTORE, a search with MODSEQ answers MODSEQ by RFC
// 4731 3.2: of MIN's or MAX's message alone, the higher of the two for MIN
// and MAX, the highest of all otherwise (imaptest's esearch-condstore
// script, numbers of this mailbox). The proxy's state gives messages 1..11
// mod-sequences 2..12 when it starts at 1.
func TestModSeq(t *testing.T) {
	c := login(t, newProxy(t))
	c.MustOK("FETCH 1 (MODSEQ)")           // enables CONDSTORE
	c.MustOK(`STORE 1 +FLAGS (\Answered)`) // 13
	c.MustOK(`STORE 3 +FLAGS (\Answered)`) // 14
	c.MustOK(`STORE 2 +FLAGS (\Answered)`) // 15
	for _, tc := range []struct{ cmd, want string }{
		{"SEARCH RETURN (MIN) 1:3 MODSEQ 13", `* ESEARCH (TAG "t") MIN 1 MODSEQ 13`},
		{"SEARCH RETURN (MAX) 1:3 MODSEQ 13", `* ESEARCH (TAG "t") MAX 3 MODSEQ 14`},
		{"SEARCH RETURN () 1:3 MODSEQ 13", `* ESEARCH (TAG "t") ALL 1:3 MODSEQ 15`},
		{"SEARCH RETURN (MIN MAX) 1:3 MODSEQ 13", `* ESEARCH (TAG "t") MIN 1 MAX 3 MODSEQ 14`},
		{"SEARCH RETURN (MIN COUNT) 1:3 MODSEQ 13", `* ESEARCH (TAG "t") MIN 1 COUNT 3 MODSEQ 15`},
		{"UID SEARCH RETURN (COUNT) MODSEQ 14", `* ESEARCH (TAG "t") UID COUNT 2 MODSEQ 15`},
		{"SEARCH RETURN (ALL) 1:3 MODSEQ 16", `* ESEARCH (TAG "t")`},
	} {
		c.ExpectDo("t", tc.cmd, tc.want, "t OK *")
	}
	// Without RETURN, condstore's own (MODSEQ n) still.
	c.ExpectDo("t", "SEARCH MODSEQ 14", "* SEARCH 2 3 (MODSEQ 15)", "t OK *")
}

// TestDollarRefusedWithout: without the extension the core refuses "$"
// everywhere rather than pass it to an upstream connection another session
// may have searched on.
func TestDollarRefusedWithout(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser("alice", "secret")
	up.Append("alice", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n"))
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{})
	c := login(t, p)
	for _, cmd := range []string{"FETCH $ FLAGS", "UID FETCH $ FLAGS", "SEARCH $", "UID SEARCH UID $", "UID EXPUNGE $"} {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, "BAD") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
}
