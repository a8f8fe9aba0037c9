package statestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/lemonproxy/lemonproxy/internal/boltfile"
)

// Bolt is a Store in one bbolt file.
//
// Layout: a top-level bucket per mailbox key, holding
//
//	"meta"          -> UIDVALIDITY (4 bytes), HIGHESTMODSEQ (8), Base (8), MaxUID (4)
//	bucket "m": UID (4 bytes, big-endian) -> modseq (uvarint), flag set id (uvarint)
//	bucket "x": modseq (8 bytes, big-endian) -> UID (4 bytes), Unix seconds (8)
//	bucket "f": flag set id (uvarint) -> flags joined by spaces
//
// Flag sets are interned per mailbox (most messages share a handful), so a
// message costs about 4 + 6 bytes of payload plus bbolt's per-key overhead.
//
// # Damage
//
// bbolt trusts its file: random bytes in its pages make it panic (pgid above
// the high water mark, slice bounds out of range, invalid freelist page) or
// fault on a read outside the map. The state is a cache of what clients
// were told, which the proxy can rebuild at the price of full resyncs, so a
// damaged file must cost exactly that, never the process. Opening checks
// the whole file (Tx.Check) and moves a damaged one aside (state.db.damaged-
// TIME, kept for inspection) with an ERROR, then starts a new one. Every
// later access recovers panics and faults (debug.SetPanicOnFault) and
// does the same: the mailbox states in memory are saved whole again on
// their next change (ErrNoState), the others start afresh.
type Bolt struct {
	f *boltfile.File

	// flagIDs caches, per mailbox key, the flag-set ids of its "f"
	// bucket (flags joined by spaces -> id) in the file idsDB, so that a
	// Save does not read them all again: rebuilding the map on every
	// save was 40 % of the bytes the proxy allocated under imaptest's
	// stress (docs/per-command.md). A key's entry is built by its first
	// Save, extended only once a Save has committed, and forgotten when
	// its bucket is reset or dropped; another file (after damage) starts
	// a new cache. idsMu is held for a whole Save: bbolt runs one write
	// transaction at a time anyway.
	idsMu   sync.Mutex
	idsDB   *bolt.DB
	flagIDs map[string]map[string]uint64
}

// OpenBolt opens (creating if needed) the store file state.db in dir,
// logging through slog.Default.
func OpenBolt(dir string) (*Bolt, error) { return OpenBoltLog(dir, nil) }

// OpenBoltLog is OpenBolt logging to log (nil: slog.Default).
func OpenBoltLog(dir string, log *slog.Logger) (*Bolt, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("statestore: %w", err)
	}
	f, err := boltfile.Open(filepath.Join(dir, "state.db"), boltfile.Options{
		Logger:  log,
		Damaged: "state file damaged; moving it aside and starting a new one (clients get full resyncs)",
		Moved:   "damaged state file moved aside",
	})
	if err != nil {
		return nil, fmt.Errorf("statestore: %w", err)
	}
	return &Bolt{f: f}, nil
}

// Rebuilds returns how many damaged files the store moved aside since it
// was opened.
func (s *Bolt) Rebuilds() int { return s.f.Rebuilds() }

// do runs fn on the database, guarded. A panic (damage bbolt met) moves
// the file aside and starts a new one (the mailbox states in memory are
// saved whole at their next change: ErrNoState); the error is returned
// all the same, wrapping ErrCorrupt.
func (s *Bolt) do(fn func(db *bolt.DB) error) error {
	err := s.f.Do(fn)
	if errors.Is(err, boltfile.ErrDamaged) && !errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

var (
	keyMeta  = []byte("meta")
	bktMsgs  = []byte("m")
	bktExp   = []byte("x")
	bktFlags = []byte("f")
)

// Load implements Store.
func (s *Bolt) Load(key string) (*Saved, error) {
	var out *Saved
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(key))
			if b == nil {
				return nil
			}
			meta := b.Get(keyMeta)
			if len(meta) != 12 && len(meta) != 20 && len(meta) != 24 { // 12: before Base was saved, 20: before MaxUID
				return ErrCorrupt
			}
			sv := &Saved{UIDValidity: binary.BigEndian.Uint32(meta), Highest: binary.BigEndian.Uint64(meta[4:])}
			if len(meta) >= 20 {
				sv.Base = binary.BigEndian.Uint64(meta[12:])
			}
			if len(meta) == 24 {
				sv.MaxUID = binary.BigEndian.Uint32(meta[20:])
			}
			flagSets := map[uint64][]string{}
			if fb := b.Bucket(bktFlags); fb != nil {
				err := fb.ForEach(func(k, v []byte) error {
					id, n := binary.Uvarint(k)
					if n <= 0 {
						return ErrCorrupt
					}
					flagSets[id] = strings.Fields(string(v))
					return nil
				})
				if err != nil {
					return err
				}
			}
			if mb := b.Bucket(bktMsgs); mb != nil {
				err := mb.ForEach(func(k, v []byte) error {
					if len(k) != 4 {
						return ErrCorrupt
					}
					modseq, n := binary.Uvarint(v)
					if n <= 0 {
						return ErrCorrupt
					}
					id, m := binary.Uvarint(v[n:])
					if m <= 0 {
						return ErrCorrupt
					}
					flags, ok := flagSets[id]
					if !ok {
						return ErrCorrupt
					}
					sv.Messages = append(sv.Messages, Message{UID: binary.BigEndian.Uint32(k), ModSeq: modseq, Flags: flags})
					return nil
				})
				if err != nil {
					return err
				}
			}
			if xb := b.Bucket(bktExp); xb != nil {
				err := xb.ForEach(func(k, v []byte) error {
					if len(k) != 8 || len(v) != 4 && len(v) != 12 { // 4: before the time was saved
						return ErrCorrupt
					}
					x := Expunge{UID: binary.BigEndian.Uint32(v), ModSeq: binary.BigEndian.Uint64(k)}
					if len(v) == 12 && binary.BigEndian.Uint64(v[4:]) != 0 {
						x.At = time.Unix(int64(binary.BigEndian.Uint64(v[4:])), 0)
					}
					sv.Expunged = append(sv.Expunged, x)
					return nil
				})
				if err != nil {
					return err
				}
			}
			if err := Plausible(sv); err != nil {
				return err
			}
			out = sv
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("statestore: loading %q: %w", key, err)
	}
	return out, nil
}

// Save implements Store.
func (s *Bolt) Save(key string, batch Batch) error {
	err := s.do(func(db *bolt.DB) error {
		s.idsMu.Lock()
		defer s.idsMu.Unlock()
		if s.idsDB != db {
			s.idsDB, s.flagIDs = db, map[string]map[string]uint64{}
		}
		ids := s.flagIDs[key]
		built := false     // ids made here, not the cache's
		var added []string // sets added to a cached ids by this Save
		err := db.Update(func(tx *bolt.Tx) error {
			if batch.Reset {
				if tx.Bucket([]byte(key)) != nil {
					if err := tx.DeleteBucket([]byte(key)); err != nil {
						return err
					}
				}
			} else if tx.Bucket([]byte(key)) == nil {
				return ErrNoState
			}
			b, err := tx.CreateBucketIfNotExists([]byte(key))
			if err != nil {
				return err
			}
			mb, err := b.CreateBucketIfNotExists(bktMsgs)
			if err != nil {
				return err
			}
			xb, err := b.CreateBucketIfNotExists(bktExp)
			if err != nil {
				return err
			}
			fb, err := b.CreateBucketIfNotExists(bktFlags)
			if err != nil {
				return err
			}
			if batch.Reset || ids == nil {
				ids, built, added = map[string]uint64{}, true, nil
				err = fb.ForEach(func(k, v []byte) error {
					id, _ := binary.Uvarint(k)
					ids[string(v)] = id
					return nil
				})
				if err != nil {
					return err
				}
			}
			for _, m := range batch.Upsert {
				set := strings.Join(m.Flags, " ")
				id, ok := ids[set]
				if !ok {
					id = uint64(len(ids))
					ids[set] = id
					if !built {
						added = append(added, set)
					}
					if err := fb.Put(binary.AppendUvarint(nil, id), []byte(set)); err != nil {
						return err
					}
				}
				v := binary.AppendUvarint(nil, m.ModSeq)
				v = binary.AppendUvarint(v, id)
				if err := mb.Put(u32(m.UID), v); err != nil {
					return err
				}
			}
			for _, x := range batch.Expunged {
				if err := mb.Delete(u32(x.UID)); err != nil {
					return err
				}
				var at uint64 // 0: unknown
				if !x.At.IsZero() {
					at = uint64(max(x.At.Unix(), 1))
				}
				if err := xb.Put(u64(x.ModSeq), slices.Concat(u32(x.UID), u64(at))); err != nil {
					return err
				}
			}
			// The log is pruned up to Base: those expunges answer nobody.
			var pruned [][]byte
			c := xb.Cursor()
			for k, _ := c.First(); len(k) == 8 && binary.BigEndian.Uint64(k) <= batch.Base; k, _ = c.Next() {
				pruned = append(pruned, k)
			}
			for _, k := range pruned {
				if err := xb.Delete(k); err != nil {
					return err
				}
			}
			meta := slices.Concat(u32(batch.UIDValidity), u64(batch.Highest), u64(batch.Base), u32(batch.MaxUID))
			return b.Put(keyMeta, meta)
		})
		switch {
		case err == nil && built:
			s.flagIDs[key] = ids
		case err != nil && !built:
			// Not committed: the sets it added are not in the file.
			for _, set := range added {
				delete(ids, set)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("statestore: saving %q: %w", key, err)
	}
	return nil
}

// Drop implements Store.
func (s *Bolt) Drop(key string) error {
	return s.do(func(db *bolt.DB) error {
		s.idsMu.Lock()
		delete(s.flagIDs, key)
		s.idsMu.Unlock()
		return db.Update(func(tx *bolt.Tx) error {
			if tx.Bucket([]byte(key)) == nil {
				return nil
			}
			return tx.DeleteBucket([]byte(key))
		})
	})
}

// Keys implements Store: every mailbox is a bucket at the root, named by
// its key.
func (s *Bolt) Keys(prefix string) ([]string, error) {
	var keys []string
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			c := tx.Cursor()
			p := []byte(prefix)
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				if v == nil { // a bucket
					keys = append(keys, string(k))
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("statestore: keys under %q: %w", prefix, err)
	}
	return keys, nil
}

// Size implements Store.
func (s *Bolt) Size() (int64, error) {
	var n int64
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			n = tx.Size()
			return nil
		})
	})
	return n, err
}

// Close implements Store.
func (s *Bolt) Close() error { return s.f.Close() }
