package notify

import (
	"fmt"
	"testing"
	"time"
)

// TestSuppressBounded: the entries for a session's own changes expire on
// the next insert after their time, and never number more than
// maxSuppressed however many changes make no event; past the bound the
// one expiring first goes, and a change noted again keeps one entry.
func TestSuppressBounded(t *testing.T) {
	st := &state{suppress: map[string]time.Time{}}
	t0 := time.Unix(1_000_000, 0)
	ttl := 2 * time.Minute
	for i := range 3 * maxSuppressed {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		st.noteOwn(fmt.Sprintf("Subscribed\x00never%d", i), now, now.Add(ttl))
		if len(st.suppress) > maxSuppressed {
			t.Fatalf("after %d changes: %d entries, want at most %d", i+1, len(st.suppress), maxSuppressed)
		}
	}
	if len(st.suppress) != maxSuppressed {
		t.Fatalf("%d entries, want %d", len(st.suppress), maxSuppressed)
	}
	// The oldest went: the newest maxSuppressed remain.
	if _, ok := st.suppress[fmt.Sprintf("Subscribed\x00never%d", 2*maxSuppressed-1)]; ok {
		t.Fatal("an entry older than the newest maxSuppressed is still there")
	}
	if _, ok := st.suppress[fmt.Sprintf("Subscribed\x00never%d", 3*maxSuppressed-1)]; !ok {
		t.Fatal("the newest entry is gone")
	}
	// The same change again: still one entry, with the later expiry.
	later := t0.Add(time.Second)
	st.noteOwn(fmt.Sprintf("Subscribed\x00never%d", 3*maxSuppressed-1), later, later.Add(ttl))
	if len(st.suppress) != maxSuppressed || !st.suppress[fmt.Sprintf("Subscribed\x00never%d", 3*maxSuppressed-1)].Equal(later.Add(ttl)) {
		t.Fatalf("%d entries after a repeat; want %d, expiry renewed", len(st.suppress), maxSuppressed)
	}
	// Once they have expired, the next change leaves only itself.
	after := t0.Add(time.Hour)
	st.noteOwn("Created\x00mine", after, after.Add(ttl))
	if len(st.suppress) != 1 {
		t.Fatalf("%d entries after expiry, want 1", len(st.suppress))
	}
}
