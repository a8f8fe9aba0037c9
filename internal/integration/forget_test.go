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
	addr, store := startForgetting(t, dc)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	m := regexp.MustCompile(`^\* LIST \([^)]*\) "(.)"`).FindStringSubmatch(c.MustOK(`LIST "" ""`)[0])
	if m == nil {
		t.Fatal("no hierarchy delimiter")
	}
	delim := m[1]
	c.MustOK("CREATE keep")
	c.MustOK("SELECT keep")
	c.MustOK("UNSELECT")

	waitSaved := func(want string) { t.Helper(); waitStates(t, store, want) }

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

// waitStates waits for the names of the mailboxes with a saved state in
// store to be want (space-separated, sorted): watchers stop and drop or
// save what they held a moment after their last session left.
func waitStates(t *testing.T, store statestore.Store, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		keys, err := store.Keys("")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, k := range keys {
			names = append(names, k[strings.LastIndexByte(k, 0)+1:])
		}
		got := strings.Join(names, " ")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("saved states of %q, want %q", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStatesOfMailboxesDeletedOutsideDropped: a mailbox deleted outside
// the proxy (directly on Dovecot) loses its saved state too, once the
// proxy learns it is gone: at a SELECT the upstream refuses (Dovecot's NO
// has no code) and whose LIST has no such mailbox, or when the watcher of
// a watched one finds it so. Before, such states stayed in the Store for
// good, and the sessions that had it selected were answered NO
// [UNAVAILABLE] for every command.
func TestStatesOfMailboxesDeletedOutsideDropped(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, store := startForgetting(t, dc)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	for _, m := range []string{"keep", "out1", "out2"} {
		c.MustOK("CREATE " + m)
		c.MustOK("SELECT " + m)
	}
	c.MustOK("UNSELECT")
	waitStates(t, store, "keep out1 out2")

	// Not watched: the next SELECT finds it gone.
	d.MustOK("DELETE out1")
	if got := imaptest.Tagged(c.Cmd("SELECT out1")); !strings.HasPrefix(got, "NO ") {
		t.Fatalf("SELECT of a mailbox deleted outside: %q", got)
	}
	waitStates(t, store, "keep out2")
	// A name that never existed costs nothing and drops nothing.
	if got := imaptest.Tagged(c.Cmd("SELECT never")); !strings.HasPrefix(got, "NO ") {
		t.Fatalf("SELECT never: %q", got)
	}
	waitStates(t, store, "keep out2")

	// Watched when it goes: the watcher finds it gone, and the sessions
	// that have it selected are ended, as Dovecot ends its own (they
	// used to stay, every command answered NO [UNAVAILABLE] "try again
	// later", for good). One waits in IDLE, one sends NOOPs.
	idler := imaptest.Login(t, addr, "alice", "alicepass")
	idler.MustOK("SELECT out2")
	idler.Send("i IDLE")
	idler.Expect("+ idling")
	w := imaptest.Login(t, addr, "alice", "alicepass")
	w.MustOK("SELECT out2")
	d.MustOK("DELETE out2")
	if l, err := idler.TryReadLine(10 * time.Second); l != byeGone {
		t.Errorf("in IDLE: %q (%v), want %q", l, err, byeGone)
	}
	noopUntil(t, w, byeGone)
	waitStates(t, store, "keep")
}

// startForgetting starts the proxy in front of dc with IDLE, CONDSTORE and
// a bbolt state store, whose watchers stop as their last session leaves.
func startForgetting(t *testing.T, dc *dovecottest.Server) (string, statestore.Store) {
	t.Helper()
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
	return addr, store
}
