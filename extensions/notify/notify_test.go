package notify_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	up  *memupstream.Server
	p   *imaptest.Proxy
	ext *notify.Extension
}

// newEnv starts go-imap's in-memory server (no NOTIFY, no IDLE) with alice
// and bob, and the proxy in front with fast polling.
func newEnv(t *testing.T, cfg notify.Config) *env {
	t.Helper()
	return newEnvUp(t, cfg, memupstream.Options{})
}

// newEnvUp is newEnv with the upstream started with upOpts.
func newEnvUp(t *testing.T, cfg notify.Config, upOpts memupstream.Options) *env {
	t.Helper()
	up, err := memupstream.Start(upOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser("alice", "secret")
	up.AddUser("bob", "secret")
	if cfg.Accounts.PollInterval == 0 {
		cfg.Accounts.PollInterval = time.Hour // pokes only, unless a test wants polls
	}
	ext := notify.New(cfg)
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{idle.New(), condstore.New(), ext},
		Hub:        hub.Config{PollInterval: 50 * time.Millisecond, ModSeqBase: func() uint64 { return 1 }},
	})
	return &env{up: up, p: p, ext: ext}
}

func (e *env) login(t *testing.T, user string) *imaptest.Client {
	return imaptest.Login(t, e.p.Addr, user, "secret")
}

// expect reads unsolicited responses until it has seen each wanted line, in
// order, failing on a line not wanted before the last one came.
func expect(t *testing.T, c *imaptest.Client, want ...string) {
	t.Helper()
	for _, w := range want {
		l, err := c.TryReadLine(5 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %q: %v", w, err)
		}
		if sortFlags(l) != sortFlags(w) {
			t.Fatalf("got %q, want %q", l, w)
		}
	}
}

// sortFlags sorts the flag list of a FETCH's FLAGS item: a flag change
// may reach the client relayed from a leased connection (go-imap's server
// lists flags in no fixed order) or from the hub (sorted), and flags are
// a set.
func sortFlags(l string) string {
	i := strings.Index(l, "FLAGS (")
	if i < 0 {
		return l
	}
	open := i + len("FLAGS (")
	end := strings.IndexByte(l[open:], ')')
	if end < 0 {
		return l
	}
	f := strings.Fields(l[open : open+end])
	slices.Sort(f)
	return l[:open] + strings.Join(f, " ") + l[open+end:]
}

// quiet checks that nothing arrives for a while.
func quiet(t *testing.T, c *imaptest.Client, d time.Duration) {
	t.Helper()
	if l, err := c.TryReadLine(d); err == nil {
		t.Fatalf("unexpected %q", l)
	}
}

func TestSyntax(t *testing.T) {
	e := newEnv(t, notify.Config{})
	c := imaptest.Dial(t, e.p.Addr)
	c.MustGreetOK()
	if got := imaptest.Tagged(c.Cmd("NOTIFY NONE")); !strings.HasPrefix(got, "BAD") {
		t.Errorf("before login: %q", got)
	}
	c.MustOK("LOGIN alice secret")
	if caps := c.Cmd("CAPABILITY")[0]; !strings.Contains(caps, " NOTIFY") {
		t.Errorf("capabilities %q", caps)
	}
	for cmd, want := range map[string]string{
		"NOTIFY":                                 "BAD",
		"NOTIFY FOO":                             "BAD",
		"NOTIFY NONE x":                          "BAD",
		"NOTIFY SET":                             "BAD",
		"NOTIFY SET (selected (MessageNew))":     "BAD", // without MessageExpunge
		"NOTIFY SET (selected (MessageExpunge))": "BAD",
		"NOTIFY SET (selected (FlagChange))":     "BAD",
		// Only message events apply to the selected mailbox (#16.16).
		"NOTIFY SET (selected (MailboxName))":                                               "BAD",
		"NOTIFY SET (selected-delayed (SubscriptionChange))":                                "BAD",
		"NOTIFY SET (selected (MessageNew MessageExpunge MailboxName))":                     "BAD",
		"NOTIFY SET (personal (MessageNew (FLAGS) MessageExpunge))":                         "BAD", // fetch attributes outside selected
		"NOTIFY SET (selected NONE) (selected-delayed NONE)":                                "BAD",
		"NOTIFY SET (everything (MailboxName))":                                             "BAD",
		"NOTIFY SET (subtree (MailboxName))":                                                "BAD",
		"NOTIFY SET (mailboxes () (MailboxName))":                                           "BAD",
		"NOTIFY SET (personal ())":                                                          "BAD",
		"NOTIFY SET STATUSX (personal (MailboxName))":                                       "BAD",
		"NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))":                "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]",
		"NOTIFY SET (personal (MailboxMetadataChange))":                                     "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]",
		"NOTIFY SET (personal (XUnknown))":                                                  "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]",
		"NOTIFY SET (selected (MessageNew (UID) MessageExpunge FlagChange)) (inboxes NONE)": "OK",
		"NOTIFY SET (subtree Lists (MailboxName)) (mailboxes (a b) (SubscriptionChange))":   "OK",
		"NOTIFY NONE": "OK",
	} {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, want) {
			t.Errorf("%s: %q, want %s", cmd, got, want)
		}
	}
}

// TestSelectedBetweenCommands: with NOTIFY (selected ...), changes of the
// selected mailbox arrive while the client sends nothing, new messages with
// the fetch attributes asked for, flag changes with UID (RFC 5465 5.1, 5.2).
func TestSelectedBetweenCommands(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("SELECT INBOX")
	a.MustOK("NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange))")
	b := e.login(t, "alice")
	// a, the only session with INBOX selected read-write, is the first to
	// be told of the message: it is recent there.
	b.MustOK("APPEND INBOX {7+}\r\nSubj: 1")
	expect(t, a, "* 1 EXISTS", "* 1 RECENT", `* 1 FETCH (UID 1 FLAGS (\Recent))`)
	b.MustOK("SELECT INBOX")
	b.MustOK("STORE 1 +FLAGS (\\Flagged)")
	expect(t, a, `* 1 FETCH (UID 1 FLAGS (\Flagged \Recent))`)
	b.MustOK("STORE 1 +FLAGS (\\Deleted)")
	expect(t, a, `* 1 FETCH (UID 1 FLAGS (\Deleted \Flagged \Recent))`)
	b.MustOK("EXPUNGE")
	expect(t, a, "* 1 EXPUNGE", "* 0 RECENT")
	a.MustOK("NOTIFY NONE")
	b.MustOK("APPEND INBOX {7+}\r\nSubj: 2")
	quiet(t, a, 300*time.Millisecond)
	// b, with INBOX selected, was told of the message first: not recent
	// in a, whose count stays 0 (no RECENT).
	if got := a.MustOK("NOOP"); len(got) != 2 || got[0] != "* 1 EXISTS" {
		t.Fatalf("after NOTIFY NONE the change waits for a command: %q", got)
	}
}

// TestOtherMailboxes: mailbox creation, renaming, deletion, subscription and
// new messages in mailboxes other than the selected one, announced at once
// when made through the proxy; the session that made a mailbox change is
// not told of it (RFC 5465 5.3-5.6).
func TestOtherMailboxes(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	got := a.MustOK("NOTIFY SET STATUS (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))")
	if got[0] != "* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 1 UNSEEN 0)" {
		t.Fatalf("NOTIFY SET STATUS: %q", got)
	}
	b := e.login(t, "alice")
	b.MustOK("CREATE foo")
	expect(t, a, `* LIST () "/" foo`)
	b.MustOK("APPEND foo {7+}\r\nSubj: 1")
	expect(t, a, "* STATUS foo (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	b.MustOK("RENAME foo bar")
	expect(t, a, `* LIST () "/" bar ("OLDNAME" (foo))`)
	b.MustOK("SUBSCRIBE bar")
	expect(t, a, `* LIST (\Subscribed) "/" bar`)
	b.MustOK("DELETE bar")
	expect(t, a, `* LIST (\NonExistent) "/" bar`)
	// A's own change: B hears of it, A does not.
	b.MustOK("NOTIFY SET (personal (MailboxName))")
	a.MustOK("CREATE mine")
	expect(t, b, `* LIST () "/" mine`)
	quiet(t, a, 300*time.Millisecond)
	// Bob's mailboxes are not alice's business.
	bob := e.login(t, "bob")
	bob.MustOK("CREATE bobs")
	quiet(t, a, 300*time.Millisecond)
}

// alreadyExistsUpstream starts the proxy in front of an upstream that
// creates "mine" and answers NO [ALREADYEXISTS] anyway, as Dovecot 2.3 does
// now and then when another session (the account watcher) lists the
// mailboxes at that moment (docs/conformance.md).
func alreadyExistsUpstream(t *testing.T) *env {
	return newEnvUp(t, notify.Config{}, memupstream.Options{AfterCreate: func(name string) error {
		if name != "mine" {
			return nil
		}
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	}})
}

func createAlreadyExists(t *testing.T, c *imaptest.Client) {
	t.Helper()
	if got := imaptest.Tagged(c.Cmd("CREATE mine")); !strings.HasPrefix(got, "NO [ALREADYEXISTS]") {
		t.Fatalf("CREATE mine: %q, want the upstream's NO [ALREADYEXISTS]", got)
	}
}

// TestOwnCreateAnsweredAlreadyExists forces the interleaving behind the
// once flaky conformance scenario 5465-own-mailboxname-suppressed in front
// of Dovecot: the session's CREATE made the mailbox but was answered NO
// [ALREADYEXISTS]. The session was told that the mailbox exists, and it
// exists because of its own CREATE: it must not hear of it as a creation
// (RFC 5465 5). Another session's CREATE starts a poll that sees both new
// mailboxes; only the other one is announced to the session, and a third
// session hears of both.
func TestOwnCreateAnsweredAlreadyExists(t *testing.T) {
	e := alreadyExistsUpstream(t)
	a := e.login(t, "alice")
	a.MustOK("NOTIFY SET (personal (MailboxName))")
	b := e.login(t, "alice")
	b.MustOK("NOTIFY SET (personal (MailboxName))")
	createAlreadyExists(t, a)
	e.login(t, "alice").MustOK("CREATE theirs")
	expect(t, a, `* LIST () "/" theirs`)
	quiet(t, a, 300*time.Millisecond)
	expect(t, b, `* LIST () "/" mine`, `* LIST () "/" theirs`)
}

// TestOthersHearCreateAnsweredAlreadyExists: a CREATE answered NO
// [ALREADYEXISTS] may have made the mailbox, so the account's other
// sessions hear of it at once (a poll now), not after the poll interval
// (an hour here).
func TestOthersHearCreateAnsweredAlreadyExists(t *testing.T) {
	e := alreadyExistsUpstream(t)
	a := e.login(t, "alice")
	b := e.login(t, "alice")
	b.MustOK("NOTIFY SET (personal (MailboxName))")
	createAlreadyExists(t, a)
	expect(t, b, `* LIST () "/" mine`)
}

// TestOverflow: a session that falls too far behind is told
// NOTIFICATIONOVERFLOW and its NOTIFY is off (RFC 5465 5.8).
// overflow makes a's NOTIFY (MaxQueued 2, MailboxName) overflow: three
// mailboxes made directly on the upstream, then one through the proxy by
// another session of alice's, which it returns; its poll finds four new
// mailboxes at once.
func overflow(t *testing.T, e *env, a *imaptest.Client) *imaptest.Client {
	t.Helper()
	direct, err := imapclient.DialInsecure(e.up.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := direct.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"d1", "d2", "d3"} {
		if err := direct.Create(n, nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	b := e.login(t, "alice")
	b.MustOK("CREATE p1")
	expect(t, a, "* OK [NOTIFICATIONOVERFLOW] Too many events; NOTIFY is now off.")
	return b
}

func TestOverflow(t *testing.T) {
	e := newEnv(t, notify.Config{MaxQueued: 2})
	a := e.login(t, "alice")
	a.MustOK("NOTIFY SET (personal (MailboxName))")
	b := overflow(t, e, a)
	b.MustOK("CREATE p2")
	quiet(t, a, 300*time.Millisecond)
	a.MustOK("NOOP")
}

// TestOverflowDuringIdle: a NOTIFY ended by NOTIFICATIONOVERFLOW while
// its client idles leaves the IDLE pushing the selected mailbox's changes,
// and after DONE the session is as after NOTIFY NONE: no EXPUNGE while no
// command is in progress (RFC 3501 7.4.1, RFC 5465 5.8). The overflow set
// "with commands only" under the IDLE, which went silent, and the DONE
// put back NOTIFY's old setting, which pushed EXPUNGEs between commands
// with NOTIFY off (a second reviewer's finding).
func TestOverflowDuringIdle(t *testing.T) {
	e := newEnv(t, notify.Config{MaxQueued: 2})
	a := e.login(t, "alice")
	a.MustOK("APPEND INBOX {7+}\r\nSubj: 1")
	a.MustOK("APPEND INBOX {7+}\r\nSubj: 2")
	a.MustOK("SELECT INBOX")
	a.MustOK("NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MailboxName))")
	a.Send("i IDLE")
	a.Expect("+ idling")
	b := overflow(t, e, a)

	b.MustOK("APPEND INBOX {7+}\r\nSubj: 3")
	expect(t, a, "* 3 EXISTS")
	a.Send("DONE")
	a.ReadUntilTagged("i")

	b.MustOK("SELECT INBOX")
	b.MustOK(`STORE 1 +FLAGS (\Deleted)`)
	b.MustOK("EXPUNGE")
	quiet(t, a, time.Second)
	if lines := a.MustOK("NOOP"); !slices.Contains(lines, "* 1 EXPUNGE") {
		t.Errorf("NOOP after the expunge: %q", lines)
	}
}

// TestPolling: a change made directly on the upstream, which the proxy
// cannot see coming, is found by the account watcher's next poll.
func TestPolling(t *testing.T) {
	e := newEnv(t, notify.Config{Accounts: accountwatch.Config{PollInterval: 100 * time.Millisecond}})
	a := e.login(t, "alice")
	a.MustOK("NOTIFY SET (subtree Work (MessageNew MessageExpunge MailboxName))")
	direct, err := imapclient.DialInsecure(e.up.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := direct.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := direct.Create("Other", nil).Wait(); err != nil { // outside the subtree
		t.Fatal(err)
	}
	if err := direct.Create("Work/Reports", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	expect(t, a, `* LIST () "/" Work/Reports`)
	quiet(t, a, 300*time.Millisecond)
	if n := e.ext.Accounts().Watchers(); n != 1 {
		t.Fatalf("%d account watchers for one account", n)
	}
}

// TestFlagChangeStatus: for FlagChange in other mailboxes the STATUS carries
// UIDVALIDITY and HIGHESTMODSEQ, whether or not the client enabled
// CONDSTORE: the proxy always supports it (RFC 5465 5.2; imaptest's notify
// test and Dovecot expect it; #16.16). Without FlagChange, no
// HIGHESTMODSEQ unless CONDSTORE is enabled.
func TestFlagChangeStatus(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("CREATE foo")
	a.MustOK("APPEND foo {7+}\r\nSubj: 1")
	got := a.MustOK("NOTIFY SET STATUS (mailboxes foo (MessageNew MessageExpunge FlagChange))")
	if want := "* STATUS foo (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 2 UNSEEN 1 HIGHESTMODSEQ 2)"; got[0] != want {
		t.Fatalf("NOTIFY SET STATUS with FlagChange: %q, want %q first", got, want)
	}
	b := e.login(t, "alice")
	b.MustOK("SELECT foo")
	b.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	expect(t, a, "* STATUS foo (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 2 UNSEEN 1 HIGHESTMODSEQ 3)")
	got = a.MustOK("NOTIFY SET STATUS (mailboxes foo (MessageNew MessageExpunge))")
	if want := "* STATUS foo (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 2 UNSEEN 1)"; got[0] != want {
		t.Fatalf("NOTIFY SET STATUS without FlagChange: %q, want %q first", got, want)
	}
}

// expectAll reads unsolicited responses until it has seen every wanted
// line, in any order, ignoring others; it fails after 5 s.
func expectAll(t *testing.T, c *imaptest.Client, want ...string) {
	t.Helper()
	left := slices.Clone(want)
	var got []string
	for len(left) > 0 {
		l, err := c.TryReadLine(5 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %q: %v (got %q)", left, err, got)
		}
		got = append(got, l)
		if i := slices.Index(left, sortFlags(l)); i >= 0 {
			left = slices.Delete(left, i, i+1)
		}
	}
}

// TestSetAgainKeepsChanges: new mail in another mailbox arrives (outside
// the proxy) while NOTIFY (personal ...) is in force, and before the
// account watcher's next poll the client sets NOTIFY again, still asking
// for that mailbox's new mail: it must hear of it. The new subscription
// took the account as that poll found it for a baseline, and the change
// was never told (a reviewer's finding); the subscription is now kept.
func TestSetAgainKeepsChanges(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("CREATE other")
	a.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	if err := e.up.Append("alice", "other", nil, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	got := a.MustOK("NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MessageNew MessageExpunge MailboxName))")
	if slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "* STATUS other") }) {
		return
	}
	e.login(t, "alice").MustOK("CREATE fourth") // the watcher polls everything now
	expectAll(t, a, "* STATUS other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", `* LIST () "/" fourth`)
}

// TestSetAgainKeepsQueued: an event queued for the session while it ran a
// command (an APPEND waiting for its literal), not told yet because the
// client's next command, NOTIFY SET with the same filter, came right
// behind the literal: the NOTIFY SET dropped it (a reviewer's finding).
func TestSetAgainKeepsQueued(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	probe := e.login(t, "alice")
	const set = "NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))"
	a.MustOK(set)
	probe.MustOK(set)
	a.Send("t1 APPEND INBOX {7}")
	a.Expect("+*")
	e.login(t, "alice").MustOK("CREATE made")
	expect(t, probe, `* LIST () "/" made`)
	a.Write("Subj: 1\r\nt2 " + set + "\r\n")
	got := append(a.ReadUntilTagged("t1"), a.ReadUntilTagged("t2")...)
	if slices.Contains(got, `* LIST () "/" made`) {
		return
	}
	e.login(t, "alice").MustOK("CREATE later")
	expectAll(t, a, `* LIST () "/" made`, `* LIST () "/" later`)
}

// TestNewMailboxWithMail: a mailbox made with a message in it between two
// polls (Sieve's fileinto :create, another client's CREATE and APPEND): a
// client that asked for new messages in personal mailboxes must hear of
// the message, not only of the creation (a reviewer's finding).
func TestNewMailboxWithMail(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	b := e.login(t, "alice")
	b.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge))")
	// Made directly on the upstream: the proxy learns of it at its next poll.
	c := imaptest.Login(t, e.up.Addr, "alice", "secret")
	c.MustOK("CREATE filed")
	c.MustOK("APPEND filed {7+}\r\nSubj: 1")
	e.login(t, "alice").MustOK("CREATE poke") // the watcher polls everything now
	expect(t, a, `* LIST () "/" filed`, "* STATUS filed (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	expect(t, b, "* STATUS filed (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
}

// TestOverflowBeforeSetAgain: the session's queue overflowed while it
// ran a command, and its next command is a NOTIFY SET asking for the same
// events: the events are gone, so the client must hear
// NOTIFICATIONOVERFLOW (RFC 5465 5.8), or the events themselves (a
// reviewer's finding: the SET dropped both).
func TestOverflowBeforeSetAgain(t *testing.T) {
	e := newEnv(t, notify.Config{MaxQueued: 2})
	a := e.login(t, "alice")
	probe := e.login(t, "alice")
	const set = "NOTIFY SET (personal (MailboxName))"
	a.MustOK(set)
	probe.MustOK(set)
	a.Send("t1 APPEND INBOX {7}")
	a.Expect("+*")
	direct := imaptest.Login(t, e.up.Addr, "alice", "secret")
	for _, n := range []string{"d1", "d2", "d3"} {
		direct.MustOK("CREATE " + n)
	}
	e.login(t, "alice").MustOK("CREATE p1")
	expect(t, probe, "* OK [NOTIFICATIONOVERFLOW] Too many events; NOTIFY is now off.") // the poll is done
	a.Write("Subj: 1\r\nt2 " + set + "\r\n")
	got := append(a.ReadUntilTagged("t1"), a.ReadUntilTagged("t2")...)
	if slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, "NOTIFICATIONOVERFLOW") }) {
		return
	}
	e.login(t, "alice").MustOK("CREATE later")
	var rest []string
	for {
		l, err := a.TryReadLine(time.Second)
		if err != nil {
			break
		}
		rest = append(rest, l)
	}
	all := append(got, rest...)
	if !slices.Contains(all, `* LIST () "/" d1`) && !slices.ContainsFunc(all, func(l string) bool { return strings.Contains(l, "NOTIFICATIONOVERFLOW") }) {
		t.Fatalf("four mailbox events lost with no NOTIFICATIONOVERFLOW; the session heard only %q", all)
	}
}

// TestRenamedWithNewMail: a mailbox renamed and given a message between
// two polls (outside the proxy): the client asked for new messages and must
// hear of the message, not only of the rename (a reviewer's finding).
func TestRenamedWithNewMail(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("CREATE foo")
	a.MustOK("APPEND foo {7+}\r\nSubj: 1")
	a.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	c := imaptest.Login(t, e.up.Addr, "alice", "secret")
	c.MustOK("RENAME foo bar")
	c.MustOK("APPEND bar {7+}\r\nSubj: 2")
	e.login(t, "alice").MustOK("CREATE poke")
	expectAll(t, a, `* LIST () "/" bar ("OLDNAME" (foo))`, `* LIST () "/" poke`, "* STATUS bar (MESSAGES 2 UIDNEXT 3 UNSEEN 2)")
}

// TestFetchAttsLiteralRefused: MessageNew's fetch attributes go upstream in
// the proxy's own UID FETCH, written on one line: a literal among them was
// written as a synchronising literal nobody waited for, and its data ran
// upstream as a command (a reviewer's finding). NOTIFY SET refuses it.
func TestFetchAttsLiteralRefused(t *testing.T) {
	e := newEnv(t, notify.Config{})
	a := e.login(t, "alice")
	a.MustOK("SELECT INBOX")
	data := "x1 CREATE Smuggled"
	a.Write(fmt.Sprintf("n1 NOTIFY SET (selected (MessageNew (UID X {%d+}\r\n%s) MessageExpunge))\r\n", len(data), data))
	a.Expect("n1 BAD Error in NOTIFY: MessageNew fetch attributes cannot hold a literal.")
}
