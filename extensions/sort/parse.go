package sort

import (
	"errors"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// sortCommand is a parsed "tag [UID] SORT [RETURN (...)] (criteria)
// charset search-criteria" (RFC 5256 section 3, RFC 5267 section 3).
type sortCommand struct {
	tag string
	ret *esearch.ReturnOptions
	// retStart and retEnd delimit "RETURN (...) " in the first segment.
	retStart, retEnd int
	crit             []Criterion
	charset          string
	keys             imapcodec.Position // where the search criteria begin
}

// parseSort parses a SORT command in the form it goes upstream in (the
// core has made it a UID SORT in the selected state).
func parseSort(segs []imapcodec.Segment) (*sortCommand, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	c := &sortCommand{}
	var err error
	if c.tag, err = p.Atom(); err != nil {
		return nil, errors.New("bad tag")
	}
	name, err := atomAfterSP(p)
	if err == nil && strings.EqualFold(name, "UID") {
		name, err = atomAfterSP(p)
	}
	if err != nil || !strings.EqualFold(name, "SORT") || p.SP() != nil {
		return nil, errors.New("SORT needs sort criteria")
	}
	start := p.Pos()
	v, err := p.Value()
	if err != nil {
		return nil, errors.New("SORT needs sort criteria")
	}
	if a, ok := v.(imapcodec.Atom); ok && strings.EqualFold(string(a), "RETURN") {
		if p.SP() != nil {
			return nil, errors.New("RETURN needs a list of options")
		}
		ret, err := esearch.ParseSortReturn(p)
		if err != nil {
			return nil, err
		}
		if p.SP() != nil {
			return nil, errors.New("SORT needs sort criteria after RETURN")
		}
		end := p.Pos()
		if start.Seg != 0 || end.Seg != 0 {
			return nil, errors.New("bad RETURN list")
		}
		c.ret, c.retStart, c.retEnd = &ret, start.Off, end.Off
		if v, err = p.Value(); err != nil {
			return nil, errors.New("SORT needs sort criteria")
		}
	}
	l, ok := v.(imapcodec.List)
	if !ok {
		return nil, errors.New("SORT needs a list of sort criteria")
	}
	if c.crit, err = ParseCriteria(l); err != nil {
		return nil, err
	}
	if p.SP() != nil {
		return nil, errors.New("SORT needs a charset")
	}
	if c.charset, err = p.AString(); err != nil {
		return nil, errors.New("SORT needs a charset")
	}
	if p.SP() != nil || p.AtEnd() {
		return nil, errors.New("SORT needs search criteria")
	}
	c.keys = p.Pos()
	return c, nil
}

// search returns the command as the plain UID SEARCH of its criteria,
// "tag UID SEARCH CHARSET c criteria", its literals kept.
func (c *sortCommand) search(segs []imapcodec.Segment) []imapcodec.Segment {
	return PlainSearch(c.tag, c.charset, segs, c.keys)
}

// PlainSearch returns "tag UID SEARCH CHARSET charset criteria", the
// criteria those of segs from keys on, literals kept: the search a SORT
// or THREAD the proxy answers itself sends down the chain.
func PlainSearch(tag, charset string, segs []imapcodec.Segment, keys imapcodec.Position) []imapcodec.Segment {
	head := []byte(tag + " UID SEARCH CHARSET ")
	if imapcodec.IsAtom(charset) {
		head = append(head, charset...)
	} else {
		head = imapcodec.AppendQuoted(head, charset)
	}
	head = append(head, ' ')
	first := segs[keys.Seg]
	first.Text = slices.Concat(head, first.Text[keys.Off:])
	return append([]imapcodec.Segment{first}, segs[keys.Seg+1:]...)
}

func atomAfterSP(p *imapcodec.Parser) (string, error) {
	if err := p.SP(); err != nil {
		return "", err
	}
	return p.Atom()
}
