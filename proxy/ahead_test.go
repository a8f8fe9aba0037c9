package proxy_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// aheadEnv is a proxy in front of a go-imap server holding three messages
// (UIDs 1, 2, 3), through a fault relay, and a client with INBOX selected.
type aheadEnv struct {
	p    *imaptest.Proxy
	fn   *faultnet.Relay
	c    *client
	msgs [][]byte
}

// startAheadEnv starts it, with exts in the chain after baseConfig's.
func startAheadEnv(t *testing.T, exts ...proxy.Extension) *aheadEnv {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	e := &aheadEnv{}
	for i := range 3 {
		m := testMessage(fmt.Sprint("message ", i+1), 2000*(i+1))
		if err := up.Append("alice", "INBOX", nil, m); err != nil {
			t.Fatal(err)
		}
		e.msgs = append(e.msgs, m)
	}
	e.fn = faultnet.Start(t, up.Addr)
	cfg := baseConfig(e.fn.Addr())
	cfg.Extensions = append(cfg.Extensions, exts...)
	e.p = startProxy(t, cfg)
	e.c = imaptest.Dial(t, e.p.Addr)
	e.c.LoginTagged("alice", "secret")
	e.c.Do("s", "SELECT INBOX")
	return e
}

// holdAnswer holds the upstream's answer to the command whose upstream
// form contains match, from when that command goes upstream.
func (e *aheadEnv) holdAnswer(match string) *faultnet.Handle {
	return e.fn.Add(faultnet.Fault{Match: []byte(match), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
}

// noteSent fires when a command whose upstream form contains match goes
// upstream.
func (e *aheadEnv) noteSent(match string) *faultnet.Handle {
	return e.fn.Add(faultnet.Fault{Match: []byte(match), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Note})
}

// batch is the three UID FETCHes of the tests, the first with tag first.
func batch(first string) string {
	return first + " UID FETCH 1 (BODY.PEEK[])\r\nb UID FETCH 2 (BODY.PEEK[])\r\nc UID FETCH 3 (BODY.PEEK[])\r\n"
}

// sendHeld holds the upstream's answer to the first FETCH of the batch,
// writes the batch and what follows it (more), and waits until the third
// FETCH has gone upstream all the same. It returns the hold and the
// upstream connection of the third FETCH.
func (e *aheadEnv) sendHeld(t *testing.T, first, more string) (*faultnet.Handle, *faultnet.Conn) {
	t.Helper()
	hold := e.holdAnswer("UID FETCH 1 (BODY.PEEK[])")
	third := e.noteSent("UID FETCH 3 (BODY.PEEK[])")
	e.c.WriteBytes([]byte(batch(first) + more))
	waitFired(t, hold)
	return hold, waitFired(t, third) // sent while the answer to the first is held
}

// notFired fails t if h fires within d: a command that must keep its
// turn went upstream while the answer before it is held.
func notFired(t *testing.T, h *faultnet.Handle, d time.Duration, why string) {
	t.Helper()
	select {
	case <-h.Fired():
		t.Fatal(why)
	case <-time.After(d):
	}
}

// longTag is the tag of the first command of a batch in some tests: the
// proxy reads the first bytes of a command after a pause into a small
// buffer of its own (imapcodec.Reader's first read); a first line longer
// than that makes it read the rest of the batch with the first command.
// TestFetchAhead uses a short tag: the rest of its batch is still in the
// socket when the first command has gone upstream, and is read from there
// (sendAhead's Fill).
var longTag = "a" + strings.Repeat("0", 200)

// expectBodyOf reads the answer to "tag UID FETCH uid (BODY.PEEK[])".
func (e *aheadEnv) expectBodyOf(tag string, uid int) {
	c := e.c
	c.T().Helper()
	got := c.ReadLine()
	want := string(e.msgs[uid-1])
	if !strings.HasPrefix(got, fmt.Sprintf("* %d FETCH (", uid)) || !strings.Contains(got, fmt.Sprintf("UID %d", uid)) ||
		!strings.Contains(got, fmt.Sprintf("BODY[] {%d}\r\n%s", len(want), want)) {
		c.T().Fatalf("answer to %s: %.120q, want message %d's body", tag, got, uid)
	}
	c.Expect(tag + " OK *")
}

// TestFetchAhead: UID FETCHes that change nothing, sent by the client one
// behind the other, go upstream while the first one's answer is still on
// its way (the upstream's answer is held: the third command reaches it
// all the same), and the client gets every answer in order; the SEARCH
// behind them is served in its turn.
func TestFetchAhead(t *testing.T) {
	e := startAheadEnv(t)
	search := e.noteSent("SEARCH UID 2")
	hold, _ := e.sendHeld(t, "a", "d UID SEARCH UID 2\r\n")
	notFired(t, search, 100*time.Millisecond, "the SEARCH went upstream ahead of its turn")
	hold.Release()
	e.expectBodyOf("a", 1)
	if n := e.p.Srv.Stats().CommandsAhead; n != 2 {
		t.Errorf("Stats().CommandsAhead = %d, want 2 (b and c)", n)
	}
	e.expectBodyOf("b", 2)
	e.expectBodyOf("c", 3)
	e.c.Expect("* SEARCH 2", "d OK *")
}

// TestFetchAheadNotWhenItChanges: a FETCH that sets \Seen (BODY[] without
// .PEEK) changes the mailbox, so it keeps its turn: it does not go upstream
// while the answer before it is held.
func TestFetchAheadNotWhenItChanges(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 1 (BODY.PEEK[])")
	second := e.noteSent("UID FETCH 2 (BODY[])")
	e.c.WriteBytes([]byte(longTag + " UID FETCH 1 (BODY.PEEK[])\r\nb UID FETCH 2 (BODY[])\r\n"))
	waitFired(t, hold)
	notFired(t, second, 200*time.Millisecond, "a FETCH that sets \\Seen went upstream ahead of its turn")
	hold.Release()
	e.expectBodyOf(longTag, 1)
	waitFired(t, second)
	var tagged string
	for tagged == "" {
		if l := e.c.ReadLine(); strings.HasPrefix(l, "b ") {
			tagged = l
		}
	}
	if !strings.HasPrefix(tagged, "b OK") {
		t.Fatalf("BODY[] answered %q", tagged)
	}
}

// TestFetchAheadUpstreamLost: the upstream connection breaks while
// commands sent ahead wait for their answers. Each command gets NO
// [UNAVAILABLE], in order, and the session goes on with a new connection.
func TestFetchAheadUpstreamLost(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 1 (BODY.PEEK[])")
	cut := e.fn.Add(faultnet.Fault{Match: []byte("UID FETCH 3 (BODY.PEEK[])"), MatchDir: faultnet.ToServer,
		Dir: faultnet.ToServer, Action: faultnet.Cut})
	e.c.WriteBytes([]byte(batch(longTag)))
	waitFired(t, hold)
	waitFired(t, cut)
	for _, tag := range []string{longTag, "b", "c"} {
		e.c.Expect(tag + " NO [UNAVAILABLE] *")
	}
	e.c.WriteBytes([]byte("d UID FETCH 2 (BODY.PEEK[])\r\n"))
	e.expectBodyOf("d", 2)
}

// execOnTagged is an extension that runs a command of its own upstream
// (Session.Exec) after the tagged answer of every UID FETCH, as an updating
// search's refresh does, and lets UID FETCH go ahead (PipelineSafe).
type execOnTagged struct {
	mu   sync.Mutex
	errs []error
	runs int
}

func (*execOnTagged) Name() string       { return "exec-on-tagged" }
func (*execOnTagged) Commands() []string { return []string{"UID FETCH"} }
func (*execOnTagged) PipelineSafe(*proxy.Exchange) bool {
	return true
}
func (e *execOnTagged) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	x.OnTagged(func(*imapcodec.ResponseHead) {
		_, err := s.Exec(ctx, "UID SEARCH ALL", nil)
		e.mu.Lock()
		e.runs++
		if err != nil {
			e.errs = append(e.errs, err)
		}
		e.mu.Unlock()
	})
	return next(ctx, x)
}

// TestFetchAheadExecBeside: an extension's own upstream command, run while
// commands sent ahead wait for their answers, goes to another connection:
// it neither reads their answers nor breaks them.
func TestFetchAheadExecBeside(t *testing.T) {
	ext := &execOnTagged{}
	e := startAheadEnv(t, ext)
	hold, third := e.sendHeld(t, "a", "")
	if third != hold.Conn() {
		t.Fatal("the third FETCH went upstream on another connection than the first")
	}
	hold.Release()
	e.expectBodyOf("a", 1)
	e.expectBodyOf("b", 2)
	e.expectBodyOf("c", 3)
	ext.mu.Lock()
	defer ext.mu.Unlock()
	if ext.runs != 3 || len(ext.errs) > 0 {
		t.Fatalf("the extension's commands: %d run, errors %v; want 3 without error", ext.runs, ext.errs)
	}
}

// TestFetchAheadClientGone: the client goes away while commands sent ahead
// wait for their answers. The upstream connection, with answers still
// coming on it, is closed, not put back in the pool for the next session.
func TestFetchAheadClientGone(t *testing.T) {
	e := startAheadEnv(t)
	hold, _ := e.sendHeld(t, "a", "")
	conn := hold.Conn()
	e.c.Close()
	hold.Release()
	expectDropped(t, conn)
}

// TestFetchAheadChangesBetween: another session adds a message while a
// batch is on its way. The client hears of it (EXISTS) once, between two
// of its commands, never inside an answer, and every answer still comes
// whole and in order.
func TestFetchAheadChangesBetween(t *testing.T) {
	e := startAheadEnv(t)
	hold, _ := e.sendHeld(t, "a", "")

	other := imaptest.Dial(t, e.p.Addr)
	other.LoginTagged("alice", "secret")
	msg := testMessage("added meanwhile", 500)
	other.WriteBytes(fmt.Appendf(nil, "x APPEND INBOX {%d}\r\n", len(msg)))
	other.Expect("+ *")
	other.WriteBytes(append(msg, "\r\n"...))
	other.Expect("x OK *")
	hold.Release()

	exists := 0
	for _, step := range []struct {
		tag string
		uid int
	}{{"a", 1}, {"b", 2}, {"c", 3}} {
		for {
			l := e.c.ReadLine()
			if l == "* 4 EXISTS" {
				exists++
				continue
			}
			if strings.HasPrefix(l, "* ") && strings.Contains(l, " FETCH (") && !strings.Contains(l, "BODY[]") {
				continue // the new message's flags, or \Recent
			}
			want := string(e.msgs[step.uid-1])
			if !strings.HasPrefix(l, fmt.Sprintf("* %d FETCH (", step.uid)) || !strings.Contains(l, fmt.Sprintf("BODY[] {%d}\r\n%s", len(want), want)) {
				t.Fatalf("before %s's tagged answer: %.100q, want message %d's body", step.tag, l, step.uid)
			}
			break
		}
		for {
			l := e.c.ReadLine()
			if l == "* 4 EXISTS" {
				exists++
				continue
			}
			if !strings.HasPrefix(l, step.tag+" OK ") {
				t.Fatalf("after %s's answer: %q, want its tagged OK", step.tag, l)
			}
			break
		}
	}
	got := e.c.Do("n", "NOOP")
	for _, l := range got {
		if l == "* 4 EXISTS" {
			exists++
		}
	}
	if exists != 1 {
		t.Fatalf("the client heard of the new message %d times, want once", exists)
	}
}

// execOnBatch runs a command of its own upstream (Session.Exec) at the end
// of every batch of changes the core reports, as an updating search's
// refresh does (extensions/contextsearch), and records its errors.
type execOnBatch struct {
	mu   sync.Mutex
	errs []error
	runs int
	tags []string // of the commands whose batches it ran for
	// answered, if set, is called before the tagged answer of a UID
	// FETCH goes to the client, with its tag (after the changes
	// reported before it).
	answered func(tag string)
}

func (*execOnBatch) Commands() []string                { return []string{"UID FETCH"} }
func (*execOnBatch) PipelineSafe(*proxy.Exchange) bool { return true }
func (e *execOnBatch) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	if e.answered != nil {
		x.OnTagged(func(*imapcodec.ResponseHead) { e.answered(x.Tag) })
	}
	return next(ctx, x)
}

func (*execOnBatch) Name() string                                   { return "exec-on-batch" }
func (*execOnBatch) FetchItems(*proxy.Session, uint32, bool) []byte { return nil }
func (*execOnBatch) ExpungesHeld(*proxy.Session) []byte             { return nil }
func (*execOnBatch) ReportExpunged(_ *proxy.Session, b []byte, _, _ []uint32) ([]byte, bool) {
	return b, false
}
func (e *execOnBatch) BatchDone(s *proxy.Session, x *proxy.Exchange, b []byte, _ bool) []byte {
	ctx := context.Background()
	if x != nil {
		ctx = x.Context()
	}
	_, err := s.Exec(ctx, "UID SEARCH ALL", nil)
	e.mu.Lock()
	e.runs++
	if x != nil {
		e.tags = append(e.tags, x.Tag)
	}
	if err != nil {
		e.errs = append(e.errs, err)
	}
	e.mu.Unlock()
	return b
}

// TestFetchAheadExecOnDelivery: a change reaches the session while the
// last command sent ahead waits for its turn; the delivery before its
// answers runs an extension's own command (a BatchDone hook's Exec),
// which must not go to the connection whose answers to the command are
// still unread (it read them, took them for garbage, and the FETCH was
// answered NO).
func TestFetchAheadExecOnDelivery(t *testing.T) {
	// Another session changes a flag just after the first FETCH's
	// changes were reported, before its tagged answer: the change is
	// delivered at b's turn, b's answers unread on the connection.
	change, changed := make(chan struct{}), make(chan struct{})
	ext := &execOnBatch{answered: func(tag string) {
		if tag == longTag {
			change <- struct{}{}
			<-changed
		}
	}}
	e := startAheadEnv(t, ext)
	other := imaptest.Dial(t, e.p.Addr)
	other.LoginTagged("alice", "secret")
	other.Do("s", "SELECT INBOX")
	second := e.noteSent("UID FETCH 2 (BODY.PEEK[])")
	e.c.WriteBytes([]byte(longTag + " UID FETCH 1 (BODY.PEEK[])\r\nb UID FETCH 2 (BODY.PEEK[])\r\n"))
	<-change
	waitFired(t, second) // b went upstream ahead
	other.Do("f", "UID STORE 3 +FLAGS.SILENT (\\Flagged)")
	close(changed)
	e.expectBodyOf(longTag, 1)
	e.c.Expect("* 3 FETCH (FLAGS (\\Flagged))")
	e.expectBodyOf("b", 2)
	ext.mu.Lock()
	defer ext.mu.Unlock()
	if !slices.Contains(ext.tags, "b") || len(ext.errs) > 0 {
		t.Fatalf("the extension's commands: %d run, for %q, errors %v; want one for b, without error", ext.runs, ext.tags, ext.errs)
	}
}

// TestSeqFetchAhead: FETCHes by sequence numbers that change nothing go
// upstream ahead of their turn too (their UID form), and each answer comes
// under its own sequence number, in order.
func TestSeqFetchAhead(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 1 (UID BODY.PEEK[])")
	third := e.noteSent("UID FETCH 3 (UID BODY.PEEK[])")
	e.c.WriteBytes([]byte("a FETCH 1 (UID BODY.PEEK[])\r\nb FETCH 2 (UID BODY.PEEK[])\r\nc FETCH 3 (UID BODY.PEEK[])\r\n"))
	waitFired(t, hold)
	waitFired(t, third) // sent while the answer to the first is held
	hold.Release()
	e.expectBodyOf("a", 1)
	e.expectBodyOf("b", 2)
	e.expectBodyOf("c", 3)
	if n := e.p.Srv.Stats().CommandsAhead; n != 2 {
		t.Errorf("Stats().CommandsAhead = %d, want 2 (b and c)", n)
	}
}

// TestSeqFetchNotAheadOfExpunge: a FETCH by sequence numbers behind a UID
// FETCH keeps its turn. The UID FETCH's answer may carry an EXPUNGE (RFC
// 3501 7.4.1 allows one during a UID command), after which the client's
// numbers mean other messages: here message 1 is expunged by another
// session while the UID FETCH's answer is on its way, so the client, told
// "* 1 EXPUNGE" before the UID FETCH's OK, means by "FETCH 2" the message
// of UID 3, as Dovecot takes it. Translated ahead of its turn, it was UID 2.
func TestSeqFetchNotAheadOfExpunge(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 2 (BODY.PEEK[])")
	ahead := e.noteSent("(UID FLAGS)")
	e.c.WriteBytes([]byte(longTag + " UID FETCH 2 (BODY.PEEK[])\r\nb FETCH 2 (UID FLAGS)\r\n"))
	waitFired(t, hold)

	other := imaptest.Dial(t, e.p.Addr)
	other.LoginTagged("alice", "secret")
	other.Do("s", "SELECT INBOX")
	other.Do("d", `STORE 1 +FLAGS.SILENT (\Deleted)`)
	other.Do("x", "EXPUNGE")
	notFired(t, ahead, 100*time.Millisecond, "a FETCH by sequence numbers went upstream behind a UID FETCH, ahead of its turn")
	hold.Release()

	got := e.c.ReadUntilTagged(longTag)
	if !slices.Contains(got, "* 1 EXPUNGE") {
		t.Fatalf("answer to the UID FETCH: %q, want the expunge of message 1 before its OK", got)
	}
	got = e.c.ReadUntilTagged("b")
	if len(got) != 2 || !strings.HasPrefix(got[0], "* 2 FETCH (UID 3 FLAGS (") || !strings.HasPrefix(got[1], "b OK") {
		t.Fatalf("answer to FETCH 2 after message 1's expunge: %q, want message 2 of the client's view, UID 3", got)
	}
}

// TestSeqFetchAheadShowsUIDAlike: FETCHes that name the same message and
// whose answers show the UID item differently (a FETCH by sequence
// numbers that did not ask for it has it taken out) are not in flight
// together: the upstream may send one's answers under the other's turn
// (Dovecot runs pipelined FETCHes at once), where an answer about the
// message could be either's and would lose the UID asked for, or show one
// not asked. FETCHes of different messages are: each answer is shown as
// its own command's (whoseAnswer), here the UID FETCH's, read in the other
// FETCH's turn, with its UID.
func TestSeqFetchAheadShowsUIDAlike(t *testing.T) {
	t.Run("same message", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t)
		hold := e.holdAnswer("UID FETCH 1:2 (FLAGS)")
		second := e.noteSent("UID FETCH 2 ")
		e.c.WriteBytes([]byte(longTag + " FETCH 1:2 (FLAGS)\r\nb UID FETCH 2 (FLAGS)\r\n"))
		waitFired(t, hold)
		notFired(t, second, 100*time.Millisecond, "a UID FETCH went upstream ahead of its turn behind a FETCH of its message whose answers lose the UID item")
		hold.Release()
		e.c.Expect("* 1 FETCH (FLAGS ())", "* 2 FETCH (FLAGS ())", longTag+" OK *")
		e.c.Expect("* 2 FETCH (UID 2 FLAGS ())", "b OK *")
	})
	t.Run("other messages", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t)
		hold := e.storeAnswersEarly("UID FETCH 1 (FLAGS)", "* 2 FETCH (UID 2 FLAGS ())\r\n")
		second := e.noteSent("UID FETCH 2 (FLAGS)")
		e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\nb UID FETCH 2 (FLAGS)\r\n"))
		waitFired(t, second)
		waitFired(t, hold)
		hold.Release()
		e.c.Expect("* 2 FETCH (UID 2 FLAGS ())", "* 1 FETCH (FLAGS ())", longTag+" OK *")
		e.c.Expect("* 2 FETCH (UID 2 FLAGS ())", "b OK *")
	})
}

// TestSeqFetchAheadStarAfterExists: a FETCH by sequence numbers with "*"
// in its set keeps its turn. Another session adds a message while the
// FETCH before it is on its way; the client is told "* 4 EXISTS" before
// that FETCH's OK, so by "1:*" in the next FETCH it means all four
// messages, as Dovecot takes it ("*" is the largest number in use when
// the command runs). Translated ahead of its turn, "*" was message 3 and
// the answer left message 4 out. A FETCH of message 4 itself, unknown to
// the client's view when it could go ahead, is translated in its turn
// too, after the EXISTS, and answered.
func TestSeqFetchAheadStarAfterExists(t *testing.T) {
	for _, tt := range []struct{ set, uids string }{{"1:*", "1 2 3 4"}, {"4", "4"}, {"2:3,*", "2 3 4"}} {
		t.Run(tt.set, func(t *testing.T) {
			t.Parallel()
			seqFetchAfterExists(t, tt.set, strings.Fields(tt.uids))
		})
	}
}

// seqFetchAfterExists sends "FETCH 1" and "FETCH set (UID FLAGS)" behind
// it, has another session add message 4 while the first one's answer is
// held, and checks that the second one answers the messages of uids.
func seqFetchAfterExists(t *testing.T, set string, uids []string) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 1 (UID BODY.PEEK[])")
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (UID BODY.PEEK[])\r\nb FETCH " + set + " (UID FLAGS)\r\n"))
	waitFired(t, hold)

	// other's APPEND into its selected mailbox waits for the hub's
	// watcher: the session's next delivery has the new message.
	other := imaptest.Dial(t, e.p.Addr)
	other.LoginTagged("alice", "secret")
	other.Do("s", "SELECT INBOX")
	msg := testMessage("added meanwhile", 500)
	other.WriteBytes(fmt.Appendf(nil, "x APPEND INBOX {%d}\r\n", len(msg)))
	other.Expect("+ *")
	other.WriteBytes(append(msg, "\r\n"...))
	if got := other.ReadUntilTagged("x"); !strings.HasPrefix(got[len(got)-1], "x OK") {
		t.Fatalf("APPEND: %q", got)
	}
	hold.Release()

	got := e.c.ReadUntilTagged(longTag)
	if !slices.Contains(got, "* 4 EXISTS") {
		t.Fatalf("answer to FETCH 1: %q, want the new message's EXISTS before its OK", got)
	}
	got = e.c.ReadUntilTagged("b")
	var answered []string
	for _, l := range got {
		if f := strings.Fields(l); len(f) > 4 && f[0] == "*" && f[2] == "FETCH" && f[3] == "(UID" && f[1] == f[4] {
			answered = append(answered, f[4])
		}
	}
	if !slices.Equal(answered, uids) || !strings.HasPrefix(got[len(got)-1], "b OK") {
		t.Fatalf("answer to FETCH %s after \"* 4 EXISTS\": %q, want messages %v", set, got, uids)
	}
}

// TestSeqFetchAheadReadOnly: in a mailbox selected with EXAMINE, a FETCH
// by sequence numbers of a body without .PEEK changes nothing, so it goes
// upstream ahead of its turn, in its UID form, and is answered in its
// turn. (Whether \Seen stays unset is the upstream's part: go-imap's
// memory server sets it even under EXAMINE, so it is not checked here.)
func TestSeqFetchAheadReadOnly(t *testing.T) {
	e := startAheadEnv(t)
	e.c.Do("e", "EXAMINE INBOX")
	hold := e.holdAnswer("UID FETCH 1 (UID BODY.PEEK[])")
	second := e.noteSent("UID FETCH 2 (UID BODY[])")
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (UID BODY.PEEK[])\r\nb FETCH 2 (UID BODY[])\r\n"))
	waitFired(t, hold)
	waitFired(t, second) // sent while the answer to the first is held
	hold.Release()
	e.expectBodyOf(longTag, 1)
	got := e.c.ReadUntilTagged("b")
	want := string(e.msgs[1])
	if !strings.HasPrefix(got[0], "* 2 FETCH (UID 2 BODY[] {") || !strings.Contains(got[0], want) || !strings.HasPrefix(got[len(got)-1], "b OK") {
		t.Fatalf("answer to FETCH 2 (UID BODY[]): %.200q, want message 2's body", got)
	}
}

// TestSeqFetchAheadCondstore: with CONDSTORE enabled (here by a FETCH of
// MODSEQ, RFC 7162 3.1), every FETCH response carries MODSEQ. FETCHes by
// sequence numbers of flags go ahead all the same (condstore passes them
// on as they are), and each answer comes in its turn, under its own
// number, as it does when served in its turn: UID and MODSEQ added
// before FLAGS.
func TestSeqFetchAheadCondstore(t *testing.T) {
	e := startAheadEnv(t, condstore.New())
	e.c.Do("en", "FETCH 1 (MODSEQ)")
	hold := e.holdAnswer("UID FETCH 1 (FLAGS)")
	third := e.noteSent("UID FETCH 3 (FLAGS)")
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\nb FETCH 2 (FLAGS)\r\nc FETCH 3 (FLAGS)\r\n"))
	waitFired(t, hold)
	waitFired(t, third) // sent while the answer to the first is held
	hold.Release()
	for i, tag := range []string{longTag, "b", "c"} {
		got := e.c.ReadUntilTagged(tag)
		want := fmt.Sprintf("* %d FETCH (UID %d MODSEQ (", i+1, i+1)
		if len(got) != 2 || !strings.HasPrefix(got[0], want) || !strings.HasSuffix(got[0], ") FLAGS ())") || !strings.HasPrefix(got[1], tag+" OK") {
			t.Fatalf("answer to FETCH %d (FLAGS): %q, want %q...", i+1, got, want)
		}
	}
	if n := e.p.Srv.Stats().CommandsAhead; n != 2 {
		t.Errorf("Stats().CommandsAhead = %d, want 2 (b and c)", n)
	}
}

// TestFetchAheadFlagsChangedMeanwhile: another session flags a message
// after a FETCH of its flags went upstream ahead of its turn, before the
// answer is relayed. The client is told the change ("* 3 FETCH (FLAGS
// (\Flagged))") before the previous command's OK, at that command's turn;
// the FETCH's answer, which the upstream made before the change, then
// showed no flags, the client took them for the message's, and nothing
// told it otherwise. It answers with the flags the client was told.
func TestFetchAheadFlagsChangedMeanwhile(t *testing.T) {
	for _, name := range []string{"FETCH", "UID FETCH"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := startAheadEnv(t)
			hold := e.holdAnswer("UID FETCH 1 (UID FLAGS)")
			second := e.noteSent("UID FETCH 3 (UID FLAGS)")
			e.c.WriteBytes([]byte(longTag + " FETCH 1 (UID FLAGS)\r\nb " + name + " 3 (UID FLAGS)\r\n"))
			waitFired(t, hold)
			waitFired(t, second) // ahead of its turn

			other := imaptest.Dial(t, e.p.Addr)
			other.LoginTagged("alice", "secret")
			other.Do("s", "SELECT INBOX")
			other.ExpectDo("f", `UID STORE 3 +FLAGS.SILENT (\Flagged)`, "f OK *")
			hold.Release()

			got := e.c.ReadUntilTagged(longTag)
			if !slices.Contains(got, `* 3 FETCH (FLAGS (\Flagged))`) {
				t.Fatalf("answer to FETCH 1: %q, want message 3's new flags before its OK", got)
			}
			e.c.Expect(`* 3 FETCH (UID 3 FLAGS (\Flagged))`, "b OK *")
			e.c.ExpectDo("n", "NOOP", "n OK *")
		})
	}
}
