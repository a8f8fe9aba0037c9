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

// routeUnused routes a login of acct at n that the upstream refuses: the
// account is acquired (its row written) and nobody logs in as it.
func routeUnused(t *testing.T, n *testNode, acct string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, release, err := n.Route(ctx, proxy.Handoff{Account: acct, Tag: "A1", User: acct, Pass: "p", Via: n.Name()})
	if err != nil || conn != nil {
		t.Fatalf("route of %s at %s: %v %v", acct, n.Name(), conn, err)
	}
	release()
}

// unusedAndUsed routes "made-up" at n without a login (its row unused)
// and logs in as "real" there once (its row used), each released.
func unusedAndUsed(t *testing.T, n *testNode) {
	t.Helper()
	routeUnused(t, n, "made-up")
	_, release, err := login(t, n, "real")
	if err != nil {
		t.Fatal(err)
	}
	release()
}

// hasRow tells whether lp_owners has a row for acct.
func hasRow(t *testing.T, n *testNode, acct string) bool {
	t.Helper()
	var ok bool
	err := n.Pool().QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM lp_owners WHERE account = $1)`, []byte(acct)).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestFencedUnusedRowDeleted: the row of an account a node inserted for a
// login that failed stayed for good when the node fenced itself before
// releasing it (the fencing forgets owned accounts without a word to the
// database, and nobody logs in as a made-up name again). The node deletes
// its unused rows when it serves again; a used account's row stays.
func TestFencedUnusedRowDeleted(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	waitRenewals(t, a)
	unusedAndUsed(t, a)
	resume := pauseRenewals(a.Node)
	a.host.waitEvict(t, "", 5*time.Second)
	resume()
	waitRenewals(t, a)
	imaptest.WaitFor(t, "a serving again", func() bool { return !a.Stats().Fenced })
	if hasRow(t, a, "made-up") {
		t.Error("the unused row is still there after the fencing")
	}
	if node, _ := owner(t, a, "real"); node != "a" {
		t.Errorf("real's row names %q, want a (left to re-acquire)", node)
	}
}

// TestTakenOverUnusedRowDeleted: a node taking over an account another
// node inserted and nobody logged in as did not know it unused (only the
// node that inserted the row knew, in memory), and freed the row at its
// release instead of deleting it. An account that was logged in as keeps
// its row through a takeover.
func TestTakenOverUnusedRowDeleted(t *testing.T) {
	url := newDB(t)
	// a alone: it takes both accounts whatever their preferred node.
	a := startNode(t, url, "a", nil)
	unusedAndUsed(t, a)
	b := startNode(t, url, "b", func(c *Config) { c.ReleaseAfter = 50 * time.Millisecond })
	a.Abandon()
	waitLeaseExpired(t, url, "a")
	unusedAndUsed(t, b)
	if st := b.Stats(); st.Takeovers != 2 {
		t.Fatalf("b took over %d accounts, want 2", st.Takeovers)
	}
	imaptest.WaitFor(t, "both released", func() bool { return b.Stats().Owned == 0 })
	if hasRow(t, b, "made-up") {
		t.Error("the unused row is still there after its release by the node that took it over")
	}
	if node, epoch := owner(t, b, "real"); node != "" || epoch != 2 {
		t.Errorf("the used row: node %q epoch %d, want free at epoch 2", node, epoch)
	}
}

// TestRestartForgetsUnusedRows: the unused rows of a node that crashed
// named it for good once it restarted under its name (its lease live
// again, nobody takes them over). The new incarnation deletes them.
func TestRestartForgetsUnusedRows(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	unusedAndUsed(t, a)
	a.Abandon()
	a2 := startNode(t, url, "a", nil)
	if hasRow(t, a2, "made-up") {
		t.Error("the crashed incarnation's unused row is still there")
	}
	if node, epoch := owner(t, a2, "real"); node != "a" || epoch != 1 {
		t.Errorf("real's row: node %q epoch %d, want a 1", node, epoch)
	}
}

// TestDeadNodeUnusedRowsSwept: a node that crashed for good left its
// unused rows naming it; nobody logs in as those names to take them over.
// The live nodes delete them once its lease has expired.
func TestDeadNodeUnusedRowsSwept(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	unusedAndUsed(t, a)
	b := startNode(t, url, "b", func(c *Config) { c.ReleaseAfter = 50 * time.Millisecond })
	a.Abandon()
	waitLeaseExpired(t, url, "a")
	imaptest.WaitFor(t, "the dead node's unused row swept", func() bool { return !hasRow(t, b, "made-up") })
	if node, _ := owner(t, b, "real"); node != "a" {
		t.Errorf("the used row names %q, want a (taken over at its next login)", node)
	}
}

// TestWrittenRowNotForgotten: a state write commits only with its
// account's row marked used. The mark is made when a login succeeds; if
// it failed (the database away a moment) and the session's writes went
// through afterwards, the row stayed unused with states under its
// epochs, and any node could delete it (a release, a fencing, a sweep),
// losing the epochs that fence the account's writers. Here no login
// tells the node (as when the mark failed): the write marks the row, and
// the release leaves it.
func TestWrittenRowNotForgotten(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", func(c *Config) { c.ReleaseAfter = 50 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, release, err := a.Route(ctx, proxy.Handoff{Account: "x", Tag: "A1", User: "x", Pass: "p", Via: "a"})
	if err != nil || conn != nil {
		t.Fatalf("route: %v %v", conn, err)
	}
	tx, err := a.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Hold(ctx, tx, "x"); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var used bool
	if err := a.Pool().QueryRow(ctx, `SELECT used FROM lp_owners WHERE account = 'x'`).Scan(&used); err != nil || !used {
		t.Fatalf("x's row after a committed write: used %v, %v", used, err)
	}
	release()
	imaptest.WaitFor(t, "x released", func() bool { return a.Stats().Owned == 0 })
	if !hasRow(t, a, "x") {
		t.Fatal("the row of an account with a state write was deleted at its release")
	}
	if node, epoch := owner(t, a, "x"); node != "" || epoch != 1 {
		t.Errorf("x's row: node %q epoch %d, want free at epoch 1", node, epoch)
	}
}
