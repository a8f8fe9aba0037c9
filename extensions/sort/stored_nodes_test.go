package sort

import (
	"fmt"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestStoredBoundAcrossNodes: an account's record count, once known, was
// kept for good. In a cluster the account moves between nodes that share
// the records (cluster/pgdata): another node stores records of its own,
// and when the account comes back the count kept here is too low, letting
// the account past MaxStored by what the others stored meanwhile (at
// worst once per node). The count is forgotten when the account's last
// session here ends. Two proxies sharing one store stand in for two nodes
// serving the account in turn.
func TestStoredBoundAcrossNodes(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	const bound = 5
	data := accountdata.NewMemory()
	node := func() *imaptest.Proxy {
		return imaptest.StartProxy(t, up.Addr, proxy.Config{
			Extensions:  []proxy.Extension{esearch.New(), New(Config{MaxStored: bound}), condstore.New()},
			AccountData: data,
		})
	}
	n1, n2 := node(), node()
	c := imaptest.Login(t, n1.Addr, "alice", "secret")
	for i, box := range []string{"A", "B", "C"} {
		c.MustOK("CREATE " + box)
		for _, m := range testMailbox[:2+i] {
			msg := m.header + "\r\n" + m.body + "\r\n"
			c.MustOK(fmt.Sprintf(`APPEND %s () "%s" {%d}`, box, m.internal, len(msg)), msg)
		}
	}
	c.MustOK("LOGOUT")
	records := func() int {
		n := 0
		data.Accounts("sort/", func(a string) bool {
			k, _ := accountdata.Count(data, a, "sort/")
			n += k
			return true
		})
		return n
	}
	// One session at a time, through n1, n2, n1: as an account moving
	// between nodes.
	for i, at := range []*imaptest.Proxy{n1, n2, n1} {
		box := []string{"A", "B", "C"}[i]
		s := imaptest.Login(t, at.Addr, "alice", "secret")
		s.MustOK("SELECT " + box)
		s.MustOK("SORT (SUBJECT) UTF-8 ALL")
		s.MustOK("LOGOUT")
		imaptest.WaitFor(t, "the session to end", func() bool { return at.Srv.Sessions() == 0 })
	}
	if n := records(); n > bound {
		t.Errorf("%d sort records stored, bound %d", n, bound)
	}
}
