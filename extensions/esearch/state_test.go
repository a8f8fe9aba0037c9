package esearch_test

import (
	"fmt"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// stateMailbox is INBOX for the tests of searches the state decides: after
// the setup's EXPUNGE its UIDs are 1 2 3 4 6 7 8, messages 1 to 7.
var stateMailbox = [][]string{
	nil,                    // 1
	{`\Seen`},              // 2
	{`\Flagged`, "$Junk"},  // 3
	{`\Seen`, `\Answered`}, // 4
	{`\Deleted`, `\Seen`},  // 5, expunged
	{`\Draft`, "$Work"},    // 6: message 5
	{`\Flagged`, `\Seen`},  // 7: message 6
	nil,                    // 8: message 7, \Deleted after the expunge
}

// stateSetup is Dovecot in a profile with stateMailbox, reached through a
// faultnet relay (which tells whether a command went upstream), and the
// proxy with the production chain in front, its mod-sequences starting at
// 1.
type stateSetup struct {
	dc    *dovecottest.Server
	relay *faultnet.Relay
	proxy *imaptest.Proxy
}

func newStateSetup(t *testing.T, profile dovecottest.Profile) *stateSetup {
	t.Helper()
	dc := dovecottest.Start(t, profile)
	for i, flags := range stateMailbox {
		dc.Append(t, "alice", "alicepass", "INBOX", flags, fmt.Appendf(nil, "Subject: message %d\r\n\r\nbody %d\r\n", i+1, i+1))
	}
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("SELECT INBOX")
	d.MustOK("EXPUNGE")
	d.MustOK(`UID STORE 8 +FLAGS.SILENT (\Deleted)`)
	d.MustOK("LOGOUT")
	relay := faultnet.Start(t, dc.Addr)
	p := imaptest.StartProxy(t, relay.Addr(), proxy.Config{
		Extensions: chain.Extensions(chain.Config{}),
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
	return &stateSetup{dc: dc, relay: relay, proxy: p}
}

// login opens a proxy session with INBOX selected.
func (st *stateSetup) login(t *testing.T) *imaptest.Client {
	t.Helper()
	c := imaptest.Login(t, st.proxy.Addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	return c
}

// direct opens a session on Dovecot itself with INBOX selected: another
// client, not the proxy's.
func (st *stateSetup) direct(t *testing.T) *imaptest.Client {
	t.Helper()
	d := imaptest.Login(t, st.dc.Addr, "alice", "alicepass")
	d.MustOK("SELECT INBOX")
	return d
}

// local runs fn and fails the test if a SEARCH went upstream meanwhile:
// what fn asks must be decided from the state.
func (st *stateSetup) local(t *testing.T, fn func()) {
	t.Helper()
	h := st.relay.Add(faultnet.Fault{Match: []byte("SEARCH"), MatchDir: faultnet.ToServer, Action: faultnet.Note})
	fn()
	select {
	case <-h.Fired():
		t.Fatal("a SEARCH went upstream")
	default:
	}
}

// upstream runs fn and fails the test unless a SEARCH went upstream
// meanwhile: the control that local's check can fail.
func (st *stateSetup) upstream(t *testing.T, fn func()) {
	t.Helper()
	h := st.relay.Add(faultnet.Fault{Match: []byte("SEARCH"), MatchDir: faultnet.ToServer, Action: faultnet.Note})
	fn()
	select {
	case <-h.Fired():
	default:
		t.Fatal("no SEARCH went upstream")
	}
}

// TestStateDecides: every class of key the state decides, alone and
// nested in NOT, OR and lists, in SEARCH, UID SEARCH and their ESEARCH
// forms, answered exactly and without an upstream SEARCH, in front of
// Dovecot's legacy profile (no ESEARCH) and its full one (ESEARCH, which
// is relayed for what the state cannot decide).
func TestStateDecides(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			st := newStateSetup(t, profile)
			c := st.login(t)
			st.local(t, func() {
				for _, tc := range []struct{ cmd, want string }{
					{"SEARCH ALL", "* SEARCH 1 2 3 4 5 6 7"},
					{"UID SEARCH ALL", "* SEARCH 1 2 3 4 6 7 8"},
					{"SEARCH SEEN", "* SEARCH 2 4 6"},
					{"SEARCH UNSEEN", "* SEARCH 1 3 5 7"},
					{"SEARCH ANSWERED", "* SEARCH 4"},
					{"SEARCH UNANSWERED", "* SEARCH 1 2 3 5 6 7"},
					{"SEARCH DELETED", "* SEARCH 7"},
					{"SEARCH UNDELETED", "* SEARCH 1 2 3 4 5 6"},
					{"SEARCH DRAFT", "* SEARCH 5"},
					{"SEARCH UNDRAFT", "* SEARCH 1 2 3 4 6 7"},
					{"SEARCH FLAGGED", "* SEARCH 3 6"},
					{"UID SEARCH UNFLAGGED", "* SEARCH 1 2 4 6 8"},
					{"SEARCH KEYWORD $Junk", "* SEARCH 3"},
					{"SEARCH KEYWORD $JUNK", "* SEARCH 3"},
					{"SEARCH UNKEYWORD $Work", "* SEARCH 1 2 3 4 6 7"},
					{"UID SEARCH KEYWORD $work", "* SEARCH 6"},
					{"SEARCH KEYWORD $Nothing", "* SEARCH"},
					{"SEARCH 2:4", "* SEARCH 2 3 4"},
					{"SEARCH 6:*", "* SEARCH 6 7"},
					{"SEARCH *", "* SEARCH 7"},
					{"SEARCH 1000", "* SEARCH"},
					{"UID SEARCH 5:*", "* SEARCH 6 7 8"},
					{"SEARCH UID 4:7", "* SEARCH 4 5 6"},
					{"UID SEARCH UID 5:*", "* SEARCH 6 7 8"},
					{"UID SEARCH UID 100:*", "* SEARCH 8"},
					{"SEARCH OR (SEEN FLAGGED) (DRAFT NOT KEYWORD $Junk)", "* SEARCH 5 6"},
					{"SEARCH NOT (OR SEEN (FLAGGED KEYWORD $Junk))", "* SEARCH 1 5 7"},
					{"UID SEARCH OR OR DELETED DRAFT NOT (UNSEEN OR UID 1:3 ANSWERED)", "* SEARCH 2 4 6 7 8"},
					{"SEARCH CHARSET UTF-8 UNSEEN 1:3", "* SEARCH 1 3"},
					{"SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN", `* ESEARCH (TAG "t") MIN 1 MAX 7 COUNT 4 ALL 1,3,5,7`},
					{"UID SEARCH RETURN (COUNT) ALL", `* ESEARCH (TAG "t") UID COUNT 7`},
					{"UID SEARCH RETURN () SEEN", `* ESEARCH (TAG "t") UID ALL 2,4,7`},
					{"SEARCH RETURN (MIN) NOT ALL", `* ESEARCH (TAG "t")`},
					{"SEARCH RETURN (COUNT) NOT ALL", `* ESEARCH (TAG "t") COUNT 0`},
					{"SEARCH RETURN (PARTIAL 2:3) UNSEEN", `* ESEARCH (TAG "t") PARTIAL (2:3 3,5)`},
					{"UID SEARCH RETURN (PARTIAL 1:100) UNDELETED", `* ESEARCH (TAG "t") UID PARTIAL (1:100 1:4,6:7)`},
				} {
					name := "SEARCH"
					if tc.cmd[:4] == "UID " {
						name = "UID SEARCH"
					}
					c.ExpectDo("t", tc.cmd, tc.want, "t OK "+name+" completed.")
				}
			})
			// What the state does not decide still goes upstream.
			st.upstream(t, func() {
				c.ExpectDo("u", "SEARCH LARGER 0 UNSEEN", "* SEARCH 1 3 5 7", "u OK *")
			})
			st.upstream(t, func() {
				c.ExpectDo("u", "SEARCH RETURN (COUNT) LARGER 0", `* ESEARCH (TAG "u") COUNT 7`, "u OK *")
			})
			st.upstream(t, func() {
				c.ExpectDo("u", "SEARCH CHARSET ISO-8859-1 SEEN", "* SEARCH 2 4 6", "u OK *")
			})
		})
	}
}

// TestStateAfterChanges: the state's answer follows the session's own
// STORE at once, another session's STORE through the proxy at once (its
// FETCH reported first), a direct client's STORE after NOOP, and an
// expunge the client has not been told of: during SEARCH it keeps its
// number and matches nothing (RFC 3501 7.4.1 holds the EXPUNGE); UID
// SEARCH reports the EXPUNGE first.
func TestStateAfterChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			st := newStateSetup(t, profile)
			c := st.login(t)
			c2 := st.login(t)
			d := st.direct(t)
			st.local(t, func() {
				// The session's own STORE, answered and silent.
				c.ExpectDo("a1", `STORE 1 +FLAGS (\Seen)`, `* 1 FETCH (FLAGS (\Seen))`, "a1 OK *")
				c.ExpectDo("a2", "SEARCH UNSEEN", "* SEARCH 3 5 7", "a2 OK SEARCH completed.")
				c.ExpectDo("a3", `UID STORE 3 -FLAGS.SILENT (\Flagged)`, "a3 OK *")
				c.ExpectDo("a4", "SEARCH FLAGGED", "* SEARCH 6", "a4 OK SEARCH completed.")
				c.ExpectDo("a5", `STORE 5 FLAGS.SILENT ($Junk)`, "a5 OK *")
				c.ExpectDo("a6", "SEARCH RETURN (ALL) OR DRAFT KEYWORD $junk", `* ESEARCH (TAG "a6") ALL 3,5`, "a6 OK SEARCH completed.")
				// Another session's STORE through the proxy: told first.
				c2.MustOK(`UID STORE 2 -FLAGS.SILENT (\Seen)`)
				c.ExpectDo("b1", "SEARCH SEEN", "* 2 FETCH (FLAGS ())", "* SEARCH 1 4 6", "b1 OK SEARCH completed.")
			})
			// A direct client's STORE: in the state once NOOP has made
			// the hub look.
			d.MustOK(`UID STORE 4 -FLAGS.SILENT (\Answered)`)
			c.ExpectDo("c1", "NOOP", `* 4 FETCH (FLAGS (\Seen))`, "c1 OK *")
			st.local(t, func() {
				c.ExpectDo("c2", "SEARCH ANSWERED", "* SEARCH", "c2 OK SEARCH completed.")
			})
			// A direct client's EXPUNGE, which c2's NOOP brings into the
			// state before c hears of it.
			d.MustOK(`UID STORE 2 +FLAGS.SILENT (\Deleted)`)
			d.MustOK("EXPUNGE") // UIDs 2 and 8
			c2.MustOK("NOOP")
			st.local(t, func() {
				c.ExpectDo("d1", "SEARCH ALL", "* SEARCH 1 3 4 5 6", "d1 OK SEARCH completed.")
				c.ExpectDo("d2", "SEARCH RETURN (COUNT MAX) UNDELETED", `* ESEARCH (TAG "d2") MAX 6 COUNT 5`, "d2 OK SEARCH completed.")
			})
			// The upstream's answer is the same.
			st.upstream(t, func() {
				c.ExpectDo("d3", "SEARCH ALL LARGER 0", "* SEARCH 1 3 4 5 6", "d3 OK *")
			})
			st.local(t, func() {
				c.ExpectDo("d4", "UID SEARCH ALL", "* 7 EXPUNGE", "* 2 EXPUNGE", "* SEARCH 1 3 4 6 7", "d4 OK UID SEARCH completed.")
				c.ExpectDo("d5", "SEARCH ALL", "* SEARCH 1 2 3 4 5", "d5 OK SEARCH completed.")
			})
		})
	}
}

// TestStateModSeq: with CONDSTORE enabled, MODSEQ is decided from the
// proxy's mod-sequences, and the answers carry the MODSEQ of RFC 7162
// 3.1.5 and RFC 4731 3.2, the same as the upstream way gives. A session
// without CONDSTORE goes the upstream way once, which enables it.
func TestStateModSeq(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			st := newStateSetup(t, profile)
			c := imaptest.Login(t, st.proxy.Addr, "alice", "alicepass")
			c.ExpectDo("e", "ENABLE CONDSTORE", "* ENABLED CONDSTORE", "e OK *")
			c.MustOK("SELECT INBOX")
			// The state gives UIDs 1 2 3 4 6 7 8 mod-sequences 2 to 8.
			c.ExpectDo("f", "FETCH 1:* (MODSEQ)",
				"* 1 FETCH (UID 1 MODSEQ (2))", "* 2 FETCH (UID 2 MODSEQ (3))", "* 3 FETCH (UID 3 MODSEQ (4))",
				"* 4 FETCH (UID 4 MODSEQ (5))", "* 5 FETCH (UID 6 MODSEQ (6))", "* 6 FETCH (UID 7 MODSEQ (7))",
				"* 7 FETCH (UID 8 MODSEQ (8))", "f OK *")
			c.MustOK(`STORE 1 +FLAGS.SILENT (\Answered)`)     // 9
			c.MustOK(`UID STORE 6 +FLAGS.SILENT (\Answered)`) // 10
			cases := []struct{ cmd, want string }{
				{"SEARCH MODSEQ 9", "* SEARCH 1 5 (MODSEQ 10)"},
				{"SEARCH MODSEQ 11", "* SEARCH"},
				{"UID SEARCH MODSEQ 8 UNSEEN", "* SEARCH 1 6 8 (MODSEQ 10)"},
				{"SEARCH RETURN (MIN) MODSEQ 9", `* ESEARCH (TAG "t") MIN 1 MODSEQ 9`},
				{"SEARCH RETURN (MAX) MODSEQ 9", `* ESEARCH (TAG "t") MAX 5 MODSEQ 10`},
				{"SEARCH RETURN (MIN MAX) MODSEQ 2 SEEN", `* ESEARCH (TAG "t") MIN 2 MAX 6 MODSEQ 7`},
				{"UID SEARCH RETURN (ALL COUNT) MODSEQ 5 UNSEEN", `* ESEARCH (TAG "t") UID COUNT 3 ALL 1,6,8 MODSEQ 10`},
				{"SEARCH RETURN (COUNT) NOT MODSEQ 5", `* ESEARCH (TAG "t") COUNT 2 MODSEQ 4`},
				{"SEARCH RETURN (ALL) MODSEQ 11", `* ESEARCH (TAG "t")`},
			}
			st.local(t, func() {
				for _, tc := range cases {
					c.ExpectDo("t", tc.cmd, tc.want, "t OK *")
				}
			})
			// The upstream way (LARGER 0 matches every message) agrees.
			st.upstream(t, func() {
				for _, tc := range cases {
					c.ExpectDo("t", tc.cmd+" LARGER 0", tc.want, "t OK *")
				}
			})
			// MODSEQ enables CONDSTORE: condstore's, upstream, once.
			c2 := st.login(t)
			st.upstream(t, func() {
				c2.ExpectDo("g", "SEARCH MODSEQ 9", "* OK [HIGHESTMODSEQ 10] Highest", "* SEARCH 1 5 (MODSEQ 10)", "g OK *")
			})
			st.local(t, func() {
				c2.ExpectDo("h", "SEARCH MODSEQ 9", "* SEARCH 1 5 (MODSEQ 10)", "h OK SEARCH completed.")
			})
		})
	}
}

// TestStateSave: SAVE from the state, and "$" (a UID set by then) decided
// from it too (RFC 5182 2.1, 2.4).
func TestStateSave(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			st := newStateSetup(t, profile)
			c := st.login(t)
			st.local(t, func() {
				c.ExpectDo("a", "SEARCH RETURN (SAVE) FLAGGED", "a OK SEARCH completed.")
				c.ExpectDo("b", "FETCH $ (UID)", "* 3 FETCH (UID 3)", "* 6 FETCH (UID 7)", "b OK *")
				c.ExpectDo("c", "SEARCH RETURN (MIN MAX SAVE) UNSEEN", `* ESEARCH (TAG "c") MIN 1 MAX 7`, "c OK SEARCH completed.")
				c.ExpectDo("d", "UID SEARCH $", "* SEARCH 1 8", "d OK UID SEARCH completed.")
				c.ExpectDo("e", "SEARCH $ DELETED", "* SEARCH 7", "e OK SEARCH completed.")
				c.ExpectDo("f", "UID FETCH $ (UID)", "* 1 FETCH (UID 1)", "* 7 FETCH (UID 8)", "f OK *")
				c.ExpectDo("g", "UID SEARCH RETURN (SAVE COUNT) OR $ SEEN", `* ESEARCH (TAG "g") UID COUNT 5`, "g OK UID SEARCH completed.")
				c.ExpectDo("h", "SEARCH RETURN (ALL) $", `* ESEARCH (TAG "h") ALL 1:2,4,6:7`, "h OK SEARCH completed.")
				c.ExpectDo("i", "SEARCH RETURN (SAVE COUNT) NOT ALL", `* ESEARCH (TAG "i") COUNT 0`, "i OK SEARCH completed.")
				c.ExpectDo("j", "FETCH $ (UID)", "j OK FETCH completed, no messages.")
			})
		})
	}
}

// TestStateRecent: RECENT, NEW and OLD are the session's own \Recent
// (proxy/recent.go), decided from the state too.
func TestStateRecent(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	st := newStateSetup(t, dovecottest.Legacy)
	c := st.login(t)
	st.dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: new\r\n\r\nnew\r\n")) // UID 9
	c.ExpectDo("a", "NOOP", "* 8 EXISTS", "* 1 RECENT", "a OK *")
	st.local(t, func() {
		c.ExpectDo("b", "SEARCH RECENT", "* SEARCH 8", "b OK SEARCH completed.")
		c.ExpectDo("c", "UID SEARCH NEW", "* SEARCH 9", "c OK UID SEARCH completed.")
		c.ExpectDo("d", "SEARCH RETURN (COUNT) OLD", `* ESEARCH (TAG "d") COUNT 7`, "d OK SEARCH completed.")
		c.ExpectDo("e", `STORE 8 +FLAGS.SILENT (\Seen)`, "e OK *")
		c.ExpectDo("f", "SEARCH NEW", "* SEARCH", "f OK SEARCH completed.")
		c.ExpectDo("g", "SEARCH OR RECENT DRAFT", "* SEARCH 5 8", "g OK SEARCH completed.")
	})
}
