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
}

// Saved is the whole saved state of one mailbox.
type Saved struct {
	UIDValidity uint32
	Highest     uint64
	// Base is the mod-sequence after which the state knows every change
	// (syncstate.Mailbox.Base); 0 when the file predates it.
	Base     uint64
	Messages []Message // by ascending UID
	Expunged []Expunge // by ascending mod-sequence
}

// Batch is one atomic update of a mailbox's state.
type Batch struct {
	// Reset drops whatever was saved before (a new UIDVALIDITY).
	Reset       bool
	UIDValidity uint32
	Highest     uint64
	Base        uint64
	Upsert      []Message
	Expunged    []Expunge
}

// Store saves and loads mailbox states by key (the account and mailbox).
type Store interface {
	// Load returns the saved state, or nil if the key has none.
	Load(key string) (*Saved, error)
	// Save applies a batch durably.
	Save(key string, b Batch) error
	// Drop forgets a mailbox.
	Drop(key string) error
	// Size returns the bytes the store occupies, for benchmarks.
	Size() (int64, error)
	Close() error
}

// ErrCorrupt is returned when saved data cannot be decoded.
var ErrCorrupt = errors.New("statestore: corrupt record")
