package proxy_test

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// testMessage returns a message of about size bytes with varied content,
// CRLF line endings and bytes that need no escaping in a literal.
func testMessage(subject string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: %s\r\n\r\n", subject)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "line %06d: {3}\r\n * OK not a response ( \" \\ %c%c\r\n", i, 'a'+i%26, 0xc0+i%32)
	}
	return b.Bytes()
}

func fetchBody(n int, msg []byte) string {
	return fmt.Sprintf("* %d FETCH (BODY[] {%d}\r\n%s)", n, len(msg), msg)
}

// withoutFlagUpdates drops "* n FETCH (FLAGS (...))" responses: besides
// the answer to a FETCH that sets \Seen, the client may be told the new
// flags, by the upstream or by the proxy (or both, in either spelling).
func withoutFlagUpdates(lines []string) []string {
	var out []string
	for _, l := range lines {
		if flagUpdate.MatchString(l) {
			continue
		}
		out = append(out, l)
	}
	return out
}

var flagUpdate = regexp.MustCompile(`^\* \d+ FETCH \((UID \d+ )?FLAGS \([^()]*\)\)$`)

func TestRelaySelectFetch(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	small := testMessage("small", 300)
	big := testMessage("big", 300<<10) // above the inline limit: streamed
	for _, m := range [][]byte{small, big} {
		if err := up.Append("alice", "INBOX", nil, m); err != nil {
			t.Fatal(err)
		}
	}
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.ExpectDo("s", "SELECT INBOX",
		"* 2 EXISTS",
		"* 0 RECENT",
		"* OK [UNSEEN 1] First unseen message",
		"* OK [UIDVALIDITY 1] UIDs valid",
		"* OK [UIDNEXT 3] Predicted next UID",
		"* FLAGS ()",
		`* OK [PERMANENTFLAGS (\*)] Permanent flags`,
		"s OK [READ-WRITE] SELECT completed")
	got := c.Do("f", "FETCH 1:2 BODY.PEEK[]")
	want := []string{fetchBody(1, small), fetchBody(2, big), "f OK FETCH completed"}
	if len(got) != len(want) {
		t.Fatalf("FETCH: %d responses, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("FETCH response %d differs (len %d, want %d)", i, len(got[i]), len(want[i]))
		}
	}
	c.ExpectDo("u", "UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
		"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (\"SUBJECT\")] {16}\r\nSubject: big\r\n\r\n)",
		"u OK UID FETCH completed")
}

func TestRelayAppend(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")

	// Synchronising literal: the client waits for the continuation.
	m1 := testMessage("sync", 2000)
	c.Send(fmt.Sprintf(`a APPEND INBOX (\Seen) {%d}`, len(m1)))
	c.Expect("+ *")
	c.WriteBytes(append(m1, "\r\n"...))
	c.Expect("a OK [APPENDUID 1 1] APPEND completed")

	// LITERAL+: everything in one write, no continuation request.
	m2 := testMessage("nonsync", 100<<10)
	c.WriteBytes(fmt.Appendf(nil, "b APPEND INBOX {%d+}\r\n%s\r\n", len(m2), m2))
	c.Expect("b OK [APPENDUID 1 2] APPEND completed")

	// Literal mailbox name and message, both synchronising.
	c.Send("c APPEND {5}")
	c.Expect("+ *")
	c.Send(fmt.Sprintf("INBOX {%d}", len(m1)))
	c.Expect("+ *")
	c.WriteBytes(append(m1, "\r\n"...))
	c.Expect("c OK [APPENDUID 1 3] APPEND completed")

	// go-imap takes the literal before it finds the mailbox missing.
	c.Send("d APPEND NoSuchBox {10}")
	c.Expect("+ *")
	c.Send("0123456789")
	c.Expect("d NO [TRYCREATE] No such mailbox")
	c.ExpectDo("e", "NOOP", "e OK NOOP completed.")

	// Appended through the proxy, the messages are new (from UID 1 on, as
	// the first APPENDUID said): recent in the first session to select
	// INBOX, though go-imap's server has no \Recent.
	c.ExpectDo("s", "SELECT INBOX", "* 3 EXISTS", "* 3 RECENT", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	c.ExpectDo("f", "FETCH 1:3 (FLAGS BODY.PEEK[])",
		fmt.Sprintf("* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}\r\n%s)", len(m1), m1),
		fmt.Sprintf("* 2 FETCH (FLAGS (\\Recent) BODY[] {%d}\r\n%s)", len(m2), m2),
		fmt.Sprintf("* 3 FETCH (FLAGS (\\Recent) BODY[] {%d}\r\n%s)", len(m1), m1),
		"f OK FETCH completed")
}

func TestRelayCloseUnselect(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	for i := range 3 {
		if err := up.Append("alice", "INBOX", nil, testMessage(fmt.Sprint(i), 100)); err != nil {
			t.Fatal(err)
		}
	}
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	selectInbox := func(tag string, exists int) {
		t.Helper()
		got := c.Do(tag, "SELECT INBOX")
		if got[0] != fmt.Sprintf("* %d EXISTS", exists) || got[len(got)-1] != tag+" OK [READ-WRITE] SELECT completed" {
			t.Fatalf("SELECT: %q", got)
		}
	}

	// UNSELECT does not expunge.
	selectInbox("a", 3)
	// With .SILENT the client SHOULD NOT be sent the new flags (RFC 3501
	// 6.4.6); the proxy currently echoes them from the mailbox hub, which
	// the RFC tolerates, so only the tagged answer is checked.
	got := withoutFlagUpdates(c.Do("b", `STORE 1 +FLAGS.SILENT (\Deleted)`))
	imaptest.AssertLines(t, "STORE", got, []string{"b OK STORE completed"})
	c.ExpectDo("c", "UNSELECT", "c OK Unselect completed.")
	c.ExpectDo("d", "FETCH 1 FLAGS", "d BAD No mailbox selected.")
	c.ExpectDo("e", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 3)", "e OK STATUS completed")
	c.ExpectDo("e2", "UNSELECT", "e2 BAD No mailbox selected.")

	// CLOSE does.
	selectInbox("f", 3)
	c.ExpectDo("g", "CLOSE extra", "g BAD CLOSE takes no arguments.")
	c.ExpectDo("h", "CLOSE", "h OK CLOSE completed")
	// CLOSE of a read-only mailbox expunges nothing.
	selectInbox("h1", 2)
	imaptest.AssertLines(t, "STORE", withoutFlagUpdates(c.Do("h2", `STORE 2 +FLAGS.SILENT (\Deleted)`)), []string{"h2 OK STORE completed"})
	c.ExpectDo("h3", "EXAMINE INBOX", "* 2 EXISTS", "*", "*", "*", "*", "*", "*", "h3 OK [READ-ONLY] *")
	c.ExpectDo("h4", "CLOSE", "h4 OK Close completed.")
	c.ExpectDo("i", "FETCH 1 FLAGS", "i BAD No mailbox selected.")
	c.ExpectDo("j", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 2)", "j OK STATUS completed")
	// Connections go back to the pool after each command, whatever the
	// state.
	if n := p.Srv.Pool().Idle(); n != 1 {
		t.Errorf("pool has %d idle connections after CLOSE, want 1", n)
	}
}

// TestUnselectEmulated: a pooled connection left with a mailbox selected is
// brought back to the authenticated state before it serves a command that
// needs no mailbox. Against an upstream without UNSELECT (go-imap always
// advertises it, so this uses the fake upstream) that must not expunge, and
// should not open the mailbox again: an EXAMINE that fails, then a check
// that nothing is selected (upstream.Conn.Unselect).
func TestUnselectEmulated(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("l", "LOGIN u p", "l OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT IDLE] *")
	c.ExpectDo("a", "SELECT INBOX", "* 1 EXISTS", "* 0 RECENT", "* OK [UIDVALIDITY 7] ok", "* OK [UIDNEXT 2] ok", `* FLAGS (\Seen)`, "a OK [READ-WRITE] SELECT done")
	c.ExpectDo("b", "UNSELECT", "b OK Unselect completed.")
	c.ExpectDo("c", "FETCH 1 FLAGS", "c BAD No mailbox selected.")
	c.ExpectDo("d", `LIST "" *`, `* LIST () "/" INBOX`, "d OK LIST done")
	c.ExpectDo("e", "DELETE Trash", "e BAD unknown command")

	// The session's connection (the first: the mailbox watcher has its
	// own) saw the SELECT; LIST ran with INBOX still selected there (it does
	// not care); DELETE, which might hit that very mailbox, came after
	// the emulated UNSELECT.
	conns := f.connCommands()
	var cmds []string
	for _, cmd := range conns[0] {
		if !strings.HasPrefix(cmd, "AUTHENTICATE") && cmd != "CAPABILITY" {
			cmds = append(cmds, cmd)
		}
	}
	want := []string{"SELECT INBOX", `LIST "" *`, "EXAMINE lemonproxy-unselect-probe", "UID FETCH 4294967295 (UID)", "DELETE Trash"}
	if strings.Join(cmds, "|") != strings.Join(want, "|") {
		t.Fatalf("upstream connection saw %q, want %q (all connections: %q)", cmds, want, conns)
	}
	for i, l := range conns {
		for _, cmd := range l {
			if cmd == "UNSELECT" {
				t.Errorf("connection %d was sent UNSELECT, which the upstream does not offer", i)
			}
		}
	}
}

func TestRelayPipelined(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	if err := up.Append("alice", "INBOX", nil, testMessage("x", 100)); err != nil {
		t.Fatal(err)
	}
	c := imaptest.Dial(t, p.Addr)
	msg := []byte("Subject: piped\r\n\r\nhi\r\n")
	c.WriteBytes(fmt.Appendf(nil, "a CAPABILITY\r\nb LOGIN alice secret\r\nc NOOP\r\n"+
		"d APPEND INBOX {%d+}\r\n%s\r\ne SELECT INBOX\r\nf FETCH 2 (FLAGS BODY[])\r\ng ENABLE X\r\n"+
		"h UNSELECT\r\ni LIST \"\" INBOX\r\nj LOGOUT\r\n", len(msg), msg))
	var got []string
	for _, tag := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		got = append(got, c.ReadUntilTagged(tag)...)
	}
	got = withoutFlagUpdates(got)
	want := []string{
		"* CAPABILITY " + preAuthCaps,
		"a OK Capability completed.",
		"b " + loggedIn,
		"c OK NOOP completed.",
		"d OK [APPENDUID 1 2] APPEND completed",
		// Message 2, appended through the proxy, is recent; message 1,
		// delivered behind its back to go-imap's server (no \Recent)
		// before anybody watched, is not.
		"* 2 EXISTS", "* 1 RECENT", "*", "*", "*", "*", "*",
		"e OK [READ-WRITE] SELECT completed",
		fmt.Sprintf("* 2 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}\r\n%s)", len(msg), msg),
		"f OK FETCH completed",
		"g BAD ENABLE not allowed in the selected state.",
		"h OK Unselect completed.",
		`* LIST () "/" INBOX`,
		"i OK LIST completed",
		"* BYE Logging out",
		"j OK Logout completed.",
	}
	imaptest.AssertLines(t, "pipelined commands", got, want)
	c.ExpectClosed()
}

func TestIdle(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	a.ExpectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	a.ExpectDo("x", "IDLE now", "x BAD IDLE takes no arguments.")
	a.Send("i IDLE")
	a.Expect("+ idling")

	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	// go-imap queues an update that arrives just before a connection's IDLE
	// has started and reports it only with the next one, so give the
	// mailbox watcher (whose IDLE starts after SELECT has answered) time
	// to get there. Dovecot has no such gap.
	time.Sleep(300 * time.Millisecond)
	msg := testMessage("pushed", 500)
	b.WriteBytes(fmt.Appendf(nil, "a APPEND INBOX {%d+}\r\n%s\r\n", len(msg), msg))
	b.Expect("a OK [APPENDUID 1 1] APPEND completed")

	// a, the only session with INBOX selected read-write, is the first
	// to be told of the message: it is recent there.
	a.Expect("* 1 EXISTS", "* 1 RECENT")
	a.Send("DONE")
	a.Expect("i OK Idle completed.")
	a.ExpectDo("f", "FETCH 1 (BODY.PEEK[])", fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n%s)", len(msg), msg), "f OK FETCH completed")

	// IDLE in the authenticated state, ended by something else than DONE.
	b.Send("j IDLE")
	b.Expect("+ idling")
	b.Send("NOT-DONE")
	b.Expect("j BAD Expected DONE.")
	b.ExpectDo("k", "NOOP", "k OK NOOP completed.")
}

func TestIdleWithoutUpstreamIdle(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("u", "p")
	// IDLE is the proxy's, whatever the upstream offers.
	c.Send("i IDLE")
	c.Expect("+ idling")
	c.Send("done")
	c.Expect("i OK Idle completed.")
}

// TestRelayUpstreamBAD checks that a relayed command refused by the upstream
// (a parse error there: the proxy does not parse relayed arguments) is
// passed on under the client's tag.
func TestRelayUpstreamBAD(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	got := c.Do("a", "STATUS INBOX (MESSAGES")
	if len(got) != 1 || !strings.HasPrefix(got[0], "a BAD ") {
		t.Fatalf("STATUS with unbalanced parenthesis: %q", got)
	}
	c.ExpectDo("c", "FROBNICATE", "c BAD Unknown command")
	c.ExpectDo("d", "NOOP", "d OK NOOP completed.")
}

// TestAppendRefusedBeforeLiteral: an upstream that refuses an APPEND before
// its synchronising literal (as Dovecot does for a missing mailbox). The
// client must not be invited to send the literal and the session must stay
// in step; the upstream connection stays usable.
func TestAppendRefusedBeforeLiteral(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("u", "p")
	c.Send("a APPEND NoSuchBox {10}")
	c.Expect("a NO [TRYCREATE] no such mailbox")
	c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	// Non-synchronising: the literal comes anyway and is dropped.
	c.WriteBytes([]byte("c APPEND NoSuchBox {10+}\r\n0123456789\r\nd NOOP\r\n"))
	c.Expect("c NO [TRYCREATE] no such mailbox", "d OK NOOP completed.")
	if n := f.conns.Load(); n != 1 {
		t.Errorf("the proxy opened %d upstream connections, want 1", n)
	}
}

// TestSelectSeesOwnChanges: while another session keeps the mailbox
// watched, a session's APPEND (in the authenticated state) and CLOSE, both
// run on pooled connections, must show in its next SELECT.
func TestSelectSeesOwnChanges(t *testing.T) {
	t.Parallel()
	_, p := newMemProxy(t)
	watcher := imaptest.Dial(t, p.Addr)
	watcher.LoginTagged("alice", "secret")
	watcher.ExpectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")

	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	msg := testMessage("mine", 200)
	for round := range 5 {
		c.WriteBytes(fmt.Appendf(nil, "a APPEND INBOX {%d+}\r\n%s\r\n", len(msg), msg))
		c.Expect("a OK [APPENDUID 1 *")
		got := c.Do("b", "SELECT INBOX")
		if got[0] != "* 1 EXISTS" {
			t.Fatalf("round %d: SELECT after APPEND: %q", round, got)
		}
		imaptest.AssertLines(t, "STORE", withoutFlagUpdates(c.Do("c", `STORE 1 +FLAGS.SILENT (\Deleted)`)), []string{"c OK STORE completed"})
		c.ExpectDo("d", "CLOSE", "d OK CLOSE completed")
		got = c.Do("e", "SELECT INBOX")
		if got[0] != "* 0 EXISTS" {
			t.Fatalf("round %d: SELECT after CLOSE: %q", round, got)
		}
		c.ExpectDo("f", "UNSELECT", "f OK Unselect completed.")
	}
}

// TestImplicitSeenNotEchoed: a FETCH of a body sets \Seen, and its answer
// tells the client so; the change is the session's own, and the next
// command does not report it once more (#16.14; Dovecot sends nothing
// either). Another session does hear of it. go-imap's server tells the
// watcher at once, so here the watcher's report tends to come before the
// FETCH's tagged answer; the interleaving that used to echo (the report
// after it, Dovecot's IDLE delay) is what TestCompareDirectAndProxied's
// FETCH BODY[TEXT] then NOOP runs into.
func TestImplicitSeenNotEchoed(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	for i := range 2 {
		if err := up.Append("alice", "INBOX", nil, testMessage(fmt.Sprint(i), 100)); err != nil {
			t.Fatal(err)
		}
	}
	other := imaptest.Dial(t, p.Addr)
	other.LoginTagged("alice", "secret")
	other.Do("o1", "SELECT INBOX")
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.Do("a", "SELECT INBOX")
	got := c.Do("b", "FETCH 2 BODY[TEXT]")
	if !strings.Contains(strings.ToLower(strings.Join(got, "\n")), `\seen`) {
		t.Fatalf("FETCH BODY[TEXT] answer without \\Seen: %q", got)
	}
	for i := range 3 {
		c.ExpectDo(fmt.Sprintf("n%d", i), "NOOP", fmt.Sprintf("n%d OK NOOP completed.", i))
	}
	c.ExpectDo("f", "FETCH 2 FLAGS", `* 2 FETCH (FLAGS (\Seen))`, "f OK FETCH completed") // go-imap writes \seen: the proxy spells system flags as its state does
	got = other.Do("o2", "NOOP")
	imaptest.AssertLines(t, "the other session's NOOP", got, []string{`* 2 FETCH (FLAGS (\Seen))`, "o2 OK NOOP completed."})
}
