package catenate_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/openfiles"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// openSpools counts this process's open files in dir (the spool files,
// unlinked as soon as made, stay open until closed).
func openSpools(t *testing.T, dir string) int {
	t.Helper()
	n, err := openfiles.In(dir)
	if err != nil {
		t.Skip(err)
	}
	return n
}

// waitSpools waits for openSpools to be want.
func waitSpools(t *testing.T, dir string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for openSpools(t, dir) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d spool files open in %s, want %d", openSpools(t, dir), dir, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSpoolClosedOnDisconnect: a client that goes away in the middle of
// an APPEND with CATENATE, while its TEXT part is being spooled, leaves
// no spool file open (nor on disk: it is unlinked when made); nor does a
// refused one, nor one that completes.
func TestSpoolClosedOnDisconnect(t *testing.T) {
	dir := t.TempDir()
	p := memEnv(t, func(cfg *proxy.Config) {
		cfg.Extensions = []proxy.Extension{
			catenate.New(catenate.Config{Hosts: []string{"imap.example.org"}, SpoolDir: dir}),
			uidplus.New(), condstore.New(),
		}
	})
	if openSpools(t, dir) != 0 {
		t.Fatal("spool files open before any APPEND")
	}

	// Completed, and refused (a bad URL after a spooled TEXT part).
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK(`APPEND INBOX CATENATE (TEXT {14}`, "Subject: x\r\n\r\n)")
	c.Write("r APPEND INBOX CATENATE (TEXT {14+}\r\nSubject: y\r\n\r\n URL \"/Nowhere/;UID=1\")\r\n")
	c.Expect("r NO [BADURL *")
	waitSpools(t, dir, 0)

	// Gone in the middle of a TEXT part.
	c.Write("a APPEND INBOX CATENATE (TEXT {1000000+}\r\nSubject: half\r\n\r\n" + strings.Repeat("x", 50_000))
	waitSpools(t, dir, 1)
	c.Close()
	waitSpools(t, dir, 0)
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("spool directory holds %v (%v)", entries, err)
	}
}
