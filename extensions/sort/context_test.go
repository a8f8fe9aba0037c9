package sort

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// contextUpstream is a server holding testMailbox in alice's INBOX, and
// how to log in to it.
type contextUpstream struct{ addr, user, pass string }

func memContextUpstream(t *testing.T) contextUpstream {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	u := contextUpstream{up.Addr, "alice", "secret"}
	c := imaptest.Login(t, u.addr, u.user, u.pass)
	defer c.Close()
	for _, m := range testMailbox {
		appendMessage(c, m)
	}
	return u
}

func dovecotContextUpstream(t *testing.T, p dovecottest.Profile) contextUpstream {
	dc := dovecottest.Start(t, p)
	u := contextUpstream{dc.Addr, "alice", "alicepass"}
	c := imaptest.Login(t, u.addr, u.user, u.pass)
	defer c.Close()
	for _, m := range testMailbox {
		appendMessage(c, m)
	}
	return u
}

// contextProxy starts the proxy with contextsearch, esearch, sort (with
// CONTEXT=SORT) and condstore in the chain's order, and a client of it
// with INBOX selected.
func contextProxy(t *testing.T, u contextUpstream, contexts bool) *imaptest.Client {
	p := imaptest.StartProxy(t, u.addr, proxy.Config{
		Extensions: []proxy.Extension{contextsearch.New(contextsearch.Config{}), esearch.New(),
			New(Config{Contexts: contexts}), condstore.New()},
		AccountData: accountdata.NewMemory(),
	})
	c := imaptest.Login(t, p.Addr, u.user, u.pass)
	c.MustOK("SELECT INBOX")
	return c
}

// TestContextSort: sorted contexts (RFC 5267 section 4 with SORT) over an
// upstream without SORT (go-imap's server, Dovecot's legacy profile) and
// one with SORT and ESORT but no CONTEXT=SORT (Dovecot's full profile).
// Another client's flag changes, new messages and expunges, and the
// client's own change, give ADDTO and REMOVEFROM with the context
// positions of each message, worked out in the comments from testMailbox's
// INTERNALDATEs: ARRIVAL orders it 3 (1 Jan) 2 (3 Jan) 4 (4 Jan) 1 5
// (both 5 Jan: mailbox order); REVERSE ARRIVAL 1 5 4 2 3.
//
// \Recent (RFC 3501 2.3.2, the proxy's own, docs/hardening.md #16.17)
// differs by server. Dovecot's five messages were appended with INBOX
// selected nowhere, so the client's SELECT, the first read-write one, says
// "* 5 RECENT" and they are recent in its session: FETCH FLAGS carry
// \Recent, and "* n RECENT" counts them with the new ones. go-imap's
// server has no \Recent (its SELECT says "* 0 RECENT"), the proxy takes
// its word: only the messages appended later, which the client is the
// first read-write session of the proxy told of, are recent. The other
// client is directly on the server, not one of the proxy's sessions.
func TestContextSort(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(t *testing.T) contextUpstream
		// recent: the upstream's five messages are recent in the
		// client's session (Dovecot's are, go-imap's server's not).
		recent bool
	}{
		{"Memory", memContextUpstream, false},
		{"DovecotLegacy", func(t *testing.T) contextUpstream { return dovecotContextUpstream(t, dovecottest.Legacy) }, true},
		{"DovecotFull", func(t *testing.T) contextUpstream { return dovecotContextUpstream(t, dovecottest.Full) }, true},
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
			c := contextProxy(t, u, true)
			o := imaptest.Login(t, u.addr, u.user, u.pass)
			o.MustOK("SELECT INBOX")
			caps := " " + c.MustOK("CAPABILITY")[0] + " "
			for _, w := range []string{" CONTEXT=SORT ", " CONTEXT=SEARCH ", " ESORT "} {
				if !strings.Contains(caps, w) {
					t.Fatalf("capabilities lack %s: %q", w, caps)
				}
			}

			c.ExpectDo("s1", "SORT RETURN (UPDATE ALL) (ARRIVAL) UTF-8 UNSEEN",
				`* ESEARCH (TAG "s1") ALL 3,2,4,1,5`, "s1 OK *")
			c.ExpectDo("u1", "UID SORT RETURN (UPDATE) (REVERSE ARRIVAL) UTF-8 UNSEEN",
				`* ESEARCH (TAG "u1") UID`, "u1 OK *")
			// Not a flag search: re-run upstream. Base subjects APPLE
			// (2), APPLE (5).
			c.ExpectDo("s2", "SORT RETURN (UPDATE COUNT) (SUBJECT) UTF-8 SUBJECT apple",
				`* ESEARCH (TAG "s2") COUNT 2`, "s2 OK *")

			// 2 leaves the UNSEEN contexts: 2nd of 3 2 4 1 5, 4th of
			// 1 5 4 2 3.
			o.MustOK(`STORE 2 +FLAGS (\Seen)`)
			c.ExpectDo("n1", "NOOP", either(`* 2 FETCH (FLAGS (\Seen))`, `* 2 FETCH (FLAGS (\Seen \Recent))`),
				`* ESEARCH (TAG "s1") REMOVEFROM (2 2)`, `* ESEARCH (TAG "u1") UID REMOVEFROM (4 2)`, "n1 OK *")
			// 6 arrives on 2 Jan: after 3 in 3 4 1 5, before 3 in
			// 1 5 4 3; APPLE PIE after APPLE, APPLE.
			msg := "Subject: apple pie\r\n\r\nbody\r\n"
			o.MustOK(fmt.Sprintf(`APPEND INBOX () "02-Jan-2024 00:00:00 +0000" {%d}`, len(msg)), msg)
			c.ExpectDo("n2", "NOOP", "* 6 EXISTS", either("* 1 RECENT", "* 6 RECENT"),
				`* ESEARCH (TAG "s1") ADDTO (2 6)`, `* ESEARCH (TAG "u1") UID ADDTO (4 6)`,
				`* ESEARCH (TAG "s2") ADDTO (3 6)`, "n2 OK *")
			// 2 (3 Jan) back: after 6 in 3 6 4 1 5, after 4 in
			// 1 5 4 6 3.
			o.MustOK(`STORE 2 -FLAGS (\Seen)`)
			c.ExpectDo("n3", "NOOP", either(`* 2 FETCH (FLAGS ())`, `* 2 FETCH (FLAGS (\Recent))`),
				`* ESEARCH (TAG "s1") ADDTO (3 2)`, `* ESEARCH (TAG "u1") UID ADDTO (4 2)`, "n3 OK *")
			// 4 expunged, before its EXPUNGE, at its place in
			// 3 6 2 4 1 5 and 1 5 4 2 6 3.
			o.MustOK(`STORE 4 +FLAGS (\Deleted)`)
			o.MustOK("EXPUNGE")
			// A recent message expunged lowers the count (as Dovecot
			// tells it); over go-imap's server 4 was not recent.
			n4 := []string{`* ESEARCH (TAG "s1") REMOVEFROM (4 4)`, `* ESEARCH (TAG "u1") UID REMOVEFROM (3 4)`, "* 4 EXPUNGE"}
			if tc.recent {
				n4 = append(n4, "* 5 RECENT")
			}
			c.ExpectDo("n4", "NOOP", append(n4, "n4 OK *")...)
			// The client's own change, with its answer: UID 1 (now
			// message 1) is 4th of 3 6 2 1 5, 1st of 1 5 2 6 3.
			c.ExpectDo("n5", `STORE 1 +FLAGS (\Seen)`, either(`* 1 FETCH (FLAGS (\Seen))`, `* 1 FETCH (FLAGS (\Seen \Recent))`),
				`* ESEARCH (TAG "s1") REMOVEFROM (4 1)`, `* ESEARCH (TAG "u1") UID REMOVEFROM (1 1)`, "n5 OK *")
			// Two messages (7 on 1 Dec, 8 on 2 Dec; APPLE PIE) at once:
			// before all others in 3 6 2 5, RFC 5267 4.3.3's preferred
			// form of one position and a range; after all in
			// 5 2 6 3, one pair each; after APPLE PIE (6) in 2 5 6.
			for _, d := range []string{"01-Dec-2023", "02-Dec-2023"} {
				o.MustOK(fmt.Sprintf(`APPEND INBOX () "%s 00:00:00 +0000" {%d}`, d, len(msg)), msg)
			}
			c.ExpectDo("n6", "NOOP", "* 7 EXISTS", either("* 3 RECENT", "* 7 RECENT"),
				`* ESEARCH (TAG "s1") ADDTO (1 6:7)`, `* ESEARCH (TAG "u1") UID ADDTO (5 8 6 7)`,
				`* ESEARCH (TAG "s2") ADDTO (4 6:7)`, "n6 OK *")

			// Tag reuse, CANCELUPDATE, NOUPDATE (RFC 5267 4.3, 4.3.1,
			// 4.3.5).
			c.ExpectDo("s1", "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL", "s1 BAD *")
			c.ExpectDo("x1", `CANCELUPDATE "u1" "s2"`, "x1 OK *")
			c.ExpectDo("x2", `CANCELUPDATE "u1"`, "x2 NO *")
			o.MustOK(`STORE 3 +FLAGS (\Seen)`)
			// Only s1 is live: 3 (message 3) is its 3rd, after 6 and 7.
			c.ExpectDo("n7", "NOOP", either(`* 3 FETCH (FLAGS (\Seen))`, `* 3 FETCH (FLAGS (\Seen \Recent))`),
				`* ESEARCH (TAG "s1") REMOVEFROM (3 3)`, "n7 OK *")

			// PARTIAL (RFC 5267 4.4) in sort order: ARRIVAL orders the
			// messages (UIDs 1 2 3 5 6 7 8) 7 8 3 6 2 1 5, numbers
			// 6 7 3 5 2 1 4.
			c.ExpectDo("p1", "SORT RETURN (PARTIAL 2:4) (ARRIVAL) UTF-8 ALL",
				`* ESEARCH (TAG "p1") PARTIAL (2:4 7,3,5)`, "p1 OK *")
			c.ExpectDo("p2", "UID SORT RETURN (PARTIAL 6:1) (REVERSE ARRIVAL) UTF-8 ALL",
				`* ESEARCH (TAG "p2") UID PARTIAL (1:6 1,5,2,6,3,8)`, "p2 OK *")
			c.ExpectDo("p3", "SORT RETURN (PARTIAL 8:9) (ARRIVAL) UTF-8 ALL",
				`* ESEARCH (TAG "p3") PARTIAL (8:9 NIL)`, "p3 OK *")
			c.ExpectDo("p4", "SORT RETURN (CONTEXT COUNT) (ARRIVAL) UTF-8 ALL",
				`* ESEARCH (TAG "p4") COUNT 7`, "p4 OK *")
			c.ExpectDo("p5", "SORT RETURN (PARTIAL 1:2 ALL) (ARRIVAL) UTF-8 ALL", "p5 BAD *")
			c.ExpectDo("p6", "SORT RETURN (PARTIAL 1:*) (ARRIVAL) UTF-8 ALL", "p6 BAD *")
			// A sorted context with PARTIAL: updates for the whole
			// result, positions in it.
			c.ExpectDo("p7", "UID SORT RETURN (UPDATE PARTIAL 1:2) (ARRIVAL) UTF-8 UNDELETED",
				`* ESEARCH (TAG "p7") UID PARTIAL (1:2 7:8)`, "p7 OK *")
			c.ExpectDo("n8", `UID STORE 8 +FLAGS (\Deleted)`, `* 7 FETCH (*`,
				`* ESEARCH (TAG "p7") UID REMOVEFROM (2 8)`, "n8 OK *")
			// MODSEQ (the proxy's, RFC 7162 3.1: CONDSTORE enabled) cannot be
			// re-run upstream.
			c.ExpectDo("m1", "SORT RETURN (UPDATE COUNT) (ARRIVAL) UTF-8 MODSEQ 1", "* OK [HIGHESTMODSEQ *",
				`* ESEARCH (TAG "m1") COUNT 7 MODSEQ *`, `* NO [NOUPDATE "m1"] *`, "m1 OK *")
		})
	}
}

// TestContextSortNotOffered: without Config.Contexts there is no
// CONTEXT=SORT, and its RETURN options are unknown ones (BAD).
func TestContextSortNotOffered(t *testing.T) {
	u := memContextUpstream(t)
	c := contextProxy(t, u, false)
	if caps := c.MustOK("CAPABILITY")[0]; strings.Contains(caps, "CONTEXT=SORT") {
		t.Fatalf("capabilities: %q", caps)
	}
	for _, o := range []string{"UPDATE", "PARTIAL 1:2", "CONTEXT"} {
		c.ExpectDo("b", "SORT RETURN ("+o+") (ARRIVAL) UTF-8 ALL", "b BAD *")
	}
	c.ExpectDo("a", "SORT RETURN (ALL) (ARRIVAL) UTF-8 ALL", `* ESEARCH (TAG "a") ALL 3,2,4,1,5`, "a OK *")
}
