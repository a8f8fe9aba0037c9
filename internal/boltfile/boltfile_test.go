package boltfile

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T, path string, log *bytes.Buffer) *File {
	t.Helper()
	f, err := Open(path, Options{Logger: slog.New(slog.NewTextHandler(log, nil)), Damaged: "test file damaged", Moved: "test file moved aside"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func put(f *File, k, v string) error {
	return f.Do(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put([]byte(k), []byte(v))
		})
	})
}

func get(f *File, k string) (v string, err error) {
	err = f.Do(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket([]byte("b")); b != nil {
				v = string(b.Get([]byte(k)))
			}
			return nil
		})
	})
	return v, err
}

// TestOpenDamaged: a file whose pages are random bytes is moved aside at
// open (kept, with an ERROR naming where) and an empty one used.
func TestOpenDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var log bytes.Buffer
	f := open(t, path, &log)
	for i := range 2000 {
		if err := put(f, fmt.Sprint(i), strings.Repeat("v", 100)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	page := os.Getpagesize()
	for i := 2 * page; i < len(raw); i++ {
		raw[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	f = open(t, path, &log)
	if f.Rebuilds() != 1 {
		t.Errorf("Rebuilds() = %d, want 1", f.Rebuilds())
	}
	aside, _ := filepath.Glob(path + ".damaged-*")
	if len(aside) != 1 {
		t.Fatalf("files moved aside: %q", aside)
	}
	if !strings.Contains(log.String(), "test file damaged") || !strings.Contains(log.String(), "moved-to="+aside[0]) {
		t.Errorf("log does not name the damage and the moved file:\n%s", log.String())
	}
	if v, err := get(f, "1"); err != nil || v != "" {
		t.Fatalf("the new file: %q, %v; want empty", v, err)
	}
	if err := put(f, "k", "v"); err != nil {
		t.Fatal(err)
	}
}

// TestDoPanic: a panic inside Do (what bbolt does on a damaged page) fails
// that call with ErrDamaged and replaces the file; an error of the
// function's own, even one wrapping ErrDamaged, replaces nothing.
func TestDoPanic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var log bytes.Buffer
	f := open(t, path, &log)
	if err := put(f, "k", "v"); err != nil {
		t.Fatal(err)
	}
	own := fmt.Errorf("a record of mine: %w", ErrDamaged)
	if err := f.Do(func(*bolt.DB) error { return own }); err != own {
		t.Fatalf("Do returned %v, want the function's own error", err)
	}
	if v, _ := get(f, "k"); v != "v" || f.Rebuilds() != 0 {
		t.Fatalf("after an error of its own: value %q, rebuilds %d; want the file kept", v, f.Rebuilds())
	}

	err := f.Do(func(*bolt.DB) error { panic("invalid page type") })
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("Do of a panicking function: %v, want ErrDamaged", err)
	}
	if f.Rebuilds() != 1 {
		t.Fatalf("Rebuilds() = %d after a panic, want 1", f.Rebuilds())
	}
	if v, err := get(f, "k"); err != nil || v != "" {
		t.Fatalf("after the panic: %q, %v; want a new, empty file", v, err)
	}
	if aside, _ := filepath.Glob(path + ".damaged-*"); len(aside) != 1 {
		t.Fatalf("files moved aside: %q", aside)
	}

	f.Close()
	if err := put(f, "k", "v"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v, want ErrClosed", err)
	}
}

// TestOpenLocked: a file another process holds (here another open of
// it, which flock treats alike) is reported as locked, naming the likely
// culprit, not as bbolt's bare "timeout" (a second lemonproxy started on
// the same data directory said "opening .../state.db: timeout").
func TestOpenLocked(t *testing.T) {
	defer func(d time.Duration) { lockWait = d }(lockWait)
	lockWait = 50 * time.Millisecond
	path := filepath.Join(t.TempDir(), "x.db")
	var log bytes.Buffer
	open(t, path, &log)
	_, err := Open(path, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
	want := "opening " + path + ": locked by another process (is another lemonproxy running with this data directory?): timeout"
	if err == nil || err.Error() != want {
		t.Fatalf("second Open: %v; want %q", err, want)
	}
	if errors.Is(err, ErrDamaged) || log.Len() != 0 {
		t.Errorf("a locked file taken for damaged: %v; log %s", err, log.String())
	}
}
