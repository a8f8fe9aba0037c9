package proxy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestStoreModifierLiteralNotSmuggled: a literal inside STORE's modifier
// list was written upstream inline as a synchronising literal nobody waited
// for, and its data, after the upstream refused the STORE, ran as commands
// of their own (a reviewer's finding): here a CREATE the proxy never saw,
// and a SELECT that left the pooled connection in another mailbox than the
// pool believed, so the account's next session's STORE ran there. The
// command is refused now and nothing reaches the upstream.
func TestStoreModifierLiteralNotSmuggled(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	if err := up.Append("alice", "INBOX", nil, []byte("Subject: inbox\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	d := imaptest.Login(t, up.Addr, "alice", "secret")
	d.MustOK("CREATE Other")
	if err := up.Append("alice", "Other", nil, []byte("Subject: other\r\n\r\nkeep me\r\n")); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, baseConfig(up.Addr))
	victim := imaptest.Dial(t, p.Addr)
	victim.LoginTagged("alice", "secret")
	victim.MustOK("SELECT INBOX")
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	a.MustOK("SELECT INBOX")
	for i, data := range []string{"x1 CREATE Smuggled\r\nx2 NOOP", "x3 SELECT Other"} {
		tag := fmt.Sprintf("a%d", i)
		a.Write(fmt.Sprintf("%s STORE 1 (X {%d+}\r\n%s) +FLAGS (\\Seen)\r\n", tag, len(data), data))
		a.Expect(tag + " BAD Error in IMAP command STORE: a literal is not supported there.")
	}
	if got := victim.Cmd(`STORE 1 +FLAGS (\Deleted)`); strings.Contains(strings.Join(got, "\n"), "UIDVALIDITY") || !strings.HasPrefix(imaptest.Tagged(got), "OK") {
		t.Errorf("the other session's STORE: %q", got)
	}
	if list := d.MustOK(`LIST "" *`); strings.Contains(strings.Join(list, "\n"), "Smuggled") {
		t.Errorf("a refused STORE created a mailbox upstream: %q", list)
	}
	d.MustOK("EXAMINE Other")
	if got := d.MustOK("FETCH 1 FLAGS"); strings.Contains(got[0], `\Deleted`) || strings.Contains(got[0], `\Seen`) {
		t.Errorf("Other's message, which nobody stored to: %q", got)
	}
}
