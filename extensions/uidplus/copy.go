package uidplus

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// copyArgs is a COPY or MOVE in the UID form the core sends upstream:
// "tag UID COPY set mailbox".
type copyArgs struct {
	set     string
	mailbox string
	setEnd  int // offset in Segments[0].Text just after set
	setPos  int // offset of set
}

func parseCopy(x *proxy.Exchange) (copyArgs, error) {
	p := imapcodec.NewParser(x.Segments, imapcodec.Limits{})
	var c copyArgs
	for range 3 { // tag UID COPY
		if _, err := p.Atom(); err != nil {
			return c, err
		}
		if err := p.SP(); err != nil {
			return c, err
		}
	}
	c.setPos = p.Pos().Off
	set, err := p.Atom()
	if err != nil || !imapcodec.IsSequenceSet(set) {
		return c, errors.New("needs a UID set")
	}
	c.set, c.setEnd = set, p.Pos().Off
	if err := p.SP(); err != nil {
		return c, err
	}
	v, err := p.Value()
	if err != nil {
		return c, err
	}
	name, ok := imapcodec.AsString(v)
	if !ok || !p.AtEnd() {
		return c, errors.New("needs one mailbox name")
	}
	c.mailbox = name
	return c, nil
}

// serveCopy adds COPYUID to a successful COPY over an upstream without
// UIDPLUS. The command goes upstream with its set resolved into the UIDs
// that exist (a message arriving in a range such as 5:* meanwhile is not
// copied by surprise), so the originals are known exactly.
func (e *Extension) serveCopy(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	omit := func() error {
		x.OnTagged(func(h *imapcodec.ResponseHead) {
			stripCode(h, "COPYUID")
			if h.Name == "OK" {
				e.copyOmitted.Add(1)
			}
		})
		return next(ctx, x)
	}
	c, err := parseCopy(x)
	if err != nil || s.Mailbox() == nil {
		return omit() // the upstream says what is wrong
	}
	src, err := existing(ctx, s, c.set)
	if err != nil || len(src) == 0 {
		return omit()
	}
	// COPYUID names the copied UIDs exactly; the command upstream may run
	// over the UIDs expunged between them (uidset.Compact), which keeps it
	// short in a mailbox with gaps.
	set := setOf(src)
	upSet := string(uidset.AppendSpans(nil, uidset.Compact(s.Mailbox().UIDs(), src)))
	if len(src) > maxCopied || len(upSet) > uidset.MaxSetText {
		return omit()
	}
	before, err := status(ctx, s, c.mailbox)
	if err != nil {
		return omit()
	}
	segs := slices.Clone(x.Segments)
	t := segs[0].Text
	segs[0].Text = slices.Concat(t[:c.setPos], []byte(upSet), t[c.setEnd:])
	x.Segments = segs
	e.at("copy:before")
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		stripCode(h, "COPYUID")
		if h.Name != "OK" {
			return
		}
		e.at("copy:after")
		dst, ok := e.copied(x, c.mailbox, src, before)
		if !ok {
			e.copyOmitted.Add(1)
			return
		}
		e.copyUIDs.Add(1)
		h.Code = "COPYUID"
		h.CodeArg = strconv.FormatUint(uint64(before.validity), 10) + " " + set + " " + setOf(dst)
	})
	return next(ctx, x)
}

// copied finds the copies of src (ascending) that a COPY into mailbox just
// made, in the order of src.
func (e *Extension) copied(x *proxy.Exchange, mailbox string, src []uint32, before uidStatus) ([]uint32, bool) {
	ctx, s := x.Context(), x.Session()
	after, err := status(ctx, s, mailbox)
	if err != nil || after.validity != before.validity || after.next <= before.next {
		return nil, false
	}
	added := after.next - before.next
	if added < uint32(len(src)) || added > maxCandidates+uint32(len(src)) {
		// Fewer: an original was expunged before the COPY reached it,
		// and which one is not worth guessing.
		return nil, false
	}
	orig, err := fetchSigs(ctx, s, "", setOf(src))
	if err != nil || len(orig) != len(src) {
		return nil, false // an original is gone: its copy cannot be checked
	}
	// The session's mailbox is fetched through Exec, the target through
	// ExecIn unless it is the same mailbox (a COPY into itself).
	target := mailbox
	if m := s.Mailbox(); m != nil && sameMailbox(m.Name(), mailbox) {
		target = ""
	}
	cands, err := fetchSigs(ctx, s, target, uidRange(before.next, after.next-1))
	if err != nil || uint32(len(cands)) != added {
		return nil, false // a UID of the range is gone: it may be a copy
	}
	dst := make([]uint32, len(src))
	if added == uint32(len(src)) {
		// No one else added anything: the copies are the range, in some
		// order; servers copy in UID order, and each pair is checked.
		for i, u := range src {
			d := before.next + uint32(i)
			if !sameMessage(orig[u], cands[d]) {
				return nil, false
			}
			dst[i] = d
		}
		return dst, true
	}
	// Others added messages meanwhile: each original must match exactly
	// one candidate, and no candidate two originals.
	byLook := make(map[look][]uint32, len(cands))
	for d, c := range cands {
		byLook[c.look()] = append(byLook[c.look()], d)
	}
	used := map[uint32]bool{}
	for i, u := range src {
		match := byLook[orig[u].look()]
		if len(match) != 1 || used[match[0]] {
			return nil, false
		}
		used[match[0]] = true
		dst[i] = match[0]
	}
	return dst, true
}

// look is what a copy has in common with its original: COPY keeps the
// size, the internal date (RFC 3501 6.4.7) and of course the header.
type look struct {
	size      int64
	date      string
	messageID string
}

func (g sig) look() look { return look{g.size, g.date, g.messageID} }

// sameMessage tells whether a copy may be of an original.
func sameMessage(a, b sig) bool { return a.look() == b.look() }

// sameMailbox compares mailbox names, INBOX in any case.
func sameMailbox(a, b string) bool {
	return a == b || strings.EqualFold(a, "INBOX") && strings.EqualFold(b, "INBOX")
}
