package integration

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

var uidValidityCode = regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`)

func uidValidityOf(t *testing.T, lines []string) string {
	t.Helper()
	for _, l := range lines {
		if m := uidValidityCode.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no UIDVALIDITY in %q", lines)
	return ""
}

// TestMailboxRecreated: a mailbox deleted and re-created directly on the
// upstream while a session keeps it selected through the proxy (what every
// imaptest test does to its mailbox). A new session that selects it gets
// the new mailbox, never the old state (#16.8: it got the old messages'
// count with the new UIDVALIDITY, and a pooled connection with the old
// mailbox selected made Dovecot answer BYE); the session of the old
// mailbox is told at its next command that it is gone; further sessions
// and commands see only the new one.
func TestMailboxRecreated(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc, d := startDovecotUser(t, p)
			addr, _ := startProxy(t, dc.Addr)
			mustOK(t, d.Cmd("CREATE life"))
			for _, s := range []string{"a", "b", "c"} {
				mustOK(t, d.Cmd("APPEND life {7+}\r\nSubj: "+s))
			}
			a := dialRaw(t, addr)
			mustOK(t, a.Cmd("LOGIN u pw"))
			sel := mustOK(t, a.Cmd("SELECT life"))
			if !slices.Contains(sel, "* 3 EXISTS") {
				t.Fatalf("SELECT life: %q", sel)
			}
			old := uidValidityOf(t, sel)
			mustOK(t, a.Cmd("FETCH 1:* (UID FLAGS)")) // a pooled connection has life selected

			mustOK(t, d.Cmd("DELETE life"))
			mustOK(t, d.Cmd("CREATE life"))
			mustOK(t, d.Cmd("APPEND life {7+}\r\nSubj: n"))

			for i := range 2 {
				b := dialRaw(t, addr)
				mustOK(t, b.Cmd("LOGIN u pw"))
				sel = mustOK(t, b.Cmd("SELECT life"))
				if !slices.Contains(sel, "* 1 EXISTS") || uidValidityOf(t, sel) == old {
					t.Fatalf("session %d: SELECT of the re-created mailbox: %q (old UIDVALIDITY %s)", i, sel, old)
				}
				got := mustOK(t, b.Cmd("FETCH 1:* (UID)"))
				if len(got) != 2 || got[0] != "* 1 FETCH (UID 1)" {
					t.Fatalf("session %d: FETCH 1:* in the re-created mailbox: %q", i, got)
				}
				mustOK(t, b.Cmd("NOOP"))
			}
			// The session of the old mailbox: its UIDs mean nothing now.
			a.Send("z NOOP")
			if got := a.ReadLine(); !strings.HasPrefix(got, "* BYE ") {
				t.Fatalf("old mailbox's session, NOOP: %q, want BYE", got)
			}
		})
	}
}
