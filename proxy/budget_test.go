package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestBudgetPassiveMailbox: with a budget of two upstream connections per
// account, two sessions' watchers fill it; a command of the first session
// takes its mailbox's watcher (the least recently used, no idling
// session), and that mailbox, now unwatched, is brought up to date before
// each of the session's commands: a message delivered meanwhile is
// reported at the next command, whatever the upstream's IDLE timing. The
// account never holds more than its budget.
func TestBudgetPassiveMailbox(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Pool.MaxConnsPerAccount = 2
	cfg.Hub.PollInterval = time.Hour // no polling: only the budget's refreshes
	p := startProxy(t, cfg)
	budget := p.Srv.Pool().Budget()
	account := up.Addr + "\x00alice"
	check := func(when string) {
		t.Helper()
		if u := budget.Used(account); u > 2 {
			t.Fatalf("%s: %d upstream connections; the budget is 2", when, u)
		}
	}
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	a.MustOK("CREATE Other")
	a.MustOK("EXAMINE INBOX")
	check("A examined INBOX")
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	b.MustOK("SELECT Other")
	check("B selected Other")
	a.MustOK("UID SEARCH ALL") // its lease takes INBOX's watcher
	check("A's FETCH")
	if err := up.Append("alice", "INBOX", nil, testMessage("new", 200)); err != nil {
		t.Fatal(err)
	}
	got := a.MustOK("UID SEARCH ALL")
	if !slicesContains(got, "* 1 EXISTS") {
		t.Fatalf("UID SEARCH after a delivery to the unwatched INBOX: %q", got)
	}
	check("A's second FETCH")
	// B's mailbox is still served.
	if err := up.Append("alice", "Other", nil, testMessage("other", 200)); err != nil {
		t.Fatal(err)
	}
	if got := b.MustOK("NOOP"); !slicesContains(got, "* 1 EXISTS") {
		t.Fatalf("B's NOOP after a delivery to Other: %q", got)
	}
	check("B's NOOP")
}

func slicesContains(lines []string, s string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, s) {
			return true
		}
	}
	return false
}

// TestBudgetWaitBounded: with the account's only connection held by a
// command that never ends (an APPEND whose client stalls before its
// literal), another session's command waits for room in the budget at
// most the upstream timeout and is then answered NO [UNAVAILABLE]; it
// waited for as long as the stalled command lasted (a reviewer's finding:
// the wait ran on the server's context, which has no deadline).
func TestBudgetWaitBounded(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Pool.MaxConnsPerAccount = 1
	cfg.Upstream.Timeout = 300 * time.Millisecond
	p := startProxy(t, cfg)
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	a.Send("a1 APPEND INBOX {20}")
	a.Expect("+ *") // the upstream's invitation: the connection is A's
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret") // verified a moment ago: no connection needed
	start := time.Now()
	got := imaptest.Tagged(b.Cmd(`LIST "" "*"`))
	if !strings.HasPrefix(got, "NO [UNAVAILABLE]") {
		t.Fatalf("LIST while the only connection is held: %q", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("answered after %v", d)
	}
	a.Send("Subject: x\r\n\r\nbody\r\n"[:20])
	a.Expect("a1 OK *")
	b.MustOK(`LIST "" "*"`) // the connection is back
}
