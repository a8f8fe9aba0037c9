// Package boltfile keeps a bbolt database file whose damage must not take
// the process down: the proxy's two embedded stores (statestore's mailbox
// states, accountdata's per-account records) each keep one.
//
// bbolt trusts its file. Random bytes in its pages make it panic (a page
// id above the high water mark, slice bounds out of range, an invalid
// freelist page) or fault on a read outside its memory map. So:
//
//   - Open reads the whole file (every bucket, key and value, nested
//     buckets too) under recover with debug.SetPanicOnFault, and only a
//     file that reads cleanly is given to Tx.Check for the page
//     accounting. Tx.Check alone is not safe: it walks the file in a
//     goroutine of bbolt's own, where a damaged page panics beyond anyone's
//     recover.
//   - A damaged file is renamed PATH.damaged-TIME (kept, never deleted:
//     what it holds may be recoverable with bbolt's own tools), logged at
//     ERROR, and a new, empty file takes its place.
//   - Every later access (Do) is guarded the same way; damage met in use
//     replaces the file the same way, and that access fails with an error
//     wrapping ErrDamaged.
//
// What the loss means differs per store (a cache rebuilt at the price of
// full resyncs; user data an operator must recover), so the caller words
// the ERRORs (Options).
package boltfile

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
)

// ErrDamaged marks an error that says the file is damaged (a panic or a
// memory fault inside bbolt, a failed check), not, say, locked by another
// process or unreadable.
var ErrDamaged = errors.New("damaged")

// ErrClosed is returned by Do after Close, or once a damaged file could
// not be replaced.
var ErrClosed = errors.New("boltfile: file closed or lost")

// Options words a File's logs.
type Options struct {
	// Logger receives the ERRORs; nil is slog.Default.
	Logger *slog.Logger
	// Damaged is the message logged when damage is found (at open or in
	// use), before the file is moved aside: what the store loses.
	Damaged string
	// Moved is the message logged once it is moved aside (with the
	// attributes file and moved-to): what the operator may do.
	Moved string
}

// File is an open bbolt file, replaced by a new one when damaged.
type File struct {
	path string
	opts Options

	mu       sync.RWMutex // write-held while the file is replaced
	db       *bolt.DB
	rebuilds int // files moved aside since Open
}

// Open opens (creating if needed) the file at path, checks it whole and
// moves it aside if it is damaged.
func Open(path string, opts Options) (*File, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	f := &File{path: path, opts: opts}
	db, err := f.open()
	if errors.Is(err, ErrDamaged) {
		f.opts.Logger.Error(f.opts.Damaged, "file", path, "err", err)
		db, err = f.replace()
	}
	if err != nil {
		return nil, err
	}
	f.db = db
	return f, nil
}

// OpenReadOnly opens an existing file for reading only, for tools that
// inspect it beside a running proxy: it creates nothing, checks nothing
// and moves nothing aside (damage met in Do is an error), and waits at
// most timeout for a process that holds the file locked.
func OpenReadOnly(path string, timeout time.Duration) (*File, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	var db *bolt.DB
	err := Guard(func() error {
		var oerr error
		db, oerr = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
		return oerr
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%s is locked (a running lemonproxy holds it): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return &File{path: path, opts: Options{Logger: slog.New(slog.DiscardHandler)}, db: db}, nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// open opens the file and checks it whole.
func (f *File) open() (*bolt.DB, error) {
	var db *bolt.DB
	err := Guard(func() error {
		var oerr error
		db, oerr = bolt.Open(f.path, 0o600, &bolt.Options{Timeout: lockWait})
		var pe *fs.PathError
		if oerr != nil && !errors.Is(oerr, berrors.ErrTimeout) && !errors.As(oerr, &pe) {
			return fmt.Errorf("%w: %w", ErrDamaged, oerr)
		}
		return oerr
	})
	if err == nil {
		err = Guard(func() error { return db.View(walk) })
	}
	if err == nil {
		err = Guard(func() error {
			return db.View(func(tx *bolt.Tx) error {
				var first error
				for cerr := range tx.Check() {
					// The channel is drained so that bbolt's checking
					// goroutine ends.
					if first == nil {
						first = fmt.Errorf("%w: %w", ErrDamaged, cerr)
					}
				}
				return first
			})
		})
	}
	if errors.Is(err, berrors.ErrTimeout) {
		// bbolt's own error says only "timeout"; the operator must
		// learn which process to look for.
		return nil, fmt.Errorf("opening %s: locked by another process (is another lemonproxy running with this data directory?): %w", f.path, err)
	}
	if err != nil {
		if db != nil {
			closeQuietly(db)
		}
		return nil, fmt.Errorf("opening %s: %w", f.path, err)
	}
	return db, nil
}

// lockWait is how long open waits for another process to release the
// file's lock (a proxy that is still stopping) before it gives up.
var lockWait = 5 * time.Second

// walk reads every bucket, key and value of the file.
func walk(tx *bolt.Tx) error {
	var n int
	var bucket func(b *bolt.Bucket) error
	bucket = func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				if nb := b.Bucket(k); nb != nil {
					return bucket(nb)
				}
				return nil
			}
			n += len(k) + len(v)
			return nil
		})
	}
	return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return bucket(b) })
}

// replace moves the file aside and opens a new one. The caller holds f.mu
// (or has not published f yet) and has closed the old database.
func (f *File) replace() (*bolt.DB, error) {
	aside := fmt.Sprintf("%s.damaged-%s", f.path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(f.path, aside); err != nil {
		return nil, fmt.Errorf("moving the damaged %s aside: %w", f.path, err)
	}
	f.rebuilds++
	f.opts.Logger.Error(f.opts.Moved, "file", f.path, "moved-to", aside)
	db, err := f.open()
	if err != nil {
		return nil, fmt.Errorf("starting a new file after damage: %w", err)
	}
	return db, nil
}

// Guard runs fn, turning a panic, or a fault on a bad memory access (bbolt
// reads through mmap), into an error wrapping ErrDamaged.
func Guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			recovery.Counted(recovery.Store)
			err = &panicError{v}
		}
	}()
	return fn()
}

// panicError is a panic or fault Guard caught.
type panicError struct{ v any }

func (e *panicError) Error() string { return fmt.Sprintf("bbolt panicked: %v", e.v) }
func (e *panicError) Unwrap() error { return ErrDamaged }

func closeQuietly(db *bolt.DB) { _ = Guard(db.Close) }

// Do runs fn on the database, guarded. Damage met on the way (a panic or
// fault) moves the file aside and starts a new one; the error is returned
// all the same.
func (f *File) Do(fn func(db *bolt.DB) error) error {
	f.mu.RLock()
	db := f.db
	var err error
	if db == nil {
		err = ErrClosed
	} else {
		err = Guard(func() error { return fn(db) })
	}
	f.mu.RUnlock()
	if db == nil || !isPanic(err) {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db != db {
		return err // another goroutine replaced it already
	}
	f.opts.Logger.Error(f.opts.Damaged, "file", f.path, "err", err)
	closeQuietly(db)
	f.db = nil
	ndb, rerr := f.replace()
	if rerr != nil {
		// Nothing usable: every access fails until an operator looks;
		// the process goes on.
		f.opts.Logger.Error("no usable file after damage; every access fails", "file", f.path, "err", rerr)
		return errors.Join(err, rerr)
	}
	f.db = ndb
	return err
}

// isPanic reports whether err came from a panic or fault that Guard
// caught: only damage bbolt itself trips over replaces the file, not an
// error of fn's own.
func isPanic(err error) bool {
	var p *panicError
	return errors.As(err, &p)
}

// Rebuilds returns how many damaged files were moved aside since Open.
func (f *File) Rebuilds() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.rebuilds
}

// Close closes the file; later calls of Do fail with ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil
	}
	err := Guard(f.db.Close)
	f.db = nil
	return err
}
