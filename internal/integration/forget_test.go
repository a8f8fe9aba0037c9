package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

// TestStatesOfGoneMailboxesDropped: a mailbox's saved state (a record per
// message) went with neither DELETE nor RENAME, so a client renaming a
// mailbox again and again, selecting it under each name, left a full copy
// of its state in the Store each time (a second reviewer's finding; state
// is shared by every account, disk the client could fill). Once the
// upstream answers OK, the states of the names that went are dropped: the
// renamed mailbox's, those below it (renamed with it), the deleted
// mailbox's; a state still watched goes when its watcher stops. The
// others' stay.
func TestStatesOfGoneMailboxesDropped(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	const n = 300
	dc.FillMailbox(t, "alice", "big0", n, func(i int) []byte {
		return []byte(fmt.Sprintf("Subject: m%d\r\n\r\nx\r\n", i))
	})
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) {
		c.Extensions = []proxy.Extension{idle.New(), condstore.New()}
		c.Hub.Store = store
		c.Hub.Grace = time.Nanosecond // a watcher stops as its last session leaves
	})
	c := imaptest.Login(t, addr, "alice", "alicepass")
	m := regexp.MustCompile(`^\* LIST \([^)]*\) "(.)"`).FindStringSubmatch(c.MustOK(`LIST "" ""`)[0])
	if m == nil {
		t.Fatal("no hierarchy delimiter")
	}
	delim := m[1]
	c.MustOK("CREATE keep")
	c.MustOK("SELECT keep")
	c.MustOK("UNSELECT")

	// saved lists the mailbox names with a saved state.
	saved := func() []string {
		keys, err := store.Keys("")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, k := range keys {
			names = append(names, k[strings.LastIndexByte(k, 0)+1:])
		}
		return names
	}
	// waitSaved waits for the saved names to be want (watchers stop and
	// drop what they held a moment after their last session left).
	waitSaved := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := strings.Join(saved(), " ")
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("saved states of %q, want %q", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Renamed five times, selected under each name: one state at a time.
	const k = 5
	for i := range k {
		c.MustOK(fmt.Sprintf("SELECT big%d", i))
		c.MustOK("UNSELECT")
		c.MustOK(fmt.Sprintf("RENAME big%d big%d", i, i+1))
	}
	waitSaved("keep")
	c.MustOK(fmt.Sprintf("SELECT big%d", k))
	waitSaved(fmt.Sprintf("big%d keep", k))

	// Deleted while selected by another session: dropped once its
	// watcher stops.
	d := imaptest.Login(t, addr, "alice", "alicepass")
	d.MustOK(fmt.Sprintf("DELETE big%d", k))
	c.Close()
	waitSaved("keep")

	// A parent renamed: the states of the mailboxes below it go too.
	p, child := "parent", "parent"+delim+"child"
	d.MustOK("CREATE " + p)
	d.MustOK("CREATE " + child)
	d.MustOK("SELECT " + child)
	d.MustOK("SELECT " + p)
	d.MustOK("UNSELECT")
	waitSaved("keep " + p + " " + child)
	d.MustOK("RENAME " + p + " moved")
	waitSaved("keep")
	if lines := d.MustOK(`STATUS moved` + delim + `child (MESSAGES)`); !strings.Contains(lines[0], "MESSAGES 0") {
		t.Fatalf("the child did not move: %q", lines)
	}
}
