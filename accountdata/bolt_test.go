package accountdata_test

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

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/accountdata/datatest"
)

func openBolt(t *testing.T, dir string, log *slog.Logger) *accountdata.Bolt {
	t.Helper()
	s, err := accountdata.OpenBolt(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBolt(t *testing.T) {
	datatest.Run(t, func(t *testing.T) accountdata.Store {
		s := openBolt(t, t.TempDir(), nil)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestBoltReopen: records survive closing and opening the file again.
func TestBoltReopen(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir, nil)
	if err := accountdata.Put(s, "alice", "metadata/x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("alice", "metadata/x"); err == nil {
		t.Fatal("Get after Close succeeded")
	}
	s = openBolt(t, dir, nil)
	defer s.Close()
	if v, err := s.Get("alice", "metadata/x"); err != nil || string(v) != "v" {
		t.Fatalf("after reopening: %q, %v", v, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "accountdata.db")); err != nil {
		t.Fatal(err)
	}
}

// TestBoltDamaged: a file with random pages is moved aside with an ERROR
// (kept: it is user data) and a new one is used.
func TestBoltDamaged(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir, nil)
	for a := range 20 {
		var recs []accountdata.Record
		for k := range 200 {
			recs = append(recs, accountdata.Record{Key: fmt.Sprintf("metadata/%04d", k), Value: bytes.Repeat([]byte{'x'}, 50)})
		}
		if err := s.Write(fmt.Sprint("user", a), recs, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	path := filepath.Join(dir, accountdata.FileName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	page := int64(os.Getpagesize())
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, page)
	for off := 2 * page; off < fi.Size(); off += page {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	var log bytes.Buffer
	s = openBolt(t, dir, slog.New(slog.NewTextHandler(&log, nil)))
	defer s.Close()
	aside, _ := filepath.Glob(path + ".damaged-*")
	if len(aside) != 1 {
		t.Fatalf("files moved aside: %q", aside)
	}
	if !strings.Contains(log.String(), "level=ERROR") || !strings.Contains(log.String(), "moved-to") {
		t.Errorf("no ERROR naming the moved file:\n%s", log.String())
	}
	if _, err := s.Get("user1", "metadata/0001"); !errors.Is(err, accountdata.ErrNotFound) {
		t.Fatalf("the new file has records: %v", err)
	}
	if err := accountdata.Put(s, "alice", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get("alice", "k"); err != nil || string(v) != "v" {
		t.Fatalf("new file unusable: %q, %v", v, err)
	}
}

// TestBoltReadOnly: a tool reads the records; it cannot write, creates
// nothing where there is no file, and gives up on a file a running proxy
// holds.
func TestBoltReadOnly(t *testing.T) {
	dir := t.TempDir()
	if _, err := accountdata.OpenBoltReadOnly(dir, 100*time.Millisecond); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, accountdata.FileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a file was created")
	}
	s := openBolt(t, dir, nil)
	accountdata.Put(s, "alice", "push/r/x", []byte("v"))
	if _, err := accountdata.OpenBoltReadOnly(dir, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("while open elsewhere: %v", err)
	}
	s.Close()
	ro, err := accountdata.OpenBoltReadOnly(dir, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if v, err := ro.Get("alice", "push/r/x"); err != nil || string(v) != "v" {
		t.Fatalf("Get: %q %v", v, err)
	}
	if err := accountdata.Put(ro, "alice", "k", []byte("v")); err == nil {
		t.Fatal("a write succeeded")
	}
}
