package syncstate

import (
	"slices"
	"sync"
)

// Recency is who may still be told that a message is recent (RFC 3501
// 2.3.2: \Recent is set in exactly one session, the first to be notified
// of the message). The proxy's sessions are those sessions: the upstream's
// own \Recent belongs to whichever pooled connection looked first, so the
// proxy keeps its own.
//
// Recent messages arrive with higher UIDs than every other, so one number
// says which are still unclaimed: the floor. A message whose UID is above
// it is recent and no session has been told of it read-write yet; the
// first read-write session told of it claims it (Take), moving the floor
// up to the last UID it was told of, atomically, so that two sessions
// never both get one. Read-only sessions look without claiming.
//
// The floor is not part of the mailbox's change log: claiming changes no
// flag and no mod-sequence (RFC 7162 counts \Recent out of MODSEQ), so it
// has a lock of its own and does not go through the mailbox's one writer.
// A session takes recency without waiting for the watcher, which may be
// in the middle of an upstream command. It is not saved either: a state
// restored from the Store learns it anew from the upstream (NoteUpstream).
type Recency struct {
	mu    sync.Mutex
	known bool   // the floor was set (NoteUpstream) since the state was made or restored
	floor uint32 // UIDs above it are recent and unclaimed
	// settled is the last UID a read-write session was told of: the
	// floor never goes below it again, whatever the upstream says later.
	settled uint32
}

// Recency returns the mailbox's recency record.
func (m *Mailbox) Recency() *Recency { return &m.recency }

// NoteUpstream records that the upstream reported the messages with UIDs
// from first up as recent, on a connection that looked at the mailbox
// (the watcher's EXAMINE, or a session's SELECT relayed before the watcher
// looked, which took the upstream's \Recent away from every later look).
// Those not yet told to any read-write session are recent for the proxy's
// sessions. first above the last UID says that none is. The first call
// for a state sets the floor; later ones can only lower it, never below
// what sessions have been told.
func (r *Recency) NoteUpstream(first uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	below := max(first, 1) - 1
	if !r.known {
		r.known, r.floor = true, max(below, r.settled)
		return
	}
	r.floor = max(min(r.floor, below), r.settled)
}

// Known reports whether the floor was set: a state that was never looked
// at by its watcher has none.
func (r *Recency) Known() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.known
}

// Take returns the first UID of the messages up to last that are recent
// for a session now told of the messages up to last: those above the
// floor. With claim (a read-write session), they become the session's and
// nobody else's: the floor moves up to last. It returns last+1 when there
// are none. A floor never set counts as last (nothing before the
// watcher's first look is recent).
func (r *Recency) Take(last uint32, claim bool) (first uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	floor := r.floor
	if !r.known {
		floor = last
	}
	if claim && last > r.settled {
		r.settled = last
		r.known = true
		r.floor = max(r.floor, last)
	}
	if floor >= last {
		return last + 1
	}
	return floor + 1
}

// Unclaimed returns how many of uids (sorted) are recent and unclaimed.
func (r *Recency) Unclaimed(uids []uint32) int {
	r.mu.Lock()
	floor, known := r.floor, r.known
	r.mu.Unlock()
	if !known {
		return 0
	}
	i, _ := slices.BinarySearch(uids, floor+1)
	return len(uids) - i
}
