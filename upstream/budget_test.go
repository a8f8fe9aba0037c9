package upstream

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestBudget: an account's connections are counted up to Max; beyond it
// an optional Acquire is refused at once unless a reclaimer frees one, a
// required one asks the reclaimers for any connection and otherwise waits
// for a release; accounts do not share a budget.
func TestBudget(t *testing.T) {
	b := NewBudget(2)
	ctx := context.Background()
	r1, err1 := b.Acquire(ctx, "a")
	r2, err2 := b.Acquire(ctx, "a")
	if err1 != nil || err2 != nil || b.Used("a") != 2 {
		t.Fatalf("two acquires: %v, %v, used %d", err1, err2, b.Used("a"))
	}
	if _, err := b.Acquire(Optional(ctx), "a"); !errors.Is(err, ErrBudget) {
		t.Fatalf("optional acquire over the budget: %v", err)
	}
	rb, err := b.Acquire(Optional(ctx), "b")
	if err != nil {
		t.Fatalf("another account: %v", err)
	}
	rb()
	// Reclaimers: the first asked without any, then with any for a
	// required Acquire; the freed connection is taken.
	var asked []bool
	b.AddReclaimer(func(account string, any bool) bool {
		asked = append(asked, any)
		if any {
			go r1()
			return true
		}
		return false
	})
	r3, err := b.Acquire(ctx, "a")
	if err != nil || len(asked) != 2 || asked[0] || !asked[1] {
		t.Fatalf("required acquire: %v, reclaimers asked %v", err, asked)
	}
	// Nothing to reclaim: a required Acquire waits for a release.
	b.reclaimers = nil
	go func() { time.Sleep(20 * time.Millisecond); r2(); r2() }() // twice: counted once
	r4, err := b.Acquire(ctx, "a")
	if err != nil || b.Used("a") != 2 {
		t.Fatalf("waiting acquire: %v, used %d", err, b.Used("a"))
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(cctx, "a"); !errors.Is(err, ErrBudget) {
		t.Fatalf("acquire timing out: %v", err)
	}
	r3()
	r4()
	if u := b.Used("a"); u != 0 {
		t.Fatalf("used %d after every release", u)
	}
	var nb *Budget
	if rel, err := nb.Acquire(ctx, "a"); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
}
