package listext

import (
	"errors"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
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
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	for range 2 { // "*", LIST or LSUB
		if _, err := p.Atom(); err != nil {
			return entry{}, err
		}
		if err := p.SP(); err != nil {
			return entry{}, err
		}
	}
	v, err := p.Value()
	attrs, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return entry{}, errors.New("listext: bad attributes")
	}
	var e entry
	for _, a := range attrs {
		if s, ok := a.(imapcodec.Atom); ok {
			e.attrs = append(e.attrs, string(s))
		}
	}
	if err := p.SP(); err != nil {
		return entry{}, errors.New("listext: no delimiter")
	}
	dv, err := p.Value()
	if err != nil {
		return entry{}, errors.New("listext: bad delimiter")
	}
	if !imapcodec.IsNil(dv) {
		e.delim, _ = imapcodec.AsString(dv)
	}
	if err := p.SP(); err != nil {
		return entry{}, errors.New("listext: no mailbox name")
	}
	nv, err := p.Value()
	if err != nil {
		return entry{}, errors.New("listext: bad mailbox name")
	}
	name, ok := imapcodec.AsString(nv)
	if !ok {
		if a, isAtom := nv.(imapcodec.Atom); isAtom {
			name, ok = string(a), true
		}
	}
	if !ok {
		return entry{}, errors.New("listext: bad mailbox name")
	}
	e.name = canonInbox(name, e.delim)
	return e, nil
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

// appendEntry appends "* LIST (attrs) delim name [extended]" CRLF.
func appendEntry(b []byte, e entry) []byte {
	b = append(b, "* LIST ("...)
	b = append(b, strings.Join(e.attrs, " ")...)
	b = append(b, ") "...)
	if e.delim == "" {
		b = append(b, "NIL"...)
	} else {
		b = imapcodec.AppendQuoted(b, e.delim)
	}
	b = append(b, ' ')
	b = imapcodec.AppendString(b, e.name, false)
	if e.childInfo {
		b = append(b, ` ("CHILDINFO" ("SUBSCRIBED"))`...)
	}
	return append(b, "\r\n"...)
}
