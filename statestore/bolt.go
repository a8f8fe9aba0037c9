package statestore

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bolt is a Store in one bbolt file.
//
// Layout: a top-level bucket per mailbox key, holding
//
//	"meta"          -> UIDVALIDITY (4 bytes) and HIGHESTMODSEQ (8 bytes)
//	bucket "m": UID (4 bytes, big-endian) -> modseq (uvarint), flag set id (uvarint)
//	bucket "x": modseq (8 bytes, big-endian) -> UID (4 bytes)
//	bucket "f": flag set id (uvarint) -> flags joined by spaces
//
// Flag sets are interned per mailbox (most messages share a handful), so a
// message costs about 4 + 6 bytes of payload plus bbolt's per-key overhead.
type Bolt struct {
	db *bolt.DB
}

// OpenBolt opens (creating if needed) the store file state.db in dir.
func OpenBolt(dir string) (*Bolt, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("statestore: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("statestore: opening %s: %w", dir, err)
	}
	return &Bolt{db: db}, nil
}

var (
	keyMeta  = []byte("meta")
	bktMsgs  = []byte("m")
	bktExp   = []byte("x")
	bktFlags = []byte("f")
)

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Load implements Store.
func (s *Bolt) Load(key string) (*Saved, error) {
	var out *Saved
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(key))
		if b == nil {
			return nil
		}
		meta := b.Get(keyMeta)
		if len(meta) != 12 && len(meta) != 20 { // 12: before Base was saved
			return ErrCorrupt
		}
		sv := &Saved{UIDValidity: binary.BigEndian.Uint32(meta), Highest: binary.BigEndian.Uint64(meta[4:])}
		if len(meta) == 20 {
			sv.Base = binary.BigEndian.Uint64(meta[12:])
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
				if len(k) != 8 || len(v) != 4 {
					return ErrCorrupt
				}
				sv.Expunged = append(sv.Expunged, Expunge{UID: binary.BigEndian.Uint32(v), ModSeq: binary.BigEndian.Uint64(k)})
				return nil
			})
			if err != nil {
				return err
			}
		}
		out = sv
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("statestore: loading %q: %w", key, err)
	}
	return out, nil
}

// Save implements Store.
func (s *Bolt) Save(key string, batch Batch) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if batch.Reset {
			if tx.Bucket([]byte(key)) != nil {
				if err := tx.DeleteBucket([]byte(key)); err != nil {
					return err
				}
			}
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
		ids := map[string]uint64{}
		err = fb.ForEach(func(k, v []byte) error {
			id, _ := binary.Uvarint(k)
			ids[string(v)] = id
			return nil
		})
		if err != nil {
			return err
		}
		for _, m := range batch.Upsert {
			set := strings.Join(m.Flags, " ")
			id, ok := ids[set]
			if !ok {
				id = uint64(len(ids))
				ids[set] = id
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
			if err := xb.Put(u64(x.ModSeq), u32(x.UID)); err != nil {
				return err
			}
		}
		meta := slices.Concat(u32(batch.UIDValidity), u64(batch.Highest), u64(batch.Base))
		return b.Put(keyMeta, meta)
	})
	if err != nil {
		return fmt.Errorf("statestore: saving %q: %w", key, err)
	}
	return nil
}

// Drop implements Store.
func (s *Bolt) Drop(key string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte(key)) == nil {
			return nil
		}
		return tx.DeleteBucket([]byte(key))
	})
}

// Size implements Store.
func (s *Bolt) Size() (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Size()
		return nil
	})
	return n, err
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }
