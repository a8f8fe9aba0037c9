package sort

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
)

// TestCacheBytesBound: the in-memory keys are bounded in bytes as well as
// in messages: mailboxes whose messages have long subjects (a client
// chooses what it appends) push the least recently used ones out long
// before the message bound, the one in use stays, and the totals go back
// down with what is dropped.
func TestCacheBytesBound(t *testing.T) {
	long := strings.Repeat("s", 10_000)
	msgs := func(n int) []folded {
		out := make([]folded, n)
		for i := range out {
			out[i] = folded{uid: uint32(i + 1), subject: long}
		}
		return out
	}
	per := keyBytes(&msgs(1)[0])
	entry := boxBytes(boxID{"alice", "a", 1}) // every name below is one letter
	c := newCache(accountdata.NewMemory(), 250_000, 25*per, 500_000)
	boxes := make([]*box, 3)
	for i, name := range []string{"a", "b", "c"} {
		boxes[i] = c.box(boxID{"alice", name, 1})
		boxes[i].msgs = msgs(10)
		c.grew(boxes[i], boxes[i].msgs)
	}
	// Three mailboxes of 10 messages: over 25 messages' bytes, under the
	// message bound by far. The least recently used one went.
	if _, ok := c.boxes[boxes[0].id]; ok || len(c.boxes) != 2 {
		t.Fatalf("boxes %v: want b and c only", c.boxes)
	}
	if c.total != 20 || c.totalBytes != 20*per+2*entry {
		t.Fatalf("totals %d messages, %d bytes; want 20, %d", c.total, c.totalBytes, 20*per+2*entry)
	}
	// One mailbox larger than the bound alone stays while it is sorted;
	// the others go.
	d := c.box(boxID{"alice", "d", 1})
	d.msgs = msgs(30)
	c.grew(d, d.msgs)
	if len(c.boxes) != 1 || c.boxes[d.id] != d || c.total != 30 || c.totalBytes != 30*per+entry {
		t.Fatalf("boxes %v, totals %d, %d; want d alone, 30, %d", c.boxes, c.total, c.totalBytes, 30*per+entry)
	}
	c.forget("alice", "d", "")
	if len(c.boxes) != 0 || c.total != 0 || c.totalBytes != 0 {
		t.Fatalf("after forget: boxes %v, totals %d, %d", c.boxes, c.total, c.totalBytes)
	}
}

// TestCacheEmptyBoxesBound: entries of mailboxes without keys (empty
// mailboxes a client selects and sorts one after another) cost bytes
// too, so that they cannot pile up without bound.
func TestCacheEmptyBoxesBound(t *testing.T) {
	entry := boxBytes(boxID{"alice", "m00000", 1})
	c := newCache(accountdata.NewMemory(), 250_000, 100*entry, 500_000)
	for i := range 10_000 {
		b := c.box(boxID{"alice", fmt.Sprintf("m%05d", i), 1})
		c.grew(b, nil)
	}
	if len(c.boxes) != 100 || c.totalBytes != 100*entry {
		t.Fatalf("%d entries, %d bytes; want 100, %d", len(c.boxes), c.totalBytes, 100*entry)
	}
}
