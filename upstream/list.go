package upstream

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// ListEntry is one "* LIST (attributes) delimiter name" response (RFC 3501
// 7.2.2), as the proxy's own LIST commands read it.
type ListEntry struct {
	// Attrs are the name attributes as sent (\Noselect, \HasChildren...).
	Attrs []string
	// Delim is the hierarchy delimiter, "" for NIL (a flat namespace).
	Delim string
	// Name is the mailbox name (decoded from a quoted string or literal).
	Name string
}

// Has reports whether the entry carries attribute attr (in any case).
func (e ListEntry) Has(attr string) bool {
	for _, a := range e.Attrs {
		if strings.EqualFold(a, attr) {
			return true
		}
	}
	return false
}

// errBadList is wrapped by ParseList's errors.
var errBadList = errors.New("upstream: malformed LIST response")

// ParseList reads r as a LIST response: ok is false when r is no untagged
// LIST response; err is set when it is one but not of the form "* LIST
// (attributes) delimiter name" (a parenthesized list of atoms, NIL or a
// non-empty string, an astring), so that a caller can refuse it rather
// than take a malformed line for "no such name". What follows the name
// (LIST-EXTENDED's extended data) is not read.
func ParseList(r *Response) (e ListEntry, ok bool, err error) {
	if r.Head.Tag != "*" || r.Head.Name != "LIST" {
		return ListEntry{}, false, nil
	}
	bad := func(what string) (ListEntry, bool, error) {
		return ListEntry{}, true, fmt.Errorf("%w: %s", errBadList, what)
	}
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	for range 2 { // "*", LIST
		if _, err := p.Atom(); err != nil {
			return bad("no LIST keyword")
		}
		if p.SP() != nil {
			return bad("nothing after LIST")
		}
	}
	v, err := p.Value()
	attrs, isList := v.(imapcodec.List)
	if err != nil || !isList {
		return bad("no attribute list")
	}
	for _, a := range attrs {
		a, isAtom := a.(imapcodec.Atom)
		if !isAtom {
			return bad("an attribute that is no atom")
		}
		e.Attrs = append(e.Attrs, string(a))
	}
	if p.SP() != nil {
		return bad("nothing after the attributes")
	}
	if v, err = p.Value(); err != nil {
		return bad("no delimiter")
	}
	if !imapcodec.IsNil(v) {
		if e.Delim, _ = imapcodec.AsString(v); e.Delim == "" {
			return bad("an empty delimiter")
		}
	}
	if p.SP() != nil {
		return bad("no mailbox name")
	}
	if e.Name, err = p.AString(); err != nil {
		return bad("no mailbox name")
	}
	return e, true, nil
}
