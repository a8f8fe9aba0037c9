package uidset

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestSetBatches: the batches of a set are each at most MaxSetText long,
// none could take the next range, and together they name the UIDs in
// order.
func TestSetBatches(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		var uids []uint32
		u := uint32(0)
		for range r.IntN(20000) {
			u += 1 + uint32(r.IntN(3))*uint32(r.IntN(2)) // runs and gaps
			uids = append(uids, u)
		}
		batches := Batches(SpansOf(uids))
		if got, want := strings.Join(batches, ","), string(AppendSpans(nil, SpansOf(uids))); got != want {
			t.Fatalf("batches join to %.80q..., want %.80q...", got, want)
		}
		for i, b := range batches {
			if len(b) > MaxSetText {
				t.Fatalf("batch %d of %d bytes", i, len(b))
			}
			if i+1 < len(batches) {
				next, _, _ := strings.Cut(batches[i+1], ",")
				if len(b)+1+len(next) <= MaxSetText {
					t.Fatalf("batch %d (%d bytes) could take %q", i, len(b), next)
				}
			}
		}
	}
	if got := Batches(nil); got != nil {
		t.Errorf("no UIDs: %q", got)
	}
}
