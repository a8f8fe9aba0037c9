package integration

import (
	"regexp"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

var ntHighestOfRE = regexp.MustCompile(`HIGHESTMODSEQ (\d+)`)

// TestNotifyModSeqAfterFlagChangeOff: over an upstream with CONDSTORE, a
// client sets NOTIFY with FlagChange, then without, then with it again
// and STATUS: the STATUS must carry the mailbox's current HIGHESTMODSEQ
// (the one the proxy answers STATUS with), not the one of the first SET,
// which the account watcher kept while nobody followed mod-sequences (a
// reviewer's finding).
func TestNotifyModSeqAfterFlagChangeOff(t *testing.T) {
	e := ntStartDovecot(t, dovecottest.Full, 1)
	px := e.proxy(t, notify.Config{})
	u := e.user(t)
	a := px.login(t, u)
	a.MustOK("CREATE foo")
	a.MustOK(ntAppend("foo", "one"))
	set := func(s string) string {
		for _, l := range a.MustOK(s) {
			if m := ntHighestOfRE.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
		return ""
	}
	first := set("NOTIFY SET STATUS (mailboxes foo (MessageNew MessageExpunge FlagChange))")
	a.MustOK("NOTIFY SET (mailboxes foo (MessageNew MessageExpunge))")
	b := px.login(t, u)
	b.MustOK("SELECT foo")
	b.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	time.Sleep(time.Second) // the poke's poll, and a timed one
	var truth string
	for _, l := range px.login(t, u).MustOK("STATUS foo (HIGHESTMODSEQ)") {
		if m := ntHighestOfRE.FindStringSubmatch(l); m != nil {
			truth = m[1]
		}
	}
	got := set("NOTIFY SET STATUS (mailboxes foo (MessageNew MessageExpunge FlagChange))")
	if got != truth {
		t.Fatalf("NOTIFY SET STATUS says HIGHESTMODSEQ %s, STATUS says %s (first SET said %s)", got, truth, first)
	}
}
