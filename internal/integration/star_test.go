package integration

import (
	"slices"
	"strings"
	"testing"
)

// TestStarIsClientsLast: in a UID command that changes messages, "*" is
// the last message the client was told of, as Dovecot has it (a command
// runs on the session's view), not the newest message the proxy's pooled
// connection has: "mark all read" or "move all" must not take a message
// delivered since, which the client has not heard of. Before, the set
// went upstream as it was, and the catch-up NOOP before it had brought the
// connection up to date with the new mail.
func TestStarIsClientsLast(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p) // d: another client, directly on Dovecot
			// Dovecot's own behaviour first, on a mailbox of its own.
			mustOK(t, d.Cmd("CREATE Ref"))
			mustOK(t, d.Cmd(`APPEND Ref {7+}`+"\r\nSubj: 1"))
			e := dialRaw(t, dc.Addr)
			mustOK(t, e.Cmd("LOGIN u pw"))
			mustOK(t, e.Cmd("SELECT Ref"))
			mustOK(t, d.Cmd(`APPEND Ref {7+}`+"\r\nSubj: 2"))
			mustOK(t, e.Cmd(`UID STORE 1:* +FLAGS.SILENT (\Flagged)`))
			mustOK(t, d.Cmd("EXAMINE Ref"))
			ref := []string{`* 1 FETCH (UID 1 FLAGS (\Flagged))`, `* 2 FETCH (UID 2 FLAGS ())`}
			if got := untagged(mustOK(t, d.Cmd("UID FETCH 1:* (FLAGS)"))); !slices.Equal(got, ref) {
				t.Fatalf("Dovecot directly, UID STORE 1:* of a client that knows UID 1: %q, want %q", got, ref)
			}

			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 1"))
			mustOK(t, d.Cmd("CREATE Other"))
			addr, _ := startProxy(t, dc.Addr)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			b := dialRaw(t, addr) // hears of new mail through the hub
			mustOK(t, b.Cmd("LOGIN u pw"))
			mustOK(t, b.Cmd("SELECT INBOX"))
			deliver := func(exists string) {
				t.Helper()
				mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: n"))
				if r := mustOK(t, b.Cmd("NOOP")); !slices.Contains(r, exists) {
					t.Fatalf("NOOP after a delivery: %q, want %s", r, exists)
				}
			}
			flags := func() []string {
				t.Helper()
				mustOK(t, d.Cmd("SELECT INBOX"))
				return untagged(mustOK(t, d.Cmd("UID FETCH 1:* (FLAGS)")))
			}

			deliver("* 2 EXISTS") // c knows UID 1 only
			mustOK(t, c.Cmd(`UID STORE 1:* +FLAGS.SILENT (\Flagged)`))
			want := []string{`* 1 FETCH (UID 1 FLAGS (\Flagged))`, `* 2 FETCH (UID 2 FLAGS ())`}
			if got := flags(); !slices.Equal(got, want) {
				t.Errorf("after UID STORE 1:* of a client that knows UID 1: %q, want %q", got, want)
			}

			mustOK(t, c.Cmd("NOOP")) // c knows UIDs 1 and 2
			deliver("* 3 EXISTS")
			mustOK(t, c.Cmd("UID COPY 1:* Other"))
			if r := mustOK(t, d.Cmd("STATUS Other (MESSAGES)")); r[0] != "* STATUS Other (MESSAGES 2)" {
				t.Errorf("after UID COPY 1:* of a client that knows UIDs 1 and 2: %q, want MESSAGES 2", r)
			}

			mustOK(t, c.Cmd("NOOP")) // c knows UIDs 1 to 3
			deliver("* 4 EXISTS")
			mustOK(t, c.Cmd("UID FETCH 3:* (BODY[])"))
			got := flags()
			if len(got) != 4 || !strings.Contains(got[2], `\Seen`) || strings.Contains(got[3], `\Seen`) {
				t.Errorf("after UID FETCH 3:* (BODY[]) of a client that knows UIDs 1 to 3: %q, want \\Seen on UID 3 only of 3 and 4", got)
			}
		})
	}
}
