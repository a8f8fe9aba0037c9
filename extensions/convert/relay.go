package convert

import (
	"context"
	"regexp"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// convertedRE reads the start of an upstream CONVERTED response: its
// message number, the TAG correlator (the upstream connection's own tag,
// quoted) and the UID item UID CONVERT puts first (RFC 5259 6, 8.1).
var convertedRE = regexp.MustCompile(`^\* [0-9]+ CONVERTED \(TAG "(?:[^"\\]|\\.)*"\) \(UID ([0-9]+)( |\))`)

// relay sends a CONVERT to an upstream that has CONVERT, in its UID form
// (the core's translation), and puts its CONVERTED responses in the
// client's terms (package comment).
func (e *Extension) relay(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	keepUID := x.Name == "UID CONVERT" || asksUID(x.Command())
	tag := x.Tag
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Head.Name != "CONVERTED" || len(resp.Segments) == 0 {
			return resp
		}
		// Only the text before the first literal is changed, so a
		// streamed response stays whole (proxy.ResponseFilter).
		mb := s.Mailbox()
		if mb == nil {
			return nil
		}
		text, ok := clientConverted(resp.Segments[0].Text, tag, keepUID, mb.SeqOf)
		if !ok {
			s.Logger().Debug("convert: dropping an upstream CONVERTED response the proxy cannot place")
			return nil
		}
		resp.Segments[0].Text = text
		return resp
	})
	return next(ctx, x)
}

// clientConverted rewrites the first line of an upstream CONVERTED
// response: the client's sequence number for its UID, the client's tag,
// and without the UID item unless keepUID. ok is false for a response
// without a UID or about a message the client does not know.
func clientConverted(text []byte, tag string, keepUID bool, seqOf func(uint32) uint32) ([]byte, bool) {
	m := convertedRE.FindSubmatchIndex(text)
	if m == nil {
		return nil, false
	}
	uid, err := strconv.ParseUint(string(text[m[2]:m[3]]), 10, 32)
	if err != nil {
		return nil, false
	}
	seq := seqOf(uint32(uid))
	if seq == 0 {
		return nil, false
	}
	out := strconv.AppendUint([]byte("* "), uint64(seq), 10)
	out = append(out, " CONVERTED (TAG "...)
	out = imapcodec.AppendQuoted(out, tag)
	out = append(out, ") ("...)
	if keepUID {
		out = append(out, text[m[2]-len("UID "):m[5]]...)
	} else if text[m[4]] == ')' {
		out = out[:len(out)-1] // "(UID n)" alone: an empty list is not allowed; keep it
		out = append(out, text[m[2]-len("(UID "):m[5]]...)
	}
	return append(out, text[m[5]:]...), true
}

// asksUID tells whether a CONVERT's data items name UID.
func asksUID(cmd *imapcodec.Command) bool {
	vals, err := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) == 0 {
		return false
	}
	atts := []imapcodec.Value{vals[len(vals)-1]}
	if l, ok := atts[0].(imapcodec.List); ok {
		atts = l
	}
	for _, v := range atts {
		if a, ok := v.(imapcodec.Atom); ok && strings.EqualFold(string(a), "UID") {
			return true
		}
	}
	return false
}
