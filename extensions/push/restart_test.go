package push

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestRestartPushesMailOfTheDowntime: the mailbox that pushes is
// configured as inbox.Lists, another spelling of INBOX.Lists (Dovecot's
// delimiter is "."). A first proxy keeps its cursor under INBOX.Lists
// (its session taught it the delimiter) and pushes one message; the
// proxy stops, a message is delivered while it is down, and a new proxy
// starts on the same data directory, where nothing has taught it the
// delimiter yet. The message of the downtime is pushed exactly once, the
// earlier one not again, and the next one once.
//
// The new proxy's live watch used to start as inbox.Lists, the delimiter
// unknown: its first look found no cursor under that spelling (it may be
// another mailbox than INBOX.Lists), took the mailbox as it was for its
// starting point, and the message of the downtime was never pushed.
func TestRestartPushesMailOfTheDowntime(t *testing.T) {
	dc, key := startListsDovecot(t)
	cfg := Config{CredentialsKey: key, Mailboxes: []string{"inbox.Lists"}}
	account := dc.Addr + "\x00alice"
	dir := t.TempDir()
	data, err := accountdata.OpenBolt(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := &testChannel{}
	p, _ := startWith(t, dc.Addr, cfg, ch, data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("EXAMINE inbox.Lists") // the session learns the delimiter
	c.MustOK("XREG")
	c.MustOK("LOGOUT")
	c.Close()
	waitCursorOf(t, data, account, "INBOX.Lists")
	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: before\r\n\r\nx\r\n"))
	expectPushes(t, ch, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 1, UIDNext: 2})
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := data.Close(); err != nil {
		t.Fatal(err)
	}

	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: downtime\r\n\r\ny\r\n"))

	data, err = accountdata.OpenBolt(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	ch = &testChannel{}
	p, e := startWith(t, dc.Addr, cfg, ch, data)
	defer p.Shutdown() // before the store closes
	expectPushes(t, ch, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 2, UIDNext: 3})
	settle(e, account)
	e.w.mu.Lock()
	live := e.w.accts[account].boxes[0]
	e.w.mu.Unlock()
	if live != "INBOX.Lists" {
		t.Errorf("the live watch is of %q; want INBOX.Lists", live)
	}
	if _, err := data.Get(account, cursorKey("inbox.Lists")); err != accountdata.ErrNotFound {
		t.Errorf("cursor under inbox.Lists: %v; want none", err)
	}
	v, err := data.Get(account, cursorKey("INBOX.Lists"))
	if err != nil {
		t.Fatal(err)
	}
	if cur, err := decodeCursor(v); err != nil || cur.UIDNext != 3 {
		t.Errorf("cursor under INBOX.Lists %+v (%v); want UIDNEXT 3", cur, err)
	}
	dc.Append(t, "alice", "alicepass", "INBOX.Lists", nil, []byte("Subject: after\r\n\r\nz\r\n"))
	expectPushes(t, ch, Event{Mailbox: "INBOX.Lists", New: 1, Messages: 2, UIDNext: 3},
		Event{Mailbox: "INBOX.Lists", New: 1, Messages: 3, UIDNext: 4})
}
