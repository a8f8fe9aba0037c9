// Package listresp parses the LIST and LSUB responses an upstream sends to
// the proxy's own commands: one parser for every extension that lists
// mailboxes itself (notify's account watcher, listext).
package listresp

import (
	"errors"
	"fmt"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Entry is one "* LIST (attrs) delim name [extended]" (or LSUB).
type Entry struct {
	// Kind is the response's name as sent: LIST or LSUB.
	Kind  string
	Attrs []string
	// Delim is the hierarchy delimiter, "" for NIL.
	Delim string
	// Name is the mailbox name as the upstream spells it (not folded).
	Name string
	// Extended is the extended data (RFC 4466 mbox-list-extended), nil
	// when there is none.
	Extended imapcodec.List
}

// Parse parses one LIST or LSUB response, whole (segs as read, "*"
// first). Attributes that are not atoms are dropped.
func Parse(segs []imapcodec.Segment) (Entry, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	var e Entry
	if star, err := p.Atom(); err != nil || star != "*" {
		return Entry{}, errors.New("listresp: not an untagged response")
	}
	if err := p.SP(); err != nil {
		return Entry{}, errors.New("listresp: no response name")
	}
	kind, err := p.Atom()
	if err != nil {
		return Entry{}, errors.New("listresp: no response name")
	}
	e.Kind = kind
	if err := p.SP(); err != nil {
		return Entry{}, fmt.Errorf("listresp: %s without attributes", kind)
	}
	v, err := p.Value()
	attrs, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return Entry{}, fmt.Errorf("listresp: bad %s attributes", kind)
	}
	for _, a := range attrs {
		if s, ok := a.(imapcodec.Atom); ok {
			e.Attrs = append(e.Attrs, string(s))
		}
	}
	if err := p.SP(); err != nil {
		return Entry{}, fmt.Errorf("listresp: %s without delimiter", kind)
	}
	dv, err := p.Value()
	if err != nil {
		return Entry{}, fmt.Errorf("listresp: bad %s delimiter", kind)
	}
	if !imapcodec.IsNil(dv) {
		if e.Delim, ok = imapcodec.AsString(dv); !ok {
			return Entry{}, fmt.Errorf("listresp: bad %s delimiter", kind)
		}
	}
	if err := p.SP(); err != nil {
		return Entry{}, fmt.Errorf("listresp: %s without mailbox name", kind)
	}
	nv, err := p.Value()
	if err != nil {
		return Entry{}, fmt.Errorf("listresp: bad %s mailbox name", kind)
	}
	switch n := nv.(type) {
	case imapcodec.Atom:
		e.Name = string(n)
	case imapcodec.String:
		e.Name = string(n.Data)
	default:
		return Entry{}, fmt.Errorf("listresp: bad %s mailbox name", kind)
	}
	if p.MaybeSP() {
		if x, err := p.Value(); err == nil {
			e.Extended, _ = x.(imapcodec.List)
		}
	}
	return e, nil
}

// Append appends "* LIST (attrs) delim name", without extended data and
// CRLF, in the form every LIST the proxy writes itself takes: NIL for no
// delimiter, the name as an atom, quoted string or literal.
func Append(b []byte, attrs []string, delim, name string) []byte {
	b = append(b, "* LIST ("...)
	for i, a := range attrs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, a...)
	}
	b = append(b, ") "...)
	if delim == "" {
		b = append(b, "NIL"...)
	} else {
		b = imapcodec.AppendQuoted(b, delim)
	}
	b = append(b, ' ')
	return imapcodec.AppendString(b, name, false)
}
