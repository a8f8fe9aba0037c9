package accountdata

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
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
	path string
	log  *slog.Logger

	mu sync.RWMutex // write-held while the file is replaced
	db *bolt.DB
}

// OpenBolt opens (creating if needed) accountdata.db in dir; log nil is
// slog.Default.
func OpenBolt(dir string, log *slog.Logger) (*Bolt, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("accountdata: %w", err)
	}
	s := &Bolt{path: filepath.Join(dir, FileName), log: log}
	db, err := s.open()
	if errors.Is(err, errDamaged) {
		s.log.Error("account data file damaged: moving it aside; the records in it (METADATA entries, filters, push registrations) are lost to the proxy until recovered from the moved file", "file", s.path, "err", err)
		db, err = s.replace()
	}
	if err != nil {
		return nil, err
	}
	s.db = db
	return s, nil
}

// OpenBoltReadOnly opens accountdata.db in dir for reading only, for
// tools that inspect it (lemonproxy push list): it creates nothing, moves
// nothing aside (a damaged file is an error), and waits at most timeout
// for a running proxy, which holds the file locked, to let it go. Every
// write fails.
func OpenBoltReadOnly(dir string, timeout time.Duration) (*Bolt, error) {
	s := &Bolt{path: filepath.Join(dir, FileName), log: slog.New(slog.DiscardHandler)}
	if _, err := os.Stat(s.path); err != nil {
		return nil, fmt.Errorf("accountdata: %w", err)
	}
	var db *bolt.DB
	err := guard(func() error {
		var oerr error
		db, oerr = bolt.Open(s.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
		return oerr
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("accountdata: %s is locked (a running lemonproxy holds it): %w", s.path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("accountdata: opening %s: %w", s.path, err)
	}
	s.db = db
	return s, nil
}

var (
	errPanicked = errors.New("bbolt panicked")
	errDamaged  = errors.New("damaged")
)

// open opens the file and reads it whole, guarded, then lets Tx.Check
// account for its pages (which runs in a goroutine of bbolt's own, where
// a panic could not be recovered: hence the guarded read first).
func (s *Bolt) open() (*bolt.DB, error) {
	var db *bolt.DB
	err := guard(func() error {
		var oerr error
		db, oerr = bolt.Open(s.path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
		var pe *fs.PathError
		if oerr != nil && !errors.Is(oerr, berrors.ErrTimeout) && !errors.As(oerr, &pe) {
			return fmt.Errorf("%w: %w", errDamaged, oerr)
		}
		return oerr
	})
	if err == nil {
		err = guard(func() error { return db.View(readAll) })
		if err == nil {
			err = guard(func() error {
				return db.View(func(tx *bolt.Tx) error {
					var first error
					for cerr := range tx.Check() {
						first = cmpOr(first, cerr) // drained, so bbolt's goroutine ends
					}
					return first
				})
			})
		}
		if err != nil && !errors.Is(err, errDamaged) {
			err = fmt.Errorf("%w: %w", errDamaged, err)
		}
	}
	if errors.Is(err, errPanicked) && !errors.Is(err, errDamaged) {
		err = fmt.Errorf("%w: %w", errDamaged, err)
	}
	if err != nil {
		if db != nil {
			closeQuietly(db)
		}
		return nil, fmt.Errorf("accountdata: opening %s: %w", s.path, err)
	}
	return db, nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// readAll reads every key and value of the file.
func readAll(tx *bolt.Tx) error {
	var n int
	return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error { n += len(k) + len(v); return nil })
	})
}

// replace moves the file aside and opens a new one; the caller holds s.mu
// (or has not published s yet) and has closed the old database.
func (s *Bolt) replace() (*bolt.DB, error) {
	aside := fmt.Sprintf("%s.damaged-%s", s.path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(s.path, aside); err != nil {
		return nil, fmt.Errorf("accountdata: moving the damaged %s aside: %w", s.path, err)
	}
	s.log.Error("damaged account data file moved aside; recover its records from there", "file", s.path, "moved-to", aside)
	db, err := s.open()
	if err != nil {
		return nil, fmt.Errorf("accountdata: starting a new file after damage: %w", err)
	}
	return db, nil
}

// guard runs fn, turning a panic, or a fault on a bad memory access (bbolt
// reads through mmap), into an error.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			recovery.Counted(recovery.Store)
			err = fmt.Errorf("%w: %v", errPanicked, v)
		}
	}()
	return fn()
}

func closeQuietly(db *bolt.DB) { _ = guard(db.Close) }

// do runs fn on the database, guarded; damage met on the way moves the
// file aside (see Bolt) and fails this call.
func (s *Bolt) do(fn func(db *bolt.DB) error) error {
	s.mu.RLock()
	db := s.db
	var err error
	if db == nil {
		err = errors.New("accountdata: store closed or lost")
	} else {
		err = guard(func() error { return fn(db) })
	}
	s.mu.RUnlock()
	if !errors.Is(err, errPanicked) {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db != db {
		return err // replaced by another goroutine already
	}
	s.log.Error("account data file damaged while in use: moving it aside", "file", s.path, "err", err)
	closeQuietly(db)
	s.db = nil
	ndb, rerr := s.replace()
	if rerr != nil {
		s.log.Error("no account data file; records cannot be read or written", "err", rerr)
		return errors.Join(err, rerr)
	}
	s.db = ndb
	return err
}

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
func (s *Bolt) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := guard(s.db.Close)
	s.db = nil
	return err
}
