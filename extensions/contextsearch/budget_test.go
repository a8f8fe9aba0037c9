package contextsearch_test

import (
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// budgetProxy starts the proxy in front of u with ext in the chain, and
// returns its address.
func budgetProxy(t *testing.T, u upstreamServer, ext *contextsearch.Extension) string {
	p := imaptest.StartProxy(t, u.addr, proxy.Config{
		Extensions: []proxy.Extension{&idle.Extension{}, ext, esearch.New(), condstore.New()},
	})
	return p.Addr
}

// ctxBytes is what a context with a one-letter tag and n UIDs is counted.
func ctxBytes(n int64) int64 { return contextsearch.ContextOverhead + 1 + 4*n }

// waitHeld waits for the budget to come to want: a session's end is
// handled after its client's connection closes, not before.
func waitHeld(t *testing.T, ext *contextsearch.Extension, want int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ext.Held() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Held() = %d, want %d", ext.Held(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBudget: the process-wide budget is shared by all sessions; past it a
// search is answered and refused updates (NOUPDATE), and what a context
// held is given back when it ends: CANCELUPDATE, SELECT of a mailbox
// (even the same one), UNSELECT, LOGOUT, a connection dropped. Once every
// session is gone the budget is back to zero.
func TestBudget(t *testing.T) {
	u := memUpstream(t, 6) // 2, 4 and 6 flagged
	// Two contexts of three UIDs, and 8 bytes to spare: not a third
	// context, however small.
	ext := contextsearch.New(contextsearch.Config{MaxBytes: 2*ctxBytes(3) + 8})
	addr := budgetProxy(t, u, ext)
	c1 := imaptest.Login(t, addr, u.user, u.pass)
	c1.MustOK("SELECT INBOX")
	c2 := imaptest.Login(t, addr, u.user, u.pass)
	c2.MustOK("SELECT INBOX")

	c1.ExpectDo("a", "SEARCH RETURN (UPDATE COUNT) FLAGGED", `* ESEARCH (TAG "a") COUNT 3`, "a OK *")
	c2.ExpectDo("b", "SEARCH RETURN (UPDATE COUNT) UNFLAGGED", `* ESEARCH (TAG "b") COUNT 3`, "b OK *")
	waitHeld(t, ext, 2*ctxBytes(3))
	c2.ExpectDo("c", "SEARCH RETURN (UPDATE COUNT) 1", `* ESEARCH (TAG "c") COUNT 1`,
		`* NO [NOUPDATE "c"] No updates: too many results to keep updating`, "c OK *")
	c1.ExpectDo("d", "UID SEARCH RETURN (UPDATE COUNT) 1", `* ESEARCH (TAG "d") UID COUNT 1`,
		`* NO [NOUPDATE "d"] No updates: too many results to keep updating`, "d OK *")
	waitHeld(t, ext, 2*ctxBytes(3))

	// CANCELUPDATE gives a's bytes back: another session may use them.
	c1.ExpectDo("x", `CANCELUPDATE "a"`, "x OK *")
	waitHeld(t, ext, ctxBytes(3))
	c2.ExpectDo("c", "SEARCH RETURN (UPDATE COUNT) 1", `* ESEARCH (TAG "c") COUNT 1`, "c OK *")
	waitHeld(t, ext, ctxBytes(3)+ctxBytes(1))

	// SELECT of the same mailbox ends the contexts of the one left.
	c2.MustOK("SELECT INBOX")
	waitHeld(t, ext, 0)
	c2.ExpectDo("x", `CANCELUPDATE "b"`, "x NO *")

	// UNSELECT.
	c1.ExpectDo("e", "SEARCH RETURN (UPDATE) ALL", `* ESEARCH (TAG "e")`, "e OK *")
	waitHeld(t, ext, ctxBytes(6))
	c1.MustOK("UNSELECT")
	waitHeld(t, ext, 0)

	// The session's end: LOGOUT, and a connection dropped.
	c1.MustOK("SELECT INBOX")
	c1.ExpectDo("f", "SEARCH RETURN (UPDATE) FLAGGED", `* ESEARCH (TAG "f")`, "f OK *")
	c2.ExpectDo("g", "SEARCH RETURN (UPDATE) UNFLAGGED", `* ESEARCH (TAG "g")`, "g OK *")
	waitHeld(t, ext, 2*ctxBytes(3))
	c1.Do("l", "LOGOUT")
	waitHeld(t, ext, ctxBytes(3))
	c2.Close()
	waitHeld(t, ext, 0)
}

// TestGrowthPastBound: a context that new messages grow past the
// session's bound tells the client of them, then ends with NOUPDATE (RFC
// 5267 4.3.1); its bytes are given back.
func TestGrowthPastBound(t *testing.T) {
	u := memUpstream(t, 3)
	ext := contextsearch.New(contextsearch.Config{MaxSessionBytes: ctxBytes(4)})
	c := imaptest.Login(t, budgetProxy(t, u, ext), u.user, u.pass)
	c.MustOK("SELECT INBOX")
	o := u.outside(t)
	c.ExpectDo("g", "SEARCH RETURN (UPDATE COUNT) ALL", `* ESEARCH (TAG "g") COUNT 3`, "g OK *")
	waitHeld(t, ext, ctxBytes(3))
	o.MustOK(`APPEND INBOX {12}`, "Subject: 4\r\n")
	c.ExpectDo("n1", "NOOP", "* 4 EXISTS", "* 1 RECENT", `* ESEARCH (TAG "g") ADDTO (0 4)`, "n1 OK *")
	waitHeld(t, ext, ctxBytes(4))
	o.MustOK(`APPEND INBOX {12}`, "Subject: 5\r\n")
	c.ExpectDo("n2", "NOOP", "* 5 EXISTS", "* 2 RECENT", `* ESEARCH (TAG "g") ADDTO (0 5)`,
		`* NO [NOUPDATE "g"] No updates: too many results to keep updating`, "n2 OK *")
	waitHeld(t, ext, 0)
	o.MustOK(`APPEND INBOX {12}`, "Subject: 6\r\n")
	c.ExpectDo("n3", "NOOP", "* 6 EXISTS", "* 3 RECENT", "n3 OK *")
	c.ExpectDo("x", `CANCELUPDATE "g"`, "x NO *")
}
