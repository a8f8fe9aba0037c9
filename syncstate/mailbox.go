// Package syncstate keeps the proxy's own view of a mailbox's messages: per
// UID the flags and the mod-sequence of their last change, the expunged UIDs
// with the mod-sequence of their expunge, and the mailbox's highest
// mod-sequence.
//
// It is the one source of truth from which client sessions learn what
// changed: a session remembers only the mod-sequence it has been told about
// and, when the protocol allows, asks for the changes since then. That keeps
// per-session memory constant (no event queue to overflow), lets a slow
// client catch up with one coalesced delta, and is exactly the bookkeeping
// CONDSTORE and QRESYNC (RFC 7162) need.
//
// Mod-sequences are the proxy's own: they start at 1 (never 0, RFC 7162
// §3.1.1), and every change (a new message, a flag change, an expunge)
// gets a strictly larger one.
package syncstate

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// A Mailbox is the state of one mailbox of one account at one UIDVALIDITY.
// It is safe for concurrent use.
//
// # Layout
//
// A watched mailbox's state lives as long as the mailbox is watched (and a
// while after, see hub's cache of unwatched states), so its size per
// message is what thousands of watched mailboxes cost. The messages are
// three arrays aligned by position, in ascending UID order:
//
//   - uids, 4 bytes a message: the list Snapshot hands out;
//   - flags, each message's flag set as an index into the mailbox's table
//     of distinct sets (flagSets): 1 byte while there are at most 256;
//   - mods, each message's mod-sequence as an offset from modBase: 2 bytes
//     while the mailbox saw fewer than 65,536 changes, 4 after (see packed).
//
// A message is found through rank, a bitmap of the UIDs (see uidRank), or
// by a search of uids where they are sparse (see search). ChangesSince
// needs the messages changed after a mod-sequence without walking the
// mailbox: recent lists the latest changes, and for older mod-sequences
// index holds upper bounds of the offsets per block of positions (see
// modIndex). No per-change log is kept beyond recent's few: a message's
// own mod-sequence says all a resync needs (its latest state, once).
// Expunges, which leave no message behind, are kept in their own log
// (expunged), bounded by LogLimits.
//
// That is about 9 to 11 bytes a message, where a map of messages and a
// log entry per change took about 67 to 86 (docs/benchmarks.md, issue
// 20).
type Mailbox struct {
	mu          sync.RWMutex
	uidValidity uint32
	highest     uint64
	base        uint64 // the log is complete for changes after base

	// uids is sorted. Snapshots share it: it is appended to past every
	// snapshot's length (Snapshot caps what it hands out), and replaced,
	// never written in place, when messages go or arrive below the last.
	uids    []uint32
	flags   packed   // flag set index, by position
	mods    packed   // mod-sequence minus modBase, by position (above 0)
	modBase uint64   // below every message's mod-sequence
	index   modIndex // of mods
	rank    *uidRank // of uids; nil where they are sparse (then search)
	// recent holds the latest changes of messages (new ones, flag
	// changes) in mod-sequence order, every one after recentFrom: a
	// resync from a recent mod-sequence, the usual one (a session told
	// of a batch, a client back after a while), reads just those, in
	// order, where the index reads blocks and orders what it finds. An
	// entry superseded by a later change or an expunge is skipped (its
	// message's mod-sequence is not its own any more). Bounded by
	// recentCap.
	recent     []recentChange
	recentFrom uint64
	expunged   []expunge // by ascending mod-sequence, all above base

	maxUID   uint32 // the largest UID the mailbox ever had, as far as the state knows
	flagSets flagInterner
	persist  Persister
	saved    bool // whether the store holds the state (else the next save is a full one)
	limits   LogLimits
	ageCheck time.Time // when the log is next checked for expunges older than limits.MaxAge
	recency  Recency   // who may still be told a message is recent (recent.go); its own lock
}

// recentChange is an entry of Mailbox.recent.
type recentChange struct {
	uid uint32
	off uint32 // mod-sequence minus modBase
}

// recentCap returns how many entries recent keeps (it holds up to twice
// as many between trims): a 32nd of the messages, at least 32 and at
// most 512 (4 to 8 KB).
func recentCap(msgs int) int { return min(512, max(32, msgs/32)) }

// expunge is an entry of the expunge log.
type expunge struct {
	modseq uint64
	uid    uint32
	at     uint32 // when, in Unix seconds (see stamp)
}

// LogLimits bound a state's expunge log. Without a bound it grows for the
// life of the mailbox, in memory and on disk, by one entry per expunge.
// Pruning raises the state's Base past the dropped entries: a client that
// knew the mailbox before then gets a full resync (see Base), which is
// exactly as correct, only larger.
type LogLimits struct {
	// MaxExpunges is the most expunges the log keeps; when it is
	// exceeded, the oldest are dropped until 7/8 of it are left (so that
	// pruning, a walk over the log, happens once every MaxExpunges/8
	// expunges, not at every one). 0 keeps every one.
	MaxExpunges int
	// MaxAge drops expunges older than this (checked at most once a
	// minute, when the state changes). 0 keeps them however old.
	MaxAge time.Duration
}

// clock is the time source of expunge stamps (tests replace it).
var clock = time.Now

// stamp is the second of t as an expunge stores it (never 0).
func stamp(t time.Time) uint32 { return uint32(max(t.Unix(), 1)) }

// Persister saves a batch of changes durably. The state calls it inside
// Apply, before the changes become visible, so a change is on disk before
// any session is told of it. If it fails, Apply takes the changes back and
// returns the error.
type Persister func(statestore.Batch) error

// SetLogLimits bounds the expunge log, pruning it at once in memory (the
// store follows with the next save).
func (m *Mailbox) SetLogLimits(l LogLimits) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limits = l
	m.ageCheck = time.Time{}
	if b := m.pruneBaseLocked(); b != m.base {
		m.pruneLocked(b)
	}
}

// MaxUID returns the largest UID the mailbox had as far as the state knows,
// expunged ones included: a full resync reports every UID up to it that
// does not exist any more as vanished, since pruned expunges are no longer
// in the log.
func (m *Mailbox) MaxUID() uint32 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.maxUID
}

// SetPersister makes the state save every change with p.
func (m *Mailbox) SetPersister(p Persister) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.persist = p
}

// Restore rebuilds a state from what a Store saved.
func Restore(sv *statestore.Saved) *Mailbox {
	m := New(sv.UIDValidity)
	m.highest = max(sv.Highest, 1)
	m.saved = true
	m.maxUID = sv.MaxUID
	saved := sv.Messages
	if !slices.IsSortedFunc(saved, func(x, y statestore.Message) int { return cmp.Compare(x.UID, y.UID) }) {
		saved = slices.Clone(saved)
		slices.SortStableFunc(saved, func(x, y statestore.Message) int { return cmp.Compare(x.UID, y.UID) })
	}
	oldest := m.highest // the oldest mod-sequence saved
	for _, s := range saved {
		oldest = min(oldest, s.ModSeq)
	}
	m.modBase = max(oldest, 1) - 1
	m.uids = make([]uint32, 0, len(saved))
	m.flags = makePacked(0, 0)
	m.flags.b = make([]byte, 0, len(saved))
	m.mods = makePacked(0, m.highest-m.modBase)
	m.mods.b = make([]byte, 0, len(saved)*m.mods.w)
	for i, s := range saved {
		fs := uint64(m.flagSets.intern(s.Flags))
		off := max(s.ModSeq, m.modBase) - m.modBase
		if i+1 < len(saved) && saved[i+1].UID == s.UID {
			continue // the later one counts
		}
		m.uids = append(m.uids, s.UID)
		m.flags.append(fs)
		m.mods.append(off)
		m.maxUID = max(m.maxUID, s.UID)
	}
	m.rebuildIndex()
	m.recentFrom = m.highest
	now := clock()
	m.expunged = make([]expunge, 0, len(sv.Expunged))
	for _, x := range sv.Expunged {
		at := x.At
		if at.IsZero() {
			at = now // saved before expunges had a time: their age counts from now
		}
		m.expunged = append(m.expunged, expunge{modseq: x.ModSeq, uid: x.UID, at: stamp(at)})
		m.maxUID = max(m.maxUID, x.UID)
		oldest = min(oldest, x.ModSeq)
	}
	slices.SortStableFunc(m.expunged, func(a, b expunge) int { return cmp.Compare(a.modseq, b.modseq) })
	// Where the log began is saved; files from before that get the oldest
	// entry left as a bound (a later start only makes clients resync in
	// full, never miss a change).
	switch {
	case sv.Base > 0:
		m.base = sv.Base
	case len(saved) > 0 || len(sv.Expunged) > 0:
		m.base = max(oldest, 1) - 1
	default:
		m.base = m.highest
	}
	return m
}

// New returns an empty mailbox state. Its HIGHESTMODSEQ is 1.
func New(uidValidity uint32) *Mailbox { return NewAt(uidValidity, 1) }

// NewAt returns an empty mailbox state whose mod-sequences start above base
// (at least 1). A state made anew for a mailbox whose old state was lost
// should start above every mod-sequence the old one handed out, so that
// clients holding one of those are recognised (see Base); the hub uses the
// clock for this.
func NewAt(uidValidity uint32, base uint64) *Mailbox {
	base = max(base, 1)
	return &Mailbox{uidValidity: uidValidity, highest: base, base: base, modBase: base, recentFrom: base,
		flags: makePacked(0, 0), mods: makePacked(0, 0), index: modIndex{blocks: makePacked(0, 0)}}
}

// Base returns the mod-sequence from which on the state knows every change:
// asked for the changes since an older one (a client's mod-sequence from a
// lost state, or from another server), ChangesSince would miss some, and
// the caller must resynchronise the client in full instead.
func (m *Mailbox) Base() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.base
}

// UIDValidity returns the UIDVALIDITY the state belongs to.
func (m *Mailbox) UIDValidity() uint32 { return m.uidValidity }

// Snapshot is a consistent view of the mailbox at one mod-sequence. UIDs is
// shared and must not be modified.
type Snapshot struct {
	UIDs    []uint32
	Highest uint64
}

// Snapshot returns the current message list and HIGHESTMODSEQ.
func (m *Mailbox) Snapshot() Snapshot {
	m.mu.RLock()
	defer m.mu.RUnlock()
	// Capped: an append to it must not write where the state appends.
	return Snapshot{UIDs: m.uids[:len(m.uids):len(m.uids)], Highest: m.highest}
}

// HighestModSeq returns the mailbox's HIGHESTMODSEQ.
func (m *Mailbox) HighestModSeq() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.highest
}

// Marks returns the largest UID the state has known and its
// HIGHESTMODSEQ, read together: every message up to that UID arrived at
// or below that mod-sequence. An upstream connection synced after they
// were read has seen all of it (proxy/catchup.go).
func (m *Mailbox) Marks() (maxUID uint32, highest uint64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.maxUID, m.highest
}

// find returns uid's position, trying hint (where the previous lookup of
// an ascending walk ended) before a search.
func (m *Mailbox) find(uid uint32, hint int) (int, bool) {
	if hint < len(m.uids) && m.uids[hint] == uid {
		return hint, true
	}
	return m.search(uid)
}

// search returns uid's position, or where it would go.
func (m *Mailbox) search(uid uint32) (int, bool) {
	if m.rank != nil {
		return m.rank.find(uid, len(m.uids))
	}
	return search(m.uids, uid)
}

// search returns where uid is in uids (sorted), or would be. A mailbox's
// UIDs are mostly dense, so uid's place between two UIDs is a close guess
// of its position between theirs: a few such guesses (interpolation
// search) narrow the range to a few positions, where a binary search of
// 20,000 UIDs reads 15. The guesses are bounded, and a binary search of
// what is left ends it, so sparse or clustered UIDs cost no more than a
// binary search.
func search(uids []uint32, uid uint32) (int, bool) {
	lo, hi := 0, len(uids)-1
	if hi < 0 || uid <= uids[0] {
		return 0, hi >= 0 && uids[0] == uid
	}
	if uid >= uids[hi] {
		if uid == uids[hi] {
			return hi, true
		}
		return hi + 1, false
	}
	// uids[lo] < uid < uids[hi]: uid is at, or goes to, a place in (lo, hi].
	for range 4 {
		if hi-lo <= 16 {
			break
		}
		g := lo + int(uint64(uid-uids[lo])*uint64(hi-lo)/uint64(uids[hi]-uids[lo]))
		g = min(max(g, lo+1), hi-1)
		switch v := uids[g]; {
		case v == uid:
			return g, true
		case v < uid:
			lo = g
		default:
			hi = g
		}
	}
	k, ok := slices.BinarySearch(uids[lo+1:hi], uid)
	return lo + 1 + k, ok
}

func (m *Mailbox) modseqAt(i int) uint64 { return m.modBase + m.mods.get(i) }

func (m *Mailbox) flagsAt(i int) []string { return m.flagSets.get(uint32(m.flags.get(i))) }

// setModSeq gives the message at i the mod-sequence ms (above modBase).
func (m *Mailbox) setModSeq(i int, ms uint64) {
	off := ms - m.modBase
	m.mods.set(i, off)
	m.index.raise(i, off)
}

// rebuildIndex computes the index and the rank anew.
func (m *Mailbox) rebuildIndex() {
	m.index.build(&m.mods, len(m.uids))
	m.rank = buildRank(m.uids)
}

// Flags returns a message's flags and mod-sequence.
func (m *Mailbox) Flags(uid uint32) (flags []string, modseq uint64, ok bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	i, ok := m.search(uid)
	if !ok {
		return nil, 0, false
	}
	return m.flagsAt(i), m.modseqAt(i), true
}

// Each calls fn, in order, for every message of uids the state has, with
// its index in uids, its flags and its mod-sequence, all read at one
// moment (under one read lock): a search decided from the state
// (extensions/internal/statesearch) sees one state of the mailbox, never
// half of a batch the watcher is applying. Messages the state does not
// have (expunged) are skipped. fn must be quick and must not call back
// into m; the flags are shared and must not be modified.
func (m *Mailbox) Each(uids []uint32, fn func(i int, flags []string, modseq uint64)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	at := 0
	for k, uid := range uids {
		i, ok := m.find(uid, at)
		at = i
		if ok {
			fn(k, m.flagsAt(i), m.modseqAt(i))
			at++
		}
	}
}

// Message is a message as the upstream reported it.
type Message struct {
	UID   uint32
	Flags []string
}

// Changes is a batch of changes to apply at once.
type Changes struct {
	// Upsert holds messages that are new or whose flags may have changed;
	// a message whose flags are unchanged costs nothing.
	Upsert []Message
	// Expunged holds UIDs that no longer exist; unknown UIDs are ignored.
	Expunged []uint32
	// FlagsOnly makes Upsert change only the flags of messages the state
	// has and ignore the others: for flags a session saw on a connection of
	// its own, which may still show a message that the state already has
	// as expunged (UIDs are never reused: it must not come back).
	FlagsOnly bool
}

// Apply applies a batch and reports whether anything changed. Each actual
// change gets its own mod-sequence.
//
// With a Persister, the changes are saved before Apply returns, and only
// then become visible: if the save fails (also when retried as a full
// save, see saveLocked), the state is left exactly as it was and the error
// is returned. No session can then be told a mod-sequence that is not on
// disk, so mod-sequences never go backwards across a restart; the caller
// (the hub's watcher) gives up its connection and its full resync on
// reconnecting reports the same changes again.
func (m *Mailbox) Apply(c Changes) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applyLocked(c)
}

// prior is a message's flags and mod-sequence offset before applyLocked
// changed them, to undo a batch that could not be saved.
type prior struct {
	i           int
	flags, mods uint64
}

// arrival is a message new in a batch.
type arrival struct {
	uid    uint32
	flags  uint64
	modseq uint64
	gone   bool // expunged in the same batch
}

// layout is the part of a state a batch replaces, to put it back.
type layout struct {
	uids        []uint32
	flags, mods packed
	index       modIndex
}

func (m *Mailbox) layout() layout { return layout{m.uids, m.flags, m.mods, m.index} }

func (m *Mailbox) setLayout(l layout) {
	m.uids, m.flags, m.mods, m.index = l.uids, l.flags, l.mods, l.index
	m.rank = buildRank(m.uids) // the batch's arrivals may have changed it in place
}

func (m *Mailbox) applyLocked(c Changes) (bool, error) {
	changed := false
	var batch statestore.Batch
	var undo []prior
	var added []arrival
	var addedAt map[uint32]int // index in added, once added is not ascending
	findAdded := func(uid uint32) (int, bool) {
		if addedAt != nil {
			k, ok := addedAt[uid]
			return k, ok
		}
		if len(added) == 0 || uid > added[len(added)-1].uid {
			return 0, false
		}
		addedAt = make(map[uint32]int, len(added))
		for k, a := range added {
			addedAt[a.uid] = k
		}
		k, ok := addedAt[uid]
		return k, ok
	}
	old := m.layout()
	highest0, expunged0, maxUID0 := m.highest, len(m.expunged), m.maxUID
	recent0, recentFrom0 := len(m.recent), m.recentFrom
	at := 0
	for _, u := range c.Upsert {
		fs := uint64(m.flagSets.intern(u.Flags))
		i, ok := m.find(u.UID, at)
		at = i
		switch {
		case ok:
			at++
			if m.flags.get(i) == fs {
				continue
			}
			undo = append(undo, prior{i, m.flags.get(i), m.mods.get(i)})
			m.highest++
			m.flags.set(i, fs)
			m.setModSeq(i, m.highest)
		case c.FlagsOnly:
			continue
		default:
			k, again := findAdded(u.UID)
			if again && added[k].flags == fs {
				continue
			}
			m.highest++
			if again {
				added[k].flags, added[k].modseq = fs, m.highest
			} else {
				if addedAt != nil {
					addedAt[u.UID] = len(added)
				}
				added = append(added, arrival{uid: u.UID, flags: fs, modseq: m.highest})
			}
		}
		changed = true
		m.noteRecent(u.UID, m.highest)
		if m.persist != nil {
			batch.Upsert = append(batch.Upsert, statestore.Message{UID: u.UID, ModSeq: m.highest, Flags: m.flagSets.get(uint32(fs))})
		}
	}
	var removed []int            // positions
	var gone map[uint32]struct{} // UIDs removed, when the batch has several
	var now time.Time
	at = 0
	for _, uid := range c.Expunged {
		i, ok := m.find(uid, at)
		at = i
		if ok {
			at++
		}
		k, new := 0, false
		if !ok {
			if k, new = findAdded(uid); !new || added[k].gone {
				continue
			}
		}
		if len(c.Expunged) > 1 {
			if gone == nil {
				gone = make(map[uint32]struct{}, len(c.Expunged))
			}
			if _, dup := gone[uid]; dup {
				continue
			}
			gone[uid] = struct{}{}
		}
		if new {
			added[k].gone = true
		} else {
			removed = append(removed, i)
		}
		if now.IsZero() {
			now = clock()
		}
		m.highest++
		m.expunged = append(m.expunged, expunge{modseq: m.highest, uid: uid, at: stamp(now)})
		changed = true
		if m.persist != nil {
			batch.Expunged = append(batch.Expunged, statestore.Expunge{UID: uid, ModSeq: m.highest, At: now.Truncate(time.Second)})
		}
	}
	for _, a := range added {
		m.maxUID = max(m.maxUID, a.uid)
	}
	if len(added) > 0 || len(removed) > 0 {
		m.restructure(added, removed)
	}
	newBase := m.pruneBaseLocked()
	if m.persist != nil && (changed || !m.saved || newBase != m.base) {
		if err := m.saveLocked(batch, newBase); err != nil {
			// Take the batch back: nobody saw it (the lock is held).
			m.setLayout(old)
			for _, p := range slices.Backward(undo) {
				if p.i < m.flags.len() {
					m.flags.set(p.i, p.flags)
					m.mods.set(p.i, p.mods)
				}
			}
			clear(m.expunged[expunged0:])
			m.expunged = m.expunged[:expunged0]
			if m.recentFrom == recentFrom0 {
				m.recent = m.recent[:recent0]
			} else {
				m.recent, m.recentFrom = nil, highest0
			}
			m.highest, m.maxUID = highest0, maxUID0
			return false, err
		}
	}
	if newBase != m.base {
		m.pruneLocked(newBase)
	}
	m.trimRecent()
	return changed, nil
}

// noteRecent records that uid changed at ms.
func (m *Mailbox) noteRecent(uid uint32, ms uint64) {
	off := ms - m.modBase
	if off > math.MaxUint32 {
		// Past four billion changes: the index answers from here on.
		m.recent, m.recentFrom = m.recent[:0], ms
		return
	}
	m.recent = append(m.recent, recentChange{uid, uint32(off)})
}

// trimRecent keeps recent within twice recentCap, dropping the oldest.
func (m *Mailbox) trimRecent() {
	keep := recentCap(len(m.uids))
	if len(m.recent) <= 2*keep {
		return
	}
	drop := len(m.recent) - keep
	m.recentFrom = m.modBase + uint64(m.recent[drop-1].off)
	kept := make([]recentChange, keep, 2*keep)
	copy(kept, m.recent[drop:])
	m.recent = kept
}

// restructure adds the arrivals (those not gone) and removes the messages
// at the positions removed. New mail, which comes with UIDs above every
// other, is appended in place; anything else builds the arrays anew.
func (m *Mailbox) restructure(added []arrival, removed []int) {
	last := uint32(0)
	if len(m.uids) > 0 {
		last = m.uids[len(m.uids)-1]
	}
	tail := len(removed) == 0
	for _, a := range added {
		tail = tail && a.uid > last
		last = a.uid
	}
	if tail {
		// Past every snapshot's length: nobody sees these bytes yet.
		m.uids = grow(m.uids, len(added))
		m.flags.grow(len(added))
		m.mods.grow(len(added))
		for _, a := range added {
			if a.gone {
				continue
			}
			i := len(m.uids)
			switch {
			case i == 0:
				m.rank = buildRank([]uint32{a.uid})
			case m.rank != nil && !m.rank.append(a.uid, i):
				m.rank = nil
			}
			m.uids = append(m.uids, a.uid)
			m.flags.append(a.flags)
			m.mods.append(a.modseq - m.modBase)
			m.index.appended(i, a.modseq-m.modBase)
		}
		return
	}
	slices.SortFunc(added, func(x, y arrival) int { return cmp.Compare(x.uid, y.uid) })
	slices.Sort(removed)
	arrivals := 0
	for _, a := range added {
		if !a.gone {
			arrivals++
		}
	}
	if arrivals == 0 {
		m.remove(removed)
		return
	}
	n := len(m.uids) + arrivals - len(removed)
	uids := make([]uint32, 0, n)
	flags := packed{w: m.flags.w, b: make([]byte, 0, n*m.flags.w)}
	mods := packed{w: m.mods.w, b: make([]byte, 0, n*m.mods.w)}
	i, j, r := 0, 0, 0
	for i < len(m.uids) || j < len(added) {
		if j < len(added) && added[j].gone {
			j++
			continue
		}
		if r < len(removed) && removed[r] == i {
			r++
			i++
			continue
		}
		if j == len(added) || i < len(m.uids) && m.uids[i] < added[j].uid {
			uids = append(uids, m.uids[i])
			flags.append(m.flags.get(i))
			mods.append(m.mods.get(i))
			i++
			continue
		}
		a := added[j]
		uids = append(uids, a.uid)
		flags.append(a.flags)
		mods.append(a.modseq - m.modBase)
		j++
	}
	m.uids, m.flags, m.mods = uids, flags, mods
	m.rebuildIndex()
}

// remove drops the messages at the positions removed (sorted), copying
// the runs between them whole. The arrays are new ones: the UIDs are
// shared with snapshots, and the others with the layout a failed save
// puts back.
func (m *Mailbox) remove(removed []int) {
	n := len(m.uids) - len(removed)
	uids := make([]uint32, 0, n)
	flags := packed{w: m.flags.w, b: make([]byte, 0, n*m.flags.w)}
	mods := packed{w: m.mods.w, b: make([]byte, 0, n*m.mods.w)}
	from := 0
	for _, r := range append(removed, len(m.uids)) {
		uids = append(uids, m.uids[from:r]...)
		flags.b = append(flags.b, m.flags.b[from*flags.w:r*flags.w]...)
		mods.b = append(mods.b, m.mods.b[from*mods.w:r*mods.w]...)
		from = r + 1
	}
	m.uids, m.flags, m.mods = uids, flags, mods
	m.rebuildIndex()
}

// saveLocked saves batch (the changes just made, whose state is in m with
// base newBase). If that fails, or nothing was saved yet, the whole state is
// saved instead, replacing what the store holds: a store rebuilt after
// damage (statestore.Bolt) has lost the mailbox, and an incremental batch
// on top of nothing would leave a state on disk that looks complete and is
// not. A full save that fails too leaves the next save a full one as well.
func (m *Mailbox) saveLocked(batch statestore.Batch, newBase uint64) error {
	var err error
	if m.saved {
		batch.UIDValidity, batch.Highest, batch.Base, batch.MaxUID = m.uidValidity, m.highest, newBase, m.maxUID
		if err = m.persist(batch); err == nil {
			return nil
		}
	}
	m.saved = false
	if ferr := m.persist(m.fullBatchLocked(newBase)); ferr != nil {
		if err != nil {
			return fmt.Errorf("syncstate: saving the state (UIDVALIDITY %d, HIGHESTMODSEQ %d): %w; saving it whole: %w", m.uidValidity, m.highest, err, ferr)
		}
		return fmt.Errorf("syncstate: saving the whole state (UIDVALIDITY %d, HIGHESTMODSEQ %d): %w", m.uidValidity, m.highest, ferr)
	}
	m.saved = true
	return nil
}

// fullBatchLocked returns a batch that replaces whatever the store holds
// with the whole state.
func (m *Mailbox) fullBatchLocked(base uint64) statestore.Batch {
	b := statestore.Batch{Reset: true, UIDValidity: m.uidValidity, Highest: m.highest, Base: base, MaxUID: m.maxUID}
	b.Upsert = make([]statestore.Message, len(m.uids))
	for i, uid := range m.uids {
		b.Upsert[i] = statestore.Message{UID: uid, ModSeq: m.modseqAt(i), Flags: m.flagsAt(i)}
	}
	for _, x := range m.expunged {
		if x.modseq > base {
			b.Expunged = append(b.Expunged, statestore.Expunge{UID: x.uid, ModSeq: x.modseq, At: time.Unix(int64(x.at), 0)})
		}
	}
	return b
}

// Change is one entry of ChangesSince.
type Change struct {
	UID      uint32
	ModSeq   uint64
	Expunged bool
	Flags    []string // current flags; nil for an expunge
}

// ChangesSince calls fn for every message changed or expunged after modseq,
// in mod-sequence order, each message once with its latest state. It costs
// time in the number of changes, and in the size of the mailbox only one
// comparison per 256 messages (see modIndex).
func (m *Mailbox) ChangesSince(modseq uint64, fn func(Change)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	x := sort.Search(len(m.expunged), func(i int) bool { return m.expunged[i].modseq > modseq })
	if modseq >= m.recentFrom {
		t := modseq - m.modBase
		k := sort.Search(len(m.recent), func(i int) bool { return uint64(m.recent[i].off) > t })
		for _, r := range m.recent[k:] {
			i, ok := m.search(r.uid)
			if !ok || m.mods.get(i) != uint64(r.off) {
				continue // superseded, or expunged
			}
			ms := m.modBase + uint64(r.off)
			for ; x < len(m.expunged) && m.expunged[x].modseq < ms; x++ {
				fn(Change{UID: m.expunged[x].uid, ModSeq: m.expunged[x].modseq, Expunged: true})
			}
			fn(Change{UID: r.uid, ModSeq: ms, Flags: m.flagsAt(i)})
		}
	} else {
		m.changesFromIndex(modseq, &x, fn)
	}
	for _, e := range m.expunged[x:] {
		fn(Change{UID: e.uid, ModSeq: e.modseq, Expunged: true})
	}
}

// changesFromIndex is ChangesSince for a mod-sequence older than recent
// reaches: the messages changed after it, found through the index, in
// mod-sequence order, merged with the expunges from x on (x is left past
// those before the last message).
func (m *Mailbox) changesFromIndex(modseq uint64, x *int, fn func(Change)) {
	t := max(modseq, m.modBase) - m.modBase // offsets above t are changes after modseq
	emit := func(i int, off uint64) {
		ms := m.modBase + off
		for ; *x < len(m.expunged) && m.expunged[*x].modseq < ms; *x++ {
			fn(Change{UID: m.expunged[*x].uid, ModSeq: m.expunged[*x].modseq, Expunged: true})
		}
		fn(Change{UID: m.uids[i], ModSeq: ms, Flags: m.flagsAt(i)})
	}
	if slots, ok := m.slotsAbove(t); ok {
		for k, p := range slots {
			if p != 0 {
				emit(int(p-1), t+1+uint64(k))
			}
		}
		return
	}
	var buf [64]hit
	hits := m.index.above(&m.mods, len(m.uids), t, buf[:0])
	slices.SortFunc(hits, func(a, b hit) int { return cmp.Compare(a.v, b.v) })
	for _, h := range hits {
		emit(h.i, h.v)
	}
}

// slotsAbove puts the messages whose offsets are above t in the order of
// their offsets, each in the slot of its offset (its position + 1; 0 for
// an offset no message has), where the offsets above t are dense enough,
// as when a client resyncs from long ago: time and memory linear in the
// span, where sorting 20,000 costs several times as much. It reports
// false, leaving the order to the caller, when the span is over 4 slots a
// message, or when two messages share an offset (a corrupt store).
func (m *Mailbox) slotsAbove(t uint64) ([]int32, bool) {
	span := m.highest - m.modBase - t
	if span > 4*uint64(len(m.uids)) {
		return nil, false
	}
	slots := make([]int32, span)
	var buf [blockLen]hit
	ok := true
	m.index.blocksAbove(len(m.uids), t, func(from, to int) {
		for _, h := range m.mods.appendAbove(buf[:0], from, to, t) {
			k := h.v - t - 1
			if k >= span || slots[k] != 0 {
				ok = false
				return
			}
			slots[k] = int32(h.i) + 1
		}
	})
	return slots, ok
}

// Reconcile compares the state with the complete message list the upstream
// reported and applies the differences: messages missing from all are
// expunged, new ones added, changed flags updated. It reports whether
// anything changed.
func (m *Mailbox) Reconcile(all []Message) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	listed := make([]uint32, len(all))
	for i, u := range all {
		listed[i] = u.UID
	}
	slices.Sort(listed)
	var gone []uint32
	j := 0
	for _, uid := range m.uids {
		for j < len(listed) && listed[j] < uid {
			j++
		}
		if j == len(listed) || listed[j] != uid {
			gone = append(gone, uid)
		}
	}
	return m.applyLocked(Changes{Upsert: all, Expunged: gone})
}

// pruneBaseLocked returns the base the state has once the expunge log is
// pruned to its limits (m.base if nothing is due).
func (m *Mailbox) pruneBaseLocked() uint64 {
	base := m.base
	drop := 0
	if l := m.limits.MaxExpunges; l > 0 && len(m.expunged) > l {
		drop = len(m.expunged) - l*7/8
	}
	var cutoff uint32
	if m.limits.MaxAge > 0 && len(m.expunged) > 0 {
		if now := clock(); !now.Before(m.ageCheck) {
			m.ageCheck = now.Add(time.Minute)
			cutoff = stamp(now.Add(-m.limits.MaxAge))
		}
	}
	if drop == 0 && cutoff == 0 {
		return base
	}
	for _, x := range m.expunged {
		if drop > 0 || x.at < cutoff {
			drop--
			base = max(base, x.modseq)
			continue
		}
		break
	}
	return base
}

// pruneLocked drops the expunges up to base from the log and makes base
// the state's base.
func (m *Mailbox) pruneLocked(base uint64) {
	k := sort.Search(len(m.expunged), func(i int) bool { return m.expunged[i].modseq > base })
	if k > 0 {
		m.expunged = slices.Clone(m.expunged[k:]) // not holding the dropped part
	}
	m.base = base
}

// flagInterner stores each distinct flag set once per mailbox: most
// messages share one of a handful of sets.
type flagInterner struct {
	sets  [][]string
	index map[string]uint32
}

func (f *flagInterner) intern(flags []string) uint32 {
	norm := NormalizeFlags(flags)
	key := strings.Join(norm, " ")
	if f.index == nil {
		f.index = map[string]uint32{}
	}
	if i, ok := f.index[key]; ok {
		return i
	}
	i := uint32(len(f.sets))
	f.sets = append(f.sets, norm)
	f.index[key] = i
	return i
}

func (f *flagInterner) get(i uint32) []string { return f.sets[i] }

// systemFlags are matched case-insensitively and written in their
// canonical spelling.
var systemFlags = map[string]string{
	`\seen`: `\Seen`, `\answered`: `\Answered`, `\flagged`: `\Flagged`,
	`\deleted`: `\Deleted`, `\draft`: `\Draft`,
}

// SystemFlags are the system flags in their canonical spelling.
var SystemFlags = []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`}

// CanonicalFlag returns a system flag in its canonical spelling (\Seen
// for \seen or \SEEN), any other flag as it is.
func CanonicalFlag(f string) string {
	if c, ok := systemFlags[strings.ToLower(f)]; ok {
		return c
	}
	return f
}

// NormalizeFlags returns flags sorted, deduplicated, system flags in their
// canonical spelling, without \Recent (one session's, not the message's:
// see Recency).
func NormalizeFlags(flags []string) []string {
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		if c, ok := systemFlags[strings.ToLower(f)]; ok {
			f = c
		} else if strings.EqualFold(f, `\Recent`) {
			continue
		}
		out = append(out, f)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
