package bodypart

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Message is a message the command names and the client knows.
type Message struct {
	UID, Seq uint32
	BS       imapcodec.Value // its BODYSTRUCTURE
}

// Structures fetches the BODYSTRUCTURE of the messages of set the client
// knows, in the client's sequence order.
func Structures(ctx context.Context, s *proxy.Session, set string) ([]Message, error) {
	mb := s.Mailbox()
	var msgs []Message
	_, err := s.Exec(ctx, "UID FETCH "+set+" (UID BODYSTRUCTURE)", func(r *upstream.Response) {
		if r.Head.Name != "FETCH" {
			return
		}
		uid, l, ok := FetchList(SpaceParts(r.Segments))
		if !ok {
			return
		}
		seq := mb.SeqOf(uid)
		if seq == 0 {
			return
		}
		for i := 0; i+1 < len(l); i += 2 {
			if n, _ := l[i].(imapcodec.Atom); strings.EqualFold(string(n), "BODYSTRUCTURE") {
				msgs = append(msgs, Message{UID: uid, Seq: seq, BS: l[i+1]})
			}
		}
	})
	var se *upstream.StatusError
	if errors.As(err, &se) && len(msgs) > 0 {
		err = nil // some messages were expunged meanwhile
	}
	slices.SortFunc(msgs, func(a, b Message) int { return int(a.Seq) - int(b.Seq) })
	msgs = slices.CompactFunc(msgs, func(a, b Message) bool { return a.UID == b.UID })
	return msgs, err
}

// FetchList reads "* n FETCH (...)": its UID and item list.
func FetchList(segs []imapcodec.Segment) (uint32, imapcodec.List, bool) {
	vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return 0, nil, false
	}
	l, ok := vals[3].(imapcodec.List)
	if !ok {
		return 0, nil, false
	}
	for i := 0; i+1 < len(l); i += 2 {
		if n, _ := l[i].(imapcodec.Atom); strings.EqualFold(string(n), "UID") {
			v, _ := imapcodec.AsString(l[i+1])
			u, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return 0, nil, false
			}
			return uint32(u), l, true
		}
	}
	return 0, nil, false
}

// SessionWriter writes decoded data to the client; a failure wraps
// proxy.ErrClientGone.
type SessionWriter struct{ S *proxy.Session }

func (w SessionWriter) Write(p []byte) (int, error) {
	if err := w.S.Write(p); err != nil {
		return 0, errors.Join(proxy.ErrClientGone, err)
	}
	return len(p), nil
}

// SpaceParts puts a space between the parts of a multipart BODYSTRUCTURE
// ("(...)(...)", RFC 3501's body-type-mpart has none), which the codec's
// list parser wants between list members. Quoted strings are skipped;
// literals are in the segments' Data, untouched.
func SpaceParts(segs []imapcodec.Segment) []imapcodec.Segment {
	out := make([]imapcodec.Segment, len(segs))
	for i, seg := range segs {
		var b []byte
		quoted := false
		for j := 0; j < len(seg.Text); j++ {
			c := seg.Text[j]
			switch {
			case quoted && c == '\\' && j+1 < len(seg.Text):
				b = append(b, c, seg.Text[j+1])
				j++
				continue
			case c == '"':
				quoted = !quoted
			case !quoted && c == '(' && j > 0 && seg.Text[j-1] == ')':
				b = append(b, ' ')
			}
			b = append(b, c)
		}
		out[i] = seg
		out[i].Text = b
	}
	return out
}

// ReadSection reads up to n bytes of section of message uid with one
// UID FETCH BODY.PEEK[section]<0.n> (n must fit Session.Exec's inline
// literal limit): a header, say.
func ReadSection(ctx context.Context, s *proxy.Session, uid uint32, section string, n int) ([]byte, error) {
	cr := &chunkReader{ctx: ctx, s: s, uid: uid, section: section, n: n}
	return cr.fetch()
}
