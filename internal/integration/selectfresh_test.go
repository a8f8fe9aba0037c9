package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestSelectFreshOverDovecot: with every mailbox counted fresh
// (hub.Config.Fresh an hour: a SELECT asks for a round trip only when
// Dovecot's answer shows other messages than the state), SELECTs through
// the proxy report what another client did directly on Dovecot just
// before: an APPEND, an EXPUNGE, and an EXPUNGE with an APPEND (the same
// count, a new UIDNEXT). The watcher may or may not have seen each change
// by then; the SELECT is right either way.
func TestSelectFreshOverDovecot(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p) // d: another client, directly on Dovecot
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 1"))
			addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) { c.Hub.Fresh = time.Hour })
			a := dialRaw(t, addr)
			mustOK(t, a.Cmd("LOGIN u pw"))
			mustOK(t, a.Cmd("SELECT INBOX")) // the watcher starts
			selectShows := func(what string, want ...string) {
				t.Helper()
				c := dialRaw(t, addr)
				mustOK(t, c.Cmd("LOGIN u pw"))
				r := mustOK(t, c.Cmd("SELECT INBOX"))
				if !slices.Contains(r, want[0]) {
					t.Fatalf("SELECT after %s: %q, want %s", what, r, want[0])
				}
				if len(want) > 1 {
					if r := mustOK(t, c.Cmd("FETCH 1:* (UID)")); !slices.Equal(untagged(r), want[1:]) {
						t.Fatalf("FETCH after %s: %q, want %q", what, r, want[1:])
					}
				}
				mustOK(t, c.Cmd("LOGOUT"))
			}
			selectShows("nothing", "* 1 EXISTS", "* 1 FETCH (UID 1)")
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 2"))
			selectShows("an APPEND", "* 2 EXISTS", "* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)")
			mustOK(t, d.Cmd("SELECT INBOX"))
			mustOK(t, d.Cmd(`STORE 1 +FLAGS.SILENT (\Deleted)`))
			mustOK(t, d.Cmd("EXPUNGE"))
			selectShows("an EXPUNGE", "* 1 EXISTS", "* 1 FETCH (UID 2)")
			mustOK(t, d.Cmd(`STORE 1 +FLAGS.SILENT (\Deleted)`))
			mustOK(t, d.Cmd("EXPUNGE"))
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 3"))
			selectShows("an EXPUNGE and an APPEND", "* 1 EXISTS", "* 1 FETCH (UID 3)")
		})
	}
}
