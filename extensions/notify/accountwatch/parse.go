package accountwatch

import (
	"errors"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// parseList parses "* LIST (attrs) delim name [extended]".
func parseList(r *upstream.Response) (Mailbox, error) {
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	for range 2 { // "*", LIST
		if _, err := p.Atom(); err != nil {
			return Mailbox{}, err
		}
		p.SP()
	}
	v, err := p.Value()
	attrs, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return Mailbox{}, errors.New("accountwatch: bad LIST attributes")
	}
	p.SP()
	dv, err := p.Value()
	if err != nil {
		return Mailbox{}, errors.New("accountwatch: bad LIST delimiter")
	}
	delim, _ := imapcodec.AsString(dv)
	p.SP()
	nv, err := p.Value()
	name, ok := imapcodec.AsString(nv)
	if err != nil || !ok {
		return Mailbox{}, errors.New("accountwatch: bad LIST mailbox name")
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	b := Mailbox{Name: name, Delim: delim, Selectable: true}
	for _, a := range attrs {
		s, _ := a.(imapcodec.Atom)
		switch strings.ToLower(string(s)) {
		case `\noselect`, `\nonexistent`:
			b.Selectable = false
		case `\subscribed`, `\marked`, `\unmarked`:
			continue // per connection or reported separately
		}
		b.Attrs = append(b.Attrs, string(s))
	}
	return b, nil
}

// parseStatus parses "* STATUS name (item n ...)".
func parseStatus(r *upstream.Response) (string, *Status, error) {
	p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
	for range 2 {
		if _, err := p.Atom(); err != nil {
			return "", nil, err
		}
		p.SP()
	}
	nv, err := p.Value()
	name, ok := imapcodec.AsString(nv)
	if err != nil || !ok {
		return "", nil, errors.New("accountwatch: bad STATUS mailbox")
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	p.SP()
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return "", nil, errors.New("accountwatch: bad STATUS items")
	}
	var st Status
	for i := 0; i+1 < len(l); i += 2 {
		k, _ := l[i].(imapcodec.Atom)
		a, _ := l[i+1].(imapcodec.Atom)
		n, err := strconv.ParseUint(string(a), 10, 64)
		if err != nil {
			continue
		}
		switch strings.ToUpper(string(k)) {
		case "MESSAGES":
			st.Messages = uint32(n)
		case "UIDNEXT":
			st.UIDNext = uint32(n)
		case "UIDVALIDITY":
			st.UIDValidity = uint32(n)
		case "UNSEEN":
			st.Unseen = uint32(n)
		case "HIGHESTMODSEQ":
			st.UpModSeq = n
		}
	}
	return name, &st, nil
}
