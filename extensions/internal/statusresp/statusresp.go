// Package statusresp parses the STATUS responses an upstream sends to the
// proxy's own STATUS commands: one parser for every extension that polls
// mailboxes with STATUS (notify's account watcher, push's poller).
package statusresp

import (
	"errors"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Parse parses one "* STATUS mailbox (item n ...)" response, whole (segs
// as read, "*" first). It returns the mailbox name as the upstream spelt
// it, INBOX in upper case in any case, and the items with a number value,
// their names in upper case; items whose value is not a number are left
// out (none of RFC 3501's are).
func Parse(segs []imapcodec.Segment) (name string, items map[string]uint64, err error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if star, err := p.Atom(); err != nil || star != "*" {
		return "", nil, errors.New("statusresp: not an untagged response")
	}
	p.SP()
	if kind, err := p.Atom(); err != nil || !strings.EqualFold(kind, "STATUS") {
		return "", nil, errors.New("statusresp: not a STATUS response")
	}
	p.SP()
	nv, err := p.Value()
	name, ok := imapcodec.AsString(nv)
	if err != nil || !ok {
		return "", nil, errors.New("statusresp: bad STATUS mailbox")
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	p.SP()
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return "", nil, errors.New("statusresp: bad STATUS items")
	}
	items = map[string]uint64{}
	for i := 0; i+1 < len(l); i += 2 {
		k, _ := l[i].(imapcodec.Atom)
		a, _ := l[i+1].(imapcodec.Atom)
		n, err := strconv.ParseUint(string(a), 10, 64)
		if err != nil || k == "" {
			continue
		}
		items[strings.ToUpper(string(k))] = n
	}
	return name, items, nil
}
