package integration

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// sizeLines keeps the EXISTS and RECENT responses of an answer.
func sizeLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasSuffix(l, " EXISTS") || strings.HasSuffix(l, " RECENT") {
			out = append(out, l)
		}
	}
	return out
}

// untagged drops the tagged response of an answer.
func untagged(lines []string) []string { return lines[:len(lines)-1] }

var recentResp = regexp.MustCompile(`^\* (\d+) RECENT$`)

// TestRecent: \Recent as RFC 3501 2.3.2 has it, with the proxy's sessions
// as the sessions (#17): a message is recent in exactly one session, the
// first with the mailbox selected read-write to be told of it; EXAMINE
// sees recent messages without taking them, as Dovecot's does. Messages
// delivered while nobody watched the mailbox are recent (the upstream's
// word, taken before any pooled connection took it). imaptest's select,
// copy and search-flags tests ask exactly this.
func TestRecent(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p) // d: "someone else", directly on Dovecot
			addr, _ := startProxy(t, dc.Addr)
			mustOK(t, d.Cmd("CREATE box"))
			mustOK(t, d.Cmd("CREATE box2"))
			appendDirect := func(mailbox string) {
				t.Helper()
				mustOK(t, d.Cmd("APPEND "+mailbox+" {7+}\r\nSubj: x"))
			}
			login := func() *imaptest.Client {
				c := dialRaw(t, addr)
				mustOK(t, c.Cmd("LOGIN u pw"))
				return c
			}
			appendDirect("box")
			appendDirect("box")

			// A SELECT of a mailbox nobody watched takes the upstream's
			// \Recent on its pooled connection before the hub's watcher
			// looks: the proxy goes by what that SELECT was told.
			mustOK(t, d.Cmd("CREATE box3"))
			appendDirect("box3")
			appendDirect("box3")
			first := login()
			imaptest.AssertLines(t, "first SELECT", sizeLines(mustOK(t, first.Cmd("SELECT box3"))), []string{"* 2 EXISTS", "* 2 RECENT"})
			imaptest.AssertLines(t, "SEARCH NEW", mustOK(t, first.Cmd("SEARCH NEW")), []string{"* SEARCH 1 2", "*"})
			mustOK(t, first.Cmd("CLOSE"))
			imaptest.AssertLines(t, "SELECT after CLOSE", sizeLines(mustOK(t, first.Cmd("SELECT box3"))), []string{"* 2 EXISTS", "* 0 RECENT"})

			// Messages appended through the proxy are new even when an
			// upstream connection (here d, as a pooled connection left
			// with the mailbox selected would) took the upstream's
			// \Recent before the proxy looked.
			mustOK(t, d.Cmd("CREATE box4"))
			for range 2 {
				mustOK(t, first.Cmd("APPEND box4 {7+}\r\nSubj: y"))
			}
			imaptest.AssertLines(t, "SELECT directly", sizeLines(mustOK(t, d.Cmd("SELECT box4"))), []string{"* 2 EXISTS", "* 2 RECENT"})
			mustOK(t, d.Cmd("CLOSE"))
			imaptest.AssertLines(t, "SELECT after the upstream's", sizeLines(mustOK(t, login().Cmd("SELECT box4"))), []string{"* 2 EXISTS", "* 2 RECENT"})

			// EXAMINE sees them, and takes nothing; STATUS says so too.
			ex := login()
			imaptest.AssertLines(t, "EXAMINE", sizeLines(mustOK(t, ex.Cmd("EXAMINE box"))), []string{"* 2 EXISTS", "* 2 RECENT"})
			imaptest.AssertLines(t, "FETCH in EXAMINE", mustOK(t, ex.Cmd("FETCH 1:* (FLAGS)")),
				[]string{`* 1 FETCH (FLAGS (\Recent))`, `* 2 FETCH (FLAGS (\Recent))`, "*"})
			st := login()
			imaptest.AssertLines(t, "STATUS", mustOK(t, st.Cmd("STATUS box (MESSAGES RECENT)")), []string{"* STATUS box (MESSAGES 2 RECENT 2)", "*"})

			// The first SELECT takes them; the second gets none.
			b, c := login(), login()
			imaptest.AssertLines(t, "SELECT b", sizeLines(mustOK(t, b.Cmd("SELECT box"))), []string{"* 2 EXISTS", "* 2 RECENT"})
			imaptest.AssertLines(t, "SELECT c", sizeLines(mustOK(t, c.Cmd("SELECT box"))), []string{"* 2 EXISTS", "* 0 RECENT"})
			imaptest.AssertLines(t, "FETCH b", mustOK(t, b.Cmd("FETCH 1:* (FLAGS)")),
				[]string{`* 1 FETCH (FLAGS (\Recent))`, `* 2 FETCH (FLAGS (\Recent))`, "*"})
			imaptest.AssertLines(t, "FETCH c", mustOK(t, c.Cmd("FETCH 1:* (FLAGS)")),
				[]string{`* 1 FETCH (FLAGS ())`, `* 2 FETCH (FLAGS ())`, "*"})
			imaptest.AssertLines(t, "STATUS after SELECT", mustOK(t, st.Cmd("STATUS box (RECENT)")), []string{"* STATUS box (RECENT 0)", "*"})

			// New mail while both have it selected: the first told gets it.
			appendDirect("box")
			imaptest.AssertLines(t, "NOOP b", untagged(mustOK(t, b.Cmd("NOOP"))), []string{"* 3 EXISTS", "* 3 RECENT"})
			imaptest.AssertLines(t, "NOOP c", untagged(mustOK(t, c.Cmd("NOOP"))), []string{"* 3 EXISTS"})
			appendDirect("box")
			imaptest.AssertLines(t, "NOOP c", untagged(mustOK(t, c.Cmd("NOOP"))), []string{"* 4 EXISTS", "* 1 RECENT"})
			imaptest.AssertLines(t, "NOOP b", untagged(mustOK(t, b.Cmd("NOOP"))), []string{"* 4 EXISTS"})
			imaptest.AssertLines(t, "FETCH 3:4 b", mustOK(t, b.Cmd("FETCH 3:4 (FLAGS)")),
				[]string{`* 3 FETCH (FLAGS (\Recent))`, `* 4 FETCH (FLAGS ())`, "*"})
			imaptest.AssertLines(t, "FETCH 3:4 c", mustOK(t, c.Cmd("FETCH 3:4 (FLAGS)")),
				[]string{`* 3 FETCH (FLAGS ())`, `* 4 FETCH (FLAGS (\Recent))`, "*"})
			// The EXAMINE session sees the one nobody had taken when it
			// was told: neither, here (b and c were told first).
			imaptest.AssertLines(t, "NOOP ex", untagged(mustOK(t, ex.Cmd("NOOP"))), []string{"* 4 EXISTS"})

			// STORE answers carry the session's \Recent; \Recent itself
			// cannot be stored (RFC 3501 2.3.2; Dovecot says BAD too).
			imaptest.AssertLines(t, "STORE b", mustOK(t, b.Cmd(`STORE 1 +FLAGS (\Seen)`)),
				[]string{`* 1 FETCH (FLAGS (\Seen \Recent))`, "*"})
			if r := imaptest.Tagged(b.Cmd(`STORE 2 +FLAGS (\Recent)`)); !strings.HasPrefix(r, "BAD ") {
				t.Errorf("STORE \\Recent: %q, want BAD", r)
			}
			// The flag change reaches c without \Recent, which is b's.
			imaptest.AssertLines(t, "NOOP c", untagged(mustOK(t, c.Cmd("NOOP"))), []string{`* 1 FETCH (FLAGS (\Seen))`})

			// RECENT, NEW and OLD are the session's own.
			for _, tt := range []struct {
				c           *imaptest.Client
				key, result string
			}{
				{b, "RECENT", "* SEARCH 1 2 3"},
				{b, "NEW", "* SEARCH 2 3"},
				{b, "OLD", "* SEARCH 4"},
				{b, "NOT RECENT SEEN", "* SEARCH"},
				{b, "OR NEW 4", "* SEARCH 2 3 4"},
				{c, "RECENT", "* SEARCH 4"},
				{c, "NEW", "* SEARCH 4"},
				{c, "OLD", "* SEARCH 1 2 3"},
				{c, "OLD UNSEEN", "* SEARCH 2 3"},
			} {
				imaptest.AssertLines(t, "SEARCH "+tt.key, mustOK(t, tt.c.Cmd("SEARCH "+tt.key)), []string{tt.result, "*"})
			}
			imaptest.AssertLines(t, "UID SEARCH RECENT", mustOK(t, c.Cmd("UID SEARCH RECENT")), []string{"* SEARCH 4", "*"})

			// An expunged recent message leaves the count.
			mustOK(t, b.Cmd(`STORE 2 +FLAGS.SILENT (\Deleted)`))
			imaptest.AssertLines(t, "EXPUNGE", untagged(mustOK(t, b.Cmd("EXPUNGE"))), []string{"* 2 EXPUNGE", "* 2 RECENT"})
			imaptest.AssertLines(t, "SEARCH RECENT after EXPUNGE", mustOK(t, b.Cmd("SEARCH RECENT")), []string{"* SEARCH 1 2", "*"})
			appendDirect("box")
			imaptest.AssertLines(t, "NOOP b", untagged(mustOK(t, b.Cmd("NOOP"))), []string{"* 4 EXISTS", "* 3 RECENT"})

			// Both idle: exactly one is told the new message is recent.
			c.Cmd("NOOP")
			counts := map[*imaptest.Client]int{b: 3, c: 1}
			for _, s := range []*imaptest.Client{b, c} {
				s.Send("i IDLE")
				s.Expect("+ idling")
			}
			appendDirect("box")
			taken, inc := 0, map[*imaptest.Client]int{}
			for _, s := range []*imaptest.Client{b, c} {
				// The one that takes it is told RECENT with EXISTS,
				// in one batch; the other is told nothing more.
				s.Expect("* 5 EXISTS")
				s.Send("DONE")
				for _, l := range s.ReadUntilTagged("i") {
					if m := recentResp.FindStringSubmatch(l); m != nil {
						n, _ := strconv.Atoi(m[1])
						inc[s] = n - counts[s]
						taken += inc[s]
					} else if !strings.HasPrefix(l, "i OK ") {
						t.Errorf("IDLE: unexpected %q", l)
					}
				}
			}
			if taken != 1 {
				t.Errorf("the new message is recent in %d sessions, want 1", taken)
			}

			// COPY into a mailbox another session has selected (imaptest's
			// copy test): that session is the first told of the copies.
			e := login()
			imaptest.AssertLines(t, "SELECT box2", sizeLines(mustOK(t, e.Cmd("SELECT box2"))), []string{"* 0 EXISTS", "* 0 RECENT"})
			mustOK(t, b.Cmd("COPY 1:2 box2"))
			imaptest.AssertLines(t, "NOOP after COPY", untagged(mustOK(t, e.Cmd("NOOP"))), []string{"* 2 EXISTS", "* 2 RECENT"})
			imaptest.AssertLines(t, "FETCH copies", mustOK(t, e.Cmd("FETCH 1:2 (FLAGS)")),
				[]string{`* 1 FETCH (FLAGS (\Seen \Recent))`, `* 2 FETCH (FLAGS (\Recent))`, "*"})

			// After CLOSE nothing is left to take.
			mustOK(t, b.Cmd("CLOSE"))
			imaptest.AssertLines(t, "STATUS after CLOSE", mustOK(t, b.Cmd("STATUS box (RECENT)")), []string{"* STATUS box (RECENT 0)", "*"})
			imaptest.AssertLines(t, "SELECT again", sizeLines(mustOK(t, b.Cmd("SELECT box"))), []string{"* 5 EXISTS", "* 0 RECENT"})
			imaptest.AssertLines(t, "STATUS of the selected mailbox", mustOK(t, c.Cmd("STATUS box (RECENT)")), []string{fmt.Sprintf("* STATUS box (RECENT %d)", 1+inc[c]), "*"})
		})
	}
}

// TestStatusOfAnotherSessionsMailbox: a client with nothing selected asks
// for STATUS of a mailbox another session of its account has selected.
// Its command may get that session's pooled connection, on which Dovecot
// answers STATUS of the selected mailbox from the connection's view,
// unsynced: a message delivered since was missing from MESSAGES and
// UIDNEXT (while RECENT, the proxy's own after the watcher's round trip,
// counted it). The connection's view is now brought up to date first.
// Over Dovecot without IDLE, its watcher polling once an hour, and with
// IDLE.
func TestStatusOfAnotherSessionsMailbox(t *testing.T) {
	boxKeptSelected(t, func(t *testing.T, d, b *imaptest.Client) {
		mustOK(t, d.Cmd("APPEND box {7+}\r\nSubj: y"))
		want := []string{"* STATUS box (MESSAGES 2 RECENT 1 UIDNEXT 3)", "*"}
		imaptest.AssertLines(t, "directly", mustOK(t, d.Cmd("STATUS box (MESSAGES UIDNEXT RECENT)")), want)
		got := mustOK(t, b.Cmd("STATUS box (MESSAGES UIDNEXT RECENT)"))
		imaptest.AssertLines(t, "through the proxy", got, want)
		// Dovecot's word for a STATUS of the connection's selected
		// mailbox is not for this client, which has none selected.
		if tagged := imaptest.Tagged(got); !strings.HasPrefix(tagged, "OK Status completed") {
			t.Errorf("tagged answer: %q, want Dovecot's for a mailbox not selected", tagged)
		}
		// The name as a literal: the command streams, its name unread
		// when the connection is chosen (a second reviewer's finding).
		mustOK(t, d.Cmd("APPEND box {7+}\r\nSubj: z"))
		want = []string{"* STATUS box (MESSAGES 3 UIDNEXT 4)", "*"}
		imaptest.AssertLines(t, "directly, a literal", mustOK(t, d.Cmd("STATUS {3+}\r\nbox (MESSAGES UIDNEXT)")), want)
		imaptest.AssertLines(t, "through the proxy, a literal", mustOK(t, b.Cmd("STATUS {3+}\r\nbox (MESSAGES UIDNEXT)")), want)
		// Once the client has it selected, Dovecot's word is its.
		mustOK(t, b.Cmd("SELECT box"))
		if tagged := imaptest.Tagged(mustOK(t, b.Cmd("STATUS box (MESSAGES)"))); !strings.HasPrefix(tagged, "OK [CLIENTBUG] Status on selected mailbox completed") {
			t.Errorf("tagged answer to a STATUS of the selected mailbox: %q", tagged)
		}
	})
}

// TestStatusOfDeletedMailboxAnotherSessionKeeps: the catch-up NOOP before
// a STATUS (TestStatusOfAnotherSessionsMailbox) runs on a connection that
// keeps selected a mailbox another client has deleted since: Dovecot ends
// the connection ("IMAP session state is inconsistent"), and the client
// was told it lost the upstream connection. The STATUS now runs on
// another connection, which answers as a direct one does (a third
// reviewer's finding).
func TestStatusOfDeletedMailboxAnotherSessionKeeps(t *testing.T) {
	boxKeptSelected(t, func(t *testing.T, d, b *imaptest.Client) {
		mustOK(t, d.Cmd("DELETE box"))
		direct, proxied := imaptest.Tagged(d.Cmd("STATUS box (MESSAGES)")), imaptest.Tagged(b.Cmd("STATUS box (MESSAGES)"))
		if !strings.HasPrefix(direct, "NO ") || !strings.HasPrefix(proxied, "NO Mailbox doesn't exist") {
			t.Errorf("STATUS of a deleted mailbox: directly %q, through the proxy %q, want the same NO", direct, proxied)
		}
	})
}

// boxKeptSelected runs f over Dovecot without IDLE (the watcher polling
// once an hour) and with IDLE: box holds one message, and another session
// of the account has it selected (its pooled connection keeps it so); d
// is a client straight to Dovecot, b one through the proxy with nothing
// selected.
func boxKeptSelected(t *testing.T, f func(t *testing.T, d, b *imaptest.Client)) {
	for _, tt := range []struct {
		p    dovecottest.Profile
		opts []func(*proxy.Config)
	}{
		{dovecottest.LegacyNoIdle, []func(*proxy.Config){func(c *proxy.Config) { c.Hub.PollInterval = time.Hour }}},
		{dovecottest.Full, nil},
	} {
		t.Run(tt.p.String(), func(t *testing.T) {
			dc, d := startDovecotUser(t, tt.p)
			addr, _ := startProxy(t, dc.Addr, tt.opts...)
			mustOK(t, d.Cmd("CREATE box"))
			mustOK(t, d.Cmd("APPEND box {7+}\r\nSubj: x"))
			b := dialRaw(t, addr)
			mustOK(t, b.Cmd("LOGIN u pw"))
			a := dialRaw(t, addr)
			mustOK(t, a.Cmd("LOGIN u pw"))
			mustOK(t, a.Cmd("SELECT box")) // takes the message
			f(t, d, b)
		})
	}
}
