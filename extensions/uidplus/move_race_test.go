package uidplus_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// moveEnv starts Dovecot's legacy profile (UIDPLUS, no MOVE) with alice's
// INBOX holding inbox-1..inbox-n and meeting holding meeting-1, and the
// proxy with uidplus in front of it, at addr (Dovecot's own, or a relay's).
func moveEnv(t *testing.T, n int, relay func(addr string) string) (*dovecottest.Server, *uidplus.Extension, *imaptest.Proxy) {
	t.Helper()
	srv := dovecottest.Start(t, dovecottest.Legacy)
	for i := range n {
		srv.Append(t, "alice", "alicepass", "INBOX", nil, msg(fmt.Sprintf("inbox-%d", i+1)))
	}
	srv.Append(t, "alice", "alicepass", "meeting", nil, msg("meeting-1"))
	addr := srv.Addr
	if relay != nil {
		addr = relay(addr)
	}
	ext := uidplus.New()
	px := imaptest.StartProxy(t, addr, proxy.Config{Extensions: []proxy.Extension{ext, condstore.New()}})
	return srv, ext, px
}

// moveEnvRelayed is moveEnv with the proxy's upstream connections through a
// faultnet relay, and alice logged in through the proxy with INBOX
// selected.
func moveEnvRelayed(t *testing.T, n int) (*dovecottest.Server, *uidplus.Extension, *faultnet.Relay, *imaptest.Client) {
	t.Helper()
	var fn *faultnet.Relay
	srv, ext, px := moveEnv(t, n, func(addr string) string {
		fn = faultnet.Start(t, addr)
		return fn.Addr()
	})
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	return srv, ext, fn, c
}

// countID counts the messages of mailbox whose Message-ID is id, directly
// on Dovecot.
func countID(t *testing.T, srv *dovecottest.Server, mailbox, id string) int {
	t.Helper()
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	defer d.Close()
	d.MustOK("EXAMINE " + mailbox)
	n := 0
	for _, l := range d.MustOK("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])") {
		if strings.Contains(l, "<"+id+"@example>") {
			n++
		}
	}
	return n
}

// TestConcurrentMovesOnce: two sessions of one account, both through the
// proxy, move the same message at the same moment (two devices applying
// the same rule). A MOVE is atomic (RFC 6851 3.3; Dovecot's own moves a
// message once): it must end up in the target once. The synthesized MOVE
// copies first and expunges after, and the second session's MOVE, run
// between the first one's COPY and its STORE, copied it again (a
// reviewer's finding); the proxy's MOVEs out of a mailbox now take turns,
// and the second finds nothing to move.
func TestConcurrentMovesOnce(t *testing.T) {
	srv, ext, px := moveEnv(t, 3, nil)
	a := imaptest.Login(t, px.Addr, "alice", "alicepass")
	b := imaptest.Login(t, px.Addr, "alice", "alicepass")
	a.MustOK("SELECT INBOX")
	b.MustOK("SELECT INBOX")
	fired, answered := false, false
	var bLines []string
	uidplus.SetHook(ext, func(p string) {
		if p != "move:copied" || fired {
			return
		}
		fired = true
		// B's MOVE gets half a second inside A's, between its COPY and
		// its STORE: time to copy the message again, unless it waits
		// for A's turn to end.
		b.Send("b1 UID MOVE 2 meeting")
		for !answered {
			l, err := b.TryReadLine(500 * time.Millisecond)
			if err != nil {
				break
			}
			bLines = append(bLines, l)
			answered = strings.HasPrefix(l, "b1 ")
		}
	})
	a.MustOK("UID MOVE 2 meeting")
	if !answered {
		bLines = append(bLines, b.ReadUntilTagged("b1")...)
	}
	if got := imaptest.Tagged(bLines); !strings.HasPrefix(got, "OK") {
		t.Errorf("the second MOVE: %q", bLines)
	}
	uidplus.SetHook(ext, nil)
	if n := countID(t, srv, "meeting", "inbox-2"); n != 1 {
		t.Errorf("meeting holds %d copies of inbox-2 after two concurrent MOVEs of it, want 1", n)
	}
	if n := countID(t, srv, "INBOX", "inbox-2"); n != 0 {
		t.Errorf("INBOX still holds inbox-2 %d times", n)
	}
}

// TestMoveLostExpungeLeavesNoDeleted: the upstream connection breaks
// after the synthesized MOVE's STORE +FLAGS (\Deleted) and before its
// UID EXPUNGE reaches Dovecot. The client was answered NO ("copied but
// could not be removed") while the original kept a \Deleted nobody asked
// for (the next EXPUNGE or CLOSE of any client removed it) beside its
// copy (a reviewer's finding). The EXPUNGE is now tried again on another
// connection, which finishes the MOVE; had that failed too, the \Deleted
// would be taken back before the NO.
func TestMoveLostExpungeLeavesNoDeleted(t *testing.T) {
	srv, _, fn, c := moveEnvRelayed(t, 3)
	fn.Add(faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut})
	lines := c.Cmd("UID MOVE 2 meeting")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK") {
		t.Errorf("MOVE whose first UID EXPUNGE was cut: %q, want it finished on another connection", lines)
	}
	if n, m := countID(t, srv, "INBOX", "inbox-2"), countID(t, srv, "meeting", "inbox-2"); n != 0 || m != 1 {
		t.Errorf("inbox-2 %d times in INBOX and %d in meeting, want 0 and 1", n, m)
	}
}

// flagsOn returns the FETCH line (FLAGS and Message-ID) of the message of
// mailbox whose Message-ID is id, read directly on Dovecot.
func flagsOn(t *testing.T, srv *dovecottest.Server, mailbox, id string) string {
	t.Helper()
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	defer d.Close()
	d.MustOK("EXAMINE " + mailbox)
	for _, l := range d.MustOK("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])") {
		if strings.Contains(l, "<"+id+"@example>") {
			return l
		}
	}
	return "(not found)"
}

// TestMoveUndoKeepsEarlierDeleted: a MOVE whose STORE and EXPUNGE fail on
// both tries takes back \Deleted only from the originals that lacked it
// upstream just before its STORE. A client connected to Dovecot directly
// set \Deleted on the original after the MOVE's COPY: the first undo,
// which went by the proxy's state (it had not seen that change yet), took
// it away (a reviewer's finding).
func TestMoveUndoKeepsEarlierDeleted(t *testing.T) {
	srv, ext, fn, c := moveEnvRelayed(t, 3)
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	d.MustOK("SELECT INBOX")
	cut := faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
	fn.Add(cut)
	retries := 0
	uidplus.SetHook(ext, func(p string) {
		switch p {
		case "move:copied":
			d.MustOK(`UID STORE 2 +FLAGS (\Deleted)`)
		case "move:retry":
			if retries++; retries == 1 {
				fn.Add(cut)
			}
		}
	})
	defer uidplus.SetHook(ext, nil)
	lines := c.Cmd("UID MOVE 2 meeting")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO") || retries != 2 {
		t.Fatalf("setup: MOVE %q after %d tries, want NO after 2", lines, retries)
	}
	if f := flagsOn(t, srv, "INBOX", "inbox-2"); !strings.Contains(f, `\Deleted`) {
		t.Errorf("inbox-2, \\Deleted by a direct client before the MOVE's STORE, after the failed MOVE's undo: %q", f)
	}
	// And the undo itself: without that client, the original loses the
	// \Deleted the failed MOVE set.
	retries = 0
	uidplus.SetHook(ext, func(p string) {
		if p == "move:retry" {
			if retries++; retries == 1 {
				fn.Add(cut)
			}
		}
	})
	fn.Add(cut)
	if got := imaptest.Tagged(c.Cmd("UID MOVE 3 meeting")); !strings.HasPrefix(got, "NO") {
		t.Fatalf("setup: second MOVE %q", got)
	}
	if f := flagsOn(t, srv, "INBOX", "inbox-3"); strings.Contains(f, `\Deleted`) {
		t.Errorf("inbox-3 after a failed MOVE: %q, want its \\Deleted taken back", f)
	}
}

// TestMoveTurnsPerMailbox: MOVEs take turns per mailbox, not more widely:
// a MOVE out of one mailbox whose upstream is slow to answer does not hold
// up a MOVE out of another (the first version's locks were striped over 64
// mutexes, so 1 pair in 64 waited, across accounts too: a reviewer's
// finding).
func TestMoveTurnsPerMailbox(t *testing.T) {
	var fn *faultnet.Relay
	srv, _, px := moveEnv(t, 3, func(addr string) string {
		fn = faultnet.Start(t, addr)
		return fn.Addr()
	})
	srv.Append(t, "alice", "alicepass", "other", nil, msg("other-1"))
	a := imaptest.Login(t, px.Addr, "alice", "alicepass")
	b := imaptest.Login(t, px.Addr, "alice", "alicepass")
	a.MustOK("SELECT INBOX")
	b.MustOK("SELECT other")
	h := fn.Add(faultnet.Fault{Match: []byte("UID COPY"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	a.Send("a1 UID MOVE 1 meeting")
	select {
	case <-h.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("setup: the COPY was not held")
	}
	start := time.Now()
	lines := b.Cmd("UID MOVE 1 meeting")
	took := time.Since(start)
	h.Release()
	a.ReadUntilTagged("a1")
	if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		t.Errorf("MOVE out of other: %q", lines)
	}
	if took > 2*time.Second {
		t.Errorf("MOVE out of other took %v: it waited for a slow MOVE out of INBOX", took)
	}
}

// TestFailedMoveLeavesNoCopies: a MOVE whose STORE and EXPUNGE of the
// originals fail on both tries answers NO with the originals restored.
// The copies were left in the target, and the COPYUID naming them was
// sent before the NO: the client, told the MOVE failed, had its messages
// twice, and a retry made a third copy (a reviewer's finding). The copies
// are now removed and no COPYUID is sent; the retry moves the message
// once.
func TestFailedMoveLeavesNoCopies(t *testing.T) {
	srv, ext, fn, c := moveEnvRelayed(t, 3)
	cut := faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
	fn.Add(cut)
	retries := 0
	uidplus.SetHook(ext, func(p string) {
		if p == "move:retry" {
			if retries++; retries == 1 {
				fn.Add(cut)
			}
		}
	})
	defer uidplus.SetHook(ext, nil)
	// The \Deleted set and taken back may be reported (FETCH FLAGS), as
	// another client's change would be.
	lines := c.Do("a", "UID MOVE 2 meeting")
	if got := lines[len(lines)-1]; got != "a NO The messages could not be moved; they were left in this mailbox." || slices.ContainsFunc(lines, isCopyUID) {
		t.Errorf("UID MOVE whose expunge failed twice: %q, want NO without COPYUID", lines)
	}
	if n, m := countID(t, srv, "INBOX", "inbox-2"), countID(t, srv, "meeting", "inbox-2"); n != 1 || m != 0 {
		t.Errorf("after the failed MOVE, inbox-2 %d times in INBOX and %d in meeting, want 1 and 0", n, m)
	}
	if f := flagsOn(t, srv, "INBOX", "inbox-2"); strings.Contains(f, `\Deleted`) {
		t.Errorf("inbox-2 after the failed MOVE: %q", f)
	}
	uidplus.SetHook(ext, nil)
	if got := imaptest.Tagged(c.Cmd("UID MOVE 2 meeting")); !strings.HasPrefix(got, "OK") {
		t.Fatalf("the retry: %q", got)
	}
	if n, m := countID(t, srv, "INBOX", "inbox-2"), countID(t, srv, "meeting", "inbox-2"); n != 0 || m != 1 {
		t.Errorf("after the retry, inbox-2 %d times in INBOX and %d in meeting, want 0 and 1", n, m)
	}
	if st := ext.Stats(); st.Moves != 1 || st.MovesIncomplete != 1 {
		t.Errorf("%+v", st)
	}
}

// TestFailedMoveCopiesNotRemoved: when the copies of a failed MOVE cannot
// be removed either, the NO says so, and the originals are still there
// as they were.
func TestFailedMoveCopiesNotRemoved(t *testing.T) {
	srv, ext, fn, c := moveEnvRelayed(t, 3)
	cut := faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
	fn.Add(cut)
	uidplus.SetHook(ext, func(p string) {
		if p == "move:retry" {
			fn.Add(cut) // the second try's, then the removal's of the copies
		}
	})
	defer uidplus.SetHook(ext, nil)
	lines := c.Do("a", "UID MOVE 2 meeting")
	if got := lines[len(lines)-1]; got != "a NO The messages were copied but could not be removed from this mailbox, and their copies could not be removed from the target mailbox." || slices.ContainsFunc(lines, isCopyUID) {
		t.Errorf("UID MOVE whose copies could not be removed: %q", lines)
	}
	if n := countID(t, srv, "INBOX", "inbox-2"); n != 1 {
		t.Errorf("inbox-2 %d times in INBOX, want 1", n)
	}
	if f := flagsOn(t, srv, "INBOX", "inbox-2"); strings.Contains(f, `\Deleted`) {
		t.Errorf("inbox-2 after the failed MOVE: %q", f)
	}
}

// isCopyUID tells an answer with the COPYUID code.
func isCopyUID(line string) bool { return strings.Contains(line, "[COPYUID ") }

// TestFailedMoveKeepsCopiesOfGoneOriginals: a failed MOVE takes back only
// the copies whose originals are still there. Another client expunged
// one original while it was flagged \Deleted: its copy is now the only
// one and stays; the other's copy goes.
func TestFailedMoveKeepsCopiesOfGoneOriginals(t *testing.T) {
	srv, ext, fn, c := moveEnvRelayed(t, 3)
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	d.MustOK("SELECT INBOX")
	cut := faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
	fn.Add(cut)
	retries := 0
	uidplus.SetHook(ext, func(p string) {
		if p != "move:retry" {
			return
		}
		if retries++; retries == 1 {
			fn.Add(cut)
			return
		}
		d.MustOK("UID EXPUNGE 3") // \Deleted by the MOVE's STORE
	})
	defer uidplus.SetHook(ext, nil)
	lines := c.Do("a", "UID MOVE 2:3 meeting")
	if got := lines[len(lines)-1]; got != "a NO Some of the messages were moved; the others could not be, and were left in this mailbox." || slices.ContainsFunc(lines, isCopyUID) {
		t.Errorf("UID MOVE: %q", lines)
	}
	for _, tc := range []struct {
		id          string
		inbox, meet int
	}{{"inbox-2", 1, 0}, {"inbox-3", 0, 1}} {
		if n, m := countID(t, srv, "INBOX", tc.id), countID(t, srv, "meeting", tc.id); n != tc.inbox || m != tc.meet {
			t.Errorf("%s %d times in INBOX and %d in meeting, want %d and %d", tc.id, n, m, tc.inbox, tc.meet)
		}
	}
}

// TestMoveRetryNotInRecreatedSource: the second try of a MOVE's STORE and
// EXPUNGE, on another connection, must not run in a mailbox of the same
// name created again since: its messages of the same UIDs are others'.
// Another client deleted the source after the first try's STORE (Dovecot
// then cut the MOVE's connection), created it again and appended three
// messages; the retry's connection selected the new mailbox and flagged
// and expunged its UID 2, another client's message (a second reader's
// finding).
func TestMoveRetryNotInRecreatedSource(t *testing.T) {
	var fn *faultnet.Relay
	srv, ext, px := moveEnv(t, 0, func(addr string) string {
		fn = faultnet.Start(t, addr)
		return fn.Addr()
	})
	for i := range 3 {
		srv.Append(t, "alice", "alicepass", "src", nil, msg(fmt.Sprintf("old-%d", i+1)))
	}
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	c.MustOK("SELECT src")
	fn.Add(faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut})
	retries := 0
	uidplus.SetHook(ext, func(p string) {
		if p != "move:retry" {
			return
		}
		if retries++; retries == 1 {
			d.MustOK("DELETE src")
			d.MustOK("CREATE src")
			for i := range 3 {
				m := msg(fmt.Sprintf("new-%d", i+1))
				d.MustOK(fmt.Sprintf("APPEND src {%d+}", len(m)), string(m))
			}
		}
	})
	defer uidplus.SetHook(ext, nil)
	lines := c.Do("a", "UID MOVE 2 meeting")
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "a NO ") || slices.ContainsFunc(lines, isCopyUID) {
		t.Errorf("UID MOVE out of a mailbox created again during it: %q, want NO without COPYUID", lines)
	}
	for i := range 3 {
		id := fmt.Sprintf("new-%d", i+1)
		if n := countID(t, srv, "src", id); n != 1 {
			t.Errorf("%s, appended to the new src by another client, %d times there after the MOVE, want 1", id, n)
		}
	}
	if n := countID(t, srv, "meeting", "old-2"); n != 1 {
		t.Errorf("old-2 %d times in meeting, want 1 (its only copy)", n)
	}
}

// TestFailedMoveKeepsCopyOfStillDeleted: a MOVE whose STORE and EXPUNGE
// failed on both tries, and whose undo of the \Deleted it had set failed
// too, must not take back the copy of an original that still carries
// that \Deleted: the next EXPUNGE or CLOSE of any client removes the
// original, and the message was gone from both mailboxes (a second
// reader's finding). The take-back now clears the \Deleted first, on its
// own connection, and keeps the copy of an original it could not clear.
func TestFailedMoveKeepsCopyOfStillDeleted(t *testing.T) {
	for _, tc := range []struct {
		name         string
		clearFails   bool // the take-back's own -FLAGS is cut too
		inbox, meets int  // inbox-2's count in each after an EXPUNGE
	}{{"cleared by the take-back", false, 1, 0}, {"left deleted", true, 0, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, ext, fn, c := moveEnvRelayed(t, 3)
			cut := faultnet.Fault{Match: []byte("UID EXPUNGE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
			// The -FLAGS's line is cut before it ends.
			cutUndo := faultnet.Fault{Match: []byte("-FLAGS.SILENT"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut}
			fn.Add(cut)
			retries := 0
			uidplus.SetHook(ext, func(p string) {
				if p != "move:retry" {
					return
				}
				if retries++; retries == 1 {
					fn.Add(cut)
					return
				}
				h := fn.Add(cutUndo) // the undo's
				if tc.clearFails {
					go func() {
						<-h.Fired()
						fn.Add(cutUndo) // the take-back's
					}()
				}
			})
			defer uidplus.SetHook(ext, nil)
			lines := c.Do("a", "UID MOVE 2 meeting")
			if got := lines[len(lines)-1]; !strings.HasPrefix(got, "a NO ") || slices.ContainsFunc(lines, isCopyUID) {
				t.Errorf("UID MOVE whose expunge and undo failed: %q, want NO without COPYUID", lines)
			}
			if f := flagsOn(t, srv, "INBOX", "inbox-2"); tc.clearFails != strings.Contains(f, `\Deleted`) {
				t.Errorf("inbox-2 after the failed MOVE: %q", f)
			}
			// What a client's next EXPUNGE does.
			d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
			d.MustOK("SELECT INBOX")
			d.MustOK("EXPUNGE")
			d.Close()
			if n, m := countID(t, srv, "INBOX", "inbox-2"), countID(t, srv, "meeting", "inbox-2"); n != tc.inbox || m != tc.meets {
				t.Errorf("after the failed MOVE and an EXPUNGE, inbox-2 %d times in INBOX and %d in meeting, want %d and %d", n, m, tc.inbox, tc.meets)
			}
		})
	}
}
