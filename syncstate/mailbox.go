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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// A Mailbox is the state of one mailbox of one account at one UIDVALIDITY.
// It is safe for concurrent use.
type Mailbox struct {
	mu          sync.RWMutex
	uidValidity uint32
	highest     uint64
	base        uint64 // the log is complete for changes after base
	msgs        map[uint32]msg
	uids        []uint32 // sorted; replaced, never modified (snapshots share it)
	log         []change // ordered by modseq; stale entries skipped
	live        int      // entries of log that are not stale
	expunges    int      // entries of log that are expunges
	maxUID      uint32   // the largest UID the mailbox ever had, as far as the state knows
	flagSets    flagInterner
	persist     Persister
	saved       bool // whether the store holds the state (else the next save is a full one)
	limits      LogLimits
	ageCheck    time.Time // when the log is next checked for expunges older than limits.MaxAge
	recency     Recency   // who may still be told a message is recent (recent.go); its own lock
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

// stamp is the second of t as a change stores it (never 0: 0 marks a flag
// change).
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
	m.uids = make([]uint32, 0, len(sv.Messages))
	m.maxUID = sv.MaxUID
	for _, msgSaved := range sv.Messages {
		m.msgs[msgSaved.UID] = msg{flags: m.flagSets.intern(msgSaved.Flags), modseq: msgSaved.ModSeq}
		m.uids = append(m.uids, msgSaved.UID)
		m.log = append(m.log, change{modseq: msgSaved.ModSeq, uid: msgSaved.UID})
		m.maxUID = max(m.maxUID, msgSaved.UID)
	}
	slices.Sort(m.uids)
	now := clock()
	for _, x := range sv.Expunged {
		at := x.At
		if at.IsZero() {
			at = now // saved before expunges had a time: their age counts from now
		}
		m.log = append(m.log, change{modseq: x.ModSeq, uid: x.UID, at: stamp(at)})
		m.maxUID = max(m.maxUID, x.UID)
	}
	m.expunges = len(sv.Expunged)
	slices.SortFunc(m.log, func(a, b change) int { return cmp.Compare(a.modseq, b.modseq) })
	m.live = len(m.log)
	// Where the log began is saved; files from before that get the oldest
	// entry left as a bound (a later start only makes clients resync in
	// full, never miss a change).
	switch {
	case sv.Base > 0:
		m.base = sv.Base
	case len(m.log) > 0:
		m.base = m.log[0].modseq - 1
	default:
		m.base = m.highest
	}
	return m
}

type msg struct {
	flags  uint32 // index into flagSets
	modseq uint64
}

type change struct {
	modseq uint64
	uid    uint32
	at     uint32 // an expunge: when, in Unix seconds (see stamp); 0: a flag change or new message
}

func (c change) expunged() bool { return c.at != 0 }

// New returns an empty mailbox state. Its HIGHESTMODSEQ is 1.
func New(uidValidity uint32) *Mailbox { return NewAt(uidValidity, 1) }

// NewAt returns an empty mailbox state whose mod-sequences start above base
// (at least 1). A state made anew for a mailbox whose old state was lost
// should start above every mod-sequence the old one handed out, so that
// clients holding one of those are recognised (see Base); the hub uses the
// clock for this.
func NewAt(uidValidity uint32, base uint64) *Mailbox {
	base = max(base, 1)
	return &Mailbox{uidValidity: uidValidity, highest: base, base: base, msgs: map[uint32]msg{}}
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
	return Snapshot{UIDs: m.uids, Highest: m.highest}
}

// HighestModSeq returns the mailbox's HIGHESTMODSEQ.
func (m *Mailbox) HighestModSeq() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.highest
}

// Flags returns a message's flags and mod-sequence.
func (m *Mailbox) Flags(uid uint32) (flags []string, modseq uint64, ok bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e, ok := m.msgs[uid]
	if !ok {
		return nil, 0, false
	}
	return m.flagSets.get(e.flags), e.modseq, true
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
	for i, uid := range uids {
		if e, ok := m.msgs[uid]; ok {
			fn(i, m.flagSets.get(e.flags), e.modseq)
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

// prior is a message's entry before applyLocked changed it, to undo a
// batch that could not be saved.
type prior struct {
	uid uint32
	e   msg
	had bool
}

func (m *Mailbox) applyLocked(c Changes) (bool, error) {
	changed := false
	var added []uint32
	var batch statestore.Batch
	var undo []prior
	highest0, logLen0, live0, expunges0, maxUID0 := m.highest, len(m.log), m.live, m.expunges, m.maxUID
	for _, u := range c.Upsert {
		fs := m.flagSets.intern(u.Flags)
		e, ok := m.msgs[u.UID]
		if ok && e.flags == fs || !ok && c.FlagsOnly {
			continue
		}
		undo = append(undo, prior{u.UID, e, ok})
		m.highest++
		if ok {
			m.live-- // the old log entry is stale now
		} else {
			added = append(added, u.UID)
		}
		m.msgs[u.UID] = msg{flags: fs, modseq: m.highest}
		m.log = append(m.log, change{modseq: m.highest, uid: u.UID})
		m.live++
		changed = true
		if m.persist != nil {
			batch.Upsert = append(batch.Upsert, statestore.Message{UID: u.UID, ModSeq: m.highest, Flags: m.flagSets.get(fs)})
		}
	}
	var removed []uint32
	var now time.Time
	for _, uid := range c.Expunged {
		e, ok := m.msgs[uid]
		if !ok {
			continue
		}
		if now.IsZero() {
			now = clock()
		}
		undo = append(undo, prior{uid, e, true})
		delete(m.msgs, uid)
		m.highest++
		m.log = append(m.log, change{modseq: m.highest, uid: uid, at: stamp(now)})
		m.expunges++
		// The message's last flag change is stale; the expunge is live:
		// the count of live entries stays the same.
		removed = append(removed, uid)
		changed = true
		if m.persist != nil {
			batch.Expunged = append(batch.Expunged, statestore.Expunge{UID: uid, ModSeq: m.highest, At: now.Truncate(time.Second)})
		}
	}
	for _, u := range added {
		m.maxUID = max(m.maxUID, u)
	}
	newBase := m.pruneBaseLocked()
	if m.persist != nil && (changed || !m.saved || newBase != m.base) {
		if err := m.saveLocked(batch, newBase); err != nil {
			// Take the batch back: nobody saw it (the lock is held).
			for i := len(undo) - 1; i >= 0; i-- {
				if p := undo[i]; p.had {
					m.msgs[p.uid] = p.e
				} else {
					delete(m.msgs, p.uid)
				}
			}
			clear(m.log[logLen0:])
			m.log = m.log[:logLen0]
			m.highest, m.live, m.expunges, m.maxUID = highest0, live0, expunges0, maxUID0
			return false, err
		}
	}
	if len(added) > 0 || len(removed) > 0 {
		m.uids = mergeUIDs(m.uids, added, removed)
	}
	if newBase != m.base {
		m.pruneLocked(newBase)
	}
	if len(m.log) > 1024 && m.live < len(m.log)/2 {
		m.compactLocked()
	}
	return changed, nil
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
	b.Upsert = make([]statestore.Message, 0, len(m.msgs))
	for uid, e := range m.msgs {
		b.Upsert = append(b.Upsert, statestore.Message{UID: uid, ModSeq: e.modseq, Flags: m.flagSets.get(e.flags)})
	}
	slices.SortFunc(b.Upsert, func(x, y statestore.Message) int { return cmp.Compare(x.UID, y.UID) })
	for _, c := range m.log {
		if c.expunged() && c.modseq > base {
			b.Expunged = append(b.Expunged, statestore.Expunge{UID: c.uid, ModSeq: c.modseq, At: time.Unix(int64(c.at), 0)})
		}
	}
	return b
}

// mergeUIDs returns a new sorted list: old plus added minus removed.
func mergeUIDs(old, added, removed []uint32) []uint32 {
	slices.Sort(added)
	var gone map[uint32]bool
	if len(removed) > 0 {
		gone = make(map[uint32]bool, len(removed))
		for _, u := range removed {
			gone[u] = true
		}
	}
	out := make([]uint32, 0, len(old)+len(added)-len(removed))
	i, j := 0, 0
	for i < len(old) || j < len(added) {
		var u uint32
		if j == len(added) || i < len(old) && old[i] < added[j] {
			u = old[i]
			i++
		} else {
			u = added[j]
			j++
		}
		if !gone[u] && (len(out) == 0 || out[len(out)-1] != u) {
			out = append(out, u)
		}
	}
	return out
}

// compactLocked drops stale log entries (flag changes superseded by a
// later change of the same message).
func (m *Mailbox) compactLocked() {
	out := m.log[:0]
	for _, c := range m.log {
		if c.expunged() {
			out = append(out, c)
			continue
		}
		if e, ok := m.msgs[c.uid]; ok && e.modseq == c.modseq {
			out = append(out, c)
		}
	}
	clear(m.log[len(out):])
	m.log = out
	m.live = len(out)
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
// time in the number of changes, not in the size of the mailbox.
func (m *Mailbox) ChangesSince(modseq uint64, fn func(Change)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	i := sort.Search(len(m.log), func(i int) bool { return m.log[i].modseq > modseq })
	for _, c := range m.log[i:] {
		if c.expunged() {
			fn(Change{UID: c.uid, ModSeq: c.modseq, Expunged: true})
			continue
		}
		e, ok := m.msgs[c.uid]
		if !ok || e.modseq != c.modseq {
			continue // superseded
		}
		fn(Change{UID: c.uid, ModSeq: c.modseq, Flags: m.flagSets.get(e.flags)})
	}
}

// Reconcile compares the state with the complete message list the upstream
// reported and applies the differences: messages missing from all are
// expunged, new ones added, changed flags updated. It reports whether
// anything changed.
func (m *Mailbox) Reconcile(all []Message) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := make(map[uint32]bool, len(all))
	for _, u := range all {
		seen[u.UID] = true
	}
	var gone []uint32
	for _, uid := range m.uids {
		if !seen[uid] {
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
	if l := m.limits.MaxExpunges; l > 0 && m.expunges > l {
		drop = m.expunges - l*7/8
	}
	var cutoff uint32
	if m.limits.MaxAge > 0 && m.expunges > 0 {
		if now := clock(); !now.Before(m.ageCheck) {
			m.ageCheck = now.Add(time.Minute)
			cutoff = stamp(now.Add(-m.limits.MaxAge))
		}
	}
	if drop == 0 && cutoff == 0 {
		return base
	}
	for _, c := range m.log {
		if !c.expunged() {
			continue
		}
		if drop > 0 || c.at < cutoff {
			drop--
			base = max(base, c.modseq)
			continue
		}
		break
	}
	return base
}

// pruneLocked drops the expunges up to base (and stale entries) from the
// log and makes base the state's base.
func (m *Mailbox) pruneLocked(base uint64) {
	out := m.log[:0]
	for _, c := range m.log {
		if c.expunged() {
			if c.modseq > base {
				out = append(out, c)
			}
			continue
		}
		if e, ok := m.msgs[c.uid]; ok && e.modseq == c.modseq {
			out = append(out, c)
		}
	}
	clear(m.log[len(out):])
	m.log = out
	m.live = len(out)
	m.expunges = 0
	for _, c := range out {
		if c.expunged() {
			m.expunges++
		}
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
