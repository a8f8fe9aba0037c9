package contextsearch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// A Matcher tells which of some messages a context's criteria match now:
// the one thing a context needs to re-evaluate a change. NewSearchMatcher
// makes the one that runs the criteria upstream; a producer may bring its
// own (one that decides from the proxy's state alone, say).
type Matcher interface {
	// Match returns the UIDs among uids (sorted, distinct, all in the
	// client's view or above it) that match, in any order. An error leaves
	// the context as it was, to be tried again with the next change;
	// one that wraps ErrCannotRecheck (or the upstream's refusal, an
	// *upstream.StatusError) ends it with NOUPDATE.
	Match(ctx context.Context, s *proxy.Session, uids []uint32) ([]uint32, error)
}

// A Sorter orders a context's result, for CONTEXT=SORT: the updates of a
// sorted context carry the context positions (RFC 5267 4.3.3) where a
// SEARCH context's carry 0 and keep mailbox order. A sorter is called on
// the session's goroutine only.
type Sorter interface {
	// Prepare is called with messages about to be placed in the result
	// before Compare sees them (a SORT extension fetches their sort keys
	// here). An error leaves the context as it was, as Match's does.
	Prepare(ctx context.Context, s *proxy.Session, uids []uint32) error
	// Compare orders two messages of the result as the context's sort
	// criteria do (negative when a comes first), never 0 for two
	// different messages (RFC 5256 ends every sort with the sequence
	// number).
	Compare(a, b uint32) int
	// Forget says a message left the result: the sorter may drop what it
	// kept for it (Compare is not asked about it again unless Prepare is
	// first). Without it a long-lived context over a mailbox whose mail
	// comes and goes would keep keys for every message it ever placed.
	Forget(uid uint32)
	// Bytes is about how much memory the sorter holds, counted against
	// the context's limits (Config.MaxSessionBytes, Config.MaxBytes).
	Bytes() int64
}

// Spec is what a searching command hands Open for its context.
type Spec struct {
	// Tag is the searching command's tag, which names the context in its
	// updates and in CANCELUPDATE.
	Tag string
	// UID says the updates carry UIDs (UID SEARCH, UID SORT), else the
	// client's sequence numbers.
	UID bool
	// Results are the messages the command answered, as UIDs in the
	// requested order: UID order for a search, the sort order otherwise.
	Results []uint32
	// Mark is Mark's answer from before the command ran: what changed
	// after it is looked at again, so no change that raced the search is
	// missed (looking at one the search already saw costs nothing more).
	Mark Position
	// Matcher re-evaluates the criteria; Sorter orders the result (nil:
	// mailbox order, positions 0).
	Matcher Matcher
	Sorter  Sorter
}

// Position is how far a session's client had been told of its mailbox's
// changes: the mod-sequence and the last UID of its view.
type Position struct {
	ModSeq uint64
	Last   uint32
}

// Errors of Open. ErrNotActive: the session has no contexts (no selected
// mailbox, or the extension is not in the chain); the others are answered
// with NOUPDATE.
var (
	ErrNotActive = errors.New("contextsearch: not active for this session")
	ErrTooMany   = errors.New("too many updating searches")
	ErrTooLarge  = errors.New("too many results to keep updating")
	ErrTagInUse  = errors.New("tag already names an updating search")
	errNoRecheck = errors.New("the search cannot be run again upstream")
	// ErrCannotRecheck is wrapped by a Matcher's error that trying again
	// would not cure (a limit of the matcher's own passed).
	ErrCannotRecheck = errors.New("the search cannot be evaluated again")
	errNoMatchSet    = errors.New("no matcher")
)

type registryKey struct{}

// registry is a session's live contexts, in the order they were opened.
type registry struct {
	ext  *Extension
	live []*live
	// held is the bytes the contexts are charged for, all of them also
	// in ext.held.
	held int64
}

// live is one updating context.
type live struct {
	tag     string
	uid     bool
	matcher Matcher
	sorter  Sorter
	// results are the UIDs the client was told match, in the requested
	// order (UID order without a sorter).
	results []uint32
	// pos is how far the changes have been looked at.
	pos Position
	// charged is the bytes the context is counted for in its registry's
	// held (bytes() when it was last accounted).
	charged int64
}

// ContextOverhead is what a context is counted for besides its tag, its
// result and its sorter: its own fields, its matcher's criteria, the
// bookkeeping around them.
const ContextOverhead = 512

// bytes is what l holds now: the overhead, 4 bytes a UID of the result
// (its length: the slack of a growing slice is at most its growth
// factor) and the sorter's keys.
func (l *live) bytes() int64 {
	n := ContextOverhead + int64(len(l.tag)) + 4*int64(len(l.results))
	if l.sorter != nil {
		n += l.sorter.Bytes()
	}
	return n
}

func registryOf(s *proxy.Session) *registry {
	r, _ := s.Value(registryKey{}).(*registry)
	return r
}

// Active reports whether the session can open contexts now: a mailbox is
// selected and the extension is in the chain. A producer refuses UPDATE
// (and the other RFC 5267 options) without it: CONTEXT=SEARCH is then not
// advertised.
func Active(s *proxy.Session) bool { return registryOf(s) != nil }

// InUse reports whether tag names a live context: RFC 5267 4.3 wants an
// updating command under such a tag refused with BAD.
func InUse(s *proxy.Session, tag string) bool {
	r := registryOf(s)
	return r != nil && r.find(tag) >= 0
}

// Mark returns the client's position in its selected mailbox, for Spec.Mark.
func Mark(s *proxy.Session) Position {
	m := s.Mailbox()
	if m == nil {
		return Position{}
	}
	return Position{ModSeq: m.ModSeq(), Last: lastOf(m.UIDs())}
}

// Open makes a live context of a searching command's answer, once the
// answer has been written: updates for changes since spec.Mark follow at
// once if the client has heard of any meanwhile. ErrTooMany and ErrTooLarge
// (and any error of spec's matcher) mean no updates: the caller answers
// "* NO [NOUPDATE tag]".
func Open(ctx context.Context, s *proxy.Session, spec Spec) error {
	r := registryOf(s)
	switch {
	case r == nil:
		return ErrNotActive
	case spec.Matcher == nil:
		return errNoMatchSet
	case r.find(spec.Tag) >= 0:
		return ErrTagInUse
	case len(r.live) >= r.ext.cfg.MaxPerSession:
		return ErrTooMany
	}
	l := &live{tag: spec.Tag, uid: spec.UID, matcher: spec.Matcher, sorter: spec.Sorter,
		results: slices.Clone(spec.Results), pos: spec.Mark}
	if !r.account(l) {
		return ErrTooLarge
	}
	r.live = append(r.live, l)
	if b := r.refresh(ctx, s, l); len(b) > 0 {
		return s.Write(b)
	}
	return nil
}

// NoUpdate is the response refusing updates to the command tagged tag
// (RFC 5267 4.3.1).
func NoUpdate(tag string, why error) []byte {
	b := imapcodec.AppendQuoted([]byte("* NO [NOUPDATE "), tag)
	return fmt.Appendf(b, "] No updates: %s\r\n", why)
}

func (r *registry) find(tag string) int {
	return slices.IndexFunc(r.live, func(l *live) bool { return l.tag == tag })
}

// cancel ends the context tagged tag, giving back its bytes.
func (r *registry) cancel(tag string) {
	if i := r.find(tag); i >= 0 {
		r.release(r.live[i])
		r.live = slices.Delete(r.live, i, i+1)
	}
}

// close ends every context: the session left the mailbox or ended.
func (r *registry) close() {
	for _, l := range r.live {
		r.release(l)
	}
	r.live = nil
}

// account charges l for what it holds now: false, with nothing more
// charged, when its growth would pass the session's bound or the
// process's budget. Shrinking is always accounted.
func (r *registry) account(l *live) bool {
	d := l.bytes() - l.charged
	switch {
	case d <= 0:
		r.ext.give(-d)
	case r.held+d > r.ext.cfg.MaxSessionBytes || !r.ext.take(d):
		return false
	}
	r.held += d
	l.charged += d
	return true
}

// release gives back everything l is charged for.
func (r *registry) release(l *live) {
	r.ext.give(l.charged)
	r.held -= l.charged
	l.charged = 0
}

func lastOf(view []uint32) uint32 {
	if len(view) == 0 {
		return 0
	}
	return view[len(view)-1]
}

// recheckTimeout bounds the upstream round trip of one context's
// re-evaluation: the batch it follows waits for it.
const recheckTimeout = 10 * time.Second

// expunged removes the expunged messages from every context and appends
// their REMOVEFROM, in the numbers the client has before the expunges
// (uids and seqs as ChangeReporter.ReportExpunged gets them).
func (r *registry) expunged(b []byte, uids, seqs []uint32) []byte {
	for _, l := range r.live {
		var gone []uint32 // UIDs, in the order reported
		seqOf := map[uint32]uint32{}
		for i, uid := range uids {
			if l.index(uid) >= 0 {
				gone = append(gone, uid)
				seqOf[uid] = seqs[i]
			}
		}
		if len(gone) == 0 {
			continue
		}
		num := func(uid uint32) uint32 {
			if l.uid {
				return uid
			}
			return seqOf[uid]
		}
		b = l.appendUpdate(b, gone, nil, num)
		r.account(l) // smaller: always accounted
	}
	return b
}

// refresh re-evaluates what changed since each context (only l, if not
// nil) last looked, up to what the client has been told, and returns the
// updates. A context whose re-evaluation fails stays where it was and is
// tried again next time; one whose criteria the upstream now refuses is
// dropped, with a NOUPDATE.
func (r *registry) refresh(ctx context.Context, s *proxy.Session, only *live) []byte {
	m := s.Mailbox()
	if m == nil {
		return nil
	}
	view := m.UIDs()
	now := Position{ModSeq: m.ModSeq(), Last: lastOf(view)}
	var b []byte
	for _, l := range slices.Clone(r.live) {
		if only != nil && l != only || l.pos == now {
			continue
		}
		changed, gone := l.changes(m.State(), view, now)
		num := func(uid uint32) uint32 {
			if l.uid {
				return uid
			}
			return m.SeqOf(uid)
		}
		var add []uint32
		if len(changed) > 0 {
			cctx, cancel := context.WithTimeout(ctx, recheckTimeout)
			matched, err := l.matcher.Match(cctx, s, changed)
			if err == nil && l.sorter != nil {
				err = l.sorter.Prepare(cctx, s, matched)
			}
			cancel()
			switch {
			case errors.As(err, new(*upstream.StatusError)) || errors.Is(err, ErrCannotRecheck):
				s.Logger().Info("updating search dropped", "tag", l.tag, "err", err)
				r.cancel(l.tag)
				b = append(b, NoUpdate(l.tag, errNoRecheck)...)
				continue
			case err != nil:
				s.Logger().Debug("updating search not re-evaluated", "tag", l.tag, "err", err)
				continue
			}
			slices.Sort(matched)
			for _, uid := range changed {
				_, match := slices.BinarySearch(matched, uid)
				in := l.index(uid) >= 0
				switch {
				case match && !in && (l.uid || num(uid) != 0):
					add = append(add, uid)
				case !match && in:
					gone = append(gone, uid)
				}
			}
		}
		// A sequence-numbered context cannot name a message the client
		// no longer has: its expunge told the client already.
		var told []uint32
		for _, uid := range gone {
			if l.uid || num(uid) != 0 {
				told = append(told, uid)
			} else {
				l.remove(uid)
			}
		}
		b = l.appendUpdate(b, told, add, num)
		l.pos = now
		if !r.account(l) {
			// Grown past what the session or the process may hold:
			// the update just written stands, and the context ends.
			s.Logger().Info("updating search dropped", "tag", l.tag, "err", ErrTooLarge)
			r.cancel(l.tag)
			b = append(b, NoUpdate(l.tag, ErrTooLarge)...)
		}
	}
	return b
}

// changes returns the messages of the client's view (and, for a UID
// context, of its result) changed since l.pos up to now: those to search
// again, and the expunged ones the result still holds that the core's
// expunge report did not cover (messages the client never saw).
func (l *live) changes(st *syncstate.Mailbox, view []uint32, now Position) (changed, gone []uint32) {
	inView := func(uid uint32) bool { _, ok := slices.BinarySearch(view, uid); return ok }
	st.ChangesSince(l.pos.ModSeq, func(c syncstate.Change) {
		switch {
		case c.ModSeq > now.ModSeq:
		case c.Expunged:
			if l.index(c.UID) >= 0 && !inView(c.UID) {
				gone = append(gone, c.UID)
			}
		case inView(c.UID):
			changed = append(changed, c.UID)
		}
	})
	i, _ := slices.BinarySearch(view, l.pos.Last+1)
	changed = append(changed, view[i:]...)
	slices.Sort(changed)
	return slices.Compact(changed), gone
}

// index returns the position of uid in the result, or -1.
func (l *live) index(uid uint32) int {
	if l.sorter == nil {
		if i, ok := slices.BinarySearch(l.results, uid); ok {
			return i
		}
		return -1
	}
	return slices.Index(l.results, uid)
}

func (l *live) remove(uid uint32) int {
	i := l.index(uid)
	if i >= 0 {
		l.results = slices.Delete(l.results, i, i+1)
		if l.sorter != nil {
			l.sorter.Forget(uid)
		}
	}
	return i
}

// insert places uid in the result and returns its position (0-based).
func (l *live) insert(uid uint32) int {
	var i int
	if l.sorter == nil {
		i, _ = slices.BinarySearch(l.results, uid)
	} else {
		i, _ = slices.BinarySearchFunc(l.results, uid, l.sorter.Compare)
	}
	l.results = slices.Insert(l.results, i, uid)
	return i
}

// appendUpdate applies the removals, then the additions, to the result and
// appends the ESEARCH response that tells them (nothing when both are
// empty): REMOVEFROM and ADDTO with position 0 and a set of numbers in
// mailbox order for a search; with a sorter, one position and number pair
// per message, each valid once the pairs before it are applied (RFC 5267
// 4.3.2: the client processes them in order).
func (l *live) appendUpdate(b []byte, removed, added []uint32, num func(uint32) uint32) []byte {
	if len(removed) == 0 && len(added) == 0 {
		return b
	}
	b = imapcodec.AppendQuoted(append(b, "* ESEARCH (TAG "...), l.tag)
	b = append(b, ')')
	if l.uid {
		b = append(b, " UID"...)
	}
	item := func(name string, uids []uint32, apply func(uint32) int) {
		if len(uids) == 0 {
			return
		}
		b = append(append(append(b, ' '), name...), " ("...)
		if l.sorter == nil {
			nums := make([]uint32, 0, len(uids))
			for _, uid := range uids {
				apply(uid)
				nums = append(nums, num(uid))
			}
			slices.Sort(nums)
			b = imapcodec.AppendNumSet(append(b, "0 "...), slices.Compact(nums))
		} else {
			// One pair per message, then runs merged into "pos lo:hi"
			// where the set's increasing expansion is what the pairs
			// said: additions at consecutive positions, removals at
			// one position, of consecutive numbers (RFC 5267 4.3.3's
			// preferred form).
			step := 0
			if name == "ADDTO" {
				step = 1
			}
			var runs []run
			for _, uid := range uids {
				pos, n := uint32(apply(uid)+1), num(uid)
				if k := len(runs); k > 0 && runs[k-1].pos+uint32(step)*(runs[k-1].hi-runs[k-1].lo+1) == pos && runs[k-1].hi+1 == n {
					runs[k-1].hi = n
					continue
				}
				runs = append(runs, run{pos, n, n})
			}
			for i, r := range runs {
				if i > 0 {
					b = append(b, ' ')
				}
				b = strconv.AppendUint(b, uint64(r.pos), 10)
				b = imapcodec.AppendNumSet(append(b, ' '), []uint32{r.lo})
				if r.hi != r.lo {
					b = strconv.AppendUint(append(b, ':'), uint64(r.hi), 10)
				}
			}
		}
		b = append(b, ')')
	}
	if l.sorter != nil {
		slices.SortFunc(added, l.sorter.Compare)
	}
	item("REMOVEFROM", removed, l.remove)
	item("ADDTO", added, l.insert)
	return append(b, "\r\n"...)
}

// run is consecutive numbers placed at one context position.
type run struct{ pos, lo, hi uint32 }
