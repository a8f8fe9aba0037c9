package uidplus

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// peekSize is how much of an APPENDed message is kept to read its
// Message-ID: enough for the header blocks of ordinary mail, small enough
// to cost nothing per command.
const peekSize = 4096

// appendArgs is what the first line of an APPEND tells about the message.
type appendArgs struct {
	mailbox string
	date    time.Time // zero when the client gave none
}

// parseAppend reads "tag APPEND mailbox [flags] [date-time] " (the text
// before the message's literal). ok is false for anything else: the
// mailbox name in a literal, CATENATE, UTF8 and other extensions' forms.
func parseAppend(x *proxy.Exchange) (appendArgs, bool) {
	segs := x.Segments
	if len(segs) != 1 || segs[0].Literal == nil {
		return appendArgs{}, false
	}
	text := strings.TrimRight(string(segs[0].Text), " ")
	vals, err := imapcodec.NewParser([]imapcodec.Segment{{Text: []byte(text)}}, imapcodec.Limits{}).Values()
	if err != nil || len(vals) < 3 || len(vals) > 5 {
		return appendArgs{}, false
	}
	var a appendArgs
	var ok bool
	if a.mailbox, ok = imapcodec.AsString(vals[2]); !ok {
		return appendArgs{}, false
	}
	rest := vals[3:]
	if len(rest) > 0 {
		if _, isList := rest[0].(imapcodec.List); isList {
			rest = rest[1:]
		}
	}
	if len(rest) > 0 {
		d, isString := rest[0].(imapcodec.String)
		if !isString || d.Literal {
			return appendArgs{}, false
		}
		t, err := time.Parse("_2-Jan-2006 15:04:05 -0700", string(d.Data))
		if err != nil {
			return appendArgs{}, false
		}
		a.date = t
		rest = rest[1:]
	}
	return a, len(rest) == 0
}

// serveAppend adds APPENDUID to a successful APPEND over an upstream
// without UIDPLUS, when the new message's UID is certain (see the package
// comment).
func (e *Extension) serveAppend(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	a, ok := parseAppend(x)
	var before uidStatus
	var err error
	if ok {
		before, err = status(ctx, s, a.mailbox)
		ok = err == nil
	}
	e.at("append:before")
	if ok {
		x.PeekLiteral(peekSize)
	}
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		stripCode(h, "APPENDUID")
		if h.Name != "OK" {
			return
		}
		e.at("append:after")
		uid, found := uint32(0), false
		if ok {
			uid, found = e.appended(x, a, before)
		}
		if !found {
			e.appendOmitted.Add(1)
			return
		}
		e.appendUIDs.Add(1)
		h.Code, h.CodeArg = "APPENDUID", fmt.Sprintf("%d %d", before.validity, uid)
	})
	return next(ctx, x)
}

// appended finds the UID of the message an APPEND just added.
func (e *Extension) appended(x *proxy.Exchange, a appendArgs, before uidStatus) (uint32, bool) {
	ctx, s := x.Context(), x.Session()
	lits := x.StreamedLiterals()
	if len(lits) != 1 {
		return 0, false // MULTIAPPEND, or the literal never passed
	}
	after, err := status(ctx, s, a.mailbox)
	if err != nil || after.validity != before.validity || after.next <= before.next {
		return 0, false
	}
	added := after.next - before.next
	if added == 1 {
		// The message got a UID in [before, after): the only one.
		return before.next, true
	}
	if added > maxCandidates {
		return 0, false
	}
	cands, err := fetchSigs(ctx, s, a.mailbox, uidRange(before.next, after.next-1))
	if err != nil || uint32(len(cands)) != added {
		// A UID of the range is gone (or never was): it may be ours.
		return 0, false
	}
	id, found, complete := messageID(x.LiteralPeek())
	var match []uint32
	for uid, c := range cands {
		if uid < before.next || uid >= after.next || c.size != lits[0] {
			continue
		}
		if (found || complete) && c.messageID != id {
			continue // known Message-ID (or known to have none) differs
		}
		if !a.date.IsZero() {
			t, err := time.Parse("_2-Jan-2006 15:04:05 -0700", c.date)
			if err != nil || !t.Equal(a.date) {
				continue
			}
		}
		match = append(match, uid)
	}
	if len(match) != 1 {
		return 0, false
	}
	return match[0], true
}
