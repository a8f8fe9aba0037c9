package thread

import (
	"cmp"
	"errors"
	"slices"
	"strconv"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
)

// node is a message (or, with msg nil, a dummy) in a thread tree.
type node struct {
	msg      *sortext.ThreadKeys
	parent   *node
	children []*node
	// up is an ancestor found earlier (see forest.root), valid while
	// epoch is the forest's.
	up    *node
	epoch int
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

// ErrTooDeep refuses a REFERENCES threading whose loop checks would cost
// more than the bound (see forest): reply chains crafted so that every
// message moves a deep subtree.
var ErrTooDeep = errors.New("thread: reply chains too deep to thread within the proxy's bound")

// forest answers step (1)'s loop checks. Each one asks whether a
// container that has no parent is the root of another's tree; walking
// up parent pointers would make a reply chain of n messages cost O(n²)
// (each new message checks its whole chain of ancestors). Instead each
// container remembers an ancestor found by an earlier walk (up), and
// walks compress those pointers to the root, as in union-find: linking
// a root under a node only adds ancestors, so a remembered ancestor
// stays one. Unlinking (step 1B) breaks that; it bumps epoch, which
// invalidates every remembered ancestor at once. Unlinks are at most one
// per message, and a mailbox can be built (by anyone who can deliver
// mail to it) so that each one is followed by a walk down a deep chain;
// steps bounds the total walking one command may do.
type forest struct {
	epoch int
	steps int // left
}

// root returns the root of n's tree, or nil once the step bound is spent.
func (f *forest) root(n *node) *node {
	r := n
	for {
		var next *node
		if r.epoch == f.epoch && r.up != nil {
			next = r.up
		} else {
			next = r.parent
		}
		if next == nil {
			break
		}
		if f.steps--; f.steps < 0 {
			return nil
		}
		r = next
	}
	for x := n; x != r; { // compress
		var next *node
		if x.epoch == f.epoch && x.up != nil {
			next = x.up
		} else {
			next = x.parent
		}
		x.up, x.epoch = r, f.epoch
		x = next
	}
	return r
}

// stepsPerMessage and minSteps size forest.steps: threads as deep as
// real mailboxes have them cost a few steps per message; only crafted
// ones come near the bound.
const (
	stepsPerMessage = 64
	minSteps        = 1 << 22
)

// references is RFC 5256's REFERENCES (section 3), step by step; msgs
// are in mailbox (UID) order.
func references(msgs []sortext.ThreadKeys) ([]*node, error) {
	f := &forest{epoch: 1, steps: max(minSteps, stepsPerMessage*len(msgs))}
	byID := map[string]*node{}
	container := func(id string) *node {
		n := byID[id]
		if n == nil {
			n = &node{}
			byID[id] = n
		}
		return n
	}
	// wouldLoop reports whether making parent the parent of child, which
	// has no parent, would make a loop: parent is in child's tree.
	var tooDeep bool
	wouldLoop := func(parent, child *node) bool {
		r := f.root(parent)
		if r == nil {
			tooDeep = true
			return true
		}
		return r == child
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
			cur.parent = nil // left in its old parent's children: see below
			f.epoch++
		}
		if prev != nil && !wouldLoop(prev, cur) {
			link(prev, cur)
		}
		if tooDeep {
			return nil, ErrTooDeep
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
	// Unlinking in (1B) left the child in its old parent's list (finding
	// it there is linear in the siblings, so n unlinks from one parent
	// would be quadratic); each list now keeps only the children whose
	// parent it is, once each (a child unlinked and linked again to the
	// same parent is listed twice).
	kept := make(map[*node]bool, len(all))
	for _, n := range all {
		n.children = slices.DeleteFunc(n.children, func(c *node) bool {
			if c.parent != n || kept[c] {
				return true
			}
			kept[c] = true
			return false
		})
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
	return roots, nil
}

func link(parent, child *node) {
	child.parent = parent
	parent.children = append(parent.children, child)
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
	at := map[*node]int{} // where in out a root is (a linear search would make this quadratic)
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
			at[n] = len(out)
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
			if i, ok := at[t]; ok {
				out[i] = d
				at[d] = i
			} else {
				// t comes later among the roots: it is replaced there.
				gone[t] = true
				at[d] = len(out)
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
