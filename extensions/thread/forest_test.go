package thread

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
)

// The REFERENCES algorithm as first written (loop checks walk every
// ancestor, unlinking searches the siblings): quadratic, but plainly RFC
// 5256 section 3; the differential test holds the forest's version to it.
// referencesNaive is RFC 5256's REFERENCES (section 3), step by step; msgs
// are in mailbox (UID) order.
func referencesNaive(msgs []sortext.ThreadKeys) []*node {
	byID := map[string]*node{}
	container := func(id string) *node {
		n := byID[id]
		if n == nil {
			n = &node{}
			byID[id] = n
		}
		return n
	}
	var all []*node // every container, in creation order
	own := make([]*node, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		// A message without a Message-ID, or with one an earlier
		// message has, gets a unique one: a container of its own.
		var n *node
		if c, ok := byID[m.MessageID]; m.MessageID != "" && (!ok || c.msg == nil) {
			n = container(m.MessageID)
		} else {
			n = &node{}
		}
		n.msg = m
		own[i] = n
	}
	for i := range msgs {
		m := &msgs[i]
		refs := m.References
		if len(refs) == 0 && m.InReplyTo != "" {
			refs = []string{m.InReplyTo}
		}
		// (1A) link the references in order; a reference that already
		// has a parent keeps it; no loops.
		var prev *node
		for _, id := range refs {
			c := container(id)
			if prev != nil && c.parent == nil && !wouldLoopNaive(prev, c) {
				link(prev, c)
			}
			prev = c
		}
		// (1B) the last reference is the parent: an existing parent
		// (from a truncated References elsewhere) is dropped first.
		cur := own[i]
		if cur.parent != nil {
			unlinkNaive(cur)
		}
		if prev != nil && !wouldLoopNaive(prev, cur) {
			link(prev, cur)
		}
	}
	for _, n := range byID {
		all = append(all, n)
	}
	for _, n := range own {
		if n.msg != nil && (n.msg.MessageID == "" || byID[n.msg.MessageID] != n) {
			all = append(all, n)
		}
	}
	// (2) the root set: containers without a parent, in a stable order
	// (map iteration is not): by their first message, then the rest.
	var roots []*node
	for _, n := range all {
		if n.parent == nil {
			roots = append(roots, n)
		}
	}
	// (4) prune dummies.
	roots = prune(roots, true)
	// (5) sort the root set by sent date, a dummy by its first child
	// (its children sorted first).
	for _, r := range roots {
		if r.msg == nil {
			slices.SortStableFunc(r.children, compareNodes)
		}
	}
	slices.SortStableFunc(roots, compareNodes)
	// (6) merge threads with the same base subject.
	roots = mergeSubjects(roots)
	// (7) sort every set of siblings, the deepest first.
	sortTree(roots)
	slices.SortStableFunc(roots, compareNodes)
	return roots
}

// wouldLoopNaive reports whether making parent the parent of child would make
// a loop: child is parent or one of its ancestors.
func wouldLoopNaive(parent, child *node) bool {
	for p := parent; p != nil; p = p.parent {
		if p == child {
			return true
		}
	}
	return false
}

func unlinkNaive(child *node) {
	p := child.parent
	if i := slices.Index(p.children, child); i >= 0 {
		p.children = slices.Delete(p.children, i, i+1)
	}
	child.parent = nil
}

func mustReferences(t *testing.T, msgs []sortext.ThreadKeys) string {
	t.Helper()
	roots, err := references(msgs)
	if err != nil {
		t.Fatal(err)
	}
	return threads(roots)
}

// TestReferencesAsNaive: on random mailboxes whose messages reference a
// small pool of IDs (so that loops, truncated References, duplicate and
// missing Message-IDs, replies arriving before their originals and
// subject merges all happen), the forest's threading equals the plain
// one's.
func TestReferencesAsNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		n := 1 + r.IntN(40)
		pool := 2 + r.IntN(2*n)
		id := func() string { return fmt.Sprintf("<%d@x>", r.IntN(pool)) }
		msgs := make([]sortext.ThreadKeys, n)
		for i := range msgs {
			m := &msgs[i]
			m.UID = uint32(i + 1)
			m.Date = int64(r.IntN(10))
			m.Subject = []string{"", "a", "b", "c"}[r.IntN(4)]
			m.Reply = r.IntN(2) == 0
			if r.IntN(8) != 0 {
				m.MessageID = id()
			}
			switch r.IntN(3) {
			case 0:
				m.InReplyTo = id()
			case 1:
				for range 1 + r.IntN(6) {
					m.References = append(m.References, id())
				}
			}
		}
		want := threads(referencesNaive(slices.Clone(msgs)))
		if got := mustReferences(t, msgs); got != want {
			t.Fatalf("round %d: got %s, want %s\nmessages: %+v", round, got, want, msgs)
		}
	}
}

// TestReferencesLongChain: a reply chain of 100,000 messages, each
// naming its parent and the 20 before it, threads as one chain within
// the step bound (walking every ancestor would take about 5e9 steps).
func TestReferencesLongChain(t *testing.T) {
	const n = 100000
	msgs := make([]sortext.ThreadKeys, n)
	for i := range msgs {
		msgs[i] = sortext.ThreadKeys{UID: uint32(i + 1), Date: int64(i), MessageID: fmt.Sprintf("<%d@x>", i)}
		for j := max(0, i-20); j < i; j++ {
			msgs[i].References = append(msgs[i].References, fmt.Sprintf("<%d@x>", j))
		}
	}
	roots, err := references(msgs)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 0, 7*n)
	want = append(want, '(')
	for i := range n {
		if i > 0 {
			want = append(want, ' ')
		}
		want = fmt.Appendf(want, "%d", i+1)
	}
	want = append(want, ')')
	if got := threads(roots); got != string(want) {
		t.Errorf("got %.80s..., want %.80s...", got, want)
	}
}

// crafted builds a mailbox in which each of victims messages is first
// named as a reply to the bottom of a reply chain of depth messages,
// before it exists, and then arrives: step (1B) unlinks it from there and
// checks its link to the bottom, a walk up the whole chain once the
// unlink voided every remembered ancestor.
func crafted(depth, victims int) []sortext.ThreadKeys {
	var msgs []sortext.ThreadKeys
	add := func(m sortext.ThreadKeys) {
		m.UID = uint32(len(msgs) + 1)
		m.Date = int64(m.UID)
		msgs = append(msgs, m)
	}
	for i := range depth {
		m := sortext.ThreadKeys{MessageID: fmt.Sprintf("<c%d@x>", i)}
		if i > 0 {
			m.InReplyTo = fmt.Sprintf("<c%d@x>", i-1)
		}
		add(m)
	}
	bottom := fmt.Sprintf("<c%d@x>", depth-1)
	for i := range victims {
		add(sortext.ThreadKeys{MessageID: fmt.Sprintf("<p%d@x>", i), References: []string{bottom, fmt.Sprintf("<v%d@x>", i)}})
	}
	for i := range victims {
		add(sortext.ThreadKeys{MessageID: fmt.Sprintf("<v%d@x>", i), InReplyTo: bottom})
	}
	return msgs
}

// TestReferencesCraftedDepth: such a mailbox is refused with ErrTooDeep
// rather than costing messages × depth steps (9e8 here); at the size of
// real threads it is threaded, as the plain algorithm does.
func TestReferencesCraftedDepth(t *testing.T) {
	if _, err := references(crafted(30000, 30000)); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("got %v, want ErrTooDeep", err)
	}
	small := crafted(300, 300)
	if got, want := mustReferences(t, small), threads(referencesNaive(slices.Clone(small))); got != want {
		t.Errorf("got %.200s, want %.200s", got, want)
	}
}
