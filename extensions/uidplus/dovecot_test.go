package uidplus_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// dovecotEnv is Dovecot with profile p, INBOX holding n messages and
// "meeting" one, and the proxy in front.
func dovecotEnv(t *testing.T, p dovecottest.Profile, n int) (*dovecottest.Server, *uidplus.Extension, *imaptest.Client) {
	srv := dovecottest.Start(t, p)
	for i := range n {
		srv.Append(t, "alice", "alicepass", "INBOX", nil, msg(fmt.Sprintf("inbox-%d", i+1)))
	}
	srv.Append(t, "alice", "alicepass", "meeting", nil, msg("meeting-1"))
	ext := uidplus.New()
	px := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{ext, condstore.New()}})
	return srv, ext, imaptest.Login(t, px.Addr, "alice", "alicepass")
}

// TestDovecotLegacyMove: MOVE synthesized over UIDPLUS (RFC 6851 4.4).
func TestDovecotLegacyMove(t *testing.T) {
	_, ext, c := dovecotEnv(t, dovecottest.Legacy, 4)
	if caps := c.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " MOVE ") || !strings.Contains(caps, " UIDPLUS ") {
		t.Fatalf("%s", caps)
	}
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "UID MOVE", c.Do("a", "UID MOVE 2:3 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 2:3 2:3] Moved UIDs.", v),
		"* 3 EXPUNGE",
		"* 2 EXPUNGE",
		"* 2 RECENT", // the session's SELECT took the 4 messages as recent
		"a OK Move completed.",
	})
	c.MustOK("UNSELECT")
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "MOVE", c.Do("b", "MOVE 1 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 1 4] Moved UIDs.", v),
		"* VANISHED 1",
		"* OK [HIGHESTMODSEQ *",
		"b OK Move completed.",
	})
	c.MustOK("EXAMINE meeting")
	for uid, id := range map[string]string{"2": "<inbox-2@example>", "3": "<inbox-3@example>", "4": "<inbox-1@example>"} {
		if got := messageIDOf(t, c, uid); got != id {
			t.Errorf("meeting UID %s: %s, want %s", uid, got, id)
		}
	}
	if st := ext.Stats(); st.Moves != 2 {
		t.Errorf("%+v", st)
	}
}

// TestDovecotPlain: over Dovecot without UIDPLUS the proxy finds APPENDUID
// and COPYUID itself (Dovecot's own codes, sent unadvertised, are not
// trusted), with another client appending concurrently, and offers
// neither UIDPLUS nor MOVE.
func TestDovecotPlain(t *testing.T) {
	srv, ext, c := dovecotEnv(t, dovecottest.Plain, 3)
	if caps := c.MustOK("CAPABILITY")[0] + " "; strings.Contains(caps, " MOVE ") || strings.Contains(caps, " UIDPLUS ") {
		t.Fatalf("%s", caps)
	}
	v := uidValidity(t, c, "meeting")
	code := regexp.MustCompile(`^OK \[(APPENDUID|COPYUID) ([^\]]*)\]`)
	expect := func(cmd, got, want string) {
		t.Helper()
		m := code.FindStringSubmatch(got)
		if m == nil && want != "" || m != nil && m[2] != want {
			t.Fatalf("%s: %q, want code %q", cmd, got, want)
		}
	}
	m := string(msg("appended"))
	expect("APPEND", imaptest.Tagged(c.Cmd(fmt.Sprintf("APPEND meeting {%d}", len(m)), m)), v+" 2")
	uidplus.SetHook(ext, func(p string) {
		if p == "append:before" || p == "copy:before" {
			srv.Append(t, "alice", "alicepass", "meeting", nil, msg("other-"+p))
		}
	})
	m = string(msg("appended-2"))
	expect("APPEND", imaptest.Tagged(c.Cmd(fmt.Sprintf("APPEND meeting {%d}", len(m)), m)), v+" 4")
	c.MustOK("SELECT INBOX")
	expect("COPY", imaptest.Tagged(c.Cmd("COPY 2:3 meeting")), v+" 2:3 6:7")
	uidplus.SetHook(ext, nil)
	expect("UID COPY", imaptest.Tagged(c.Cmd("UID COPY 1 meeting")), v+" 1 8")
	if got := imaptest.Tagged(c.Cmd("UID MOVE 1 meeting")); !strings.HasPrefix(got, "BAD ") {
		t.Fatalf("UID MOVE: %q", got)
	}
	if got := imaptest.Tagged(c.Cmd("UID EXPUNGE 1")); !strings.HasPrefix(got, "BAD ") {
		t.Fatalf("UID EXPUNGE: %q", got)
	}
	c.MustOK("EXAMINE meeting")
	for uid, id := range map[string]string{"2": "<appended@example>", "4": "<appended-2@example>", "6": "<inbox-2@example>", "7": "<inbox-3@example>", "8": "<inbox-1@example>"} {
		if got := messageIDOf(t, c, uid); got != id {
			t.Errorf("meeting UID %s: %s, want %s", uid, got, id)
		}
	}
	if st := ext.Stats(); st.AppendUIDs != 2 || st.CopyUIDs != 2 || st.AppendOmitted+st.CopyOmitted != 0 {
		t.Errorf("%+v", st)
	}
}
