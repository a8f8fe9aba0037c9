package syncstate

import (
	"sync"
	"testing"
)

// The floor: set by the upstream's first word, lowered by later words only
// down to what read-write sessions were told, raised by claims; read-only
// sessions look without claiming.
func TestRecency(t *testing.T) {
	var r Recency
	// Before the watcher's first look nothing is recent.
	if got := r.Take(5, false); got != 6 {
		t.Errorf("unknown floor: Take(5) = %d, want 6 (none)", got)
	}
	if n := r.Unclaimed([]uint32{1, 2, 3}); n != 0 {
		t.Errorf("unknown floor: %d unclaimed", n)
	}
	r = Recency{}
	r.NoteUpstream(4) // UIDs 4 and up are recent upstream
	if n := r.Unclaimed([]uint32{1, 2, 4, 5}); n != 2 {
		t.Errorf("%d unclaimed, want 2", n)
	}
	if got := r.Take(5, false); got != 4 { // EXAMINE: looks
		t.Errorf("look: %d, want 4", got)
	}
	if got := r.Take(5, true); got != 4 { // SELECT: claims 4 and 5
		t.Errorf("claim: %d, want 4", got)
	}
	if got := r.Take(5, true); got != 6 {
		t.Errorf("second claim: %d, want 6 (none)", got)
	}
	if got := r.Take(7, true); got != 6 { // a new message, 6 and 7
		t.Errorf("new messages: %d, want 6", got)
	}
	// The upstream calling 2 and up recent later (a relayed SELECT that
	// took its \Recent first) gives nothing sessions were told.
	r.NoteUpstream(2)
	if got := r.Take(7, false); got != 8 {
		t.Errorf("after a later upstream word: %d, want 8 (none)", got)
	}
	// Before any claim, a later word lowers the floor: the session's
	// SELECT took the upstream's \Recent before the watcher looked.
	r = Recency{}
	r.NoteUpstream(10) // the watcher: none recent of 1..9
	r.NoteUpstream(3)  // the session's SELECT: 3..9 were
	if got := r.Take(9, true); got != 3 {
		t.Errorf("lowered floor: %d, want 3", got)
	}
	r.NoteUpstream(1)
	if n := r.Unclaimed([]uint32{1, 2, 3, 9}); n != 0 {
		t.Errorf("after the claim: %d unclaimed", n)
	}
}

// Sessions claiming at once get every message exactly once.
func TestRecencyClaimsOnce(t *testing.T) {
	var r Recency
	r.NoteUpstream(1)
	const sessions, last = 8, 2000
	got := make([][]uint32, sessions)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for uid := uint32(1); uid <= last; uid++ {
				if first := r.Take(uid, true); first <= uid {
					for u := first; u <= uid; u++ {
						got[i] = append(got[i], u)
					}
				}
			}
		}()
	}
	wg.Wait()
	seen := map[uint32]int{}
	for _, l := range got {
		for _, u := range l {
			seen[u]++
		}
	}
	for uid := uint32(1); uid <= last; uid++ {
		if seen[uid] != 1 {
			t.Fatalf("UID %d recent in %d sessions", uid, seen[uid])
		}
	}
}
