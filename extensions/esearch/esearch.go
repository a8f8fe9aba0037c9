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
// Searches whose criteria the hub's state of the mailbox decides (flags,
// UIDs, sequence numbers, mod-sequences, and what the core and the
// rewriters turn into those: RECENT, NEW, OLD, "$"; see
// extensions/internal/statesearch) are answered from that state in every
// form, plain or extended, whatever the upstream offers, without an
// upstream round trip (state.go); the relay and the synthesis above are
// for the others.
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
	// Criteria the state decides are answered from it (state.go).
	prog := decidable(s, x.Segments)
	if ret == nil {
		if prog != nil {
			return answerSearch(x, prog)
		}
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
	if prog == nil && up.Has("ESEARCH") && !ret.opts.save && !modseq && !ret.opts.update &&
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
	if prog != nil {
		return answerESearch(ctx, x, prog, r, live)
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
	// modseqs are the same messages' mod-sequences when the state
	// decided a search with MODSEQ (state.go), read with their flags.
	modseqs []uint64
	// count is the number of matches. When sparse, nums and uids hold
	// the first and the last match only: all that MIN, MAX and COUNT
	// need, so that a COUNT of 100,000 messages the state decides keeps
	// no list of them (state.go).
	count  int
	sparse bool
}

// add takes the numbers of a "* SEARCH" answer. Servers send one; more
// would add up (RFC 3501 7.2.5 does not forbid it).
func (r *result) add(m *proxy.Mailbox, text []byte) {
	nums, err := imapcodec.SearchNumbers(text)
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
	r.count = len(r.nums)
}

// response returns the ESEARCH response (RFC 4731 3.1): MIN, MAX and ALL
// only when something matched, COUNT always (0 when nothing did).
func (r *result) response(m *proxy.Mailbox, tag string) []byte {
	b := appendResponse(nil, tag, r.uid, r.opts.exported(), r.nums, r.count)
	if r.count > 0 && r.modseq {
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
	return appendResponse(b, tag, uid, o, nums, len(nums))
}

// appendResponse is AppendResponse for n matches of which nums holds all,
// or (without ALL and PARTIAL) the first and the last.
func appendResponse(b []byte, tag string, uid bool, o ReturnOptions, nums []uint32, n int) []byte {
	b = imapcodec.AppendQuoted(append(b, "* ESEARCH (TAG "...), tag)
	b = append(b, ')')
	if uid {
		b = append(b, " UID"...)
	}
	if n > 0 && o.Min {
		b = appendItem(b, "MIN", uint64(nums[0]))
	}
	if n > 0 && o.Max {
		b = appendItem(b, "MAX", uint64(nums[len(nums)-1]))
	}
	if o.Count {
		b = appendItem(b, "COUNT", uint64(n))
	}
	if n > 0 && o.All {
		b = imapcodec.AppendNumSet(append(b, " ALL "...), nums)
	}
	if lo, hi := o.PartialLo, o.PartialHi; lo != 0 {
		// RFC 5267 4.4: the range (as lo:hi, as Dovecot writes it), and
		// the results at those positions, NIL when there are none.
		b = fmt.Appendf(b, " PARTIAL (%d:%d ", lo, hi)
		if uint64(lo) > uint64(n) {
			b = append(b, "NIL"...)
		} else {
			b = imapcodec.AppendNumSet(b, nums[lo-1:min(uint64(hi), uint64(n))])
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
	if r.all() {
		return r.uids
	}
	var out []uint32
	for _, i := range r.returnedAt() {
		out = append(out, r.uids[i])
	}
	return out
}

// all reports whether the response names every match (returned).
func (r *result) all() bool {
	return len(r.uids) == 0 || r.opts.all || r.opts.count || !r.opts.min && !r.opts.max
}

// returnedAt is returned, as indices into r.uids, for a response that
// names MIN's or MAX's message only (not all).
func (r *result) returnedAt() []int {
	n := len(r.uids)
	var out []int
	if r.opts.min {
		out = append(out, 0)
	}
	if r.opts.max && (!r.opts.min || n > 1) {
		out = append(out, n-1)
	}
	return out
}

// saved returns what RETURN (SAVE ...) saves.
func (r *result) saved() []uint32 { return r.returned() }

// highestModSeq returns the highest mod-sequence of the returned messages
// in the proxy's state, whose mod-sequences are the ones the client knows:
// those read with the flags when the state decided the search, else the
// state's now.
func (r *result) highestModSeq(m *proxy.Mailbox) (uint64, bool) {
	var highest uint64
	found := false
	if r.modseqs != nil {
		if r.all() {
			for _, ms := range r.modseqs {
				highest, found = max(highest, ms), true
			}
			return highest, found
		}
		for _, i := range r.returnedAt() {
			highest, found = max(highest, r.modseqs[i]), true
		}
		return highest, found
	}
	for _, uid := range r.returned() {
		if _, ms, ok := m.State().Flags(uid); ok {
			highest, found = max(highest, ms), true
		}
	}
	return highest, found
}
