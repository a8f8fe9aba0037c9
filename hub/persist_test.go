package hub_test

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestStateSurvivesRestart: a hub with a Store picks up the saved state
// after a restart, so mod-sequences keep growing and the changes made while
// the proxy was down are exactly the changes since the old HIGHESTMODSEQ.
func TestStateSurvivesRestart(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.AddUser("u", "p")
	for i := 0; i < 3; i++ {
		up.Append("u", "INBOX", nil, []byte("Subject: x\r\n\r\nbody\r\n"))
	}
	cfg := &upstream.Config{Addr: up.Addr}
	dial := func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, cfg, "u", "p")
	}
	dir := t.TempDir()
	key := hub.Key{Account: "acct", Mailbox: "INBOX"}
	ctx := context.Background()

	run := func() (*statestore.Bolt, *hub.Hub, *hub.Subscription) {
		store, err := statestore.OpenBolt(dir)
		if err != nil {
			t.Fatal(err)
		}
		h := hub.New(hub.Config{Store: store, Grace: time.Millisecond})
		sub, err := h.Watch(ctx, key, dial, func() {})
		if err != nil {
			t.Fatal(err)
		}
		return store, h, sub
	}

	store, h, sub := run()
	first := sub.State().Snapshot()
	if len(first.UIDs) != 3 || first.Highest < 4 {
		t.Fatalf("first run: %d messages, HIGHESTMODSEQ %d", len(first.UIDs), first.Highest)
	}
	sub.Close()
	h.Close()
	store.Close()

	// While the proxy is down: one new message, one flag change.
	up.Append("u", "INBOX", []imap.Flag{imap.FlagSeen}, []byte("Subject: y\r\n\r\nbody\r\n"))
	c, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Select(ctx, "INBOX", false, nil)
	if _, err := c.Exec(ctx, `UID STORE 1 +FLAGS (\Flagged)`, nil); err != nil {
		t.Fatal(err)
	}
	c.Logout()

	store, h, sub = run()
	defer store.Close()
	defer h.Close()
	defer sub.Close()
	second := sub.State().Snapshot()
	if second.Highest <= first.Highest {
		t.Fatalf("HIGHESTMODSEQ went from %d to %d across a restart", first.Highest, second.Highest)
	}
	var got []syncstate.Change
	sub.State().ChangesSince(first.Highest, func(c syncstate.Change) { got = append(got, c) })
	if len(got) != 2 || got[0].UID != 1 || got[1].UID != 4 {
		t.Fatalf("changes since %d: %+v; want UID 1 (flags) and UID 4 (new)", first.Highest, got)
	}
	if f := got[0].Flags; len(f) != 1 || f[0] != `\Flagged` {
		t.Fatalf("UID 1 flags %v, want [\\Flagged]", f)
	}
}
