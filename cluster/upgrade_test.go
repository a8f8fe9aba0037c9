package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster/pgschema"
)

// previousRelease is the cluster component's schema as the release before
// lp_owners.used knew it (its three steps, as released).
var previousRelease = schema[:3]

// TestPreviousReleaseStartsAfterMigration: a cluster is upgraded node by
// node, old and new nodes sharing the database. The new nodes' schema
// change (lp_owners.used, false only in rows they insert, true by
// default) was made for old nodes to run beside them, but it was two more
// steps of the "cluster" component: once a new node had migrated, a node
// of the previous release that restarted (a crash, an OOM kill, a
// restart by the service manager) refused to start ("the database is at
// version 5, newer than this program's 3: upgrade the program"), and the
// upgrade could not be rolled back. The previous release's node starts,
// and its rows (no used column in its INSERT) count as used.
func TestPreviousReleaseStartsAfterMigration(t *testing.T) {
	url := newDB(t)
	startNode(t, url, "a", nil) // migrates
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := testAdminPool(t, ctx, url)
	// What the previous release's Open does first.
	if err := pgschema.Apply(ctx, pool, "cluster", previousRelease); err != nil {
		t.Fatalf("a node of the previous release starting against the migrated database: %v", err)
	}
	// Its sqlAcquireNew, without the column.
	if _, err := pool.Exec(ctx, `INSERT INTO lp_owners (account, node, epoch, since) VALUES ($1, 'old', 1, now())
		ON CONFLICT (account) DO NOTHING`, []byte("by-old")); err != nil {
		t.Fatal(err)
	}
	var used bool
	if err := pool.QueryRow(ctx, `SELECT used FROM lp_owners WHERE account = $1`, []byte("by-old")).Scan(&used); err != nil || !used {
		t.Errorf("a row the previous release inserted: used %v, %v; want true", used, err)
	}
	// A new node starts after it as before.
	startNode(t, url, "b", nil)
}
