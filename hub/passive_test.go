package hub

import (
	"context"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestPassiveBoxKeepsLentConnection: a box that lost its watcher to the
// account's budget refreshes on a lent connection when asked; while every
// connection the budget allows is taken it gives that back (the box stays
// passive), and once the account can spare it, it keeps it as its
// watcher's: the box is active again, on no new connection, and hears of
// outside changes by itself.
func TestPassiveBoxKeepsLentConnection(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	pool := upstream.NewPool(upstream.PoolConfig{MaxConnsPerAccount: 2})
	t.Cleanup(pool.Close)
	budget := pool.Budget()
	h := testHub(t, Config{Pool: pool, PollInterval: time.Hour})
	cfg := &upstream.Config{Addr: e.relay.addr(), Timeout: 5 * time.Second}
	dial := func(ctx context.Context) (*upstream.Conn, error) {
		c, _, err := budget.DialLogin(ctx, cfg, "alice", "alice", "alicepass")
		return c, err
	}
	n := newNotifier()
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, dial, n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := sub.State()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Two connections of the account's two are wanted elsewhere: the
	// second takes the watcher's.
	rel1, err := budget.Acquire(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer rel1()
	rel2, err := budget.Acquire(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer rel2()
	waitFor(t, n, "the box to go passive", sub.Passive)

	// One of them is given back: the refresh dials into the room, and
	// then every connection of the account is taken again. The lent
	// connection goes to the pool.
	rel1()
	if err := sub.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !sub.Passive() {
		t.Fatal("the box kept a connection the account could not spare")
	}
	if n := pool.IdleFor("alice"); n != 1 {
		t.Fatalf("%d idle connections after the refresh, want 1", n)
	}

	// The other too: the refresh borrows the pooled connection and keeps
	// it.
	rel2()
	if err := sub.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, n, "the box to be active again", func() bool { return !sub.Passive() })
	if n, used := pool.IdleFor("alice"), budget.Used("alice"); n != 0 || used != 1 {
		t.Fatalf("%d idle and %d open connections with the box active again, want 0 and 1", n, used)
	}
	e.relay.waitIdle(t)
	e.appendMsg("alice", "INBOX", "two")
	waitFor(t, n, "the new message, pushed to the watcher", func() bool { return len(st.Snapshot().UIDs) == 2 })
}
