package sort

import (
	"testing"
	"time"
	"unsafe"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// waitHeld waits for cs's budget to satisfy ok: a session's end is
// handled after its client's connection closes.
func waitHeld(t *testing.T, cs *contextsearch.Extension, what string, ok func(int64) bool) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := cs.Held()
		if ok(n) {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("Held() = %d, want %s", n, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestContextSortBudget: a sorted context is counted with its sort keys,
// not its UIDs alone: a bound that a search context of the same five
// messages fits refuses the sorted one (NOUPDATE). The keys of a message
// that leaves the result are given back, and everything when the context
// and the session end.
func TestContextSortBudget(t *testing.T) {
	u := memContextUpstream(t)
	search := int64(contextsearch.ContextOverhead + 2 + 4*5) // tag "s1", five UIDs
	keys := int64(5 * unsafe.Sizeof(folded{}))               // less than five messages' keys take
	tight := contextsearch.New(contextsearch.Config{MaxSessionBytes: search + keys})
	loose := contextsearch.New(contextsearch.Config{})
	for _, cs := range []*contextsearch.Extension{tight, loose} {
		p := imaptest.StartProxy(t, u.addr, proxy.Config{
			Extensions:  []proxy.Extension{cs, esearch.New(), New(Config{Contexts: true}), condstore.New()},
			AccountData: accountdata.NewMemory(),
		})
		c := imaptest.Login(t, p.Addr, u.user, u.pass)
		c.MustOK("SELECT INBOX")
		if cs == tight {
			c.ExpectDo("s1", "SORT RETURN (UPDATE ALL) (ARRIVAL) UTF-8 UNSEEN",
				`* ESEARCH (TAG "s1") ALL 3,2,4,1,5`,
				`* NO [NOUPDATE "s1"] No updates: too many results to keep updating`, "s1 OK *")
			waitHeld(t, cs, "0", func(n int64) bool { return n == 0 })
			c.ExpectDo("s1", "SEARCH RETURN (UPDATE ALL) UNSEEN", `* ESEARCH (TAG "s1") ALL 1:5`, "s1 OK *")
			waitHeld(t, cs, "a search context's", func(n int64) bool { return n == search })
			c.Close()
			waitHeld(t, cs, "0", func(n int64) bool { return n == 0 })
			continue
		}
		o := imaptest.Login(t, u.addr, u.user, u.pass)
		o.MustOK("SELECT INBOX")
		c.ExpectDo("s1", "SORT RETURN (UPDATE ALL) (ARRIVAL) UTF-8 UNSEEN",
			`* ESEARCH (TAG "s1") ALL 3,2,4,1,5`, "s1 OK *")
		full := waitHeld(t, cs, "more than the search's and the keys' structs",
			func(n int64) bool { return n > search+keys })
		o.MustOK(`STORE 2 +FLAGS (\Seen)`)
		c.ExpectDo("n1", "NOOP", `* 2 FETCH (FLAGS (\Seen))`, `* ESEARCH (TAG "s1") REMOVEFROM (2 2)`, "n1 OK *")
		// One UID and one message's keys fewer.
		waitHeld(t, cs, "a message's keys fewer", func(n int64) bool { return n <= full-4-int64(unsafe.Sizeof(folded{})) })
		c.ExpectDo("x", `CANCELUPDATE "s1"`, "x OK *")
		waitHeld(t, cs, "0", func(n int64) bool { return n == 0 })
		c.ExpectDo("s2", "SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL", `* ESEARCH (TAG "s2")`, "s2 OK *")
		waitHeld(t, cs, "more than 0", func(n int64) bool { return n > 0 })
		c.Do("l", "LOGOUT")
		waitHeld(t, cs, "0", func(n int64) bool { return n == 0 })
	}
}
