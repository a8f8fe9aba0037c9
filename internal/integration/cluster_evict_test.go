package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// drainDuringLogin starts two nodes, makes the node that owns alice (a)
// hold her next login behind the failed-login delay of a wrong one, has a
// client log in as alice through a, or through the other node (b) when
// handedOver, and drains a while that login waits (through a: before it
// is routed; handed over: at a, which took the hand-off). It returns the
// nodes and the waiting client.
func drainDuringLogin(t *testing.T, handedOver bool) (dc *dovecottest.Server, a, b *testNode, good *imaptest.Client) {
	t.Helper()
	dc = dovecottest.Start(t, dovecottest.Legacy)
	c := startClusterWith(t, dc, 2, 2*time.Second, func(cfg *proxy.Config) {
		cfg.AuthFailureDelay = 2 * time.Second
	})
	imaptest.Login(t, c.node("n1").addr, "alice", "alicepass").MustOK("LOGOUT")
	owner := c.owner("alice")
	if owner == "" {
		t.Fatal("nobody owns alice")
	}
	other := map[string]string{"n1": "n2", "n2": "n1"}[owner]
	a, b = c.node(owner), c.node(other)

	// A failed login makes the account's next login wait its turn.
	bad := imaptest.Dial(t, a.addr)
	bad.MustGreetOK()
	bad.Write("b1 LOGIN alice wrong\r\n")
	waitUntil(t, 5*time.Second, "the failed login to be counted", func() bool { return a.node.Stats().Sessions == 1 })
	via := a
	if handedOver {
		via = b
	}
	good = imaptest.Dial(t, via.addr)
	good.MustGreetOK()
	good.Write("g LOGIN alice alicepass\r\n")
	if handedOver {
		// Handed over to a, it waits there behind the delay.
		waitUntil(t, 5*time.Second, "the login to reach "+a.name, func() bool { return a.node.Stats().Sessions == 2 })
	}
	// Through a, it waits behind the delay before it is routed (nothing
	// of the account is taken before its turn), and nothing tells it is
	// waiting: it is answered no sooner than 2 s after the failed login,
	// while the drain is over well within that.

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.Drain(ctx, c.db, a.name); err != nil {
		t.Fatal(err)
	}
	return dc, a, b, good
}

// TestDrainEndsLoginInFlight: a login waiting behind the account's
// failed-login delay at the owning node when the node is drained must not
// succeed at the node that no longer owns the account while another
// serves it. Eviction found only sessions already logged in, and such a
// login, routed before its wait, went on: two nodes served one account
// (a second reviewer's finding; it then ended with a BYE). Since session
// 19 the login waits before it is routed (TestMadeUpNamesWaitForFailureDelay):
// it is routed once its turn comes, after the drain, and served by the new
// owner through the drained node.
func TestDrainEndsLoginInFlight(t *testing.T) {
	dc, a, b, good := drainDuringLogin(t, false)
	if got := imaptest.Tagged(good.ReadUntilTagged("g")); !strings.HasPrefix(got, "OK") {
		t.Fatalf("the login in flight on the drained %s: %q, want OK from %s", a.name, got, b.name)
	}
	good.MustOK("SELECT INBOX")
	waitUntil(t, 5*time.Second, b.name+" owns alice", func() bool { return b.node.Owns(dc.Addr + "\x00alice") })
	if a.node.Owns(dc.Addr + "\x00alice") {
		t.Errorf("the drained %s owns alice", a.name)
	}
	if n := a.proxy.Srv.Hub().Watchers(); n != 0 {
		t.Errorf("the drained %s watches %d mailboxes", a.name, n)
	}
}

// TestDrainEndsHandedOverLogin: a login handed over to the owner and not
// answered yet when the owner is drained: the owner hangs up the link
// without a word, the forwarding node answers its client NO [UNAVAILABLE],
// and the client's next try is served by the new owner. The owner's BYE
// went down the link to the client before that tagged NO, on a connection
// that went on (a second reviewer's finding).
func TestDrainEndsHandedOverLogin(t *testing.T) {
	_, _, b, good := drainDuringLogin(t, true)
	line, err := good.TryReadLine(10 * time.Second)
	if err != nil {
		t.Fatalf("the handed-over login: %v", err)
	}
	if !strings.HasPrefix(line, "g NO [UNAVAILABLE]") {
		t.Fatalf("the client of %s heard %q, want the tagged NO alone", b.name, line)
	}
	loginAt(t, good, b)
	good.MustOK("SELECT INBOX")
}

// loginAt logs c in as alice through b, at the first try. Until its next
// lease renewal tells it that the other node drains, b's list of live
// nodes still offers that node for alice; it refuses, and b serves alice
// itself (cluster TestDrainedPreferredNodeSkipped). Before that, the
// client was told NO [UNAVAILABLE] to try again shortly, for up to a
// renewal period.
func loginAt(t *testing.T, c *imaptest.Client, b *testNode) {
	t.Helper()
	if got := imaptest.Tagged(c.Cmd("LOGIN alice alicepass")); !strings.HasPrefix(got, "OK") {
		t.Fatalf("login through %s right after the drain: %q", b.name, got)
	}
}
