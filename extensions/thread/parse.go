package thread

import (
	"errors"
	"slices"
	"strings"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// threadCommand is a parsed "tag [UID] THREAD algorithm charset
// search-criteria" (RFC 5256 section 3).
type threadCommand struct {
	tag       string
	algorithm string // upper case
	charset   string
	keys      imapcodec.Position // where the search criteria begin
}

// errAlgorithm is an algorithm the proxy does not know; parseThread
// returns it with the command, whose algorithm is set.
var errAlgorithm = errors.New("unknown thread algorithm")

// parseThread parses a THREAD command in the form it goes upstream in
// (the core has made it a UID THREAD in the selected state).
func parseThread(segs []imapcodec.Segment) (*threadCommand, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	c := &threadCommand{}
	var err error
	if c.tag, err = p.Atom(); err != nil {
		return nil, errors.New("bad tag")
	}
	name, err := atomAfterSP(p)
	if err == nil && strings.EqualFold(name, "UID") {
		name, err = atomAfterSP(p)
	}
	if err != nil || !strings.EqualFold(name, "THREAD") {
		return nil, errors.New("not a THREAD command")
	}
	alg, err := atomAfterSP(p)
	if err != nil {
		return nil, errors.New("THREAD needs an algorithm")
	}
	c.algorithm = strings.ToUpper(alg)
	if !slices.Contains(algorithms, c.algorithm) {
		// The algorithm is returned too: the upstream may know it.
		return c, errAlgorithm
	}
	if p.SP() != nil {
		return nil, errors.New("THREAD needs a charset")
	}
	if c.charset, err = p.AString(); err != nil {
		return nil, errors.New("THREAD needs a charset")
	}
	if p.SP() != nil || p.AtEnd() {
		return nil, errors.New("THREAD needs search criteria")
	}
	c.keys = p.Pos()
	return c, nil
}

// search returns the command as the plain UID SEARCH of its criteria.
func (c *threadCommand) search(segs []imapcodec.Segment) []imapcodec.Segment {
	return sortext.PlainSearch(c.tag, c.charset, segs, c.keys)
}

func atomAfterSP(p *imapcodec.Parser) (string, error) {
	if err := p.SP(); err != nil {
		return "", err
	}
	return p.Atom()
}
