// Package statestore persists the proxy's per-mailbox sync state (see
// package syncstate) so that mod-sequences survive a restart: a client that
// resynchronises with CONDSTORE/QRESYNC after the proxy restarted must get
// the exact delta, never a HIGHESTMODSEQ that went backwards.
//
// Store is the interface a shared backend (PostgreSQL, for several proxy
// nodes) can implement later; Bolt is the embedded default, one bbolt file
// under the data directory.
//
// A batch is written in one transaction and synced to disk before Save
// returns: callers save a change before any client hears of it.
package statestore

import (
	"errors"
	"fmt"
	"time"
)

// Message is a message's saved state.
type Message struct {
	UID    uint32
	ModSeq uint64
	Flags  []string
}

// Expunge records that a message was expunged at a mod-sequence.
type Expunge struct {
	UID    uint32
	ModSeq uint64
	// At is when (to the second), for pruning the log by age; zero when
	// the file predates it.
	At time.Time
}

// Saved is the whole saved state of one mailbox.
type Saved struct {
	UIDValidity uint32
	Highest     uint64
	// Base is the mod-sequence after which the state knows every change
	// (syncstate.Mailbox.Base); 0 when the file predates it.
	Base uint64
	// MaxUID is the largest UID the mailbox ever had as far as the state
	// knew (0 when the file predates it): expunges up to Base are pruned.
	MaxUID   uint32
	Messages []Message // by ascending UID
	Expunged []Expunge // by ascending mod-sequence
}

// Batch is one atomic update of a mailbox's state.
type Batch struct {
	// Reset drops whatever was saved before: the batch is the whole state
	// (a new UIDVALIDITY, a state saved whole). A batch without Reset adds
	// to a saved state and fails with ErrNoState where there is none.
	Reset       bool
	UIDValidity uint32
	Highest     uint64
	// Base is the state's base; the store drops expunges up to it (a
	// pruned log).
	Base     uint64
	MaxUID   uint32
	Upsert   []Message
	Expunged []Expunge
}

// Store saves and loads mailbox states by key (the account and mailbox).
type Store interface {
	// Load returns the saved state, or nil if the key has none.
	Load(key string) (*Saved, error)
	// Save applies a batch durably.
	Save(key string, b Batch) error
	// Drop forgets a mailbox.
	Drop(key string) error
	// Keys returns the keys with a saved state that begin with prefix,
	// in order: the states of a mailbox and those below it (a RENAME's,
	// see hub.Hub.ForgetMailboxes).
	Keys(prefix string) ([]string, error)
	// Size returns the bytes the store occupies, for benchmarks.
	Size() (int64, error)
	Close() error
}

// ErrCorrupt is returned when saved data cannot be decoded, or the store
// found its file damaged.
var ErrCorrupt = errors.New("statestore: corrupt record")

// ErrNoState is returned by Save for a batch that adds to a state the
// store does not have (it was rebuilt after damage): the caller saves the
// whole state instead (a batch with Reset).
var ErrNoState = errors.New("statestore: no saved state to add to")

// A Continuer is a Store that remembers, for every key it ever held, the
// highest mod-sequence saved under it, also after a Reset or a Drop. A
// state made anew for such a key (a new UIDVALIDITY, a state lost) then
// continues above that mark instead of starting from the clock: with
// several proxy nodes sharing the store, clocks differ, and only the store
// knows what was handed out (package cluster/pgstate).
type Continuer interface {
	// Continue returns the highest mod-sequence ever saved under key, and
	// false if the store never held key (the caller then picks its own
	// base).
	Continue(key string) (uint64, bool, error)
}

// Plausible checks what a store's own structure cannot: that the values of
// a loaded state make sense together. Random bytes in a value (a
// mod-sequence above the saved HIGHESTMODSEQ, an expunge at or below the
// base) would otherwise give clients wrong resyncs. Every Store checks a
// state with it before Load returns it; the error wraps ErrCorrupt.
func Plausible(sv *Saved) error {
	if sv.Highest == 0 || sv.Base > sv.Highest {
		return fmt.Errorf("%w: HIGHESTMODSEQ %d, base %d", ErrCorrupt, sv.Highest, sv.Base)
	}
	for _, m := range sv.Messages {
		if m.ModSeq == 0 || m.ModSeq > sv.Highest {
			return fmt.Errorf("%w: UID %d at mod-sequence %d of %d", ErrCorrupt, m.UID, m.ModSeq, sv.Highest)
		}
	}
	for _, x := range sv.Expunged {
		if x.ModSeq > sv.Highest || x.ModSeq <= sv.Base && sv.Base > 0 {
			return fmt.Errorf("%w: expunge of UID %d at mod-sequence %d (base %d, HIGHESTMODSEQ %d)", ErrCorrupt, x.UID, x.ModSeq, sv.Base, sv.Highest)
		}
	}
	return nil
}
