package proxy_test

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// TestDeliverAfterPrunedLog: when the expunge log is pruned past what a
// session's client was told (here: four expunges in one batch, a bound of
// two), the session still reports every expunge, found by comparing the
// client's view with the mailbox; before, it reported only those left in
// the log and the client's sequence numbers went wrong.
func TestDeliverAfterPrunedLog(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "u", "p")
	for i := 0; i < 5; i++ {
		if err := up.Append("u", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := baseConfig(up.Addr)
	cfg.Hub.ExpungeLog = syncstate.LogLimits{MaxExpunges: 2}
	p := startProxy(t, cfg)
	a := imaptest.Login(t, p.Addr, "u", "p")
	a.MustOK("SELECT INBOX")
	b := imaptest.Login(t, p.Addr, "u", "p")
	b.MustOK("SELECT INBOX")
	b.MustOK(`STORE 1:4 +FLAGS.SILENT (\Deleted)`)
	b.MustOK("EXPUNGE")
	var expunges []string
	for _, l := range a.MustOK("NOOP") {
		if strings.HasSuffix(l, " EXPUNGE") {
			expunges = append(expunges, l)
		}
	}
	if want := "* 4 EXPUNGE,* 3 EXPUNGE,* 2 EXPUNGE,* 1 EXPUNGE"; strings.Join(expunges, ",") != want {
		t.Fatalf("expunges told: %q, want %q", expunges, want)
	}
	if got := a.MustOK("FETCH 1:* (UID)"); len(got) != 2 || got[0] != "* 1 FETCH (UID 5)" {
		t.Fatalf("after the expunges: %q, want message 1 to be UID 5", got)
	}
}
