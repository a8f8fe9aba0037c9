package contextsearch_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chain is the extensions in chain.go's order: contextsearch before
// esearch and condstore (its REMOVEFROM goes before condstore's VANISHED).
func chain(cfg contextsearch.Config) []proxy.Extension {
	return []proxy.Extension{&idle.Extension{}, contextsearch.New(cfg), esearch.New(), condstore.New()}
}

// upstreamServer is what a test needs of the server behind the proxy: its
// address and a way in for the "other client" whose changes the proxy's
// client hears of.
type upstreamServer struct {
	addr, user, pass string
}

func (u upstreamServer) outside(t *testing.T) *imaptest.Client {
	c := imaptest.Login(t, u.addr, u.user, u.pass)
	c.MustOK("SELECT INBOX")
	return c
}

// memUpstream starts go-imap's in-memory server with alice's INBOX holding
// n messages, the even ones \Flagged.
func memUpstream(t *testing.T, n int) upstreamServer {
	return memUpstreamFlags(t, n, []imap.Flag{imap.FlagFlagged})
}

// memUpstreamFlags is memUpstream with even the messages' flags given.
func memUpstreamFlags(t *testing.T, n int, even []imap.Flag) upstreamServer {
	return memUpstreamWith(t, n, even, memupstream.Options{})
}

// memUpstreamWith is memUpstreamFlags with the server's options given.
func memUpstreamWith(t *testing.T, n int, even []imap.Flag, opt memupstream.Options) upstreamServer {
	up, err := memupstream.Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		var flags []imap.Flag
		if i%2 == 0 {
			flags = even
		}
		if err := up.Append("alice", "INBOX", flags, fmt.Appendf(nil, "Subject: m%d\r\n\r\nbody %d\r\n", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	return upstreamServer{up.Addr, "alice", "secret"}
}

func dovecotUpstream(t *testing.T, p dovecottest.Profile, n int) upstreamServer {
	dc := dovecottest.Start(t, p)
	for i := 1; i <= n; i++ {
		var flags []string
		if i%2 == 0 {
			flags = []string{`\Flagged`}
		}
		dc.Append(t, "alice", "alicepass", "INBOX", flags, fmt.Appendf(nil, "Subject: m%d\r\n\r\nbody %d\r\n", i, i))
	}
	return upstreamServer{dc.Addr, "alice", "alicepass"}
}

// startProxy starts the proxy in front of u and a client of it with INBOX
// selected.
func startProxy(t *testing.T, u upstreamServer, cfg contextsearch.Config) *imaptest.Client {
	p := imaptest.StartProxy(t, u.addr, proxy.Config{
		Extensions: chain(cfg),
	})
	c := imaptest.Login(t, p.Addr, u.user, u.pass)
	c.MustOK("SELECT INBOX")
	return c
}

// TestUpdates: the updates for another client's changes and the client's
// own, exactly as Dovecot sends them for the same sequence (Dovecot 2.3,
// directly): ADDTO after the FETCH or EXISTS that causes it, REMOVEFROM
// before the EXPUNGE, the numbers the context asked for, only the contexts
// whose result changed. Over go-imap's in-memory server and both Dovecot
// profiles: the updates are the proxy's own over each.
//
// \Recent (RFC 3501 2.3.2, the proxy's own, docs/hardening.md #16.17)
// differs by server. Dovecot's six messages were appended with INBOX
// selected nowhere, so the client's SELECT, the first read-write one, says
// "* 6 RECENT" and they are recent in its session: FETCH FLAGS carry
// \Recent, and the seventh makes "* 7 RECENT". go-imap's server has no
// \Recent (its SELECT says "* 0 RECENT"), the proxy takes its word: only
// the seventh, which the client is the first read-write session of the
// proxy told of, is recent ("* 1 RECENT"). The other client is directly on
// the server, not one of the proxy's sessions.
func TestUpdates(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(t *testing.T) upstreamServer
		// recent: the upstream's six messages are recent in the
		// client's session (Dovecot's are, go-imap's server's not).
		recent bool
	}{
		{"Memory", func(t *testing.T) upstreamServer { return memUpstream(t, 6) }, false},
		{"DovecotLegacy", func(t *testing.T) upstreamServer { return dovecotUpstream(t, dovecottest.Legacy, 6) }, true},
		{"DovecotFull", func(t *testing.T) upstreamServer { return dovecotUpstream(t, dovecottest.Full, 6) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.name != "Memory" {
				t.Skip("Dovecot")
			}
			// either is the line over go-imap's server or over Dovecot.
			either := func(memory, dovecot string) string {
				if tc.recent {
					return dovecot
				}
				return memory
			}
			u := tc.up(t)
			c := startProxy(t, u, contextsearch.Config{})
			o := u.outside(t)
			if caps := c.MustOK("CAPABILITY")[0]; !strings.Contains(caps, " CONTEXT=SEARCH") {
				t.Fatalf("capabilities: %q", caps)
			}
			c.ExpectDo("a1", "SEARCH RETURN (UPDATE) FLAGGED", `* ESEARCH (TAG "a1")`, "a1 OK *")
			c.ExpectDo("a1", "SEARCH RETURN (UPDATE) SEEN", "a1 BAD *")
			c.ExpectDo("b1", "UID SEARCH RETURN (UPDATE COUNT) UNSEEN", `* ESEARCH (TAG "b1") UID COUNT 6`, "b1 OK *")
			c.ExpectDo("b6", "UID SEARCH RETURN (UPDATE) 1:3 FLAGGED", `* ESEARCH (TAG "b6") UID`, "b6 OK *")
			// Not a flag search: re-run upstream on the changed messages.
			c.ExpectDo("c1", `UID SEARCH RETURN (UPDATE) SUBJECT "7"`, `* ESEARCH (TAG "c1") UID`, "c1 OK *")

			o.MustOK(`STORE 1 +FLAGS (\Flagged)`)
			c.ExpectDo("n1", "NOOP", either(`* 1 FETCH (FLAGS (\Flagged))`, `* 1 FETCH (FLAGS (\Flagged \Recent))`),
				`* ESEARCH (TAG "a1") ADDTO (0 1)`, `* ESEARCH (TAG "b6") UID ADDTO (0 1)`, "n1 OK *")
			o.MustOK(`STORE 2 -FLAGS (\Flagged)`)
			c.ExpectDo("n2", "NOOP", either(`* 2 FETCH (FLAGS ())`, `* 2 FETCH (FLAGS (\Recent))`),
				`* ESEARCH (TAG "a1") REMOVEFROM (0 2)`, `* ESEARCH (TAG "b6") UID REMOVEFROM (0 2)`, "n2 OK *")
			o.MustOK(`APPEND INBOX (\Flagged) {12}`, "Subject: 7\r\n")
			c.ExpectDo("n3", "NOOP", "* 7 EXISTS", either("* 1 RECENT", "* 7 RECENT"),
				`* ESEARCH (TAG "a1") ADDTO (0 7)`, `* ESEARCH (TAG "b1") UID ADDTO (0 7)`,
				`* ESEARCH (TAG "c1") UID ADDTO (0 7)`, "n3 OK *")
			o.MustOK(`STORE 4 +FLAGS (\Deleted)`)
			o.MustOK("EXPUNGE")
			// A recent message expunged lowers the count (as Dovecot
			// tells it); over go-imap's server 4 was not recent.
			n4 := []string{`* ESEARCH (TAG "a1") REMOVEFROM (0 4)`, `* ESEARCH (TAG "b1") UID REMOVEFROM (0 4)`, "* 4 EXPUNGE"}
			if tc.recent {
				n4 = append(n4, "* 6 RECENT")
			}
			c.ExpectDo("n4", "NOOP", append(n4, "n4 OK *")...)
			// The client's own change, with its own answer.
			c.ExpectDo("n5", `STORE 5 -FLAGS (\Flagged)`, either(`* 5 FETCH (FLAGS ())`, `* 5 FETCH (FLAGS (\Recent))`),
				`* ESEARCH (TAG "a1") REMOVEFROM (0 5)`, "n5 OK *")
			c.ExpectDo("n6", `UID STORE 7 +FLAGS.SILENT (\Seen)`,
				`* ESEARCH (TAG "b1") UID REMOVEFROM (0 7)`, "n6 OK *")

			// RFC 5267 4.3.5, and the errors Dovecot gives.
			c.ExpectDo("x1", `CANCELUPDATE "b1"`, "x1 OK *")
			c.ExpectDo("x2", `CANCELUPDATE "b1"`, "x2 NO *")
			c.ExpectDo("x3", `CANCELUPDATE`, "x3 BAD *")
			c.ExpectDo("x4", `CANCELUPDATE b6`, "x4 BAD *")
			o.MustOK(`STORE 1 +FLAGS (\Seen)`)
			c.ExpectDo("n7", "NOOP", either(`* 1 FETCH (FLAGS (\Flagged \Seen))`, `* 1 FETCH (FLAGS (\Flagged \Seen \Recent))`), "n7 OK *")
			// The tag of a cancelled context is free again.
			c.ExpectDo("b1", "SEARCH RETURN (UPDATE MIN) UNSEEN", `* ESEARCH (TAG "b1") MIN 2`, "b1 OK *")
			// Updates cease with the mailbox (RFC 5267 4.3).
			c.MustOK("UNSELECT")
			c.ExpectDo("x5", `CANCELUPDATE "a1"`, "x5 BAD *")
			c.MustOK("SELECT INBOX")
			c.ExpectDo("x6", `CANCELUPDATE "a1"`, "x6 NO *")
			// Recent in the session's first SELECT, not after its second
			// (the session was told of them already; Dovecot says "* 0
			// RECENT" too).
			o.MustOK(`STORE 1 -FLAGS (\Flagged)`)
			c.ExpectDo("n8", "NOOP", `* 1 FETCH (FLAGS (\Seen))`, "n8 OK *")
		})
	}
}

// TestRFC5267Examples: section 4's examples with the RFC's commands and,
// where the RFC's numbers agree with each other, its numbers: messages
// 23762 and 23763 have UIDs 32768 and 32769 (9,006 messages were
// expunged before them), 74 messages match DELETED KEYWORD $Junk. The
// RFC's counts of A01 and A02 (23765, "23764 results") cannot both hold in
// one mailbox; here the UNDELETED UNKEYWORD $Junk messages are UIDs
// 9081:32769, 23689 of them. B01's ESEARCH carries UID, as RFC 4731 wants
// for a UID SEARCH (the RFC's example leaves it out; Dovecot sends it).
// B02 is the RFC's UID SORT made a UID SEARCH (SORT is not this
// package's), refused with a limit of one context.
func TestRFC5267Examples(t *testing.T) {
	if testing.Short() {
		t.Skip("32,769 messages")
	}
	u := memUpstreamFlags(t, 32769, nil)
	o := u.outside(t)
	o.MustOK(`UID STORE 1:9006 +FLAGS.SILENT (\Deleted)`)
	o.MustOK("EXPUNGE")
	o.MustOK(`UID STORE 9007:9080 +FLAGS.SILENT (\Deleted $Junk)`)
	c := startProxy(t, u, contextsearch.Config{MaxPerSession: 1})

	c.ExpectDo("A01", "SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk",
		`* ESEARCH (TAG "A01") COUNT 23689`, "A01 OK *")
	c.ExpectDo("A02", "UID SEARCH RETURN (PARTIAL 23500:24000) UNDELETED UNKEYWORD $Junk",
		`* ESEARCH (TAG "A02") UID PARTIAL (23500:24000 32580:32769)`, "A02 OK *")
	c.ExpectDo("A03", "UID SEARCH RETURN (PARTIAL 1:500) UNDELETED UNKEYWORD $Junk",
		`* ESEARCH (TAG "A03") UID PARTIAL (1:500 9081:9580)`, "A03 OK *")
	c.ExpectDo("A04", "UID SEARCH RETURN (PARTIAL 24000:24500) UNDELETED UNKEYWORD $Junk",
		`* ESEARCH (TAG "A04") UID PARTIAL (24000:24500 NIL)`, "A04 OK *")

	c.ExpectDo("B01", "UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk",
		`* ESEARCH (TAG "B01") UID COUNT 74`, "B01 OK *")
	c.ExpectDo("B01", "SEARCH RETURN (UPDATE) FLAGGED", "B01 BAD *")
	c.ExpectDo("B02", "UID SEARCH RETURN (UPDATE COUNT) KEYWORD $Junk",
		`* ESEARCH (TAG "B02") UID COUNT 74`, `* NO [NOUPDATE "B02"] *`, "B02 OK *")

	o.MustOK(`UID STORE 32768:32769 +FLAGS.SILENT (\Deleted $Junk \Seen)`)
	c.ExpectDo("n1", "NOOP", "* 23762 FETCH *", "* 23763 FETCH *",
		`* ESEARCH (TAG "B01") UID ADDTO (0 32768:32769)`, "n1 OK *")
	o.MustOK("UID EXPUNGE 32768")
	c.ExpectDo("B03", "NOOP", `* ESEARCH (TAG "B01") UID REMOVEFROM (0 32768)`, "* 23762 EXPUNGE", "B03 OK *")
	c.ExpectDo("B04", `CANCELUPDATE "B01"`, "B04 OK *")
	o.MustOK(`UID STORE 32769 -FLAGS.SILENT (\Deleted)`)
	c.ExpectDo("n2", "NOOP", "* 23762 FETCH *", "n2 OK *")
}

// TestLimits: RFC 5267 4.3.1. Past the number of contexts, or the bytes
// they may hold, a search is answered but refused updates with NOUPDATE;
// a cancelled context frees its place.
func TestLimits(t *testing.T) {
	u := memUpstream(t, 6)
	// Two contexts with one-letter tags and 7 UIDs between them; not 8.
	c := startProxy(t, u, contextsearch.Config{MaxPerSession: 2, MaxSessionBytes: 2*(contextsearch.ContextOverhead+1) + 4*7})
	o := u.outside(t)
	c.ExpectDo("a", "SEARCH RETURN (UPDATE COUNT) FLAGGED", `* ESEARCH (TAG "a") COUNT 3`, "a OK *")
	c.ExpectDo("b", "SEARCH RETURN (UPDATE) UNFLAGGED", `* ESEARCH (TAG "b")`, "b OK *")
	c.ExpectDo("c", "SEARCH RETURN (UPDATE MIN) ALL", `* ESEARCH (TAG "c") MIN 1`,
		`* NO [NOUPDATE "c"] No updates: too many updating searches`, "c OK *")
	c.ExpectDo("x", `CANCELUPDATE "b"`, "x OK *")
	// Six UIDs would make nine with a's three: over seven.
	c.ExpectDo("d", "UID SEARCH RETURN (UPDATE COUNT) ALL", `* ESEARCH (TAG "d") UID COUNT 6`,
		`* NO [NOUPDATE "d"] No updates: too many results to keep updating`, "d OK *")
	c.ExpectDo("e", "SEARCH RETURN (UPDATE) 1:2", `* ESEARCH (TAG "e")`, "e OK *")
	o.MustOK(`STORE 1:2 +FLAGS (\Flagged)`)
	o.MustOK(`STORE 2 +FLAGS (\Deleted)`)
	o.MustOK(`EXPUNGE`)
	// Only a's and e's: c, d and b have none.
	c.ExpectDo("n", "NOOP", `* ESEARCH (TAG "a") REMOVEFROM (0 2)`, `* ESEARCH (TAG "e") REMOVEFROM (0 2)`,
		"* 2 EXPUNGE", `* 1 FETCH (FLAGS (\Flagged))`, `* ESEARCH (TAG "a") ADDTO (0 1)`, "n OK *")
}

// TestNoRecheck: a search whose criteria the proxy answers from its own
// state (MODSEQ, extensions/condstore) cannot be re-run upstream: it is
// answered, and refused updates.
func TestNoRecheck(t *testing.T) {
	c := startProxy(t, memUpstream(t, 2), contextsearch.Config{})
	c.ExpectDo("m", "SEARCH RETURN (UPDATE COUNT) MODSEQ 1", "* OK [HIGHESTMODSEQ *", `* ESEARCH (TAG "m") COUNT 2 MODSEQ *`,
		`* NO [NOUPDATE "m"] No updates: the search cannot be run again upstream`, "m OK *")
	c.ExpectDo("x", `CANCELUPDATE "m"`, "x NO *")
}

// TestIdle: during IDLE the updates come as the changes do, with them:
// ADDTO after the FETCH, REMOVEFROM before the EXPUNGE. Dovecot's four
// messages were appended with INBOX selected nowhere: they are recent in
// the client's session, the first read-write one (RFC 3501 2.3.2, the
// proxy's own \Recent), and an expunged one lowers its RECENT count.
func TestIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	u := dovecotUpstream(t, dovecottest.Legacy, 4)
	c := startProxy(t, u, contextsearch.Config{})
	o := u.outside(t)
	c.ExpectDo("a", "UID SEARCH RETURN (UPDATE) FLAGGED", `* ESEARCH (TAG "a") UID`, "a OK *")
	c.ExpectDo("s", "SEARCH RETURN (UPDATE COUNT) UNFLAGGED", `* ESEARCH (TAG "s") COUNT 2`, "s OK *")
	c.Send("i IDLE")
	c.Expect("+ *")
	o.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	c.Expect(`* 1 FETCH (FLAGS (\Flagged \Recent))`, `* ESEARCH (TAG "a") UID ADDTO (0 1)`, `* ESEARCH (TAG "s") REMOVEFROM (0 1)`)
	o.MustOK(`STORE 2 +FLAGS (\Deleted)`)
	c.Expect(`* 2 FETCH (FLAGS (\Deleted \Flagged \Recent))`)
	o.MustOK("EXPUNGE")
	c.Expect(`* ESEARCH (TAG "a") UID REMOVEFROM (0 2)`, "* 2 EXPUNGE", "* 3 RECENT")
	c.Send("DONE")
	c.Expect("i OK *")
}

// TestCriteriaWithLiterals: an updating search whose criteria hold a
// literal is re-run upstream with it, as a LITERAL+ literal where the
// upstream has LITERAL+ (Dovecot's legacy profile, go-imap's server by
// default), as a LITERAL- one where it is short enough (go-imap's server
// without LITERAL+, which has LITERAL- all the same). (Longer ones would
// go as quoted strings where they can, or be refused updates; a plain
// SEARCH with a literal over 4 KiB to go-imap's server with LITERAL- only
// times out in the core's relay, so that case has no test here.)
//
// The two new messages are recent in the client's session, the first
// read-write one of the proxy told of them (RFC 3501 2.3.2, the proxy's
// own \Recent); so are Dovecot's first two, appended with INBOX selected
// nowhere (the client's SELECT says "* 2 RECENT"), and "* n RECENT" counts
// all of the session's: 4 over Dovecot, 2 over go-imap's server, which
// has no \Recent (its SELECT says "* 0 RECENT").
func TestCriteriaWithLiterals(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(t *testing.T) upstreamServer
		// recent is the client's "* n RECENT" with the new messages.
		recent string
	}{
		{"Memory", func(t *testing.T) upstreamServer { return memUpstream(t, 2) }, "* 2 RECENT"},
		{"MemoryNoLiteralPlus", func(t *testing.T) upstreamServer {
			return memUpstreamWith(t, 2, nil, memupstream.Options{Caps: []imap.Cap{imap.CapUIDPlus}})
		}, "* 2 RECENT"},
		{"DovecotLegacy", func(t *testing.T) upstreamServer { return dovecotUpstream(t, dovecottest.Legacy, 2) }, "* 4 RECENT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.name == "DovecotLegacy" {
				t.Skip("Dovecot")
			}
			u := tc.up(t)
			c := startProxy(t, u, contextsearch.Config{})
			o := u.outside(t)
			c.Write("l1 UID SEARCH RETURN (UPDATE) CHARSET UTF-8 SUBJECT {5+}\r\nnews!\r\n")
			c.Expect(`* ESEARCH (TAG "l1") UID`, "l1 OK *")
			o.MustOK(`APPEND INBOX {25}`, "Subject: no news!\r\n\r\nbody")
			o.MustOK(`APPEND INBOX {21}`, "Subject: nothing\r\n\r\nb")
			c.ExpectDo("n1", "NOOP", "* 4 EXISTS", tc.recent, `* ESEARCH (TAG "l1") UID ADDTO (0 3)`, "n1 OK *")
		})
	}
}

// TestPartial: RFC 5267 4.4's PARTIAL and 4.2's CONTEXT hint, answered as
// Dovecot answers them (the lines are Dovecot 2.3's, directly): relayed
// over Dovecot's full profile, which has CONTEXT=SEARCH (the core maps a
// SEARCH's PARTIAL results from UIDs to sequence numbers), synthesized
// over the others. After an expunge the positions count the client's
// messages.
//
// Dovecot's six messages are recent in the client's session (appended with
// INBOX selected nowhere; RFC 3501 2.3.2, the proxy's own \Recent), so the
// expunge of two lowers its RECENT count to 4; go-imap's server has no
// \Recent, and none of its messages are recent there.
func TestPartial(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(t *testing.T) upstreamServer
		// recent is the client's "* n RECENT" after the expunge, if any.
		recent []string
	}{
		{"Memory", func(t *testing.T) upstreamServer { return memUpstream(t, 6) }, nil},
		{"DovecotLegacy", func(t *testing.T) upstreamServer { return dovecotUpstream(t, dovecottest.Legacy, 6) }, []string{"* 4 RECENT"}},
		{"DovecotFull", func(t *testing.T) upstreamServer { return dovecotUpstream(t, dovecottest.Full, 6) }, []string{"* 4 RECENT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.name != "Memory" {
				t.Skip("Dovecot")
			}
			u := tc.up(t)
			c := startProxy(t, u, contextsearch.Config{})
			for _, v := range []struct{ cmd, want string }{
				{"SEARCH RETURN (PARTIAL 3:2) ALL", `* ESEARCH (TAG "t") PARTIAL (2:3 2:3)`},
				{"SEARCH RETURN (PARTIAL 7:9) ALL", `* ESEARCH (TAG "t") PARTIAL (7:9 NIL)`},
				{"UID SEARCH RETURN (PARTIAL 1:2) FLAGGED", `* ESEARCH (TAG "t") UID PARTIAL (1:2 2,4)`},
				{"SEARCH RETURN (UPDATE PARTIAL 1:1) FLAGGED", `* ESEARCH (TAG "t") PARTIAL (1:1 2)`},
				{"UID SEARCH RETURN (CONTEXT) FLAGGED", `* ESEARCH (TAG "t1") UID ALL 2,4,6`},
				{"SEARCH RETURN (CONTEXT COUNT) FLAGGED", `* ESEARCH (TAG "t1") COUNT 3`},
			} {
				tag := "t"
				if strings.Contains(v.want, `"t1"`) {
					tag = "t1"
				}
				c.ExpectDo(tag, v.cmd, v.want, tag+" OK *")
			}
			for _, cmd := range []string{
				"SEARCH RETURN (PARTIAL 1:2 ALL) ALL", "SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
				"SEARCH RETURN (PARTIAL 0:2) ALL", "SEARCH RETURN (PARTIAL -1:-2) ALL", "SEARCH RETURN (PARTIAL 1:*) ALL",
			} {
				c.ExpectDo("b", cmd, "b BAD *")
			}
			o := u.outside(t)
			o.MustOK(`STORE 1:2 +FLAGS.SILENT (\Deleted)`)
			o.MustOK("EXPUNGE")
			want := append([]string{`* ESEARCH (TAG "t") REMOVEFROM (0 2)`, "* 2 EXPUNGE", "* 1 EXPUNGE"}, tc.recent...)
			c.ExpectDo("n", "NOOP", append(want, "n OK *")...)
			c.ExpectDo("p", "SEARCH RETURN (PARTIAL 1:2) FLAGGED", `* ESEARCH (TAG "p") PARTIAL (1:2 2,4)`, "p OK *")
		})
	}
}

// TestNotifyAndQresync: with NOTIFY's selected events the updates come
// between commands with the changes that cause them, and with QRESYNC
// enabled a REMOVEFROM still precedes the expunge, reported as VANISHED.
// Dovecot's four messages are recent in the client's session (appended
// with INBOX selected nowhere; RFC 3501 2.3.2, the proxy's own \Recent),
// and so is the new one, which the client is the first of the proxy's
// read-write sessions to be told of.
func TestNotifyAndQresync(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	u := dovecotUpstream(t, dovecottest.Legacy, 4)
	p := imaptest.StartProxy(t, u.addr, proxy.Config{Extensions: []proxy.Extension{
		&idle.Extension{}, notify.New(notify.Config{}), contextsearch.New(contextsearch.Config{}), esearch.New(), condstore.New(),
	}, Hub: hub.Config{ModSeqBase: func() uint64 { return 1 }}})
	c := imaptest.Login(t, p.Addr, u.user, u.pass)
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	o := u.outside(t)
	c.ExpectDo("a", "SEARCH RETURN (UPDATE) FLAGGED", `* ESEARCH (TAG "a")`, "a OK *")
	c.ExpectDo("s", "NOTIFY SET (selected (MessageNew (UID) MessageExpunge FlagChange))", "s OK *")
	o.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	c.Expect(`* 1 FETCH (UID 1 MODSEQ (6) FLAGS (\Flagged \Recent))`, `* ESEARCH (TAG "a") ADDTO (0 1)`)
	o.MustOK(`STORE 2 +FLAGS (\Deleted)`)
	c.Expect(`* 2 FETCH (UID 2 MODSEQ (7) FLAGS (\Deleted \Flagged \Recent))`)
	o.MustOK("EXPUNGE")
	c.Expect(`* ESEARCH (TAG "a") REMOVEFROM (0 2)`, "* VANISHED 2", "* 3 RECENT", "* OK [HIGHESTMODSEQ 8] *")
	o.MustOK(`APPEND INBOX (\Flagged) {12}`, "Subject: 5\r\n")
	c.Expect("* 4 EXISTS", "* 4 RECENT", `* ESEARCH (TAG "a") ADDTO (0 4)`, "* 4 FETCH (UID 5 MODSEQ (9))")
	c.ExpectDo("n", "NOOP", "n OK *")
}
