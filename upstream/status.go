package upstream

import (
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// StatusNumbers reads r as "* STATUS mailbox (item value ...)" (RFC 3501
// 7.2.4) and returns its items whose values are 32-bit numbers (MESSAGES,
// UIDNEXT, UIDVALIDITY, UNSEEN, RECENT), by upper-case name; nil when r is
// no STATUS response that parses. The proxy's own STATUS commands read
// their answers with it.
func StatusNumbers(r *Response) map[string]uint32 {
	if r.Head.Name != "STATUS" {
		return nil
	}
	vals, err := imapcodec.NewParser(r.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) < 4 {
		return nil
	}
	l, ok := vals[len(vals)-1].(imapcodec.List)
	if !ok {
		return nil
	}
	out := map[string]uint32{}
	for i := 0; i+1 < len(l); i += 2 {
		name, _ := imapcodec.AsString(l[i])
		v, _ := imapcodec.AsString(l[i+1])
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			out[strings.ToUpper(name)] = uint32(n)
		}
	}
	return out
}

// FetchBody reads r as "* n FETCH (...)" about uid with a BODY[...] item
// (the proxy's own FETCHes of one section): ok when it is one, data the
// item's value, isString false when that value is not a string (NIL).
func FetchBody(r *Response, uid uint32) (data []byte, ok, isString bool) {
	if r.Head.Name != "FETCH" {
		return nil, false, false
	}
	vals, err := imapcodec.NewParser(r.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return nil, false, false
	}
	l, _ := vals[3].(imapcodec.List)
	var got uint64
	hasBody := false
	for i := 0; i+1 < len(l); i += 2 {
		a, _ := l[i].(imapcodec.Atom)
		switch name := strings.ToUpper(string(a)); {
		case name == "UID":
			v, _ := imapcodec.AsString(l[i+1])
			got, _ = strconv.ParseUint(v, 10, 32)
		case strings.HasPrefix(name, "BODY["):
			hasBody = true
			var str imapcodec.String
			str, isString = l[i+1].(imapcodec.String)
			data = str.Data
		}
	}
	if !hasBody || got != uint64(uid) {
		return nil, false, false
	}
	return data, true, isString
}
