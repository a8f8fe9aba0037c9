package statestore

import (
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
)

var quiet = slog.New(slog.DiscardHandler)

// fill saves a few mailboxes, enough for a file of several pages.
func fill(t *testing.T, s *Bolt) {
	t.Helper()
	for k := 0; k < 20; k++ {
		b := Batch{Reset: true, UIDValidity: 1, Highest: 2001}
		for u := 1; u <= 2000; u++ {
			b.Upsert = append(b.Upsert, Message{UID: uint32(u), ModSeq: uint64(u + 1), Flags: []string{`\Seen`}})
		}
		if err := s.Save(string(rune('a'+k)), b); err != nil {
			t.Fatal(err)
		}
	}
}

// scribble writes random bytes (a fixed seed) over every page of the file
// but the two meta pages.
func scribble(t *testing.T, path string) { scribblePages(t, path, 2, -1) }

// scribblePages writes random bytes over pages from up to (not including)
// to (-1: the end).
func scribblePages(t *testing.T, path string, from, to int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	page := int64(os.Getpagesize())
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, page)
	end := fi.Size()
	if to >= 0 {
		end = to * page
	}
	for off := from * page; off < end; off += page {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

func asideFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "state.db.damaged-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// usable checks that the store saves and loads.
func usable(t *testing.T, s *Bolt) {
	t.Helper()
	if err := s.Save("z", Batch{Reset: true, UIDValidity: 3, Highest: 5, Upsert: []Message{{UID: 9, ModSeq: 5}}}); err != nil {
		t.Fatal(err)
	}
	sv, err := s.Load("z")
	if err != nil || sv == nil || sv.Highest != 5 || len(sv.Messages) != 1 {
		t.Fatalf("Load after rebuild: %+v, %v", sv, err)
	}
}

// TestDamagedFileAtOpen: a file with random bytes in its data pages, or cut
// to 64 KiB, is found damaged when opened (bbolt's Tx.Check; bbolt's own
// panics at open), moved aside and replaced by an empty one. Before, the
// first Load panicked (pgid above high water mark) or the open did
// (invalid freelist page), and so did every restart.
func TestDamagedFileAtOpen(t *testing.T) {
	for _, damage := range []string{"scribbled", "one data page", "truncated"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			s, err := OpenBoltLog(dir, quiet)
			if err != nil {
				t.Fatal(err)
			}
			fill(t, s)
			s.Close()
			path := filepath.Join(dir, "state.db")
			if damage == "scribbled" {
				scribble(t, path)
			} else if damage == "one data page" {
				// Only Tx.Check finds this one: bbolt opens the file.
				scribblePages(t, path, 20, 21)
			} else if err := os.Truncate(path, 64<<10); err != nil {
				t.Fatal(err)
			}
			s, err = OpenBoltLog(dir, quiet)
			if err != nil {
				t.Fatalf("OpenBolt of a damaged file: %v", err)
			}
			defer s.Close()
			if a := asideFiles(t, dir); len(a) != 1 {
				t.Fatalf("files moved aside: %v, want one", a)
			}
			for k := 0; k < 20; k++ {
				if sv, err := s.Load(string(rune('a' + k))); sv != nil || err != nil {
					t.Fatalf("Load from the new file: %v, %v; want nothing", sv, err)
				}
			}
			usable(t, s)
		})
	}
}

// TestDamagedFileInUse: damage that appears while the store is open (the
// file is shared through mmap) makes bbolt panic inside Load; the store
// recovers, counts it, moves the file aside and goes on with a new one.
// A later incremental save finds no state to add to (ErrNoState), so its
// caller saves the whole state. Before, the panic ended the process.
func TestDamagedFileInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenBoltLog(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fill(t, s)
	scribble(t, filepath.Join(dir, "state.db"))
	before := recovery.Count(recovery.Store)
	var loadErr error
	for k := 0; k < 20 && loadErr == nil; k++ {
		_, loadErr = s.Load(string(rune('a' + k)))
	}
	if !errors.Is(loadErr, ErrCorrupt) {
		t.Fatalf("Load of a damaged file: %v, want ErrCorrupt", loadErr)
	}
	if got := recovery.Count(recovery.Store) - before; got != 1 {
		t.Fatalf("%d panics counted, want 1", got)
	}
	if a := asideFiles(t, dir); len(a) != 1 || s.Rebuilds() != 1 {
		t.Fatalf("files moved aside: %v (rebuilds %d), want one", a, s.Rebuilds())
	}
	if err := s.Save("a", Batch{UIDValidity: 1, Highest: 2002}); !errors.Is(err, ErrNoState) {
		t.Fatalf("incremental Save into the new file: %v, want ErrNoState", err)
	}
	usable(t, s)
	if !strings.HasPrefix(filepath.Base(asideFiles(t, dir)[0]), "state.db.damaged-") {
		t.Fatal("unexpected name")
	}
}
