package cluster

import (
	"context"
	"testing"
	"time"
)

// TestDrainReleaseRetried: a drain whose releases fail (the account's row
// locked past their timeouts: a slow or unreachable database) tries again
// at the next renewal, so the drain ends and another node serves the
// account once the database answers. The release was tried once: the row
// kept naming the draining node, which refused the account, and no other
// node could take it while that node's lease lived (a second reviewer's
// finding).
func TestDrainReleaseRetried(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	_, release, err := login(t, a, "u1")
	if err != nil || release == nil {
		t.Fatalf("login on a: %v", err)
	}
	release()
	b := startNode(t, url, "b", nil)
	waitRenewals(t, a, b)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := testAdminPool(t, ctx, url)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM lp_owners WHERE account = $1 FOR UPDATE`, []byte("u1")); err != nil {
		t.Fatal(err)
	}
	held := make(chan struct{})
	go func() {
		defer close(held)
		time.Sleep(3 * time.Second) // past the release's TTL/3 and release_all's TTL
		tx.Commit(context.Background())
	}()
	defer func() { <-held }()

	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	if err := Drain(dctx, url, "a"); err != nil {
		t.Fatalf("drain after the database answered again: %v", err)
	}
	if node, _ := owner(t, a, "u1"); node == "a" {
		t.Fatalf("the drained node still owns u1")
	}
	if _, _, err := login(t, b, "u1"); err != nil {
		t.Fatalf("login of u1 through b after the drain: %v", err)
	}
}
