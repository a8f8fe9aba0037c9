package accountwatch

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/listresp"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// parseList parses "* LIST (attrs) delim name [extended]".
func parseList(r *upstream.Response) (Mailbox, error) {
	e, err := listresp.Parse(r.Segments)
	if err != nil {
		return Mailbox{}, fmt.Errorf("accountwatch: %w", err)
	}
	name, delim := e.Name, e.Delim
	attrs := e.Attrs
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	b := Mailbox{Name: name, Delim: delim, Selectable: true}
	for _, s := range attrs {
		switch strings.ToLower(s) {
		case `\noselect`, `\nonexistent`:
			b.Selectable = false
		case `\subscribed`, `\marked`, `\unmarked`:
			continue // per connection or reported separately
		}
		b.Attrs = append(b.Attrs, s)
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
