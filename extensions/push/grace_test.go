package push

import (
	"strconv"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestRestartInGraceSeesMailboxMadeAnew: the live watch of INBOX.Lists
// stops (parked) and restarts while the hub's watcher of the mailbox is
// in its grace period (a minute here, so that the restart is surely
// within it), and meanwhile the mailbox is
// deleted and created again directly on Dovecot (a new UIDVALIDITY) and
// gets a message. The restarted watch takes the new UIDVALIDITY: the
// cursor of the old mailbox goes, the new one starts over at the mailbox
// as it is (the message of the gap is not announced, as after any new
// UIDVALIDITY), nothing of the old mailbox is pushed again, and the next
// message is pushed exactly once.
//
// The restart used to subscribe to the watcher in its grace and look at
// the state it had: Dovecot's IDLE on that watcher's connection does not
// report that another connection deleted the mailbox, so the first look
// kept the old UIDVALIDITY and no later message was pushed.
func TestRestartInGraceSeesMailboxMadeAnew(t *testing.T) {
	// Dovecot's default layout, the mailbox's files under its name: with
	// LAYOUT=index (dovecottest.Options.IndexLayout) the watcher's
	// connection hears of the deletion itself.
	dc, key := startListsDovecot(t)
	ch := &testChannel{}
	data := accountdata.NewMemory()
	account := dc.Addr + "\x00alice"
	p, e := startWith(t, dc.Addr, Config{CredentialsKey: key, Mailboxes: []string{"INBOX.Lists"}}, ch, data,
		imaptest.Configure(func(c *proxy.Config) { c.Hub.Grace = time.Minute }))
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("XREG")
	c.MustOK("LOGOUT")
	c.Close()
	waitCursorOf(t, data, account, "INBOX.Lists")
	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: old\r\n\r\nx\r\n"))
	expectPushes(t, ch, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 1, UIDNext: 2})
	settle(e, account)
	old := cursorIn(t, data, account, "INBOX.Lists")

	e.w.park(account, "the test holds the watch stopped")
	imaptest.WaitFor(t, "the watch stopped", func() bool { return e.Stats().LiveAccounts == 0 })
	if n := p.Srv.Hub().Watchers(); n != 1 {
		t.Fatalf("%d hub watchers after the watch stopped; want 1 (in its grace)", n)
	}
	newValidity := recreateLists(t, dc, old.UIDValidity)
	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: gap\r\n\r\ny\r\n"))

	e.w.unpark(account)
	imaptest.WaitFor(t, "the cursor of the new mailbox", func() bool {
		v, err := data.Get(account, cursorKey("INBOX.Lists"))
		if err != nil {
			return false
		}
		c, err := decodeCursor(v)
		return err == nil && strconv.FormatUint(uint64(c.UIDValidity), 10) == newValidity
	})
	settle(e, account)
	if c := cursorIn(t, data, account, "INBOX.Lists"); c.UIDNext != 2 {
		t.Errorf("cursor %+v; want UIDVALIDITY %s UIDNEXT 2", c, newValidity)
	}
	if n := p.Srv.Hub().Watchers(); n != 1 {
		t.Errorf("%d hub watchers after the restart; want 1", n)
	}
	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: new\r\n\r\nz\r\n"))
	expectPushes(t, ch, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 1, UIDNext: 2},
		Event{Mailbox: "INBOX.Lists", New: 1, Messages: 2, UIDNext: 3})
}

// cursorIn returns the account's cursor in mailbox as stored.
func cursorIn(t *testing.T, data accountdata.Store, account, mailbox string) cursor {
	t.Helper()
	v, err := data.Get(account, cursorKey(mailbox))
	if err != nil {
		t.Fatalf("cursor of %s: %v", mailbox, err)
	}
	c, err := decodeCursor(v)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
