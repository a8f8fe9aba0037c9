package urlfetch

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/lemonproxy/lemonproxy/internal/openfiles"
)

// openIn counts the spool files this process holds open in dir.
func openIn(t *testing.T, dir string) int {
	t.Helper()
	n, err := openfiles.In(dir)
	if err != nil {
		t.Skip(err)
	}
	return n
}

// readBack reads the whole spool back by sections, as its users do.
func readBack(t *testing.T, sp *Spool) []byte {
	t.Helper()
	var b bytes.Buffer
	for off := int64(0); off < sp.Size(); off += 1000 {
		if _, err := io.Copy(&b, io.NewSectionReader(sp, off, min(1000, sp.Size()-off))); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// TestSpoolMemoryThenFile: a spool stays in memory up to SpoolMemory
// (no file made), and moves whole to a file past it, by Write and by
// io.Copy (ReadFrom, also from a reader that yields a byte at a time);
// the data reads back the same either way, and Close gives the memory
// back and removes the file.
func TestSpoolMemoryThenFile(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), (SpoolMemory+5000)/16)
	for _, tc := range []struct {
		name string
		fill func(sp *Spool, p []byte) error
	}{
		{"Write", func(sp *Spool, p []byte) error {
			for len(p) > 0 {
				n := min(len(p), 3000)
				if _, err := sp.Write(p[:n]); err != nil {
					return err
				}
				p = p[n:]
			}
			return nil
		}},
		{"io.Copy", func(sp *Spool, p []byte) error {
			_, err := io.Copy(sp, bytes.NewReader(p))
			return err
		}},
		{"io.Copy byte by byte", func(sp *Spool, p []byte) error {
			_, err := io.Copy(sp, iotest.OneByteReader(bytes.NewReader(p)))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			used := spoolMemoryUsed.Load()
			sp, err := NewSpool(dir, "alice")
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.fill(sp, data[:SpoolMemory]); err != nil {
				t.Fatal(err)
			}
			if sp.InFile() || openIn(t, dir) != 0 {
				t.Fatalf("a spool of %d bytes went to a file", sp.Size())
			}
			if got := readBack(t, sp); !bytes.Equal(got, data[:SpoolMemory]) {
				t.Fatal("the data read back from memory differs")
			}
			if err := tc.fill(sp, data[SpoolMemory:]); err != nil {
				t.Fatal(err)
			}
			if !sp.InFile() || openIn(t, dir) != 1 {
				t.Fatalf("a spool of %d bytes is not in a file", sp.Size())
			}
			if sp.Size() != int64(len(data)) || sp.Err() != nil {
				t.Fatalf("size %d, err %v; want %d, nil", sp.Size(), sp.Err(), len(data))
			}
			if got := readBack(t, sp); !bytes.Equal(got, data) {
				t.Fatal("the data read back from the file differs")
			}
			if spoolMemoryUsed.Load() != used {
				t.Fatalf("memory held after the move: %d, want %d", spoolMemoryUsed.Load(), used)
			}
			sp.Close()
			if openIn(t, dir) != 0 {
				t.Fatal("the file stays open after Close")
			}
		})
	}
}

// TestSpoolMemoryBounded: the spools of the whole process hold at most
// spoolMemoryTotal in memory; those made beyond it start in a file, and
// memory closed spools give back is used again.
func TestSpoolMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	var spools []*Spool
	defer func() {
		for _, sp := range spools {
			sp.Close()
		}
	}()
	for range spoolMemoryTotal / SpoolMemory {
		sp, err := NewSpool(dir, "alice")
		if err != nil {
			t.Fatal(err)
		}
		spools = append(spools, sp)
	}
	if openIn(t, dir) != 0 {
		t.Fatalf("%d spools within the bound made files", openIn(t, dir))
	}
	over, err := NewSpool(dir, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !over.InFile() || openIn(t, dir) != 1 {
		t.Fatal("a spool beyond the memory bound is not in a file")
	}
	over.Write([]byte("x"))
	if got := readBack(t, over); string(got) != "x" {
		t.Fatalf("read back %q", got)
	}
	over.Close()
	spools[0].Close()
	spools = spools[1:]
	again, err := NewSpool(dir, "alice")
	if err != nil {
		t.Fatal(err)
	}
	spools = append(spools, again)
	if again.InFile() {
		t.Fatal("memory a closed spool gave back is not used again")
	}
}

// TestSpoolCopyAllocates: copying a small message into a spool allocates
// no copy buffer (the 32 KiB io.Copy would make for each APPEND).
func TestSpoolCopyAllocates(t *testing.T) {
	msg := []byte(strings.Repeat("x", 2000))
	dir := t.TempDir()
	allocs := testing.AllocsPerRun(100, func() {
		sp, err := NewSpool(dir, "alice")
		if err != nil {
			t.Fatal(err)
		}
		// A plain reader, as a client's literal is: no WriterTo.
		io.Copy(sp, struct{ io.Reader }{bytes.NewReader(msg)})
		sp.Close()
	})
	t.Logf("%v allocations", allocs)
	if allocs > 3 {
		t.Fatalf("%v allocations per spool of 2,000 bytes", allocs)
	}
}

// TestSpoolDiskBounded: the files of all spools together stay within
// SetSpoolDiskTotal; a write past it fails with ErrSpoolFull, and a
// closed spool gives its bytes back.
func TestSpoolDiskBounded(t *testing.T) {
	SetSpoolDiskTotal(100 << 10)
	t.Cleanup(func() { SetSpoolDiskTotal(0) })
	chunk := bytes.Repeat([]byte("x"), 30<<10)
	a, err := NewSpool(t.TempDir(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := a.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	b, err := NewSpool(t.TempDir(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Write(chunk); err != nil {
		t.Fatal(err) // 90 KiB in all
	}
	if _, err := b.Write(chunk); !errors.Is(err, ErrSpoolFull) || !errors.Is(b.Err(), ErrSpoolFull) {
		t.Fatalf("write past the total: %v (Err %v), want ErrSpoolFull", err, b.Err())
	}
	if got, _ := SpoolDiskUsed(""); got != 60<<10 {
		t.Fatalf("after the failed write %d bytes are counted, want a's 60 KiB: the failed spool keeps its share", got)
	}
	if _, err := b.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("a failed spool still reads")
	}
	b.Close()
	a.Close()
	if got, _ := SpoolDiskUsed(""); got != 0 {
		t.Fatalf("after closing both spools %d bytes are counted", got)
	}
	c, err := NewSpool(t.TempDir(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("after the others closed: %v", err)
		}
	}
}

// TestSpoolDiskPerOwner: one owner's spool files stay within
// SetSpoolDiskPerOwner, so another owner still has room in the total;
// closing gives the owner's bytes back.
func TestSpoolDiskPerOwner(t *testing.T) {
	SetSpoolDiskTotal(200 << 10)
	SetSpoolDiskPerOwner(70 << 10)
	t.Cleanup(func() { SetSpoolDiskTotal(0); SetSpoolDiskPerOwner(0) })
	chunk := bytes.Repeat([]byte("x"), 30<<10)
	var alice []*Spool
	for range 3 {
		sp, err := NewSpool(t.TempDir(), "alice")
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Close()
		alice = append(alice, sp)
	}
	for i, sp := range alice[:2] {
		if _, err := sp.Write(chunk); err != nil {
			t.Fatalf("alice's spool %d: %v", i, err)
		}
	}
	if _, err := alice[2].Write(chunk); !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("alice's third 30 KiB past her 70 KiB: %v, want ErrSpoolFull", err)
	}
	bob, err := NewSpool(t.TempDir(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	for range 2 {
		if _, err := bob.Write(chunk); err != nil {
			t.Fatalf("bob, with alice at her share: %v", err)
		}
	}
	if all, a := SpoolDiskUsed("alice"); all != 120<<10 || a != 60<<10 {
		t.Fatalf("counted %d in all, %d for alice; want 120 KiB and 60 KiB", all, a)
	}
	alice[0].Close()
	sp, err := NewSpool(t.TempDir(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if _, err := sp.Write(chunk); err != nil {
		t.Fatalf("alice after closing one: %v", err)
	}
	for _, sp := range append(alice, bob, sp) {
		sp.Close()
	}
	if all, a := SpoolDiskUsed("alice"); all != 0 || a != 0 {
		t.Fatalf("after closing all: %d in all, %d for alice", all, a)
	}
	if n := len(spoolDisk.byOwner); n != 0 {
		t.Fatalf("%d owners still counted", n)
	}
}
