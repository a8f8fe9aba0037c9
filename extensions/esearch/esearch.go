// Package esearch gives every session ESEARCH (RFC 4731) and SEARCHRES
// (RFC 5182), whatever the upstream offers.
//
// ESEARCH is relayed where the upstream advertises it (the core restores
// the client's tag and maps UIDs to sequence numbers) and synthesized where
// it does not: the command goes upstream as the plain UID SEARCH the core
// already makes of every SEARCH, without its RETURN option, and the one
// "* SEARCH" answer, already in the client's terms, becomes the ESEARCH
// response. That costs the same single round trip as the search itself and
// reuses the core's relay (synchronising literals of CHARSET criteria, the
// client's numbering, the upstream's NO and BAD), where running a search of
// the proxy's own (Session.Exec) would need the criteria rewritten without
// synchronising literals and would bypass the chain.
//
// SEARCHRES is always the proxy's, even over an upstream that has it: a
// session has no upstream connection of its own in the selected state, and
// the saved result of a pooled connection would be whichever session
// searched on it last. The result is saved as UIDs, so expunges and
// renumbering need no bookkeeping: "$" is turned into the client's current
// numbers when it is used (searchres.go). A search that saves is therefore
// always synthesized, and so is one with a MODSEQ criterion (RFC 4731 3.2):
// its MODSEQ depends on which messages the RETURN options select, which
// only the whole result tells.
//
// One package rather than two: SAVE is a RETURN option like the others,
// parsed with them, and the answer that fills the saved result is the one
// that makes the ESEARCH response.
//
// RFC 5267's RETURN options (CONTEXT=SEARCH) are parsed and answered here
// too, for the same reason, when extensions/contextsearch is in the chain
// (without it they are unknown options, refused with BAD): PARTIAL (one
// range of positions, RFC 5267's positive ranges only; not with ALL) and
// the CONTEXT hint are relayed where the upstream has CONTEXT=SEARCH and
// ESEARCH, and synthesized from the whole result elsewhere; UPDATE is
// always synthesized, and the answered result handed to contextsearch,
// which keeps it up to date (docs/context.md). With SAVE or MODSEQ,
// PARTIAL does not narrow what is saved or what MODSEQ covers: RFC 5267
// says nothing of it.
package esearch

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension implements ESEARCH and SEARCHRES; see the package comment.
type Extension struct{}

// New returns the extension.
func New() *Extension { return &Extension{} }

// Name identifies the extension.
func (*Extension) Name() string { return "esearch" }

// Capabilities advertises ESEARCH where the upstream lacks it (the core
// relays the upstream's own) and SEARCHRES always, after login.
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	if up.Has("ESEARCH") {
		return []string{"SEARCHRES"}
	}
	return []string{"ESEARCH", "SEARCHRES"}
}

// Commands names the commands whose RETURN option is answered here.
func (*Extension) Commands() []string { return []string{"SEARCH", "UID SEARCH"} }

// ServeCommand relays an extended SEARCH the upstream can answer, and
// synthesizes the others (see the package comment).
func (*Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	m := s.Mailbox()
	if m == nil || x.Streamed() || len(x.Segments) == 0 {
		return next(ctx, x)
	}
	ret, err := parseReturn(x.Segments)
	if err == nil && ret != nil && ret.opts.contextual() && !contextsearch.Active(s) {
		// Without extensions/contextsearch no CONTEXT=SEARCH is
		// advertised, and its options are as unknown as any other.
		err = fmt.Errorf("unknown RETURN option %s", ret.opts.contextName())
	}
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+sentence(err.Error())+".")
	}
	if ret == nil {
		return next(ctx, x)
	}
	if ret.opts.update && contextsearch.InUse(s, x.Tag) {
		// RFC 5267 4.3: the tag names the earlier search's updates.
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": Tag reuse: "+x.Tag+" names an updating search.")
	}
	modseq := hasModSeq(x.Segments)
	up := s.UpstreamCaps()
	// UPDATE is never relayed (its context would live on a pooled
	// connection, see extensions/contextsearch); PARTIAL and the CONTEXT
	// hint are, where the upstream has CONTEXT=SEARCH.
	if up.Has("ESEARCH") && !ret.opts.save && !modseq && !ret.opts.update &&
		(ret.opts.partial == nil && !ret.opts.context || up.Has("CONTEXT=SEARCH")) {
		return next(ctx, x)
	}
	segs := slices.Clone(x.Segments)
	t := segs[0].Text
	segs[0].Text = slices.Concat(t[:ret.start], t[ret.end:])
	x.Segments = segs
	r := &result{opts: ret.opts, uid: strings.HasPrefix(x.Name, "UID "), modseq: modseq}
	var live *liveSearch
	if ret.opts.update {
		live = startLive(x, segs)
	}
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Head.Name != "SEARCH" {
			return resp
		}
		if !resp.Streamed && len(resp.Segments) == 1 {
			r.add(s.Mailbox(), resp.Segments[0].Text)
		}
		return nil // answered by the ESEARCH response
	})
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		m := s.Mailbox()
		switch {
		case m == nil:
		case h.Name == "OK":
			if ret.opts.respond() {
				s.Write(r.response(m, x.Tag))
			}
			if ret.opts.save {
				save(s, r.saved())
			}
			if live != nil {
				live.open(ctx, s, x.Tag, r)
			}
		case h.Name == "NO" && ret.opts.save:
			// RFC 5182 2.1: a SEARCH with SAVE that fails with NO
			// leaves an empty result; one that fails with BAD changes
			// nothing.
			save(s, nil)
		}
	})
	return next(ctx, x)
}

// liveSearch is what an updating search (RFC 5267 4.3) needs from before
// it runs to open its context after it: the client's position then, and
// the criteria to re-run (or why they cannot be).
type liveSearch struct {
	mark    contextsearch.Position
	matcher contextsearch.Matcher
	err     error
}

func startLive(x *proxy.Exchange, segs []imapcodec.Segment) *liveSearch {
	l := &liveSearch{mark: contextsearch.Mark(x.Session())}
	l.matcher, l.err = contextsearch.MatcherFor(x, segs)
	return l
}

// open hands the answered search to extensions/contextsearch, after its
// ESEARCH response, or refuses updates as RFC 5267 4.3.1 shows: an
// untagged NO with NOUPDATE, the search itself answered all the same.
func (l *liveSearch) open(ctx context.Context, s *proxy.Session, tag string, r *result) {
	err := l.err
	if err == nil {
		err = contextsearch.Open(ctx, s, contextsearch.Spec{
			Tag: tag, UID: r.uid, Results: r.uids, Mark: l.mark, Matcher: l.matcher,
		})
	}
	if err != nil {
		s.Write(contextsearch.NoUpdate(tag, err))
	}
}

// hasModSeq reports whether a search has a MODSEQ criterion (RFC 7162
// 3.1.5), whose ESEARCH response carries MODSEQ (RFC 4731 3.2).
func hasModSeq(segs []imapcodec.Segment) bool {
	found := false
	imapcodec.ReplaceSearchKeys(slices.Clone(segs), func(k imapcodec.SearchKey) (string, bool, error) {
		found = found || k.Name == "MODSEQ"
		return "", false, nil
	})
	return found
}

// sentence capitalises the first letter of an error message for a client.
func sentence(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// result collects a synthesized search's answer.
type result struct {
	opts   returnOpts
	uid    bool // UID SEARCH: numbers are UIDs
	modseq bool // the criteria had MODSEQ
	// nums are the matches in the client's terms, sorted; uids the same
	// messages' UIDs, in the same (view) order.
	nums, uids []uint32
}

// add takes the numbers of a "* SEARCH" answer. Servers send one; more
// would add up (RFC 3501 7.2.5 does not forbid it).
func (r *result) add(m *proxy.Mailbox, text []byte) {
	nums, err := searchNumbers(text)
	if err != nil || len(nums) == 0 {
		return
	}
	if len(r.nums) > 0 {
		nums = append(nums, r.nums...)
		slices.Sort(nums)
		nums = slices.Compact(nums)
	}
	r.nums, r.uids = nums[:0:0], nil
	for _, n := range nums {
		uid := n
		if !r.uid {
			if uid = m.UIDOf(n); uid == 0 {
				continue // not a message of the client's
			}
		}
		r.nums = append(r.nums, n)
		r.uids = append(r.uids, uid)
	}
}

// response returns the ESEARCH response (RFC 4731 3.1): MIN, MAX and ALL
// only when something matched, COUNT always (0 when nothing did).
func (r *result) response(m *proxy.Mailbox, tag string) []byte {
	b := AppendResponse(nil, tag, r.uid, r.opts.exported(), r.nums)
	n := len(r.nums)
	if n > 0 && r.modseq {
		if ms, ok := r.highestModSeq(m); ok {
			b = appendItem(b, "MODSEQ", ms)
		}
	}
	return append(b, "\r\n"...)
}

// AppendResponse appends the start of an ESEARCH response (RFC 4731
// 3.1), without CRLF, for matches nums in the order given: TAG, UID, then
// MIN (the first number), MAX (the last) and ALL only when something
// matched, COUNT always, then RFC 5267's PARTIAL. ALL and PARTIAL keep
// the order (runs of consecutive ascending numbers become ranges): a
// SEARCH passes its numbers ascending; a SORT (RFC 5267 3.1: MIN and MAX
// are the first and last in sort order, ALL and PARTIAL's positions are in
// sort order) passes them sorted.
func AppendResponse(b []byte, tag string, uid bool, o ReturnOptions, nums []uint32) []byte {
	b = imapcodec.AppendQuoted(append(b, "* ESEARCH (TAG "...), tag)
	b = append(b, ')')
	if uid {
		b = append(b, " UID"...)
	}
	n := len(nums)
	if n > 0 && o.Min {
		b = appendItem(b, "MIN", uint64(nums[0]))
	}
	if n > 0 && o.Max {
		b = appendItem(b, "MAX", uint64(nums[n-1]))
	}
	if o.Count {
		b = appendItem(b, "COUNT", uint64(n))
	}
	if n > 0 && o.All {
		b = appendSet(append(b, " ALL "...), spansOf(nums))
	}
	if lo, hi := o.PartialLo, o.PartialHi; lo != 0 {
		// RFC 5267 4.4: the range (as lo:hi, as Dovecot writes it), and
		// the results at those positions, NIL when there are none.
		b = fmt.Appendf(b, " PARTIAL (%d:%d ", lo, hi)
		if uint64(lo) > uint64(n) {
			b = append(b, "NIL"...)
		} else {
			b = appendSet(b, spansOf(nums[lo-1:min(uint64(hi), uint64(n))]))
		}
		b = append(b, ')')
	}
	return b
}

func appendItem(b []byte, name string, n uint64) []byte {
	b = append(append(append(b, ' '), name...), ' ')
	return strconv.AppendUint(b, n, 10)
}

// returned gives the UIDs of the messages the response names, by RFC
// 4731 3.2 (for MODSEQ) and RFC 5182 2.4 (for SAVE) alike: the one of MIN or
// MAX, the two of MIN and MAX, every match as soon as ALL or COUNT is asked
// for (or SAVE alone).
func (r *result) returned() []uint32 {
	n := len(r.uids)
	if n == 0 || r.opts.all || r.opts.count || !r.opts.min && !r.opts.max {
		return r.uids
	}
	var out []uint32
	if r.opts.min {
		out = append(out, r.uids[0])
	}
	if r.opts.max && (!r.opts.min || n > 1) {
		out = append(out, r.uids[n-1])
	}
	return out
}

// saved returns what RETURN (SAVE ...) saves.
func (r *result) saved() []uint32 { return r.returned() }

// highestModSeq returns the highest mod-sequence of the returned messages
// in the proxy's state, whose mod-sequences are the ones the client knows.
func (r *result) highestModSeq(m *proxy.Mailbox) (uint64, bool) {
	var highest uint64
	found := false
	for _, uid := range r.returned() {
		if _, ms, ok := m.State().Flags(uid); ok {
			highest, found = max(highest, ms), true
		}
	}
	return highest, found
}
