package sort

// CONTEXT=SORT (RFC 5267 section 4 for SORT). RETURN's PARTIAL and CONTEXT
// are answered with the rest of ESORT (relayed where the upstream has
// CONTEXT=SORT, from the upstream's SORT where it has SORT, from the
// proxy's sort elsewhere). UPDATE opens a live context, kept by
// extensions/contextsearch as its SEARCH contexts are: this file gives it
// the search to re-run (contextsearch.NewSearchMatcher over the plain UID
// SEARCH the SORT becomes) and a contextsearch.Sorter over the proxy's
// sort keys, so that the updates carry the context positions of RFC 5267
// 4.3.3 and 4.3.4.
//
// UPDATE is always the proxy's, over any upstream, and so is its first
// answer: the positions of later additions come from the proxy's own
// comparison (compare), and a client applying them to an order the
// upstream made could put a message where neither sort would (two sorts
// may differ in their collation of unusual strings). A session holds no
// upstream connection between commands either, so an upstream's own
// context could not be kept (the core never relays CONTEXT=SORT).
//
// A context's sorter holds a copy of the keys of its messages (the
// cache's keys move when the cache grows or is evicted): about 120 bytes
// a message and more for long subjects and addresses. Sorter.Bytes
// tells contextsearch what they take, which it counts with the context's
// UIDs against its per-session bound and its process-wide budget
// (contextsearch.Config); a message that leaves the result is forgotten
// (Sorter.Forget), so a long-lived context keeps the keys of its result
// only, not of every message it ever held.

import (
	"cmp"
	"context"
	"slices"
	"unsafe"

	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// contextName names one of RFC 5267 4's options o uses, for the BAD where
// CONTEXT=SORT is not offered.
func contextName(o esearch.ReturnOptions) string {
	switch {
	case o.PartialLo != 0:
		return "PARTIAL"
	case o.Update:
		return "UPDATE"
	}
	return "CONTEXT"
}

// liveSort is what a SORT RETURN (UPDATE) needs from before it runs to
// open its context after: the client's position then, the criteria to
// re-run (or why they cannot be), and the sorter its answer is sorted
// with.
type liveSort struct {
	mark    contextsearch.Position
	matcher contextsearch.Matcher
	err     error
	sorter  *sorter
}

// startLive prepares the context of a SORT whose search goes upstream as
// search ("tag UID SEARCH CHARSET c criteria").
func startLive(x *proxy.Exchange, search []imapcodec.Segment, crit []Criterion) *liveSort {
	l := &liveSort{mark: contextsearch.Mark(x.Session()), sorter: &sorter{crit: crit, keys: map[uint32]*folded{}}}
	l.matcher, l.err = contextsearch.MatcherFor(x, search)
	return l
}

// sort sorts uids (ascending) as Extension.Sort does, keeping their keys
// in the context's sorter.
func (l *liveSort) sort(ctx context.Context, e *Extension, s *proxy.Session, uids []uint32) ([]uint32, error) {
	l.sorter.e = e
	var out []uint32
	err := e.withKeys(ctx, s, uids, func(msgs []*folded) {
		l.sorter.keep(msgs)
		out = sortFolded(msgs, l.sorter.crit)
	})
	return out, err
}

// open hands the answered sort (sorted: UIDs in sort order) to
// contextsearch, after its ESEARCH response, or refuses updates as RFC
// 5267 4.3.1 shows: an untagged NO with NOUPDATE, the command itself
// answered all the same.
func (l *liveSort) open(ctx context.Context, s *proxy.Session, tag string, uid bool, sorted []uint32) {
	err := l.err
	if err == nil {
		err = contextsearch.Open(ctx, s, contextsearch.Spec{
			Tag: tag, UID: uid, Results: sorted, Mark: l.mark, Matcher: l.matcher, Sorter: l.sorter,
		})
	}
	if err != nil {
		s.Write(contextsearch.NoUpdate(tag, err))
	}
}

// sorter orders a sorted context's messages by its criteria, on the keys
// it keeps (see the file comment); contextsearch calls it on the
// session's goroutine only.
type sorter struct {
	e    *Extension
	crit []Criterion
	keys map[uint32]*folded
	// bytes is what keys holds, as keyBytes counts it.
	bytes int64
}

// keyBytes is about what a message's keys take in memory: the struct, its
// strings, and 32 bytes for the pointer and map entry of a sorter's copy
// (counted for the cache's too, which has neither: a slight overcount).
func keyBytes(f *folded) int64 {
	return int64(unsafe.Sizeof(*f)) + 32 + int64(len(f.subject)+len(f.from)+len(f.to)+len(f.cc)+len(f.displayFrom)+len(f.displayTo))
}

// keep copies the keys of msgs (the cache's, its lock held).
func (o *sorter) keep(msgs []*folded) {
	for _, f := range msgs {
		if old, ok := o.keys[f.uid]; ok {
			o.bytes -= keyBytes(old)
		}
		c := *f
		o.keys[f.uid] = &c
		o.bytes += keyBytes(&c)
	}
}

// Forget drops the keys of a message that left the result.
func (o *sorter) Forget(uid uint32) {
	if f, ok := o.keys[uid]; ok {
		o.bytes -= keyBytes(f)
		delete(o.keys, uid)
	}
}

// Bytes is what the kept keys take (contextsearch counts it).
func (o *sorter) Bytes() int64 { return o.bytes }

// Prepare fetches the keys of messages about to be placed (those not
// cached come from the upstream, as for any sort).
func (o *sorter) Prepare(ctx context.Context, s *proxy.Session, uids []uint32) error {
	var need []uint32
	for _, u := range uids {
		if _, ok := o.keys[u]; !ok {
			need = append(need, u)
		}
	}
	if len(need) == 0 {
		return nil
	}
	slices.Sort(need)
	return o.e.withKeys(ctx, s, slices.Compact(need), o.keep)
}

// Compare orders as the context's sort did (compare, ending with the
// UID). A message whose keys the upstream no longer had (expunged while
// it was placed) comes after all others, by UID: a total order still,
// until its expunge removes it.
func (o *sorter) Compare(a, b uint32) int {
	fa, okA := o.keys[a]
	fb, okB := o.keys[b]
	switch {
	case okA && okB:
		return compare(fa, fb, o.crit)
	case okA:
		return -1
	case okB:
		return 1
	}
	return cmp.Compare(a, b)
}
