package thread

import (
	"cmp"
	"slices"
	"strconv"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
)

// node is a message (or, with msg nil, a dummy) in a thread tree.
type node struct {
	msg      *sortext.ThreadKeys
	parent   *node
	children []*node
}

// key is what siblings are ordered by (RFC 5256 section 2.2 and the
// algorithms' "sent date"; equal dates in mailbox order, which is UID
// order): a dummy's is its first child's.
func (n *node) key() *sortext.ThreadKeys {
	for n.msg == nil {
		if len(n.children) == 0 {
			return nil
		}
		n = n.children[0]
	}
	return n.msg
}

func compareNodes(a, b *node) int {
	ka, kb := a.key(), b.key()
	switch {
	case ka == nil || kb == nil:
		return cmp.Compare(boolInt(ka == nil), boolInt(kb == nil))
	case ka.Date != kb.Date:
		return cmp.Compare(ka.Date, kb.Date)
	}
	return cmp.Compare(ka.UID, kb.UID)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// orderedSubject is RFC 5256's ORDEREDSUBJECT: the messages sorted by
// base subject, then sent date; one thread per base subject, its first
// message the parent of the others, which are siblings; the threads in
// the order of their first messages' sent dates.
func orderedSubject(msgs []sortext.ThreadKeys) []*node {
	sorted := make([]*sortext.ThreadKeys, len(msgs))
	for i := range msgs {
		sorted[i] = &msgs[i]
	}
	slices.SortFunc(sorted, func(a, b *sortext.ThreadKeys) int {
		if c := cmp.Compare(a.Subject, b.Subject); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Date, b.Date); c != 0 {
			return c
		}
		return cmp.Compare(a.UID, b.UID)
	})
	var roots []*node
	for i, m := range sorted {
		n := &node{msg: m}
		if i > 0 && m.Subject == sorted[i-1].Subject {
			top := roots[len(roots)-1]
			n.parent = top
			top.children = append(top.children, n)
			continue
		}
		roots = append(roots, n)
	}
	slices.SortStableFunc(roots, compareNodes)
	return roots
}

// references is RFC 5256's REFERENCES (section 3), step by step; msgs
// are in mailbox (UID) order.
func references(msgs []sortext.ThreadKeys) []*node {
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
			if prev != nil && c.parent == nil && !wouldLoop(prev, c) {
				link(prev, c)
			}
			prev = c
		}
		// (1B) the last reference is the parent: an existing parent
		// (from a truncated References elsewhere) is dropped first.
		cur := own[i]
		if cur.parent != nil {
			unlink(cur)
		}
		if prev != nil && !wouldLoop(prev, cur) {
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

// wouldLoop reports whether making parent the parent of child would make
// a loop: child is parent or one of its ancestors.
func wouldLoop(parent, child *node) bool {
	for p := parent; p != nil; p = p.parent {
		if p == child {
			return true
		}
	}
	return false
}

func link(parent, child *node) {
	child.parent = parent
	parent.children = append(parent.children, child)
}

func unlink(child *node) {
	p := child.parent
	if i := slices.Index(p.children, child); i >= 0 {
		p.children = slices.Delete(p.children, i, i+1)
	}
	child.parent = nil
}

// prune is step (4): a dummy without children goes; one with children
// goes and its children take its place, except at the top where that is
// done only for a single child. Depth first, so that nested dummies go
// too.
func prune(list []*node, top bool) []*node {
	var out []*node
	for _, n := range list {
		n.children = prune(n.children, false)
		if n.msg != nil {
			out = append(out, n)
			continue
		}
		switch {
		case len(n.children) == 0:
		case !top || len(n.children) == 1:
			for _, c := range n.children {
				c.parent = n.parent
				out = append(out, c)
			}
		default:
			out = append(out, n)
		}
	}
	return out
}

// subjectOf is a thread's subject for step (6): its message's, or its
// first child's if it is a dummy.
func subjectOf(n *node) *sortext.ThreadKeys {
	if n.msg == nil && len(n.children) > 0 {
		return n.children[0].msg
	}
	return n.msg
}

// mergeSubjects is step (6).
func mergeSubjects(roots []*node) []*node {
	table := map[string]*node{}
	for _, n := range roots { // (6B)
		k := subjectOf(n)
		if k == nil || k.Subject == "" {
			continue
		}
		t, ok := table[k.Subject]
		if !ok || t.msg != nil && (n.msg == nil || t.msg.Reply && n.msg != nil && !n.msg.Reply) {
			table[k.Subject] = n
		}
	}
	out := make([]*node, 0, len(roots))
	gone := map[*node]bool{}
	for _, n := range roots { // (6C)
		if gone[n] {
			continue // already merged into a dummy that took its place
		}
		k := subjectOf(n)
		if k == nil || k.Subject == "" {
			out = append(out, n)
			continue
		}
		t := table[k.Subject]
		if t == n {
			out = append(out, n)
			continue
		}
		switch {
		case t.msg == nil && n.msg == nil:
			for _, c := range n.children {
				c.parent = t
			}
			t.children = append(t.children, n.children...)
			n.children = nil
			gone[n] = true
		case t.msg == nil:
			link(t, n)
			gone[n] = true
		case n.msg != nil && n.msg.Reply && !t.msg.Reply:
			link(t, n)
			gone[n] = true
		default:
			d := &node{}
			// The dummy takes the table's thread's place among the roots.
			for i, r := range out {
				if r == t {
					out[i] = d
				}
			}
			if !slices.Contains(out, d) {
				// t comes later among the roots: it is replaced there.
				gone[t] = true
				out = append(out, d)
			}
			link(d, t)
			link(d, n)
			gone[n] = true
			table[k.Subject] = d
		}
	}
	final := out[:0]
	for _, n := range out {
		if !gone[n] {
			final = append(final, n)
		}
	}
	return final
}

// sortTree is step (7): each node's children sorted after their own.
func sortTree(list []*node) {
	for _, n := range list {
		sortTree(n.children)
		slices.SortStableFunc(n.children, compareNodes)
	}
}

// appendThreads writes the thread lists of RFC 5256 section 4 ("(3 6 (4
// 23)(44 7 96))"), each message as num gives it.
func appendThreads(b []byte, roots []*node, num func(uid uint32) uint32) []byte {
	for _, r := range roots {
		b = appendList(b, r, num)
	}
	return b
}

// appendList writes one thread-list: the chain of single children as
// numbers, then, where a message has several, each child's list.
func appendList(b []byte, n *node, num func(uint32) uint32) []byte {
	b = append(b, '(')
	first := true
	for {
		if n.msg != nil {
			if !first {
				b = append(b, ' ')
			}
			b = strconv.AppendUint(b, uint64(num(n.msg.UID)), 10)
			first = false
		}
		if len(n.children) != 1 {
			break
		}
		n = n.children[0]
	}
	if len(n.children) > 1 {
		if !first {
			b = append(b, ' ')
		}
		for _, c := range n.children {
			b = appendList(b, c, num)
		}
	}
	return append(b, ')')
}
