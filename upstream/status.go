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
