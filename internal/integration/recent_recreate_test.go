package integration

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestRecentRecreatedSameCounts: a mailbox that a proxy session keeps
// selected (and whose messages it took as recent) is deleted and created
// again directly on the upstream, with as many messages as before, so that
// MESSAGES and UIDNEXT are unchanged. The new mailbox's messages are
// recent: STATUS RECENT and a new SELECT through the proxy must say what
// Dovecot says, not the old mailbox's count (sessions 15-18 noticed this).
func TestRecentRecreatedSameCounts(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc, d := startDovecotUser(t, p)
			addr, _ := startProxy(t, dc.Addr)
			mustOK(t, d.Cmd("CREATE life"))
			appendTwo := func() {
				t.Helper()
				for _, s := range []string{"a", "b"} {
					mustOK(t, d.Cmd("APPEND life {7+}\r\nSubj: "+s))
				}
			}
			appendTwo()
			a := dialRaw(t, addr)
			mustOK(t, a.Cmd("LOGIN u pw"))
			imaptest.AssertLines(t, "SELECT", sizeLines(mustOK(t, a.Cmd("SELECT life"))), []string{"* 2 EXISTS", "* 2 RECENT"})

			mustOK(t, d.Cmd("DELETE life"))
			mustOK(t, d.Cmd("CREATE life"))
			appendTwo()
			want := []string{"* STATUS life (MESSAGES 2 RECENT 2 UIDNEXT 3)", "*"}
			imaptest.AssertLines(t, "STATUS directly", mustOK(t, d.Cmd("STATUS life (MESSAGES UIDNEXT RECENT)")), want)

			st := dialRaw(t, addr)
			mustOK(t, st.Cmd("LOGIN u pw"))
			imaptest.AssertLines(t, "STATUS through the proxy", mustOK(t, st.Cmd("STATUS life (MESSAGES UIDNEXT RECENT)")), want)
			b := dialRaw(t, addr)
			mustOK(t, b.Cmd("LOGIN u pw"))
			imaptest.AssertLines(t, "SELECT of the new mailbox", sizeLines(mustOK(t, b.Cmd("SELECT life"))), []string{"* 2 EXISTS", "* 2 RECENT"})
		})
	}
}
