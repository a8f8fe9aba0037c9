package catenate_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// The messages of RFC 3502 6's example.
const (
	rfc3502First = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n" +
		"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n" +
		"Subject: afternoon meeting\r\n" +
		"To: mooch@owatagu.siam.edu\r\n" +
		"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n" +
		"\r\n" +
		"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
	rfc3502Second = "Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n" +
		"From: Joe Mooch <mooch@OWaTaGu.siam.EDU>\r\n" +
		"Subject: Re: afternoon meeting\r\n" +
		"To: foobar@blurdybloop.example.com\r\n" +
		"Message-Id: <a0434793874930@OWaTaGu.siam.EDU>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n" +
		"\r\n" +
		"3:30 is fine with me.\r\n"
)

// TestDovecotRFC3502: RFC 3502 6's example, synchronising literals and
// all, synthesized over Legacy and relayed over Full: both messages
// appended with their flags and date, OK [APPENDUID v 1:2]; an APPEND to
// a mailbox that does not exist refused NO [TRYCREATE] before its
// literal is invited.
func TestDovecotRFC3502(t *testing.T) {
	for _, tc := range []struct {
		p     dovecottest.Profile
		multi int64 // MULTIAPPENDs the proxy did itself
	}{{dovecottest.Legacy, 1}, {dovecottest.Full, 0}} {
		t.Run(tc.p.String(), func(t *testing.T) {
			ext, c, _ := dovecotEnv(t, tc.p, nil)
			if caps := c.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " MULTIAPPEND ") {
				t.Fatalf("%s", caps)
			}
			c.MustOK("CREATE saved-messages")
			v := uidValidity(t, c, "saved-messages")
			c.Send(fmt.Sprintf(`A003 APPEND saved-messages (\Seen) {%d}`, len(rfc3502First)))
			if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
				t.Fatalf("%q, want a continuation request", l)
			}
			c.Write(rfc3502First)
			c.Send(fmt.Sprintf(` (\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}`, len(rfc3502Second)))
			if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
				t.Fatalf("%q, want a continuation request", l)
			}
			c.Write(rfc3502Second)
			c.Send("")
			lines := c.ReadUntilTagged("A003")
			if got, want := lines[len(lines)-1], "A003 OK [APPENDUID "+v+" 1:2] "; !strings.HasPrefix(got, want) {
				t.Errorf("%q, want %q...", lines, want)
			}
			c.Send(`A004 APPEND bogusname (\Flagged) {1023}`)
			if got := c.ReadLine(); !strings.HasPrefix(got, "A004 NO [TRYCREATE] ") {
				t.Errorf("A004: %q", got)
			}
			c.MustOK("SELECT saved-messages")
			for uid, want := range map[int]string{1: rfc3502First, 2: rfc3502Second} {
				if got := fetchBody(t, c, uid, ""); got != want {
					t.Errorf("UID %d: %q", uid, got)
				}
			}
			for uid, date := range map[int]string{1: "", 2: `"08-Feb-1994 06:43:04 +0000"`} {
				f := c.MustOK(fmt.Sprintf("UID FETCH %d (FLAGS INTERNALDATE)", uid))[0]
				if !strings.Contains(f, `\Seen`) || !strings.Contains(f, date) {
					t.Errorf("%s", f)
				}
			}
			if got := ext.Stats().MultiAppends; got != tc.multi {
				t.Errorf("MultiAppends %d, want %d", got, tc.multi)
			}
		})
	}
}

// TestDovecotMultiappendFails: a MULTIAPPEND whose second or third
// message Dovecot refuses appends nothing: the client gets Dovecot's
// refusal and the mailbox stays empty (STATUS, SEARCH), synthesized over
// Legacy as relayed over Full.
func TestDovecotMultiappendFails(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			ext, c, _ := dovecotEnv(t, p, nil)
			// A zero-byte third message: Dovecot refuses to save it.
			lines := c.Cmd("APPEND INBOX {5+}", "hello {5+}", "world {0+}", "")
			if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO ") {
				t.Errorf("%q", lines)
			}
			// A bad flag on the second (over Legacy only: relayed to
			// Dovecot, whose BAD comes while the rest of the command is
			// in flight, it costs the upstream connection).
			if p == dovecottest.Legacy {
				lines = c.Cmd("APPEND INBOX {5+}", `hello (\Bogus) {5+}`, "world")
				if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "BAD ") && !strings.HasPrefix(got, "NO ") {
					t.Errorf("%q", lines)
				}
			}
			if st := c.MustOK("STATUS INBOX (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 0") {
				t.Errorf("%q", st)
			}
			c.MustOK("SELECT INBOX")
			if got := c.MustOK("SEARCH ALL")[0]; got != "* SEARCH" {
				t.Errorf("%q", got)
			}
			want := catenate.Stats{}
			if p == dovecottest.Legacy {
				want.MultiAppends = 2
			}
			if got := ext.Stats(); got != want {
				t.Errorf("stats %+v, want %+v", got, want)
			}
		})
	}
}

// TestDovecotRollbackRecreated: a MULTIAPPEND over Dovecot's legacy
// profile whose mailbox another client deletes and creates again, with
// three messages of its own, after the first message was appended. The
// first went with the deleted mailbox; the second lands in the new one
// under another UIDVALIDITY. The MULTIAPPEND fails and the second is
// removed, by its new UID: the first's UID (2) is now the other client's
// second message, which must stay.
func TestDovecotRollbackRecreated(t *testing.T) {
	srv := dovecottest.Start(t, dovecottest.Legacy)
	srv.Append(t, "alice", "alicepass", "Box", nil, []byte("Subject: before\r\n\r\nx\r\n"))
	ext := catenate.New(catenate.Config{Hosts: []string{"imap.example.org"}})
	px := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{ext}})
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	catenate.SetHook(ext, func(point string) {
		if point != "multiappend:appended" {
			return
		}
		catenate.SetHook(ext, nil)
		d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
		d.MustOK("DELETE Box")
		d.MustOK("CREATE Box")
		for i := range 3 {
			m := fmt.Sprintf("Subject: other's %d\r\n\r\ny\r\n", i+1)
			d.MustOK(fmt.Sprintf("APPEND Box {%d+}", len(m)), m)
		}
		d.MustOK("LOGOUT")
	})
	lines := c.Cmd("APPEND Box {5+}", "hello {5+}", "world")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO ") {
		t.Errorf("MULTIAPPEND: %q", lines)
	}
	c.MustOK("SELECT Box")
	if got := c.MustOK("UID SEARCH ALL")[0]; got != "* SEARCH 1 2 3" {
		t.Errorf("the new mailbox holds %q, want the other client's three messages", got)
	}
	if got := ext.Stats().RollbacksFailed; got != 0 {
		t.Errorf("RollbacksFailed %d", got)
	}
}

// threeMessages are the messages of sendThreeAppend's MULTIAPPEND.
var threeMessages = []string{
	"Message-ID: <one@example>\r\nSubject: one\r\n\r\nfirst of three\r\n",
	"Message-ID: <two@example>\r\nSubject: two\r\n\r\nsecond of three\r\n",
	"Message-ID: <three@example>\r\nSubject: three\r\n\r\nthird of three\r\n",
}

// startThreeAppend starts Dovecot's legacy profile, a proxy with the
// synthesized MULTIAPPEND in front of it through a faultnet relay, and
// logs alice in through the proxy (c) and directly (d).
func startThreeAppend(t *testing.T) (*faultnet.Relay, *catenate.Extension, *imaptest.Client, *imaptest.Client) {
	t.Helper()
	srv := dovecottest.Start(t, dovecottest.Legacy)
	fn := faultnet.Start(t, srv.Addr)
	ext := catenate.New(catenate.Config{Hosts: []string{"imap.example.org"}})
	px := imaptest.StartProxy(t, fn.Addr(), proxy.Config{Extensions: []proxy.Extension{ext, uidplus.New()}})
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	return fn, ext, c, d
}

// sendThreeAppend sends "a APPEND INBOX" of threeMessages on c, without
// waiting for its answer.
func sendThreeAppend(c *imaptest.Client) {
	c.Send(fmt.Sprintf("a APPEND INBOX {%d+}", len(threeMessages[0])))
	c.Write(threeMessages[0])
	c.Send(fmt.Sprintf(" {%d+}", len(threeMessages[1])))
	c.Write(threeMessages[1])
	c.Send(fmt.Sprintf(" {%d+}", len(threeMessages[2])))
	c.Write(threeMessages[2])
	c.Send("")
}

// TestDovecotMultiappendAnswerLost: the connection of a synthesized
// MULTIAPPEND breaks after Dovecot stored its second message and before
// its answer (APPENDUID) reached the proxy, as when the APPEND times out.
// The proxy answers NO having rolled back the first message; the second
// stays (the client's retry may append it twice), and is counted and
// logged: its text alone cannot tell it from another client's APPEND of
// the same message (TestDovecotMultiappendLostNeverStored), and when
// another client appended the same message meanwhile both are left.
func TestDovecotMultiappendAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		other bool // another client appends the second message too
	}{{"alone", false}, {"same message from another client", true}} {
		t.Run(tc.name, func(t *testing.T) {
			fn, ext, c, d := startThreeAppend(t)
			h := fn.Add(faultnet.Fault{Match: []byte("second of three"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
			defer h.Release()
			sendThreeAppend(c)
			<-h.Fired()
			// Dovecot has stored it (its OK is held) once INBOX
			// counts two.
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(d.MustOK("STATUS INBOX (MESSAGES)")[0], "MESSAGES 2") {
				if time.Now().After(deadline) {
					t.Fatal("setup: Dovecot did not store the second message")
				}
				time.Sleep(10 * time.Millisecond)
			}
			want, failed := "MESSAGES 1", int64(1)
			if tc.other {
				d.MustOK(fmt.Sprintf("APPEND INBOX {%d+}", len(threeMessages[1])), threeMessages[1])
				want = "MESSAGES 2"
			}
			h.Conn().Cut()
			lines := c.ReadUntilTagged("a")
			if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO ") {
				t.Fatalf("MULTIAPPEND whose answer was lost: %q", lines)
			}
			if st := d.MustOK("STATUS INBOX (MESSAGES)")[0]; !strings.Contains(st, want) {
				t.Errorf("after the NO: %q, want %s", st, want)
			}
			d.MustOK("EXAMINE INBOX")
			if n := strings.Count(strings.Join(d.MustOK("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), "\n"), "<one@example>"); n != 0 {
				t.Errorf("the first message is still there")
			}
			if got := ext.Stats().RollbacksFailed; got != failed {
				t.Errorf("RollbacksFailed %d, want %d", got, failed)
			}
		})
	}
}

// TestDovecotMultiappendLostNeverStored: the connection of a synthesized
// MULTIAPPEND breaks in the middle of its second message's literal, so
// Dovecot never stores it, while another client appends the same message.
// The rollback finds one message with that text since the MULTIAPPEND
// began: the other client's, which it must not remove (a second reader of
// session 19's rollback found it removed: the message was lost).
func TestDovecotMultiappendLostNeverStored(t *testing.T) {
	fn, _, c, d := startThreeAppend(t)
	// The rest of the second literal, from its Subject on, is held.
	h := fn.Add(faultnet.Fault{Match: []byte("Subject: two"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Hold})
	defer h.Release()
	sendThreeAppend(c)
	<-h.Fired()
	d.MustOK(fmt.Sprintf("APPEND INBOX {%d+}", len(threeMessages[1])), threeMessages[1])
	h.Conn().Cut()
	if got := imaptest.Tagged(c.ReadUntilTagged("a")); !strings.HasPrefix(got, "NO ") {
		t.Fatalf("MULTIAPPEND cut in its second literal: %q", got)
	}
	if st := d.MustOK("STATUS INBOX (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 1") {
		t.Errorf("after the NO: %q, want the other client's message kept (MESSAGES 1)", st)
	}
}

// TestDovecotRollbackBeforeLookingForLost: the messages a failed
// MULTIAPPEND knows it appended (their APPENDUIDs came) are removed
// whatever becomes of the look for the one whose answer was lost. The
// rollback's connection broke while it compared a candidate's text: the
// look came first, and the first message stayed, half a MULTIAPPEND (RFC
// 3502 wants all or none; a second reader's finding).
func TestDovecotRollbackBeforeLookingForLost(t *testing.T) {
	fn, _, c, d := startThreeAppend(t)
	h := fn.Add(faultnet.Fault{Match: []byte("second of three"), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	// The rollback's look at the candidate's text breaks its connection.
	fn.Add(faultnet.Fault{Match: []byte("BODY.PEEK[]<"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Cut})
	sendThreeAppend(c)
	<-h.Fired()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.MustOK("STATUS INBOX (MESSAGES)")[0], "MESSAGES 2") {
		if time.Now().After(deadline) {
			t.Fatal("setup: Dovecot did not store the second message")
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.Conn().Cut()
	lines := c.ReadUntilTagged("a")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO ") {
		t.Fatalf("MULTIAPPEND whose answer was lost: %q", lines)
	}
	d.MustOK("EXAMINE INBOX")
	if n := strings.Count(strings.Join(d.MustOK("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), "\n"), "<one@example>"); n != 0 {
		t.Errorf("the first message, whose APPENDUID came, is still there after the rollback")
	}
}
