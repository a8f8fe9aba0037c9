package proxy_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestConnectionFreeDuringSync: after a command that changes the selected
// mailbox (EXPUNGE here), the session waits for the mailbox's watcher to
// report the change before its tagged OK; its upstream connection goes
// back to the pool first, so another session's command runs on it
// meanwhile, on no new connection. The watcher's answer is held
// (faultnet.Hold) until that command is done; the EXPUNGE's client still
// hears of its own expunge before its OK.
func TestConnectionFreeDuringSync(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	for _, s := range []string{"one", "two"} {
		if err := up.Append("alice", "INBOX", nil, testMessage(s, 100)); err != nil {
			t.Fatal(err)
		}
	}
	fn := faultnet.Start(t, up.Addr)
	p := startProxy(t, baseConfig(fn.Addr()))
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret") // connection 1
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")                                                                   // the login cache: connection 1 again
	a.ExpectDo("s", "SELECT INBOX", "* 2 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *") // the watcher: connection 2
	a.ExpectDo("f", `STORE 1 +FLAGS.SILENT (\Deleted)`, "f OK STORE completed")
	if n := len(fn.Conns()); n != 2 {
		t.Fatalf("%d upstream connections before the EXPUNGE, want 2", n)
	}
	// The watcher's next round trip (its NOOP) is answered only when
	// the test says so.
	h := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	a.Send("e EXPUNGE")
	select {
	case <-h.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not get to its round trip")
	}
	b.ExpectDo("t", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "t OK STATUS completed")
	if n := len(fn.Conns()); n != 2 {
		t.Errorf("%d upstream connections after b's STATUS, want 2: b's command should have run on the connection a gave back", n)
	}
	h.Release()
	a.Expect("* 1 EXPUNGE", "e OK *")
}

// TestStatusSyncOverlaps: the watcher's round trip that STATUS RECENT
// needs (so that messages the upstream has just been given count) is
// asked for when the command arrives, and runs while the upstream answers
// the STATUS, not after: here the STATUS's answer is held until the
// watcher's NOOP has gone out.
func TestStatusSyncOverlaps(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	if err := up.Append("alice", "INBOX", nil, testMessage("one", 100)); err != nil {
		t.Fatal(err)
	}
	fn := faultnet.Start(t, up.Addr)
	p := startProxy(t, baseConfig(fn.Addr()))
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret") // connection 1
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")                                                                   // the login cache: connection 1 again
	a.ExpectDo("s", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *") // the watcher: connection 2
	if n := len(fn.Conns()); n != 2 {
		t.Fatalf("%d upstream connections, want 2", n)
	}
	hold := fn.Add(faultnet.Fault{Conn: 1, Match: []byte("STATUS"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer hold.Release()
	noop := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
	b.Send("t STATUS INBOX (MESSAGES RECENT)")
	select {
	case <-noop.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher's round trip waited for the upstream's STATUS answer")
	}
	hold.Release()
	b.Expect("* STATUS INBOX (MESSAGES 1 RECENT 0)", "t OK STATUS completed")
}

// TestSelectSyncOverlaps: SELECT of a mailbox the hub watches asks the
// watcher for the round trip that brings its state up to date (so that
// the SELECT reports what this client changed through pooled
// connections) when the command arrives: it runs while the upstream
// answers the SELECT, not after. The SELECT's answer is held here until
// the watcher's NOOP has gone out.
func TestSelectSyncOverlaps(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	if err := up.Append("alice", "INBOX", nil, testMessage("one", 100)); err != nil {
		t.Fatal(err)
	}
	fn := faultnet.Start(t, up.Addr)
	p := startProxy(t, baseConfig(fn.Addr()))
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret") // connection 1
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")                                                                   // the login cache: connection 1 again
	a.ExpectDo("s", "EXAMINE INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-ONLY] *") // the watcher: connection 2
	hold := fn.Add(faultnet.Fault{Conn: 1, Match: []byte("SELECT"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer hold.Release()
	noop := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
	b.Send("s SELECT INBOX")
	select {
	case <-noop.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher's round trip waited for the upstream's SELECT answer")
	}
	hold.Release()
	imaptest.AssertLines(t, "SELECT", b.ReadUntilTagged("s"), []string{"* 1 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *"})
}

// startTwoMessages starts a proxy whose watcher does no NOOP but those
// asked for (no SyncLinger), over a go-imap server whose INBOX holds two
// messages, through a fault relay, and a client that selected INBOX: its
// login is the relay's connection 1, the watcher's connection 2.
func startTwoMessages(t *testing.T) (*memupstream.Server, *faultnet.Relay, *imaptest.Proxy, *client) {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	for _, s := range []string{"one", "two"} {
		if err := up.Append("alice", "INBOX", nil, testMessage(s, 100)); err != nil {
			t.Fatal(err)
		}
	}
	fn := faultnet.Start(t, up.Addr)
	cfg := baseConfig(fn.Addr())
	cfg.Hub.SyncLinger = -1
	p := startProxy(t, cfg)
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	a.ExpectDo("s", "SELECT INBOX", "* 2 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	return up, fn, p, a
}

// TestNoSyncWithoutChange: a command that may change the selected mailbox
// waits for the watcher's round trip only when the upstream's answer shows
// it did: an EXPUNGE with nothing to expunge, an APPEND the upstream
// refuses, a COPY it refuses ask for none (the watcher's connection
// sees no NOOP); an EXPUNGE that expunges still does, and its client hears
// of its expunge before the tagged OK.
func TestNoSyncWithoutChange(t *testing.T) {
	t.Parallel()
	_, fn, _, a := startTwoMessages(t)
	noop := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
	noSync := func(what string) {
		t.Helper()
		select {
		case <-noop.Fired():
			t.Fatalf("%s asked the watcher for a round trip", what)
		default:
		}
	}
	a.ExpectDo("e", "EXPUNGE", "e OK *")
	noSync("an EXPUNGE that expunged nothing")
	a.ExpectDo("c", "UID COPY 1 INBOX", "c NO *") // go-imap's server copies nothing into the same mailbox
	noSync("a refused COPY")
	a.ExpectDo("n", "APPEND Nonexistent {1+}\r\nx", "n NO *")
	noSync("an APPEND to another mailbox")
	// A synchronising literal: go-imap's server answers a date it cannot
	// parse before reading the literal, and with LITERAL+ it would then
	// read the literal's byte as the next command (an upstream bug the
	// test is not about).
	a.ExpectDo("m", "APPEND INBOX (\\Flagged) \"bad date\" {1}", "m NO *")
	noSync("a refused APPEND")
	a.ExpectDo("f", `STORE 2 +FLAGS.SILENT (\Deleted)`, "f OK STORE completed")
	a.ExpectDo("g", "EXPUNGE", "* 2 EXPUNGE", "g OK *")
	select {
	case <-noop.Fired():
	default:
		t.Fatal("an EXPUNGE that expunged answered without the watcher's round trip")
	}
}

// TestNoCatchUpAfterOwnStore: a connection that made the session's own
// STORE has seen that change, so the session's next command on it runs
// without the catch-up NOOP (the STORE \Deleted before an EXPUNGE); when
// someone else changed the mailbox while the STORE was on its way, the
// next command runs the NOOP.
func TestNoCatchUpAfterOwnStore(t *testing.T) {
	t.Parallel()
	up, fn, p, a := startTwoMessages(t)
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret") // the login cache: connection 1 again
	b.ExpectDo("s", "EXAMINE INBOX", "* 2 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-ONLY] *")
	a.ExpectDo("f", `STORE 1 +FLAGS (\Seen)`, `* 1 FETCH (FLAGS (\Seen))`, "f OK *")
	noop := fn.Add(faultnet.Fault{Conn: 1, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
	a.ExpectDo("g", `STORE 2 +FLAGS.SILENT (\Deleted)`, "g OK *")
	a.ExpectDo("e", "EXPUNGE", "* 2 EXPUNGE", "e OK *")
	select {
	case <-noop.Fired():
		t.Fatal("a command after the session's own STORE caught its connection up")
	default:
	}
	// The EXPUNGE's own change reached the state after its connection
	// went back: this command catches up (noop fires).
	a.ExpectDo("x", "FETCH 1 (FLAGS)", `* 1 FETCH (FLAGS (\Seen))`, "x OK *")

	// Someone else's message, which the state learns (b's NOOP) while
	// the upstream's answer to a's STORE is held: a's next command
	// catches up.
	noop = fn.Add(faultnet.Fault{Conn: 1, Match: []byte("NOOP"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
	hold := fn.Add(faultnet.Fault{Conn: 1, Match: []byte("STORE"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer hold.Release()
	a.Send(`h STORE 1 +FLAGS (\Flagged)`)
	select {
	case <-hold.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("a's STORE did not reach connection 1")
	}
	if err := up.Append("alice", "INBOX", nil, testMessage("three", 100)); err != nil {
		t.Fatal(err)
	}
	if r := b.Do("n", "NOOP"); !slices.Contains(r, "* 2 EXISTS") {
		t.Fatalf("b's NOOP: %q", r)
	}
	hold.Release()
	if r := a.ReadUntilTagged("h"); !slices.Contains(r, "* 2 EXISTS") || !strings.HasPrefix(r[len(r)-1], "h OK") {
		t.Fatalf("a's STORE: %q", r)
	}
	select {
	case <-noop.Fired():
		t.Fatal("connection 1 caught up before the command after a's STORE")
	default:
	}
	a.ExpectDo("i", `STORE 1 -FLAGS (\Flagged)`, `* 1 FETCH (FLAGS (\Seen))`, "i OK *")
	select {
	case <-noop.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("a command after someone else's change ran without the catch-up NOOP")
	}
}

// TestAppendTold: an APPEND into the selected mailbox gets its EXISTS
// before the tagged OK from the upstream's own APPENDUID (the hub is told
// of the message: hub/ownchanges.go), without waiting for the watcher,
// whose connection gets no EXISTS until the test lets it through (in
// IDLE, or in the answer to the round trip the hub asks for to confirm the
// message). An APPEND into another mailbox, and one whose answer has no
// APPENDUID, are not told (see TestNoSyncWithoutChange).
func TestAppendTold(t *testing.T) {
	t.Parallel()
	_, fn, _, a := startTwoMessages(t)
	h := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("EXISTS"), MatchDir: faultnet.ToClient, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	r := a.Do("a", "APPEND INBOX (\\Flagged) {5+}\r\nhello")
	if len(r) != 3 || r[0] != "* 3 EXISTS" || r[1] != "* 1 RECENT" || !strings.HasPrefix(r[2], "a OK [APPENDUID ") || !strings.Contains(r[2], " 3] ") {
		t.Fatalf("APPEND: %q, want * 3 EXISTS, * 1 RECENT and OK [APPENDUID v 3]", r)
	}
	a.ExpectDo("f", "FETCH 3 (UID FLAGS)", `* 3 FETCH (UID 3 FLAGS (\Flagged \Recent))`, "f OK *")
	select {
	case <-h.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher's connection never got the EXISTS")
	}
	h.Release()
	// Confirmed, nothing changes for the client.
	a.ExpectDo("n", "NOOP", "n OK *")
}

// TestCatchUpOnlyWhenNeeded: a pooled connection runs the catch-up NOOP
// before a command only when the mailbox changed since it last synced in a
// way the command relies on (catchup.go): a message the command names that
// it may not show, flags of a named message changed since, or anything for
// a command that depends on the whole mailbox (EXPUNGE). Another client,
// directly on the upstream, makes the changes; the session's client hears
// of them from the hub (its NOOP goes to the watcher, connection 2), and
// connection 1, the session's pooled one, is watched for NOOPs.
func TestCatchUpOnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	up, fn, _, a := startTwoMessages(t)
	d := imaptest.Dial(t, up.Addr)
	d.LoginTagged("alice", "secret")
	d.Do("s", "SELECT INBOX")
	other := func(tag, command string) {
		t.Helper()
		if r := d.Do(tag, command); !strings.HasPrefix(r[len(r)-1], tag+" OK") {
			t.Fatalf("%s directly: %q", command, r)
		}
	}
	// catchUp runs command and says whether connection 1 got a NOOP
	// first.
	catchUp := func(tag, command string, want ...string) bool {
		t.Helper()
		noop := fn.Add(faultnet.Fault{Conn: 1, Match: []byte(" NOOP\r\n"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
		// Exactly: without the NOOP, the connection's own reports of
		// the changes come with the command's answers, and the client,
		// told of them already, must not hear of them again.
		a.ExpectDo(tag, command, want...)
		select {
		case <-noop.Fired():
			return true
		default:
			return false
		}
	}
	noCatchUp := func(tag, command string, want ...string) {
		t.Helper()
		if catchUp(tag, command, want...) {
			t.Errorf("%s: connection 1 ran the catch-up NOOP", command)
		}
	}
	mustCatchUp := func(tag, command string, want ...string) {
		t.Helper()
		if !catchUp(tag, command, want...) {
			t.Errorf("%s: connection 1 ran no catch-up NOOP", command)
		}
	}
	mustCatchUp("f0", "FETCH 1:2 (FLAGS)", "* 1 FETCH (FLAGS ())", "* 2 FETCH (FLAGS ())", "f0 OK *") // anything since the SELECT: brought up to date

	// Flags of message 2 changed.
	other("d1", `STORE 2 +FLAGS (\Answered)`)
	a.ExpectDo("n1", "NOOP", `* 2 FETCH (FLAGS (\Answered))`, "n1 OK *")
	noCatchUp("f1", "FETCH 2 (RFC822.SIZE)", "* 2 FETCH (RFC822.SIZE *", "f1 OK *")
	noCatchUp("f2", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "f2 OK *")
	noCatchUp("f3", `STORE 1 +FLAGS (\Seen)`, `* 1 FETCH (FLAGS (\Seen))`, "f3 OK *")
	mustCatchUp("f4", "FETCH 2 (UID FLAGS)", `* 2 FETCH (UID 2 FLAGS (\Answered))`, "f4 OK *")

	other("d2", `STORE 2 -FLAGS (\Answered)`)
	a.ExpectDo("n2", "NOOP", `* 2 FETCH (FLAGS ())`, "n2 OK *")
	mustCatchUp("f5", `STORE 2 +FLAGS (\Flagged)`, `* 2 FETCH (FLAGS (\Flagged))`, "f5 OK *")

	// A new message: items that never change need no catch-up for the
	// messages the connection has, and one for the new one.
	if err := up.Append("alice", "INBOX", nil, testMessage("three", 100)); err != nil {
		t.Fatal(err)
	}
	a.ExpectDo("n3", "NOOP", "* 3 EXISTS", "* 1 RECENT", "n3 OK *")
	noCatchUp("f6", "FETCH 1:2 (UID RFC822.SIZE)", "* 1 FETCH (UID 1 RFC822.SIZE *", "* 2 FETCH (UID 2 RFC822.SIZE *", "f6 OK *")
	noCatchUp("f7", "UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (Subject)])", "* 2 FETCH (UID 2 BODY[HEADER.FIELDS (\"Subject\")] {16}\r\nSubject: two\r\n\r\n)", "f7 OK *")
	mustCatchUp("f8", "FETCH 3 (UID RFC822.SIZE)", "* 3 FETCH (UID 3 RFC822.SIZE *", "f8 OK *")

	// EXPUNGE depends on every message's flags.
	other("d3", "NOOP")
	other("d4", `STORE 3 +FLAGS (\Deleted)`)
	a.ExpectDo("n4", "NOOP", `* 3 FETCH (FLAGS (\Deleted \Recent))`, "n4 OK *")
	mustCatchUp("e", "EXPUNGE", "* 3 EXPUNGE", "* 0 RECENT", "e OK *")
}

// TestFetchStarAnswersNewMessage: "*" in a FETCH names whatever the
// upstream answers for it. Here the client hears of message 3 just before
// its UID FETCH 1:* is answered (another session brought the pooled
// connection up to date, so no catch-up runs), and the answer about
// message 3 must reach it with the others: it is an answer, not a report
// of someone else's change (reportsOnly).
func TestFetchStarAnswersNewMessage(t *testing.T) {
	t.Parallel()
	up, _, p, a := startTwoMessages(t)
	a.ExpectDo("f0", "FETCH 1:2 (FLAGS)", "* 1 FETCH (FLAGS ())", "* 2 FETCH (FLAGS ())", "f0 OK *")
	if err := up.Append("alice", "INBOX", nil, testMessage("three", 100)); err != nil {
		t.Fatal(err)
	}
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	b.Do("s", "SELECT INBOX")
	if r := b.Do("n", "NOOP"); !strings.HasPrefix(r[len(r)-1], "n OK") {
		t.Fatalf("b's NOOP: %q", r)
	}
	b.Do("f", "UID FETCH 1:* (FLAGS)")
	a.ExpectDo("g", "UID FETCH 1:* (UID FLAGS)",
		"* 3 EXISTS", // recent in b, which saw it first
		"* 1 FETCH (UID 1 FLAGS ())", "* 2 FETCH (UID 2 FLAGS ())", "* 3 FETCH (UID 3 FLAGS ())",
		"g OK *")
}
