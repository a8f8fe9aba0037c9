package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestUnusedAccountLeavesNoRow: a login routes (and so acquires its
// account, inserting a row into lp_owners for a name never seen) before
// anyone checked the credentials, and rows were never deleted: a client
// trying made-up names grew the shared database for good (a reviewer's
// finding). An account this node saw first and nobody logged in as
// leaves no row once released; one that logged in keeps its row (its
// epochs guard its states), as does one seen before.
func TestUnusedAccountLeavesNoRow(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", func(c *Config) { c.ReleaseAfter = 50 * time.Millisecond })
	waitRenewals(t, a)
	rows := func() int {
		var n int
		if err := a.Pool().QueryRow(context.Background(), `SELECT count(*) FROM lp_owners`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// made-up's login is refused by the upstream: routed, never
	// succeeded (no LoginSucceeded).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, release, err := a.Route(ctx, proxy.Handoff{Account: "made-up", Tag: "A1", User: "made-up", Pass: "p", Via: "a"})
	if err != nil || conn != nil {
		t.Fatalf("route of made-up: %v %v", conn, err)
	}
	release()
	if _, release, err = login(t, a, "real"); err != nil {
		t.Fatal(err)
	}
	release()
	if n := rows(); n != 2 {
		t.Fatalf("%d rows while the accounts are owned, want 2", n)
	}
	imaptest.WaitFor(t, "both accounts released", func() bool { return a.Stats().Owned == 0 })
	if n := rows(); n != 1 {
		t.Errorf("%d rows after the release, want 1 (real's)", n)
	}
	if node, _ := owner(t, a, "real"); node != "" {
		t.Errorf("real's row names %q after its release", node)
	}
	// Seen before (its row is there): it stays, used or not.
	if _, release, err = login(t, a, "real"); err != nil {
		t.Fatal(err)
	}
	release()
	imaptest.WaitFor(t, "real released again", func() bool { return a.Stats().Owned == 0 })
	if n := rows(); n != 1 {
		t.Errorf("%d rows after real's second release, want 1", n)
	}
}
