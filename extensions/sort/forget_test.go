package sort

import (
	"fmt"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestForgetCanonicalName: Dovecot takes inbox.x for INBOX.x (RFC 3501
// 5.1: INBOX in any case, at the head of its hierarchy too), and the
// keys of its messages are kept under the mailbox's canonical name; a
// DELETE or RENAME spelling it with INBOX in another case looked for
// them under the client's spelling and left them for good (the
// mailbox's next load, which deletes them, may never come), counted
// against the account's bound. A RENAME takes the mailboxes below along
// (RFC 3501 6.3.5), and left their keys likewise.
func TestForgetCanonicalName(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy) // no SORT: the proxy's
	data := accountdata.NewMemory()
	ext := New(Config{})
	p := imaptest.StartProxy(t, dc.Addr, proxy.Config{
		Extensions:  []proxy.Extension{ext, condstore.New()},
		AccountData: data,
	})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	records := func() int {
		n := 0
		data.Accounts("sort/", func(a string) bool {
			k, _ := accountdata.Count(data, a, "sort/")
			n += k
			return true
		})
		return n
	}
	for _, box := range []string{"INBOX.del", "INBOX.ren", "INBOX.ren.kid"} {
		c.MustOK("CREATE " + box)
		for _, m := range testMailbox[:2] {
			msg := m.header + "\r\n" + m.body + "\r\n"
			c.MustOK(fmt.Sprintf("APPEND %s {%d+}\r\n%s", box, len(msg), msg))
		}
		c.MustOK("SELECT " + box)
		c.MustOK("SORT (ARRIVAL) UTF-8 ALL")
		c.MustOK("UNSELECT")
	}
	if n := records(); n != 6 {
		t.Fatalf("%d records after sorting three mailboxes of two messages, want 6", n)
	}
	c.MustOK("DELETE inbox.del")
	if n := records(); n != 4 {
		t.Errorf("%d records after DELETE inbox.del, want 4 (INBOX.ren's and its child's)", n)
	}
	c.MustOK("RENAME Inbox.ren INBOX.moved")
	if n := records(); n != 0 {
		t.Errorf("%d records after RENAME Inbox.ren, want none (nor its child's)", n)
	}
}
