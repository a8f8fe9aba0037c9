package openfiles

import (
	"os"
	"path/filepath"
	"testing"
)

// TestIn: a file made and unlinked in dir counts while it is open, and
// not once closed; a file in another directory whose name starts like dir
// never counts.
func TestIn(t *testing.T) {
	dir := t.TempDir()
	if _, err := In(dir); err != nil {
		t.Skip(err)
	}
	count := func() int {
		t.Helper()
		n, err := In(dir)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d open in a new directory", n)
	}
	f, err := os.CreateTemp(dir, "spool")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name())
	sibling, err := os.Create(filepath.Clean(dir) + "x")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(sibling.Name())
	defer sibling.Close()
	if n := count(); n != 1 {
		t.Fatalf("%d open with one unlinked file open, want 1", n)
	}
	f.Close()
	if n := count(); n != 0 {
		t.Fatalf("%d open after closing it, want 0", n)
	}
}
