package listext

import (
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/listresp"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// entry is one mailbox of a LIST or LSUB response.
type entry struct {
	name  string
	delim string // "" for NIL
	attrs []string
	// childInfo is set when RECURSIVEMATCH found a subscribed descendant
	// that the patterns do not match (RFC 5258 3, CHILDINFO).
	childInfo bool
}

// parseEntry parses "* LIST (attrs) delim name [extended-data]" (or LSUB).
// Extended data, which a plain upstream does not send, is ignored.
func parseEntry(segs []imapcodec.Segment) (entry, error) {
	e, err := listresp.Parse(segs)
	if err != nil {
		return entry{}, err
	}
	return entry{name: proxy.CanonicalName(e.Name, e.Delim), delim: e.Delim, attrs: e.Attrs}, nil
}

// hasAttr reports whether attrs holds a (case-insensitively).
func hasAttr(attrs []string, a string) bool {
	return slices.ContainsFunc(attrs, func(x string) bool { return strings.EqualFold(x, a) })
}

// tree is what the proxy knows of the account's mailboxes for one command:
// LIST "" "*" and LSUB "" "*" of the upstream.
type tree struct {
	delim    string
	all      []entry
	exists   map[string]int // name → index in all
	subs     []string
	isSub    map[string]bool
	children map[string]bool // names with at least one child in all
}

func newTree(delim string, all []entry, subs []entry) *tree {
	t := &tree{delim: delim, all: all, exists: map[string]int{}, isSub: map[string]bool{}, children: map[string]bool{}}
	for i, e := range all {
		if _, dup := t.exists[e.name]; !dup {
			t.exists[e.name] = i
		}
		for _, a := range ancestors(e.name, delim) {
			t.children[a] = true
		}
	}
	for _, e := range subs {
		if !t.isSub[e.name] {
			t.isSub[e.name] = true
			t.subs = append(t.subs, e.name)
		}
	}
	return t
}

// addChildren adds \HasChildren or \HasNoChildren (RFC 5258 4, CHILDREN)
// unless the entry already says (the upstream's own, or \NoInferiors,
// which implies \HasNoChildren).
func (t *tree) addChildren(e *entry) {
	if hasAttr(e.attrs, `\HasChildren`) || hasAttr(e.attrs, `\HasNoChildren`) || hasAttr(e.attrs, `\NoInferiors`) {
		return
	}
	if t.children[e.name] {
		e.attrs = append(e.attrs, `\HasChildren`)
	} else {
		e.attrs = append(e.attrs, `\HasNoChildren`)
	}
}

// subscribedSelection answers LIST (SUBSCRIBED [RECURSIVEMATCH]) from the
// tree: RFC 5258 3's table of existence, selection and children. pats are
// canonical patterns.
func (t *tree) subscribedSelection(pats []string, recursive bool) []entry {
	var out []entry
	index := map[string]int{}
	add := func(name string) *entry {
		if i, ok := index[name]; ok {
			return &out[i]
		}
		e := entry{name: name, delim: t.delim}
		if i, ok := t.exists[name]; ok {
			e.attrs = slices.Clone(t.all[i].attrs)
			e.delim = t.all[i].delim
		} else {
			e.attrs = []string{`\NonExistent`}
		}
		if t.isSub[name] && !hasAttr(e.attrs, `\Subscribed`) {
			e.attrs = append(e.attrs, `\Subscribed`)
		}
		index[name] = len(out)
		out = append(out, e)
		return &out[len(out)-1]
	}
	for _, name := range t.subs {
		if matchAny(pats, name, t.delim) {
			add(name)
			continue
		}
		if !recursive {
			continue
		}
		// A subscribed mailbox the patterns miss: each ancestor they
		// match is returned with CHILDINFO, subscribed or not.
		for _, a := range ancestors(name, t.delim) {
			if matchAny(pats, a, t.delim) {
				add(a).childInfo = true
			}
		}
	}
	return out
}

// appendEntry appends "* LIST (attrs) delim name [CHILDINFO]" CRLF.
func appendEntry(b []byte, e entry) []byte {
	b = listresp.Append(b, e.attrs, e.delim, e.name)
	if e.childInfo {
		b = append(b, ` ("CHILDINFO" ("SUBSCRIBED"))`...)
	}
	return append(b, "\r\n"...)
}
