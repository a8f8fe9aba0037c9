package accountdata

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/lemonproxy/lemonproxy/internal/boltfile"
)

// FileName is the Bolt store's file in the data directory. It is not
// statestore's state.db: that one is a cache the proxy can rebuild, this
// one holds the users' own data.
const FileName = "accountdata.db"

// Bolt is a Store in one bbolt file, accountdata.db in the data directory.
//
// Layout: one top-level bucket per account, named "a" and the account's
// bytes (a bucket name may not be empty, an account may), holding the
// account's records, key -> value. bbolt keeps keys in byte order, which
// is List's order; Accounts looks into each account's bucket with one
// seek.
//
// # Damage
//
// The records are user data that exists nowhere else (METADATA entries,
// filters, push registrations), not a cache: a damaged file cannot be
// rebuilt. It must still not cost the process, and it must not be thrown
// away: opening checks the whole file (every page read under a guard, then
// Tx.Check), and a damaged file is moved aside as accountdata.db.damaged-
// TIME with an ERROR that says the records in it are lost to the proxy
// until an operator recovers them from that file (bbolt's own tools read
// what is still readable); a new, empty file takes its place. A panic or
// memory fault met later inside bbolt does the same. The operator's part
// is in docs/metadata.md.
type Bolt struct {
	f *boltfile.File
}

// OpenBolt opens (creating if needed) accountdata.db in dir; log nil is
// slog.Default.
func OpenBolt(dir string, log *slog.Logger) (*Bolt, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("accountdata: %w", err)
	}
	f, err := boltfile.Open(filepath.Join(dir, FileName), boltfile.Options{
		Logger:  log,
		Damaged: "account data file damaged: moving it aside; the records in it (METADATA entries, filters, push registrations) are lost to the proxy until recovered from the moved file",
		Moved:   "damaged account data file moved aside; recover its records from there",
	})
	if err != nil {
		return nil, fmt.Errorf("accountdata: %w", err)
	}
	return &Bolt{f: f}, nil
}

// OpenBoltReadOnly opens accountdata.db in dir for reading only, for
// tools that inspect it (lemonproxy push list): it creates nothing, moves
// nothing aside (a damaged file is an error), and waits at most timeout
// for a running proxy, which holds the file locked, to let it go. Every
// write fails.
func OpenBoltReadOnly(dir string, timeout time.Duration) (*Bolt, error) {
	f, err := boltfile.OpenReadOnly(filepath.Join(dir, FileName), timeout)
	if err != nil {
		return nil, fmt.Errorf("accountdata: %w", err)
	}
	return &Bolt{f: f}, nil
}

// do runs fn on the database, guarded; damage met on the way moves the
// file aside (see Bolt) and fails this call.
func (s *Bolt) do(fn func(db *bolt.DB) error) error { return s.f.Do(fn) }

func bucketName(account string) []byte { return append([]byte{'a'}, account...) }

// Get implements Store.
func (s *Bolt) Get(account, key string) ([]byte, error) {
	var out []byte
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketName(account))
			if b == nil {
				return ErrNotFound
			}
			v := b.Get([]byte(key))
			if v == nil {
				return ErrNotFound
			}
			out = append([]byte{}, v...)
			return nil
		})
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("accountdata: reading %q: %w", key, err)
	}
	return out, err
}

// Write implements Store.
func (s *Bolt) Write(account string, puts []Record, deletes []string) error {
	err := s.do(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			name := bucketName(account)
			b := tx.Bucket(name)
			if b == nil {
				if len(puts) == 0 {
					return nil
				}
				var err error
				if b, err = tx.CreateBucket(name); err != nil {
					return err
				}
			}
			for _, r := range puts {
				if r.Key == "" {
					return errors.New("empty key")
				}
				// bbolt keeps the slice until the transaction ends;
				// a nil value would be an empty one anyway.
				if err := b.Put([]byte(r.Key), append([]byte{}, r.Value...)); err != nil {
					return err
				}
			}
			for _, k := range deletes {
				if k == "" {
					continue
				}
				if err := b.Delete([]byte(k)); err != nil {
					return err
				}
			}
			if k, _ := b.Cursor().First(); k == nil {
				return tx.DeleteBucket(name)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("accountdata: writing: %w", err)
	}
	return nil
}

// List implements Store. The records are copied out before fn is called,
// so fn runs outside bbolt's transaction.
func (s *Bolt) List(account, prefix string, fn func(key string, value []byte) bool) error {
	var recs []Record
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketName(account))
			if b == nil {
				return nil
			}
			p := []byte(prefix)
			c := b.Cursor()
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				recs = append(recs, Record{Key: string(k), Value: append([]byte{}, v...)})
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("accountdata: listing: %w", err)
	}
	for _, r := range recs {
		if !fn(r.Key, r.Value) {
			break
		}
	}
	return nil
}

// Accounts implements Store.
func (s *Bolt) Accounts(prefix string, fn func(account string) bool) error {
	var accts []string
	err := s.do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			p := []byte(prefix)
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				if len(name) == 0 || name[0] != 'a' {
					return nil
				}
				if k, _ := b.Cursor().Seek(p); k != nil && bytes.HasPrefix(k, p) {
					accts = append(accts, string(name[1:]))
				}
				return nil
			})
		})
	})
	if err != nil {
		return fmt.Errorf("accountdata: listing accounts: %w", err)
	}
	for _, a := range accts {
		if !fn(a) {
			break
		}
	}
	return nil
}

// Close closes the file; later calls fail.
func (s *Bolt) Close() error { return s.f.Close() }
