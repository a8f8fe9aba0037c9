package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// lostSignal returns a lost function and a channel closed when it runs
// (it fails the test if it runs twice).
func lostSignal(t *testing.T) (func(), chan struct{}) {
	ch := make(chan struct{})
	return func() {
		select {
		case <-ch:
			t.Error("lost called twice")
		default:
			close(ch)
		}
	}, ch
}

func waitClosed(t *testing.T, ch <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(within):
		t.Fatalf("%s: not within %v", what, within)
	}
}

// TestHoldAccount: a hold keeps an account through the release loop like
// a session; another node's hold is refused while the holder is live, and
// its logins are forwarded to the holder; released, the account goes back
// to the release loop.
func TestHoldAccount(t *testing.T) {
	url := newDB(t)
	short := func(c *Config) { c.ReleaseAfter = 50 * time.Millisecond }
	a, b := startNode(t, url, "a", short), startNode(t, url, "b", short)
	waitRenewals(t, a, b)
	acct := accountFor("b", "a", "b") // b would get it: a holds it anyway
	if a.PreferredHere(acct) || !b.PreferredHere(acct) {
		t.Fatalf("preference: a %v, b %v", a.PreferredHere(acct), b.PreferredHere(acct))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lost, lostCh := lostSignal(t)
	release, err := a.HoldAccount(ctx, acct, lost)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.HoldAccount(ctx, acct, nil); !errors.Is(err, proxy.ErrHeldElsewhere) {
		t.Fatalf("b's hold of a's account: %v", err)
	}
	// Several release periods pass: the hold keeps it.
	waitRenewals(t, a)
	if !a.Owns(acct) {
		t.Fatal("the release loop released a held account")
	}
	if st := a.Stats(); st.Held != 1 || st.Owned != 1 || st.Sessions != 0 {
		t.Fatalf("a: %+v", st)
	}
	if conn, _, err := login(t, b, acct); err != nil || conn == nil {
		t.Fatalf("login at b of a held account: conn %v, %v (want forwarded to a)", conn, err)
	} else {
		conn.Close()
	}
	release()
	release() // idempotent
	a.host.waitEvict(t, acct, 10*time.Second)
	// The row is released after the eviction.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		node, _ := owner(t, a, acct)
		if node == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("released account still owned by %q", node)
		}
	}
	select {
	case <-lostCh:
		t.Fatal("lost told after release")
	default:
	}
	if st := a.Stats(); st.Held != 0 {
		t.Fatalf("a after the release: %+v", st)
	}
}

// TestHoldLost: a hold is told when its account leaves (drain, crash of
// the holder and takeover), and the node left alive sees the placement
// change and may hold the account then.
func TestHoldLost(t *testing.T) {
	url := newDB(t)
	ttl := func(c *Config) { c.LeaseTTL = 2 * time.Second }
	a, b := startNode(t, url, "a", ttl), startNode(t, url, "b", ttl)
	waitRenewals(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Drain: a's hold is told, then the account is released; b holds it.
	acct := accountFor("a", "a", "b")
	lost, lostCh := lostSignal(t)
	if _, err := a.HoldAccount(ctx, acct, lost); err != nil {
		t.Fatal(err)
	}
	changed := b.PlacementChanged()
	if err := Drain(ctx, url, "a"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, lostCh, 10*time.Second, "lost at the drain")
	waitClosed(t, changed, 10*time.Second, "b's placement change when a drains")
	if a.PreferredHere(acct) || !b.PreferredHere(acct) {
		t.Fatal("a draining node is still preferred")
	}
	if _, err := a.HoldAccount(ctx, acct, nil); !errors.Is(err, proxy.ErrUnavailable) {
		t.Fatalf("hold on a draining node: %v", err)
	}
	lostB, lostBCh := lostSignal(t)
	if _, err := b.HoldAccount(ctx, acct, lostB); err != nil {
		t.Fatalf("b's hold after the drain: %v", err)
	}

	// Crash of the holder: c takes over once b's lease has expired.
	c := startNode(t, url, "c", ttl)
	waitRenewals(t, b, c)
	changed = c.PlacementChanged()
	b.Abandon()
	if _, err := c.HoldAccount(ctx, acct, nil); !errors.Is(err, proxy.ErrHeldElsewhere) {
		t.Fatalf("c's hold while b's lease is valid: %v", err)
	}
	waitClosed(t, changed, 10*time.Second, "c's placement change when b dies")
	if !c.PreferredHere(acct) {
		t.Fatal("c does not prefer the account of the dead node")
	}
	release, err := c.HoldAccount(ctx, acct, nil)
	if err != nil {
		t.Fatalf("c's hold after b died: %v", err)
	}
	defer release()
	if node, epoch := owner(t, c, acct); node != "c" || epoch != 3 {
		t.Fatalf("owner %s epoch %d, want c epoch 3", node, epoch)
	}
	if st := c.Stats(); st.Takeovers != 1 || st.Held != 1 {
		t.Errorf("c: %+v", st)
	}
	select {
	case <-lostBCh:
		t.Fatal("a crashed node told its holds (it is dead)")
	default:
	}
}

// TestHoldLostWhenFenced: fencing tells every hold before the eviction.
func TestHoldLostWhenFenced(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lost, lostCh := lostSignal(t)
	if _, err := a.HoldAccount(ctx, "u1", lost); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.fenceLocked("test")
	a.mu.Unlock()
	waitClosed(t, lostCh, 10*time.Second, "lost at the fencing")
	a.host.waitEvict(t, "", 10*time.Second)
}

// TestHoldLostAtClose: Close tells the holds before it evicts.
func TestHoldLostAtClose(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var evictedFirst bool
	lost := func() { evictedFirst = len(a.host.evicts) > 0 }
	if _, err := a.HoldAccount(ctx, "u1", lost); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if evictedFirst {
		t.Fatal("lost told after the eviction")
	}
	if len(a.host.evicts) != 1 {
		t.Fatal("no eviction at Close")
	}
}
