package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestRecreatedAfterFoundGone: once the watcher found a mailbox gone
// (deleted outside), the mailbox is created again under the same name; a
// session that selects the new mailbox within the watcher's grace period
// must be able to use it, not get "BYE Selected mailbox was deleted" (a
// reviewer's finding: the box found gone stayed in the hub for its grace
// period, and every session of the name was ended).
func TestRecreatedAfterFoundGone(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("CREATE life")
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("SELECT life")
	d.MustOK("DELETE life")
	noopUntil(t, c, byeGone)
	// Created again (directly, or by the same client through the proxy).
	d.MustOK("CREATE life")
	d.MustOK("APPEND life {7+}\r\nSubj: n")
	e := imaptest.Login(t, addr, "alice", "alicepass")
	if got := imaptest.Tagged(e.Cmd("SELECT life")); !strings.HasPrefix(got, "OK ") {
		t.Fatalf("SELECT of the re-created mailbox: %q", got)
	}
	// A new message arrives in the new mailbox: the session hears of it.
	d.MustOK("APPEND life {7+}\r\nSubj: m")
	noopUntil(t, e, "* 2 EXISTS")
}

// TestDeleteCreateThroughProxy: a client deletes a mailbox it had
// selected, creates it again and selects it, all through the proxy. The
// watcher of the old mailbox (kept for the grace period) finds it gone in
// between; the new mailbox must work.
func TestDeleteCreateThroughProxy(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, srv := startProxy(t, dc.Addr)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("CREATE life")
	c.MustOK("SELECT life")
	c.MustOK("SELECT INBOX")
	c.MustOK("DELETE life")
	waitWatchers(t, srv, 1) // life's watcher reconnects, finds it gone and leaves: INBOX's stays
	c.MustOK("CREATE life")
	appendHeard(t, c, "* 1 EXISTS")
}

// TestRenameBackThroughProxy: a client renames a mailbox away and back
// (same mailbox, same UIDVALIDITY), all through the proxy, and selects it.
func TestRenameBackThroughProxy(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, srv := startProxy(t, dc.Addr)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("CREATE life")
	c.MustOK("APPEND life {7+}\r\nSubj: a")
	c.MustOK("SELECT life")
	c.MustOK("SELECT INBOX")
	c.MustOK("RENAME life other")
	waitWatchers(t, srv, 1) // life's watcher finds it gone and leaves
	c.MustOK("RENAME other life")
	appendHeard(t, c, "* 2 EXISTS")
}

// TestGoneWildcardName: a mailbox whose name holds a LIST wildcard is
// deleted outside while a mailbox its name matches as a pattern exists:
// its sessions must get the BYE as for any other name.
func TestGoneWildcardName(t *testing.T) { goneName(t, "a%") }

// TestGoneNameControl is the same with a plain name: it passes.
func TestGoneNameControl(t *testing.T) { goneName(t, "ax") }

func goneName(t *testing.T, name string) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK(`CREATE "` + name + `"`)
	d.MustOK(`CREATE "ab"`)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK(`SELECT "` + name + `"`)
	d.MustOK(`DELETE "` + name + `"`)
	noopUntil(t, c, byeGone)
}

// waitWatchers waits until srv's hub runs n mailbox watchers.
func waitWatchers(t *testing.T, srv *proxy.Server, n int) {
	t.Helper()
	imaptest.WaitFor(t, fmt.Sprintf("%d mailbox watchers", n), func() bool { return srv.Stats().Watchers == n })
}

// appendHeard selects life, appends to it and waits for want, the EXISTS
// of the new message, with the APPEND's answer or at a NOOP after it.
func appendHeard(t *testing.T, c *imaptest.Client, want string) {
	t.Helper()
	c.MustOK("SELECT life")
	if slices.Contains(c.MustOK("APPEND life {7+}\r\nSubj: m"), want) {
		return
	}
	noopUntil(t, c, want)
}

// byeGone is how the proxy ends a session whose mailbox is gone.
const byeGone = "* BYE Selected mailbox was deleted, have to disconnect."

// noopUntil sends c NOOPs until it hears want (an untagged line, or a
// BYE), other untagged lines aside; it fails on any other answer, or after
// 10 s.
func noopUntil(t *testing.T, c *imaptest.Client, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.Write("n NOOP\r\n")
		for {
			l, err := c.TryReadLine(10 * time.Second)
			switch {
			case l == want:
				return
			case l == "n OK NOOP completed.":
			case err == nil && strings.HasPrefix(l, "* "):
				continue
			default:
				t.Fatalf("NOOP: %q (%v), want %q", l, err, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q after 10 s of NOOPs", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
