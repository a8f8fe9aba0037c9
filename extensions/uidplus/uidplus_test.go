package uidplus_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	up  *memupstream.Server
	p   *imaptest.Proxy
	ext *uidplus.Extension
}

// plain is an upstream without UIDPLUS and MOVE (go-imap's server still
// sends APPENDUID and COPYUID: the proxy must not trust them).
var plain = []imap.Cap{imap.CapLiteralPlus}

// legacy has UIDPLUS and no MOVE, as Dovecot's legacy profile.
var legacy = []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus}

// newEnv starts an upstream with caps, INBOX holding n messages and
// "meeting" one, and the proxy with uidplus and condstore in front.
func newEnv(t *testing.T, caps []imap.Cap, n int) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: caps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := up.Append("alice", "INBOX", nil, msg(fmt.Sprintf("inbox-%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := up.Append("alice", "meeting", nil, msg("meeting-1")); err != nil {
		t.Fatal(err)
	}
	ext := uidplus.New()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{ext, condstore.New()},
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
	return &env{up: up, p: p, ext: ext}
}

func msg(id string) []byte {
	return fmt.Appendf(nil, "Message-ID: <%s@example>\r\nSubject: %s\r\n\r\nbody of %s\r\n", id, id, id)
}

func (e *env) login(t *testing.T) *imaptest.Client {
	return imaptest.Login(t, e.p.Addr, "alice", "secret")
}

// uidValidity asks the proxy for a mailbox's UIDVALIDITY.
func uidValidity(t *testing.T, c *imaptest.Client, mailbox string) string {
	t.Helper()
	return statusItem(t, c, mailbox, "UIDVALIDITY")
}

// statusItem asks the proxy for one STATUS item of a mailbox.
func statusItem(t *testing.T, c *imaptest.Client, mailbox, item string) string {
	t.Helper()
	lines := c.MustOK("STATUS " + mailbox + " (" + item + ")")
	m := regexp.MustCompile(item + ` (\d+)`).FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("STATUS: %q", lines)
	}
	return m[1]
}

// messageIDOf fetches the Message-ID of uid in the selected mailbox.
func messageIDOf(t *testing.T, c *imaptest.Client, uid string) string {
	t.Helper()
	lines := c.MustOK("UID FETCH " + uid + " (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
	for _, l := range lines {
		if m := regexp.MustCompile(`Message-ID: (<[^>]*>)`).FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no Message-ID for UID %s: %q", uid, lines)
	return ""
}

func TestCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name       string
		caps       []imap.Cap
		uidplus    bool
		move       bool
		moveAnswer string
	}{
		{"plain", plain, false, false, "BAD MOVE is not supported in front of this server."},
		{"legacy", legacy, true, true, ""},
		{"full", []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus, imap.CapMove}, true, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.caps, 1)
			c := e.login(t)
			caps := " " + c.MustOK("CAPABILITY")[0] + " "
			if strings.Contains(caps, " UIDPLUS ") != tc.uidplus || strings.Contains(caps, " MOVE ") != tc.move {
				t.Fatalf("%s", caps)
			}
			if tc.moveAnswer != "" {
				c.MustOK("SELECT INBOX")
				if got := imaptest.Tagged(c.Cmd("MOVE 1 meeting")); got != tc.moveAnswer {
					t.Errorf("MOVE: %q", got)
				}
				if got := imaptest.Tagged(c.Cmd("UID EXPUNGE 1")); !strings.HasPrefix(got, "BAD ") {
					t.Errorf("UID EXPUNGE: %q", got)
				}
			}
		})
	}
}

// TestAppendUID is RFC 4315 3's APPEND example over an upstream without
// UIDPLUS: "A003 OK [APPENDUID 38505 3955] APPEND completed", adapted to
// the test mailbox.
func TestAppendUID(t *testing.T) {
	e := newEnv(t, plain, 0)
	c := e.login(t)
	v := uidValidity(t, c, "meeting")
	m := string(msg("appended"))
	got := c.Cmd(fmt.Sprintf(`APPEND meeting (\Seen) {%d}`, len(m)), m)
	if want := fmt.Sprintf("OK [APPENDUID %s 2] APPEND completed", v); imaptest.Tagged(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// In the selected state too, with a date.
	c.MustOK("SELECT meeting")
	got = c.Cmd(fmt.Sprintf(`APPEND meeting "05-Dec-2026 10:00:00 +0000" {%d}`, len(m)), m)
	if want := fmt.Sprintf("OK [APPENDUID %s 3] APPEND completed", v); imaptest.Tagged(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if st := e.ext.Stats(); st.AppendUIDs != 2 || st.AppendOmitted != 0 {
		t.Errorf("%+v", st)
	}
}

// TestAppendConcurrent: another client appends to the target between the
// proxy's first look at UIDNEXT and the APPEND. The APPENDUID is right
// (told apart by Message-ID), or, when the other message is identical,
// absent: never wrong.
func TestAppendConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name, other string
		point       string
		want        bool
	}{
		{"different before", "other", "append:before", true},
		{"different after", "other", "append:after", true},
		{"identical", "appended", "append:before", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, plain, 0)
			uidplus.SetHook(e.ext, func(p string) {
				if p == tc.point {
					if err := e.up.Append("alice", "meeting", nil, msg(tc.other)); err != nil {
						t.Error(err)
					}
				}
			})
			c := e.login(t)
			m := string(msg("appended"))
			got := imaptest.Tagged(c.Cmd(fmt.Sprintf(`APPEND meeting {%d}`, len(m)), m))
			uid := regexp.MustCompile(`^OK \[APPENDUID \d+ (\d+)\]`).FindStringSubmatch(got)
			if !tc.want {
				if uid != nil || !strings.HasPrefix(got, "OK ") {
					t.Fatalf("%q: want OK without APPENDUID", got)
				}
				if st := e.ext.Stats(); st.AppendOmitted != 1 {
					t.Errorf("%+v", st)
				}
				return
			}
			if uid == nil {
				t.Fatalf("%q: want APPENDUID", got)
			}
			c.MustOK("EXAMINE meeting")
			if id := messageIDOf(t, c, uid[1]); id != "<appended@example>" {
				t.Fatalf("APPENDUID %s names %s", uid[1], id)
			}
		})
	}
}

// TestCopyUID is RFC 4315 3's COPY example ("A004 COPY 2:4 meeting" /
// "A004 OK [COPYUID 38505 304,319:320 3956:3958] Done"), adapted: the
// source UIDs are not consecutive.
func TestCopyUID(t *testing.T) {
	e := newEnv(t, plain, 5)
	c := e.login(t)
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT INBOX")
	c.MustOK(`STORE 2 +FLAGS (\Deleted)`)
	c.MustOK("EXPUNGE") // INBOX: UIDs 1 3 4 5
	got := imaptest.Tagged(c.Cmd("COPY 2:4 meeting"))
	if want := fmt.Sprintf("OK [COPYUID %s 3:5 2:4] COPY completed", v); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// With another client's message arriving at the target meanwhile.
	uidplus.SetHook(e.ext, func(p string) {
		if p == "copy:before" {
			e.up.Append("alice", "meeting", nil, msg("other"))
		}
	})
	got = imaptest.Tagged(c.Cmd("UID COPY 1,4 meeting"))
	if want := fmt.Sprintf("OK [COPYUID %s 1,4 6:7] COPY completed", v); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Copies identical to the other client's: no COPYUID.
	uidplus.SetHook(e.ext, func(p string) {
		if p == "copy:before" {
			e.up.Append("alice", "meeting", nil, msg("inbox-5"))
		}
	})
	got = imaptest.Tagged(c.Cmd("UID COPY 5 meeting"))
	if got != "OK COPY completed" {
		t.Fatalf("got %q", got)
	}
	if st := e.ext.Stats(); st.CopyUIDs != 2 || st.CopyOmitted != 1 {
		t.Errorf("%+v", st)
	}
}

// TestMove is RFC 6851 4.4's first example over an upstream with UIDPLUS
// and without MOVE:
//
//	C: a UID MOVE 42:69 foo
//	S: * OK [COPYUID 432432 42:69 1202:1229]
//	S: * 22 EXPUNGE
//	S: ...
//	S: a OK Done
func TestMove(t *testing.T) {
	e := newEnv(t, legacy, 4)
	c := e.login(t)
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "UID MOVE", c.Do("a", "UID MOVE 2:3 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 2:3 2:3] Moved UIDs.", v),
		"* 3 EXPUNGE", // the core reports in descending order: same view
		"* 2 EXPUNGE",
		"a OK Move completed.",
	})
	// Sequence numbers: message 2 is now UID 4.
	imaptest.AssertLines(t, "MOVE", c.Do("b", "MOVE 2 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 4 4] Moved UIDs.", v),
		"* 2 EXPUNGE",
		"b OK Move completed.",
	})
	c.MustOK("EXAMINE meeting")
	for uid, id := range map[string]string{"2": "<inbox-2@example>", "3": "<inbox-3@example>", "4": "<inbox-4@example>"} {
		if got := messageIDOf(t, c, uid); got != id {
			t.Errorf("meeting UID %s: %s, want %s", uid, got, id)
		}
	}
	if st := e.ext.Stats(); st.Moves != 2 {
		t.Errorf("%+v", st)
	}
}

// TestMoveQResync is RFC 6851 4.4's QRESYNC example: VANISHED instead of
// EXPUNGE (the proxy adds the HIGHESTMODSEQ that RFC 7162 3.2.10 wants
// after an uncovered VANISHED).
//
//	C: a UID MOVE 42:69 foo
//	S: * OK [COPYUID 432432 42:69 1202:1229]
//	S: * VANISHED 42:69
//	S: a OK Move completed
func TestMoveQResync(t *testing.T) {
	e := newEnv(t, legacy, 4)
	c := e.login(t)
	v := uidValidity(t, c, "meeting")
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "UID MOVE", c.Do("a", "UID MOVE 2:3 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 2:3 2:3] Moved UIDs.", v),
		"* VANISHED 2:3",
		"* OK [HIGHESTMODSEQ *",
		"a OK Move completed.",
	})
}

// TestMoveOnlyNamed: another message flagged \Deleted stays (UID
// EXPUNGE of the moved UIDs only), and UIDs that do not exist are
// ignored.
func TestMoveOnlyNamed(t *testing.T) {
	e := newEnv(t, legacy, 3)
	c := e.login(t)
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT INBOX")
	c.MustOK(`STORE 1 +FLAGS.SILENT (\Deleted)`)
	imaptest.AssertLines(t, "UID MOVE", c.Do("a", "UID MOVE 2,9 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 2 2] Moved UIDs.", v),
		"* 2 EXPUNGE",
		"a OK Move completed.",
	})
	imaptest.AssertLines(t, "FETCH", c.Do("b", "FETCH 1:* (UID FLAGS)"), []string{
		`* 1 FETCH (UID 1 FLAGS (\Deleted))`,
		`* 2 FETCH (UID 3 FLAGS ())`,
		"b OK FETCH completed",
	})
}
