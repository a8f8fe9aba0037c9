package push

import (
	"crypto/rand"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// respelt is a proxy with push in front of Dovecot (whose delimiter is
// "."), the one mailbox that pushes configured as inbox.Lists, alice's
// device registered, and the account's cursor kept under inbox.Lists, as
// a live watch that started under that spelling, the account's delimiter
// not known, kept it: one of a version before the watch's start learnt
// the delimiter, or one whose own connection the account's budget
// refused (subscribe). The live watch (which starts as INBOX.Lists now,
// and sets the cursor under that name, moved by the test) is stopped
// (parked), so that mail can come between the last look under the old
// spelling and the first look of the watch that restarts under the
// canonical name (respelt.restart).
type respelt struct {
	dc      *dovecottest.Server
	e       *Extension
	ch      *testChannel
	data    accountdata.Store
	account string
	first   cursor // kept under inbox.Lists
}

func startRespelt(t *testing.T) *respelt {
	t.Helper()
	dc, key := startListsDovecot(t)
	r := &respelt{dc: dc, ch: &testChannel{}, data: accountdata.NewMemory(), account: dc.Addr + "\x00alice"}
	var p *imaptest.Proxy
	p, r.e = startWith(t, dc.Addr, Config{CredentialsKey: key, Mailboxes: []string{"inbox.Lists"}}, r.ch, r.data,
		imaptest.Configure(func(c *proxy.Config) { c.Hub.Grace = 10 * time.Millisecond }))
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("XREG")
	c.MustOK("LOGOUT")
	c.Close()
	waitCursorOf(t, r.data, r.account, "INBOX.Lists")
	r.first = r.cursor(t, "INBOX.Lists")
	if r.first.UIDNext != 1 {
		t.Fatalf("first cursor %+v; want UIDNEXT 1", r.first)
	}
	r.e.w.park(r.account, "the test holds the watch stopped")
	imaptest.WaitFor(t, "the watch stopped", func() bool { return r.e.Stats().LiveAccounts == 0 })
	// The hub's watcher of the mailbox goes too (its grace is short): a
	// restart within the grace would subscribe to it again, and Dovecot
	// does not tell a connection idling in a mailbox that another
	// deleted it (TestCursorNotCarriedAcrossUIDValidity).
	imaptest.WaitFor(t, "the hub's watcher gone", func() bool { return p.Srv.Hub().Watchers() == 0 })
	moved := []accountdata.Record{{Key: cursorKey("inbox.Lists"), Value: encodeCursor(r.first)}}
	if err := r.data.Write(r.account, moved, []string{cursorKey("INBOX.Lists")}); err != nil {
		t.Fatal(err)
	}
	return r
}

// restart watches the account again, as a login of its user does
// (unpark): the live watch restarts as INBOX.Lists.
func (r *respelt) restart(t *testing.T) {
	t.Helper()
	r.e.w.unpark(r.account)
	imaptest.WaitFor(t, "the watch restarted", func() bool {
		r.e.w.mu.Lock()
		defer r.e.w.mu.Unlock()
		acct := r.e.w.accts[r.account]
		return acct.sub != nil && acct.boxes[0] == "INBOX.Lists"
	})
}

func (r *respelt) cursor(t *testing.T, mailbox string) cursor {
	t.Helper()
	return cursorIn(t, r.data, r.account, mailbox)
}

// expect waits for the registration's pushes to be want, exactly, and
// for the look that queued them to be done with the store (settle).
func (r *respelt) expect(t *testing.T, want ...Event) {
	t.Helper()
	expectPushes(t, r.ch, want...)
	settle(r.e, r.account)
}

// settle waits for a look at the account under way to finish: a push
// goes out from memory as soon as it is queued, before the look that
// queued it has written the cursor and deleted those under other
// spellings (observe holds the account's lock throughout).
func settle(e *Extension, account string) {
	unlock := e.lock(account)
	unlock()
}

// expectPushes waits for ch's pushes to be want, exactly (the fields a
// test can know: Mailbox, New, Messages, UIDNext), in order.
func expectPushes(t *testing.T, ch *testChannel, want ...Event) {
	t.Helper()
	imaptest.WaitFor(t, strconv.Itoa(len(want))+" pushes", func() bool { return len(ch.deliveries()) >= len(want) })
	got := ch.deliveries()
	if len(got) != len(want) {
		t.Fatalf("%d pushes, want %d: %+v", len(got), len(want), got)
	}
	for i, d := range got {
		ev := d.ev
		if ev.Mailbox != want[i].Mailbox || ev.New != want[i].New || ev.Messages != want[i].Messages || ev.UIDNext != want[i].UIDNext {
			t.Errorf("push %d: %+v; want %+v", i, ev, want[i])
		}
	}
}

// TestCursorCarriedToCanonicalName: mail that comes between the last
// look of a live watch under inbox.Lists and the first look of the watch
// that restarts as INBOX.Lists (the account's delimiter now known) is
// pushed once. The cursor was kept per spelling: the restarted watch found
// none under INBOX.Lists, took the mailbox as it was for its starting
// point, and the message was never pushed. The cursor under the old
// spelling goes; the next message pushes once, nothing twice.
func TestCursorCarriedToCanonicalName(t *testing.T) {
	r := startRespelt(t)
	r.dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: between\r\n\r\nx\r\n"))
	r.restart(t)
	r.expect(t, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 1, UIDNext: 2})
	if _, err := r.data.Get(r.account, cursorKey("inbox.Lists")); err != accountdata.ErrNotFound {
		t.Errorf("cursor under inbox.Lists after the restart: %v; want it gone", err)
	}
	if c := r.cursor(t, "INBOX.Lists"); c != (cursor{r.first.UIDValidity, 2}) {
		t.Errorf("cursor under INBOX.Lists %+v; want UIDVALIDITY %d UIDNEXT 2", c, r.first.UIDValidity)
	}
	r.dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: after\r\n\r\ny\r\n"))
	r.expect(t, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 1, UIDNext: 2},
		Event{Mailbox: "INBOX.Lists", New: 1, Messages: 2, UIDNext: 3})
}

// TestCursorNotCarriedAcrossUIDValidity: the mailbox is deleted and made
// anew (a new UIDVALIDITY) while the watch is stopped, and gets two
// messages: the cursor kept under inbox.Lists is of the old mailbox and
// is not carried over (it would announce both as new mail); the restarted
// watch starts from the new mailbox as it is, as after any new
// UIDVALIDITY, and the old cursor goes. The next message pushes once.
func TestCursorNotCarriedAcrossUIDValidity(t *testing.T) {
	r := startRespelt(t)
	newValidity := recreateLists(t, r.dc, r.first.UIDValidity)
	r.dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: one\r\n\r\nx\r\n"))
	r.dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: two\r\n\r\ny\r\n"))
	r.restart(t)
	waitCursorOf(t, r.data, r.account, "INBOX.Lists")
	if c := r.cursor(t, "INBOX.Lists"); strconv.FormatUint(uint64(c.UIDValidity), 10) != newValidity || c.UIDNext != 3 {
		t.Errorf("cursor under INBOX.Lists %+v; want UIDVALIDITY %s UIDNEXT 3", c, newValidity)
	}
	if _, err := r.data.Get(r.account, cursorKey("inbox.Lists")); err != accountdata.ErrNotFound {
		t.Errorf("cursor under inbox.Lists after the restart: %v; want it gone", err)
	}
	r.dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: three\r\n\r\nz\r\n"))
	r.expect(t, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 3, UIDNext: 4})
}

// startListsDovecot starts Dovecot (full profile) where alice has the
// mailbox INBOX.Lists, and returns it with a fresh credentials key.
func startListsDovecot(t *testing.T) (*dovecottest.Server, []byte) {
	t.Helper()
	dc := dovecottest.Start(t, dovecottest.Full)
	direct := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	direct.MustOK("CREATE INBOX.Lists")
	direct.MustOK("LOGOUT")
	direct.Close()
	key := make([]byte, KeySize)
	rand.Read(key)
	return dc, key
}

// recreateLists deletes INBOX.Lists and creates it again directly on dc,
// checks that its UIDVALIDITY is not old any more, and returns the new one
// as Dovecot writes it.
func recreateLists(t *testing.T, dc *dovecottest.Server, old uint32) string {
	t.Helper()
	direct := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	defer direct.Close()
	direct.MustOK("DELETE INBOX.Lists")
	direct.MustOK("CREATE INBOX.Lists")
	st := direct.MustOK("STATUS INBOX.Lists (UIDVALIDITY)")
	m := regexp.MustCompile(`UIDVALIDITY (\d+)`).FindStringSubmatch(st[0])
	if m == nil || m[1] == strconv.FormatUint(uint64(old), 10) {
		t.Fatalf("STATUS after the new CREATE: %q; want another UIDVALIDITY than %d", st, old)
	}
	direct.MustOK("LOGOUT")
	return m[1]
}
