package integration

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
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
			// Under the default layout, Dovecot itself now and then
			// answers the new mailbox "NO Mailbox was deleted under
			// us" (see dovecottest.Options.IndexLayout).
			dc := dovecottest.StartWith(t, p, dovecottest.Options{IndexLayout: true})
			dc.AddUser(t, "u", "pw")
			d := dialRaw(t, dc.Addr)
			mustOK(t, d.Cmd("LOGIN u pw"))
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

// TestStatusLiteralNameAsked: the UIDVALIDITY a STATUS of a watched
// mailbox asks the upstream for (to tell a mailbox created again from the
// watched one) is taken out of the answer also when Dovecot writes the
// mailbox's name as a literal (it does for a name with many
// quoted-specials): the client did not ask for it.
func TestStatusLiteralNameAsked(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	name := `"q\"\"\"\"\\\\x"`
	d.MustOK("CREATE " + name)
	want := d.MustOK("STATUS " + name + " (MESSAGES RECENT)")
	if !strings.HasPrefix(want[0], "* STATUS {") {
		t.Fatalf("Dovecot wrote the name quoted: %q", want)
	}
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("SELECT " + name) // watched
	e := imaptest.Login(t, addr, "alice", "alicepass")
	imaptest.AssertLines(t, "STATUS", e.MustOK("STATUS "+name+" (MESSAGES RECENT)"), []string{want[0], "*"})
}
