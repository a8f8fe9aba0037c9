package integration

// NOTIFY (RFC 5465) end to end: the proxy in front of a real Dovecot that
// does not advertise NOTIFY (Legacy: the account watcher polls) and one that
// does (Full: the account watcher waits in the upstream's IDLE with the
// upstream's NOTIFY set, as a trigger only). What the client sees is always
// the proxy's own, so every line is checked exactly, and the same scenarios
// are run against Dovecot's own NOTIFY (TestNotifyDovecotReference) to show
// where the two differ and which follows the RFC.
//
// Changes are made directly on Dovecot ("outside" the proxy, which learns of
// them only through its watchers) unless a scenario says otherwise. Each
// scenario has an account of its own, so the scenarios of a profile run at
// the same time against one Dovecot (ntConcurrently). Where a scenario
// checks that something does NOT arrive, a probe session (one whose filter
// covers the change) waits for the event first: once the probe heard of
// the poll that found the change, every session of the account was given
// it at the same moment, so a short silence then means the session
// filtered it out, not that the poll had not run yet.
//
// Some scenarios were written for bugs these tests found (fixed in
// 7866bd4; each one's comment says what it was): ConnectionsCondstore,
// FlagChangeOther, OverflowScope, OutsideRename and OutsideDelete.

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

const (
	// ntPoll is the account watchers' poll interval in most scenarios.
	ntPoll = 300 * time.Millisecond
	// ntWait bounds how long an expected event may take. Dovecot itself
	// takes 0.5 s to 1.5 s to tell an IDLE or NOTIFY connection of a
	// change; the rest is slack for -race on a small machine.
	ntWait = 6 * time.Second
	// ntSilence is how long a session must stay silent after a probe
	// session of the same account heard of the same change.
	ntSilence = 400 * time.Millisecond
	// ntAll is every event the proxy supports.
	ntAll = "(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"
	// ntMsgs asks for new and expunged messages.
	ntMsgs = "(MessageNew MessageExpunge)"
)

var ntProfiles = []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full}

// ntEnv is one Dovecot with a supply of fresh accounts.
type ntEnv struct {
	profile dovecottest.Profile
	dc      *dovecottest.Server
	mu      sync.Mutex
	next    int
	users   int
}

// ntStartDovecot starts Dovecot with n accounts n001, n002, ... (password
// "pw" + name) for the scenarios to take one each.
func ntStartDovecot(t testing.TB, p dovecottest.Profile, n int) *ntEnv {
	t.Helper()
	dc := dovecottest.Start(t, p)
	users := make(map[string]string, n)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%03d", i)
		users[name] = "pw" + name
	}
	dc.AddUsers(t, users)
	return &ntEnv{profile: p, dc: dc, users: n}
}

// user hands out an account no other scenario uses.
func (e *ntEnv) user(t testing.TB) string {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.next == e.users {
		t.Fatalf("all %d accounts taken; raise the count given to ntStartDovecot", e.users)
	}
	e.next++
	return fmt.Sprintf("n%03d", e.next)
}

// leaf is the attribute list Dovecot gives a mailbox without children in
// the proxy's LIST: the account watcher asks LIST-STATUS where offered
// (Full), which returns no child information, and plain LIST otherwise.
func (e *ntEnv) leaf(extra ...string) string {
	attrs := extra
	if e.profile != dovecottest.Full {
		attrs = append([]string{`\HasNoChildren`}, extra...)
	}
	return "(" + strings.Join(attrs, " ") + ")"
}

// parent is leaf's counterpart for a mailbox with children.
func (e *ntEnv) parent(extra ...string) string {
	attrs := extra
	if e.profile != dovecottest.Full {
		attrs = append([]string{`\HasChildren`}, extra...)
	}
	return "(" + strings.Join(attrs, " ") + ")"
}

// ntProxy is a proxy with IDLE, CONDSTORE/QRESYNC and NOTIFY.
type ntProxy struct {
	addr string
	srv  *proxy.Server
	ext  *notify.Extension
}

func (e *ntEnv) proxy(t testing.TB, cfg notify.Config) *ntProxy {
	t.Helper()
	if cfg.Accounts.PollInterval == 0 {
		cfg.Accounts.PollInterval = ntPoll
	}
	ext := notify.New(cfg)
	addr, srv := startProxy(t, e.dc.Addr, func(c *proxy.Config) {
		c.Extensions = []proxy.Extension{idle.New(), condstore.New(), ext}
	})
	return &ntProxy{addr: addr, srv: srv, ext: ext}
}

// ntClient is a scripted client with exact expectations on what arrives
// while it sends nothing.
type ntClient struct {
	*imaptest.Client
	t    testing.TB
	name string
}

func (p *ntProxy) login(t testing.TB, user string) *ntClient {
	t.Helper()
	return &ntClient{imaptest.Login(t, p.addr, user, "pw"+user), t, "proxy:" + user}
}

// direct logs in to Dovecot itself: its changes are made "outside" the
// proxy.
func (e *ntEnv) direct(t testing.TB, user string) *ntClient {
	t.Helper()
	return &ntClient{imaptest.Login(t, e.dc.Addr, user, "pw"+user), t, "dovecot:" + user}
}

var ntRecentRE = regexp.MustCompile(` ?\\Recent\b ?`)

// ntNorm takes \Recent out of FETCH responses' flag lists: it is a flag of
// one upstream session (RFC 3501 2.3.2), so whether the FETCH of a new
// message shows it depends on which pooled connection saw the message
// first.
func ntNorm(line string) string {
	if !strings.Contains(line, " FETCH (") {
		return line
	}
	return ntRecentRE.ReplaceAllStringFunc(line, func(m string) string {
		if strings.HasPrefix(m, " ") && strings.HasSuffix(m, " ") {
			return " "
		}
		return ""
	})
}

// nextLine reads the next line that is not a RECENT response: which
// session a message is recent in depends on which was told of it first,
// here and on Dovecot alike (#17; TestRecent tests it), and ntNorm takes
// \Recent out of FETCH responses for the same reason.
func (c *ntClient) nextLine(d time.Duration) (string, error) {
	for {
		l, err := c.TryReadLine(d)
		if err != nil || !ntRefRecentRE.MatchString(l) {
			return l, err
		}
	}
}

// expect reads what arrives, with no command running, and fails unless it
// is exactly want, in order. It returns when the last line arrived.
func (c *ntClient) expect(want ...string) time.Time {
	c.t.Helper()
	var at time.Time
	for i, w := range want {
		l, err := c.nextLine(ntWait)
		if err != nil {
			c.t.Fatalf("%s: waiting for %q (line %d of %q): %v", c.name, w, i+1, want, err)
		}
		at = time.Now()
		if got := ntNorm(l); got != w {
			c.t.Fatalf("%s: got %q, want %q", c.name, got, w)
		}
	}
	return at
}

// expectRE reads one line and fails unless it matches re; it returns the
// submatches.
func (c *ntClient) expectRE(re *regexp.Regexp) []string {
	c.t.Helper()
	l, err := c.nextLine(ntWait)
	if err != nil {
		c.t.Fatalf("%s: waiting for a line matching %s: %v", c.name, re, err)
	}
	m := re.FindStringSubmatch(ntNorm(l))
	if m == nil {
		c.t.Fatalf("%s: got %q, want a line matching %s", c.name, l, re)
	}
	return m
}

// expectAfter reads lines until want, failing on any line before it that
// allow does not match.
func (c *ntClient) expectAfter(allow *regexp.Regexp, want string) {
	c.t.Helper()
	for {
		l, err := c.nextLine(ntWait)
		if err != nil {
			c.t.Fatalf("%s: waiting for %q: %v", c.name, want, err)
		}
		l = ntNorm(l)
		if l == want {
			return
		}
		if !allow.MatchString(l) {
			c.t.Fatalf("%s: got %q, want %q", c.name, l, want)
		}
	}
}

// expectDeleted expects the LIST (\NonExistent) of a deleted mailbox.
// Dovecot expunges a mailbox's messages before it removes the mailbox, and
// a watcher may see the mailbox in between: a STATUS with MESSAGES 0 may
// come first (the messages did go), but not one with UIDNEXT 0, which no
// mailbox has (RFC 3501 2.3.1.1).
func (c *ntClient) expectDeleted(name string) time.Time {
	c.t.Helper()
	emptied := regexp.MustCompile(`^\* STATUS ` + regexp.QuoteMeta(name) + ` \(MESSAGES 0 UIDNEXT [1-9]\d* UNSEEN 0( HIGHESTMODSEQ \d+)?\)$`)
	c.expectAfter(emptied, `* LIST (\NonExistent) "." `+name)
	return time.Now()
}

// silent fails if anything arrives within d.
func (c *ntClient) silent(d time.Duration) {
	c.t.Helper()
	if l, err := c.nextLine(d); err == nil {
		c.t.Fatalf("%s: unexpected %q", c.name, l)
	}
}

// create runs CREATE and reports whether it was answered OK, tolerating
// NO [ALREADYEXISTS] for a mailbox that did not exist: Dovecot 2.3 answers
// that now and then, having created the mailbox, when another session of
// the account lists at the same moment, as the account watcher does
// (docs/conformance.md, "Not scenarios, but seen").
func (c *ntClient) create(name string) bool {
	c.t.Helper()
	got := c.Cmd("CREATE " + name)
	switch tagged := imaptest.Tagged(got); {
	case strings.HasPrefix(tagged, "OK"):
		return true
	case strings.HasPrefix(tagged, "NO [ALREADYEXISTS]"):
		c.t.Logf("%s: CREATE %s: %q (Dovecot's CREATE race)", c.name, name, tagged)
		return false
	default:
		c.t.Fatalf("%s: CREATE %s: %q", c.name, name, got)
		return false
	}
}

// ntAppend is an APPEND command (LITERAL+) of a small message.
func ntAppend(mailbox, subject string) string {
	msg := "From: someone@example.org\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
	return fmt.Sprintf("APPEND %s {%d+}\r\n%s", mailbox, len(msg), msg)
}

var ntUIDValidityRE = regexp.MustCompile(`UIDVALIDITY (\d+)`)

// uidValidity asks Dovecot for a mailbox's UIDVALIDITY.
func (c *ntClient) uidValidity(mailbox string) string {
	c.t.Helper()
	for _, l := range c.MustOK("STATUS " + mailbox + " (UIDVALIDITY)") {
		if m := ntUIDValidityRE.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	c.t.Fatalf("no UIDVALIDITY for %s", mailbox)
	return ""
}

// TestNotify runs the scenarios through the proxy in front of both
// profiles.
func TestNotify(t *testing.T) {
	for _, p := range ntProfiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			e := ntStartDovecot(t, p, 46)
			px := e.proxy(t, notify.Config{})
			// Counting upstream connections needs the Dovecot to
			// itself, and timing is best measured on a quiet one:
			// first, before the concurrent scenarios.
			t.Run("Connections", func(t *testing.T) { ntConnections(t, e, "") })
			t.Run("ConnectionsCondstore", func(t *testing.T) { ntConnections(t, e, "ENABLE CONDSTORE") })
			t.Run("OutsideLatency", func(t *testing.T) { ntOutsideLatency(t, e, px) })
			var runs []ntRun
			for _, sc := range ntScenarios {
				runs = append(runs, ntRun{sc.name, func(t testing.TB) { sc.run(t, e, px) }})
			}
			ntConcurrently(t, runs)
		})
	}
}

var ntScenarios = []struct {
	name string
	run  func(t testing.TB, e *ntEnv, px *ntProxy)
}{
	{"Selected", ntSelected},
	{"SelectedDelayed", ntSelectedDelayed},
	{"Inboxes", ntInboxes},
	{"Personal", ntPersonal},
	{"Subscribed", ntSubscribed},
	{"Subtree", ntSubtree},
	{"Mailboxes", ntMailboxes},
	{"InboxChildSpelling", ntInboxChildSpelling},
	{"OwnRenameChildren", ntOwnRenameChildren},
	{"Idle", ntIdle},
	{"None", ntNone},
	{"Replace", ntReplace},
	{"Status", ntStatus},
	{"StatusCondstore", ntStatusCondstore},
	{"Vanished", ntVanished},
	{"Overflow", ntOverflow},
	{"Isolation", ntIsolation},
	{"OwnChanges", ntOwnChanges},
	{"OutsideRename", ntOutsideRename},
	{"OutsideDelete", ntOutsideDelete},
	{"FlagChangeOther", ntFlagChangeOther},
	{"OverflowScope", ntOverflowScope},
	{"FetchAttsLiteral", ntFetchAttsLiteral},
	{"OthersRenameBelow", ntOthersRenameBelow},
	{"OwnCreateTrailingDelim", ntOwnCreateTrailingDelim},
}

// ntSelected: (selected ...) reports new messages with the FETCH asked for,
// flag changes with the UID (RFC 5465 5.1), and expunges, between commands,
// whether the change came from outside or through another session.
func ntSelected(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("SELECT INBOX")
	if got := c.MustOK("NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange))"); len(got) != 1 {
		t.Fatalf("NOTIFY SET on an unchanged mailbox: %q", got)
	}
	d := e.direct(t, u)
	d.MustOK("SELECT INBOX")
	d.MustOK(ntAppend("INBOX", "one"))
	c.expect("* 1 EXISTS", "* 1 FETCH (UID 1 FLAGS ())")
	d.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	c.expect(`* 1 FETCH (UID 1 FLAGS (\Flagged))`)
	d.MustOK(`STORE 1 +FLAGS (\Deleted)`)
	c.expect(`* 1 FETCH (UID 1 FLAGS (\Deleted \Flagged))`)
	d.MustOK("EXPUNGE")
	c.expect("* 1 EXPUNGE")
	// Through the proxy: another session of the account.
	b := px.login(t, u)
	b.MustOK(ntAppend("INBOX", "two"))
	c.expect("* 1 EXISTS", "* 1 FETCH (UID 2 FLAGS ())")
	b.MustOK("SELECT INBOX")
	b.MustOK(`STORE 1 +FLAGS (\Seen)`)
	c.expect(`* 1 FETCH (UID 2 FLAGS (\Seen))`)
	// The state stays consistent: what the client was told is what is.
	if got := c.MustOK("UID FETCH 1:* (FLAGS)"); ntNorm(got[0]) != `* 1 FETCH (UID 2 FLAGS (\Seen))` && ntNorm(got[0]) != `* 1 FETCH (FLAGS (\Seen) UID 2)` {
		t.Fatalf("after the pushes: %q", got)
	}
}

// ntSelectedDelayed: selected-delayed pushes new messages and flag changes
// between commands but holds expunges back until a command that allows
// them (RFC 5465 6.2).
func ntSelectedDelayed(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected-delayed (MessageNew MessageExpunge FlagChange))")
	probe := px.login(t, u)
	probe.MustOK("SELECT INBOX")
	probe.MustOK("NOTIFY SET (selected (MessageNew MessageExpunge))")
	d := e.direct(t, u)
	d.MustOK("SELECT INBOX")
	d.MustOK(ntAppend("INBOX", "one"))
	c.expect("* 1 EXISTS")
	probe.expect("* 1 EXISTS")
	d.MustOK(`STORE 1 +FLAGS (\Seen \Deleted)`)
	c.expect(`* 1 FETCH (UID 1 FLAGS (\Deleted \Seen))`)
	d.MustOK("EXPUNGE")
	probe.expectAfter(regexp.MustCompile(`^\* 1 FETCH \(FLAGS \(\\Deleted \\Seen\)\)$`), "* 1 EXPUNGE")
	c.silent(ntSilence)
	got := slices.DeleteFunc(c.MustOK("NOOP"), ntRefRecentRE.MatchString) // see nextLine
	if len(got) != 2 || got[0] != "* 1 EXPUNGE" {
		t.Fatalf("NOOP after the held-back expunge: %q", got)
	}
}

// ntInboxes: (inboxes ...) covers INBOX, which the account watcher learns of
// through the hub's IDLE on INBOX, and, as personal, every other mailbox.
func ntInboxes(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Other")
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (inboxes " + ntMsgs + ")")
	d.MustOK(ntAppend("INBOX", "one"))
	c.expect("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.MustOK("SELECT INBOX")
	d.MustOK(`STORE 1 +FLAGS (\Deleted)`)
	d.MustOK("EXPUNGE")
	c.expect("* STATUS INBOX (MESSAGES 0 UIDNEXT 2 UNSEEN 0)")
	// RFC 5465 6.3: a server that cannot tell which mailboxes an MDA
	// delivers to MUST treat inboxes as personal. The proxy cannot see
	// the upstream's delivery rules, so Other is covered too.
	d.MustOK(ntAppend("Other", "other"))
	c.expect("* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
}

// ntPersonal: every event for mailboxes other than the selected one
// (RFC 5465 5.1 to 5.5).
func ntPersonal(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (personal " + ntAll + ")")
	d := e.direct(t, u)
	d.create("Work")
	c.expect(`* LIST ` + e.leaf() + ` "." Work`)
	d.MustOK(ntAppend("Work", "one"))
	c.expect("* STATUS Work (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.MustOK("SELECT Work")
	d.MustOK(`STORE 1 +FLAGS (\Seen)`)
	// A flag change elsewhere is told with UIDVALIDITY and HIGHESTMODSEQ
	// (RFC 5465 5.2; the proxy always supports CONDSTORE).
	c.expectRE(regexp.MustCompile(`^\* STATUS Work \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 0 HIGHESTMODSEQ \d+\)$`))
	d.MustOK("SUBSCRIBE Work")
	c.expect(`* LIST ` + e.leaf(`\Subscribed`) + ` "." Work`)
	d.MustOK("UNSUBSCRIBE Work")
	c.expect(`* LIST ` + e.leaf() + ` "." Work`)
	d.MustOK(`STORE 1 +FLAGS (\Deleted)`)
	d.MustOK("CLOSE")
	c.expect("* STATUS Work (MESSAGES 0 UIDNEXT 2 UNSEEN 0)")
	d.MustOK("RENAME Work Play")
	c.expect(`* LIST ` + e.leaf() + ` "." Play ("OLDNAME" (Work))`)
	d.MustOK("DELETE Play")
	c.expectDeleted("Play")
	c.silent(ntSilence)
}

// ntSubscribed: (subscribed ...) follows the subscription list as it
// changes (RFC 5465 6.4: "the server MUST reevaluate the list").
func ntSubscribed(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Sub")
	d.create("Always")
	d.MustOK("SUBSCRIBE Always")
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (subscribed (MessageNew MessageExpunge SubscriptionChange))")
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
	d.MustOK(ntAppend("Sub", "not yet"))
	probe.expect("* STATUS Sub (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.silent(ntSilence)
	d.MustOK(ntAppend("Always", "always"))
	c.expect("* STATUS Always (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.MustOK("SUBSCRIBE Sub")
	c.expect(`* LIST ` + e.leaf(`\Subscribed`) + ` "." Sub`)
	d.MustOK(ntAppend("Sub", "now"))
	c.expect("* STATUS Sub (MESSAGES 2 UIDNEXT 3 UNSEEN 2)")
	d.MustOK("UNSUBSCRIBE Sub")
	c.expect(`* LIST ` + e.leaf() + ` "." Sub`)
	probe.expect("* STATUS Always (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", "* STATUS Sub (MESSAGES 2 UIDNEXT 3 UNSEEN 2)")
	d.MustOK(ntAppend("Sub", "no more"))
	probe.expect("* STATUS Sub (MESSAGES 3 UIDNEXT 4 UNSEEN 3)")
	c.silent(ntSilence)
}

// ntSubtree: (subtree X ...) covers X and the mailboxes below it, not a
// sibling whose name merely starts with X (RFC 5465 6.5).
func ntSubtree(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Lists")
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (subtree Lists (MessageNew MessageExpunge MailboxName))")
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	d.create("Listserv")
	probe.expect(`* LIST ` + e.leaf() + ` "." Listserv`)
	c.silent(ntSilence)
	d.create("Lists.go")
	c.expect(`* LIST ` + e.leaf() + ` "." Lists.go`)
	probe.expect(`* LIST ` + e.leaf() + ` "." Lists.go`)
	d.MustOK(ntAppend("Listserv", "outside"))
	probe.expect("* STATUS Listserv (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.silent(ntSilence)
	d.MustOK(ntAppend("Lists.go", "inside"))
	c.expect("* STATUS Lists.go (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.MustOK(ntAppend("Lists", "the root itself"))
	c.expect("* STATUS Lists (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.silent(ntSilence)
}

// TestNotifySubtreeDelimiter: (subtree X ...) goes down the hierarchy by
// the upstream's delimiter as LIST gives it, "/" on this Dovecot, where
// Lists.go is a sibling of Lists. (It was covered: "/" and "." were both
// taken for delimiters, whatever the upstream's.)
func TestNotifySubtreeDelimiter(t *testing.T) {
	e := ntStartSlash(t, dovecottest.Legacy, 1)
	px := e.proxy(t, notify.Config{})
	u := e.user(t)
	d := e.direct(t, u)
	for _, m := range []string{"Lists", "Lists/go", "Lists.go"} {
		d.create(m)
	}
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (subtree Lists " + ntMsgs + ")")
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
	d.MustOK(ntAppend("Lists.go", "a sibling"))
	probe.expect("* STATUS Lists.go (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.silent(ntSilence)
	d.MustOK(ntAppend("Lists/go", "a child"))
	c.expect("* STATUS Lists/go (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	probe.expect("* STATUS Lists/go (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
}

// ntMailboxes: (mailboxes ...) covers exactly the mailboxes named (RFC 5465
// 6.6).
func ntMailboxes(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	for _, m := range []string{"A", "B", "C"} {
		d.create(m)
	}
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (mailboxes (A B) (MessageNew MessageExpunge MailboxName))")
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	d.MustOK(ntAppend("C", "not named"))
	probe.expect("* STATUS C (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.silent(ntSilence)
	d.MustOK(ntAppend("A", "named"))
	c.expect("* STATUS A (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.MustOK(ntAppend("B", "named too"))
	c.expect("* STATUS B (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d.create("E")
	probe.expect("* STATUS A (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", "* STATUS B (MESSAGES 1 UIDNEXT 2 UNSEEN 1)",
		`* LIST `+e.leaf()+` "." E`)
	c.silent(ntSilence)
	d.MustOK("DELETE B")
	c.expectDeleted("B")
	c.silent(ntSilence)
}

// ntInboxChildSpelling: a filter that names a child of INBOX with INBOX
// in another case (inbox.Lists) names the mailbox Dovecot has, INBOX.Lists,
// whose events it then hears of. (It heard nothing: the names were
// compared as spelt.)
func ntInboxChildSpelling(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("INBOX.Lists")
	named := px.login(t, u)
	named.MustOK("NOTIFY SET (mailboxes inbox.Lists (MessageNew MessageExpunge))")
	sub := px.login(t, u)
	sub.MustOK("NOTIFY SET (subtree inbox.Lists (MessageNew MessageExpunge))")
	d.MustOK(ntAppend("INBOX.Lists", "one"))
	named.expect("* STATUS INBOX.Lists (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	sub.expect("* STATUS INBOX.Lists (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
}

// ntOwnRenameChildren: a session's own RENAME of a mailbox with a child,
// which Dovecot renames with it: another session hears of both renames,
// the one that renamed of neither (RFC 5465 5). It heard of the child's
// (a reviewer's finding).
func ntOwnRenameChildren(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	a, b := px.login(t, u), px.login(t, u)
	a.MustOK("CREATE Par")
	a.MustOK("CREATE Par.Kid")
	for _, c := range []*ntClient{a, b} {
		c.MustOK("NOTIFY SET (personal (MailboxName))")
	}
	a.MustOK("RENAME Par Top")
	b.expect(`* LIST `+e.parent()+` "." Top ("OLDNAME" (Par))`, `* LIST `+e.leaf()+` "." Top.Kid ("OLDNAME" (Par.Kid))`)
	a.silent(ntSilence)
}

// ntOthersRenameBelow: after a session's own RENAME of a mailbox with a
// child, another client's rename of a mailbox created under the old name
// later is not the session's own, and it hears of it. (The session's
// RENAME covered every rename from below the old name to below the new one
// for two poll intervals and a minute.)
func ntOthersRenameBelow(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	a, probe := px.login(t, u), px.login(t, u)
	a.MustOK("CREATE Par")
	a.MustOK("CREATE Par.Kid")
	for _, c := range []*ntClient{a, probe} {
		c.MustOK("NOTIFY SET (personal (MailboxName))")
	}
	a.MustOK("RENAME Par Top")
	probe.expect(`* LIST `+e.parent()+` "." Top ("OLDNAME" (Par))`, `* LIST `+e.leaf()+` "." Top.Kid ("OLDNAME" (Par.Kid))`)
	d := e.direct(t, u)
	d.create("Par.Other")
	// Dovecot lists the parent Par that Par.Other needs, which does not
	// exist, and drops it again when Par.Other goes.
	parent := regexp.MustCompile(`^\* LIST \([^)]*\) "\." Par$`)
	for _, c := range []*ntClient{probe, a} {
		c.expectAfter(parent, `* LIST `+e.leaf()+` "." Par.Other`)
	}
	d.MustOK("RENAME Par.Other Top.Other")
	for _, c := range []*ntClient{probe, a} {
		c.expectAfter(parent, `* LIST `+e.leaf()+` "." Top.Other ("OLDNAME" (Par.Other))`)
	}
}

// ntOwnCreateTrailingDelim: CREATE of a name that ends with the hierarchy
// delimiter (RFC 3501 6.3.3: the client means to make names below it)
// makes the mailbox without it; the session that made it is not told (RFC
// 5465 5), another one is. (It was told: its own creation was noted under
// the name as sent.)
func ntOwnCreateTrailingDelim(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	a, b := px.login(t, u), px.login(t, u)
	for _, c := range []*ntClient{a, b} {
		c.MustOK("NOTIFY SET (personal (MailboxName))")
	}
	a.MustOK("CREATE Proj.")
	b.expect(`* LIST ` + e.leaf() + ` "." Proj`)
	a.silent(ntSilence)
}

// ntIdle: events arrive during IDLE, in the authenticated state and with a
// mailbox selected (RFC 5465 4), and DONE ends the IDLE normally.
func ntIdle(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (personal " + ntAll + ")")
	c.Write("i1 IDLE\r\n")
	c.expect("+ idling")
	d.create("Idle")
	c.expect(`* LIST ` + e.leaf() + ` "." Idle`)
	d.MustOK(ntAppend("Idle", "one"))
	c.expect("* STATUS Idle (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c.Write("DONE\r\n")
	c.expect("i1 OK Idle completed.")

	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) (personal " + ntAll + ")")
	c.Write("i2 IDLE\r\n")
	c.expect("+ idling")
	d.MustOK(ntAppend("INBOX", "two"))
	c.expect("* 1 EXISTS")
	d.MustOK(ntAppend("Idle", "three"))
	c.expect("* STATUS Idle (MESSAGES 2 UIDNEXT 3 UNSEEN 2)")
	d.MustOK("SELECT INBOX")
	d.MustOK(`STORE 1 +FLAGS (\Answered)`)
	c.expect(`* 1 FETCH (UID 1 FLAGS (\Answered))`)
	c.Write("DONE\r\n")
	c.expect("i2 OK Idle completed.")
}

// ntFetchAttsLiteral: MessageNew's fetch attributes may name a header
// field with a literal, as FETCH's grammar allows (header-fld-name is an
// astring); the proxy's own UID FETCH, written on one line, carries it as
// the same string quoted. (NOTIFY SET answered BAD "unbalanced '['".)
func ntFetchAttsLiteral(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS ({7+}\r\nSubject)]) MessageExpunge))")
	e.direct(t, u).MustOK(ntAppend("INBOX", "one"))
	// Dovecot names the field in capitals, as it does for a FETCH of its own.
	c.expect("* 1 EXISTS", "* 1 FETCH (UID 1 BODY[HEADER.FIELDS (\"SUBJECT\")] {16}\r\nSubject: one\r\n\r\n)")
	// A name no quoted string can carry cannot be a header field's.
	got := c.Cmd("NOTIFY SET (selected (MessageNew (BODY.PEEK[HEADER.FIELDS ({4+}\r\nA\r\nB)]) MessageExpunge))")
	if want := "BAD Error in NOTIFY: a header field name sent as a literal must be one a quoted string can carry."; imaptest.Tagged(got) != want {
		t.Fatalf("a field name with a line break: %q, want %q", got, want)
	}
}

// ntNone: after NOTIFY NONE nothing is pushed (RFC 5465 3.2); the selected
// mailbox's changes wait for a command again, as RFC 3501 has it.
func ntNone(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected " + ntMsgs + ") (personal " + ntAll + ")")
	c.MustOK("NOTIFY NONE")
	probe := px.login(t, u)
	probe.MustOK("SELECT INBOX")
	probe.MustOK("NOTIFY SET (selected " + ntMsgs + ") (personal " + ntAll + ")")
	d := e.direct(t, u)
	d.MustOK(ntAppend("INBOX", "one"))
	probe.expect("* 1 EXISTS")
	d.create("Gone")
	probe.expect(`* LIST ` + e.leaf() + ` "." Gone`)
	c.silent(ntSilence)
	got := c.MustOK("NOOP")
	if len(got) < 2 || got[0] != "* 1 EXISTS" || strings.Contains(strings.Join(got, "\n"), "LIST") {
		t.Fatalf("NOOP after NOTIFY NONE: %q", got)
	}
}

// ntReplace: a second NOTIFY SET replaces the first (RFC 5465 3.1).
func ntReplace(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("First")
	d.create("Second")
	c := px.login(t, u)
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
	for i := range 3 {
		c.MustOK("NOTIFY SET (mailboxes First " + ntMsgs + ")")
		c.MustOK("NOTIFY SET (mailboxes Second " + ntMsgs + ")")
		d.MustOK(ntAppend("First", "first"))
		probe.expect(fmt.Sprintf("* STATUS First (MESSAGES %d UIDNEXT %d UNSEEN %d)", i+1, i+2, i+1))
		c.silent(ntSilence)
		d.MustOK(ntAppend("Second", "second"))
		c.expect(fmt.Sprintf("* STATUS Second (MESSAGES %d UIDNEXT %d UNSEEN %d)", i+1, i+2, i+1))
		probe.expect(fmt.Sprintf("* STATUS Second (MESSAGES %d UIDNEXT %d UNSEEN %d)", i+1, i+2, i+1))
	}
}

// ntStatus: NOTIFY SET STATUS answers STATUS (MESSAGES UIDNEXT UIDVALIDITY
// UNSEEN) for each non-selected mailbox with message events before the
// tagged OK, and for no other (RFC 5465 3.1).
func ntStatus(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("A")
	d.create("B")
	d.MustOK(ntAppend("A", "one"))
	uv := map[string]string{}
	for _, m := range []string{"INBOX", "A", "B"} {
		uv[m] = d.uidValidity(m)
	}
	c := px.login(t, u)
	got := c.MustOK("NOTIFY SET STATUS (personal " + ntAll + ")")
	// With FlagChange, each STATUS carries the proxy's HIGHESTMODSEQ
	// (RFC 5465 5.2), whose value is the proxy's own: checked, then left
	// out of the comparison.
	for i, l := range got[:len(got)-1] {
		m := ntHighestRE.FindStringSubmatchIndex(l)
		if m == nil {
			t.Fatalf("NOTIFY SET STATUS with FlagChange: %q has no HIGHESTMODSEQ", l)
		}
		got[i] = l[:m[0]] + l[m[1]:]
	}
	want := []string{
		"* STATUS A (MESSAGES 1 UIDNEXT 2 UIDVALIDITY " + uv["A"] + " UNSEEN 1)",
		"* STATUS B (MESSAGES 0 UIDNEXT 1 UIDVALIDITY " + uv["B"] + " UNSEEN 0)",
		"* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY " + uv["INBOX"] + " UNSEEN 0)",
		"OK NOTIFY completed.",
	}
	ntSameLines(t, "NOTIFY SET STATUS personal", got, want)
	// The selected mailbox is not among them, nor mailboxes without
	// message events.
	c.MustOK("SELECT INBOX")
	got = c.MustOK("NOTIFY SET STATUS (selected " + ntMsgs + ") (mailboxes (INBOX A) " + ntMsgs + ") (mailboxes B (MailboxName))")
	ntSameLines(t, "NOTIFY SET STATUS with INBOX selected", got, []string{
		"* STATUS A (MESSAGES 1 UIDNEXT 2 UIDVALIDITY " + uv["A"] + " UNSEEN 1)",
		"OK NOTIFY completed.",
	})
	// Without STATUS, nothing.
	ntSameLines(t, "NOTIFY SET", c.MustOK("NOTIFY SET (personal "+ntMsgs+")"), []string{"OK NOTIFY completed."})
}

// ntSameLines compares a command's responses (the tag stripped from the
// tagged one) with want.
func ntSameLines(t testing.TB, what string, got, want []string) {
	t.Helper()
	got = append([]string(nil), got...)
	got[len(got)-1] = imaptest.Tagged(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\n got %q\nwant %q", what, got, want)
	}
}

var ntHighestRE = regexp.MustCompile(` HIGHESTMODSEQ [1-9]\d*`)

var ntModSeqRE = regexp.MustCompile(`^\* STATUS A \(MESSAGES (\d+) UIDNEXT (\d+)(?: UIDVALIDITY \d+)? UNSEEN (\d+) HIGHESTMODSEQ (\d+)\)$`)

// ntStatusCondstore: once CONDSTORE is enabled, NOTIFY's STATUS responses
// carry HIGHESTMODSEQ (RFC 5465 3.1, 5.2), the proxy's own, as its STATUS
// command reports it, and it grows with each change.
func ntStatusCondstore(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("A")
	d.MustOK(ntAppend("A", "one"))
	c := px.login(t, u)
	c.MustOK("ENABLE CONDSTORE")
	got := c.MustOK("NOTIFY SET STATUS (mailboxes A (MessageNew MessageExpunge FlagChange))")
	if len(got) != 2 {
		t.Fatalf("NOTIFY SET STATUS: %q", got)
	}
	m := ntModSeqRE.FindStringSubmatch(got[0])
	if m == nil || !strings.Contains(got[0], "UIDVALIDITY") || m[1] != "1" || m[2] != "2" || m[3] != "1" {
		t.Fatalf("NOTIFY SET STATUS with CONDSTORE: %q", got)
	}
	ms1, _ := strconv.ParseUint(m[4], 10, 64)
	if st := c.MustOK("STATUS A (HIGHESTMODSEQ)"); st[0] != "* STATUS A (HIGHESTMODSEQ "+m[4]+")" {
		t.Errorf("STATUS says %q, NOTIFY said HIGHESTMODSEQ %s", st[0], m[4])
	}
	d.MustOK(ntAppend("A", "two"))
	m = c.expectRE(ntModSeqRE)
	ms2, _ := strconv.ParseUint(m[4], 10, 64)
	if m[1] != "2" || m[2] != "3" || m[3] != "2" || ms2 <= ms1 {
		t.Fatalf("after a new message: %q (HIGHESTMODSEQ was %d)", m[0], ms1)
	}
	d.MustOK("SELECT A")
	d.MustOK(`STORE 1 +FLAGS (\Seen)`)
	m = c.expectRE(ntModSeqRE)
	ms3, _ := strconv.ParseUint(m[4], 10, 64)
	if m[1] != "2" || m[3] != "1" || ms3 <= ms2 {
		t.Fatalf("after a flag change: %q (HIGHESTMODSEQ was %d)", m[0], ms2)
	}
}

// ntVanished: with QRESYNC enabled, an expunge in the selected mailbox is
// reported as VANISHED (RFC 5465 5.3, RFC 7162 3.2.10).
func ntVanished(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.MustOK(ntAppend("INBOX", "one"))
	d.MustOK(ntAppend("INBOX", "two"))
	c := px.login(t, u)
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected " + ntMsgs + ")")
	d.MustOK("SELECT INBOX")
	d.MustOK(`UID STORE 1 +FLAGS.SILENT (\Deleted)`)
	d.MustOK("EXPUNGE")
	// The flag change may be seen before the expunge; with QRESYNC its
	// FETCH carries UID and MODSEQ.
	c.expectAfter(regexp.MustCompile(`^\* 1 FETCH \(`), "* VANISHED 1")
	// No FETCH MODSEQ covers the expunge: the batch ends with
	// HIGHESTMODSEQ (RFC 7162 3.2.10; issue 16 item 15).
	c.expectRE(regexp.MustCompile(`^\* OK \[HIGHESTMODSEQ \d+\] Highest$`))
	c.silent(ntSilence)
}

// ntOverflow: a session that falls too far behind is told
// NOTIFICATIONOVERFLOW, and its NOTIFY is off (RFC 5465 5.8) until it sets
// it again.
func ntOverflow(t testing.TB, e *ntEnv, _ *ntProxy) {
	px := e.proxy(t, notify.Config{MaxQueued: 2})
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Drafts")
	c := px.login(t, u)
	c.MustOK("SELECT INBOX")
	c.MustOK("NOTIFY SET (selected " + ntMsgs + ") (personal (MailboxName))")
	probe := px.login(t, u)
	probe.MustOK("SELECT INBOX")
	probe.MustOK("NOTIFY SET (selected " + ntMsgs + ") (personal (MailboxName))")
	// Three mailboxes while c is busy in a command: its queue grows past
	// MaxQueued. One at a time, so that the probe, which is not busy,
	// never has more than one to hear of.
	finish := c.busy("Drafts")
	for i := range 3 {
		d.create(fmt.Sprintf("Flood%d", i))
		probe.expect(fmt.Sprintf(`* LIST %s "." Flood%d`, e.leaf(), i))
	}
	got := finish()
	if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "* OK [NOTIFICATIONOVERFLOW]") }) ||
		slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "* LIST") }) {
		t.Fatalf("three events queued with MaxQueued 2: %q, want * OK [NOTIFICATIONOVERFLOW] and no LIST", got)
	}
	// NOTIFY is off: neither the selected mailbox nor the others are
	// pushed any more.
	d.MustOK(ntAppend("INBOX", "one"))
	probe.expect("* 1 EXISTS")
	d.create("After")
	probe.expect(`* LIST ` + e.leaf() + ` "." After`)
	c.silent(ntSilence)
	// Until NOTIFY SET, an implicit NOOP (RFC 5465 3.1).
	got = c.MustOK("NOTIFY SET (selected " + ntMsgs + ") (personal (MailboxName))")
	if got[0] != "* 1 EXISTS" {
		t.Fatalf("NOTIFY SET after the overflow: %q", got)
	}
	d.create("Again")
	c.expect(`* LIST ` + e.leaf() + ` "." Again`)
}

// busy starts an APPEND to mailbox with a synchronising literal and returns
// once the proxy asked for the literal: the session is then in a command,
// and what happens meanwhile waits for it. finish sends the literal and
// returns the responses up to the tagged one and whatever follows within
// ntSilence.
func (c *ntClient) busy(mailbox string) (finish func() []string) {
	c.t.Helper()
	msg := "Subject: busy\r\n\r\nbusy\r\n"
	c.Write(fmt.Sprintf("busy APPEND %s {%d}\r\n", mailbox, len(msg)))
	if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
		c.t.Fatalf("%s: APPEND: %q, want a continuation request", c.name, l)
	}
	return func() []string {
		c.t.Helper()
		c.Write(msg + "\r\n")
		var out []string
		for {
			l := c.ReadLine()
			out = append(out, l)
			if strings.HasPrefix(l, "busy ") {
				break
			}
		}
		if !strings.HasPrefix(out[len(out)-1], "busy OK") {
			c.t.Fatalf("%s: APPEND: %q", c.name, out)
		}
		for {
			l, err := c.TryReadLine(ntSilence)
			if err != nil {
				return out
			}
			out = append(out, l)
		}
	}
}

// ntIsolation: two accounts with the same mailbox names; one's changes never
// reach the other's NOTIFY, through the proxy or from outside.
func ntIsolation(t testing.TB, e *ntEnv, px *ntProxy) {
	u1, u2 := e.user(t), e.user(t)
	d1, d2 := e.direct(t, u1), e.direct(t, u2)
	for _, d := range []*ntClient{d1, d2} {
		d.create("Same")
	}
	c1, c2 := px.login(t, u1), px.login(t, u2)
	for _, c := range []*ntClient{c1, c2} {
		c.MustOK("SELECT INBOX")
		c.MustOK("NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) (personal " + ntAll + ")")
	}
	d2.MustOK(ntAppend("Same", "theirs"))
	c2.expect("* STATUS Same (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	d2.MustOK(ntAppend("INBOX", "theirs"))
	c2.expect("* 1 EXISTS")
	d2.create("Same.Kid")
	c2.expect(`* LIST ` + e.leaf() + ` "." Same.Kid`)
	d2.MustOK("SUBSCRIBE Same")
	c2.expect(`* LIST ` + e.parent(`\Subscribed`) + ` "." Same`)
	b2 := px.login(t, u2)
	b2.MustOK(ntAppend("Same", "theirs, through the proxy"))
	c2.expect("* STATUS Same (MESSAGES 2 UIDNEXT 3 UNSEEN 2)")
	b2.MustOK("RENAME Same.Kid Same.Other")
	c2.expect(`* LIST ` + e.leaf() + ` "." Same.Other ("OLDNAME" (Same.Kid))`)
	c1.silent(ntSilence)
	// The first line u1 hears of is its own.
	d1.MustOK(ntAppend("Same", "mine"))
	c1.expect("* STATUS Same (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
	c1.silent(ntSilence)
}

// ntOwnChanges: changes made through the proxy reach the account's other
// sessions at once, without waiting for a poll (the poll interval here is
// 30 s), and the session that made a mailbox-name or subscription change is
// not told of it (RFC 5465 5: SHOULD).
func ntOwnChanges(t testing.TB, e *ntEnv, _ *ntProxy) {
	px := e.proxy(t, notify.Config{Accounts: accountwatch.Config{PollInterval: 30 * time.Second}})
	u := e.user(t)
	a, b := px.login(t, u), px.login(t, u)
	for _, c := range []*ntClient{a, b} {
		c.MustOK("NOTIFY SET (personal " + ntAll + ")")
	}
	const prompt = 3 * time.Second // well under the poll interval
	check := func(what string, start time.Time, at time.Time) {
		if d := at.Sub(start); d > prompt {
			t.Errorf("%s took %v to reach the other session", what, d)
		}
	}
	start := time.Now()
	created := a.create("Mine")
	check("CREATE", start, b.expect(`* LIST `+e.leaf()+` "." Mine`))
	start = time.Now()
	a.MustOK(ntAppend("Mine", "one"))
	check("APPEND", start, b.expect("* STATUS Mine (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"))
	// What a was told of its own APPEND is not asserted: RFC 5465 5
	// leaves it open.
	start = time.Now()
	a.MustOK("RENAME Mine Yours")
	check("RENAME", start, b.expect(`* LIST `+e.leaf()+` "." Yours ("OLDNAME" (Mine))`))
	start = time.Now()
	a.MustOK("SUBSCRIBE Yours")
	check("SUBSCRIBE", start, b.expect(`* LIST `+e.leaf(`\Subscribed`)+` "." Yours`))
	start = time.Now()
	a.MustOK("DELETE Yours")
	check("DELETE", start, b.expectDeleted("Yours"))
	for {
		l, err := a.TryReadLine(ntSilence)
		if err != nil {
			break
		}
		if strings.HasPrefix(l, "* LIST") && (created || !strings.HasSuffix(l, `"." Mine`)) {
			t.Errorf("the session that made the change was told of it: %q", l)
		}
	}
}

// ntOutsideLatency: a change made directly on Dovecot in a mailbox that is
// not selected arrives within the poll interval (Legacy: polls), and at
// once where the upstream has NOTIFY (Full: its events wake the account
// watcher; the poll interval is 30 s there). INBOX comes through the hub's
// IDLE either way.
func ntOutsideLatency(t testing.TB, e *ntEnv, px *ntProxy) {
	limit := ntPoll + 700*time.Millisecond // a poll's own time, and -race
	if e.profile == dovecottest.Full {
		px = e.proxy(t, notify.Config{Accounts: accountwatch.Config{PollInterval: 30 * time.Second}})
		limit = 4 * time.Second // Dovecot's own delay is 0.5 s to 1.5 s
	}
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Far")
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	var worst time.Duration
	for i := 1; i <= 3; i++ {
		start := time.Now()
		d.MustOK(ntAppend("Far", "far"))
		lat := c.expect(fmt.Sprintf("* STATUS Far (MESSAGES %d UIDNEXT %d UNSEEN %d)", i, i+1, i)).Sub(start)
		worst = max(worst, lat)
		start = time.Now()
		d.MustOK(ntAppend("INBOX", "near"))
		inbox := c.expect(fmt.Sprintf("* STATUS INBOX (MESSAGES %d UIDNEXT %d UNSEEN %d)", i, i+1, i)).Sub(start)
		t.Logf("%v: outside APPEND to Far reported after %v, to INBOX after %v", e.profile, lat.Round(time.Millisecond), inbox.Round(time.Millisecond))
		if inbox > 3*time.Second {
			t.Errorf("INBOX took %v (the hub's IDLE should report it within Dovecot's IDLE delay)", inbox)
		}
	}
	start := time.Now()
	d.create("Farther")
	worst = max(worst, c.expect(`* LIST `+e.leaf()+` "." Farther`).Sub(start))
	if worst > limit {
		t.Errorf("%v: an outside change took up to %v to arrive, want at most %v", e.profile, worst, limit)
	}
}

// ntConnections: NOTIFY on personal costs an account at most two upstream
// connections besides the pool's idle ones: the account watcher and the
// hub's watcher of INBOX, however many sessions of the account set it.
//
// With enable set ("ENABLE CONDSTORE"), the sessions enable CONDSTORE
// first, so that NOTIFY's STATUS responses carry HIGHESTMODSEQ: the budget
// is the same. (It was not: the extension took each STATUS response's
// HIGHESTMODSEQ from Session.MailboxState, which opened, and kept for the
// hub's grace period, a hub watcher, one upstream connection, per mailbox:
// 5 per account here.)
func ntConnections(t testing.TB, e *ntEnv, enable string) {
	// A proxy of its own, shut down when the subtest ends: what it holds
	// upstream is all that is counted.
	px := e.proxy(t, notify.Config{})
	users := []string{e.user(t), e.user(t)}
	for _, u := range users {
		d := e.direct(t, u)
		for i := range 5 {
			d.create(fmt.Sprintf("Box%d", i))
		}
		d.MustOK("LOGOUT")
		d.Close()
	}
	base := upstreamConns(t, e.dc.Addr)
	var cs []*ntClient
	for _, u := range users {
		a, b := px.login(t, u), px.login(t, u)
		if enable != "" {
			a.MustOK(enable)
			b.MustOK(enable)
		}
		a.MustOK("NOTIFY SET STATUS (personal " + ntAll + ")")
		b.MustOK("SELECT INBOX")
		b.MustOK("NOTIFY SET STATUS (selected (MessageNew MessageExpunge FlagChange)) (personal " + ntAll + ")")
		cs = append(cs, a, b)
	}
	// Some traffic, through the proxy and from outside.
	cs[0].MustOK(ntAppend("Box1", "x"))
	d := e.direct(t, users[1])
	d.MustOK(ntAppend("Box2", "y"))
	d.MustOK("LOGOUT")
	d.Close()
	box := regexp.MustCompile(`^\* STATUS Box(\d) \(MESSAGES 1 UIDNEXT 2 UNSEEN 1( HIGHESTMODSEQ \d+)?\)$`)
	if m := cs[1].expectRE(box); m[1] != "1" {
		t.Fatalf("got %q, want Box1's STATUS", m[0])
	}
	if m := cs[3].expectRE(box); m[1] != "2" {
		t.Fatalf("got %q, want Box2's STATUS", m[0])
	}
	time.Sleep(ntPoll)
	n := upstreamConns(t, e.dc.Addr) - base
	pooled := px.srv.Pool().Idle()
	t.Logf("%v %s: %d accounts, %d sessions with NOTIFY on personal over 6 mailboxes: %d upstream connections (%d pooled idle, %d account watchers, %d hub watchers)",
		e.profile, enable, len(users), len(cs), n, pooled, px.ext.Accounts().Watchers(), px.srv.Hub().Watchers())
	if n-pooled > 2*len(users) {
		t.Errorf("%d upstream connections (%d pooled idle) for %d accounts, want at most 2 per account besides the pool:\n%s",
			n, pooled, len(users), describeConns(t, e.dc.Addr))
	}
	if w := px.ext.Accounts().Watchers(); w != len(users) {
		t.Errorf("%d account watchers for %d accounts", w, len(users))
	}
}

// ntOutsideRename: a mailbox renamed from outside is reported once, as the
// rename, and nothing else changes for the client: no other mailbox is
// reported deleted or created (RFC 5465 5.4: MailboxName events describe
// changes that happened). The changes are timed as in the scenario that
// first showed otherwise: RENAME right after new mail in two other
// mailboxes (whose upstream NOTIFY events then arrive just after the
// rename); a few rounds, as the timing varies. On Full, Dovecot's imap
// process holding the account watcher's connection (NOTIFY set) then logs
// "Corrupted mailbox list index", answers LIST "" "*" with INBOX alone for
// a second, and crashes (signal 11). The watcher used to take each LIST at
// its word, and clients heard that every other mailbox was deleted, then
// created again; it now retries such a LIST, but the rename of the second
// round still does not arrive within ntWait, hence the skip.
func ntOutsideRename(t testing.TB, e *ntEnv, px *ntProxy) {
	if e.profile == dovecottest.Full {
		// KNOWN ISSUE (issue 5): with the upstream's NOTIFY set on the
		// account watcher's connection, Dovecot 2.3.19 corrupts its
		// mailbox list index on a RENAME made elsewhere and its imap
		// process dies (signal 11); the rename then reaches clients late
		// or as a deletion and a creation. Runs on Legacy, where the
		// watcher polls.
		t.Skip("Dovecot 2.3.19 crashes (signal 11) on RENAME with NOTIFY set on another connection")
	}
	u := e.user(t)
	d := e.direct(t, u)
	const rounds = 3
	for r := range rounds {
		for _, m := range []string{"A", "B", "C"} {
			d.create(fmt.Sprint(m, r))
		}
	}
	for r := range rounds {
		a, b, c0, c1 := fmt.Sprint("A", r), fmt.Sprint("B", r), fmt.Sprint("C", r), fmt.Sprint("D", r)
		c := px.login(t, u)
		c.MustOK("NOTIFY SET (mailboxes (" + a + " " + b + ") (MessageNew MessageExpunge MailboxName))")
		probe := px.login(t, u)
		probe.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
		d.MustOK(ntAppend(c0, "c"))
		probe.expect("* STATUS " + c0 + " (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
		time.Sleep(ntSilence)
		d.MustOK(ntAppend(a, "a"))
		c.expect("* STATUS " + a + " (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
		d.MustOK(ntAppend(b, "b"))
		c.expect("* STATUS " + b + " (MESSAGES 1 UIDNEXT 2 UNSEEN 1)")
		d.MustOK("RENAME " + c0 + " " + c1)
		probe.expect("* STATUS "+a+" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", "* STATUS "+b+" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)",
			`* LIST `+e.leaf()+` "." `+c1+` ("OLDNAME" (`+c0+`))`)
		var extra []string
		for _, x := range []*ntClient{c, probe} {
			for {
				l, err := x.TryReadLine(2 * time.Second)
				if err != nil {
					break
				}
				extra = append(extra, x.name+": "+l)
			}
		}
		if len(extra) > 0 {
			t.Fatalf("round %d: after the rename, events of changes that did not happen: %q\nDovecot's log:\n%s", r, extra, ntLogErrors(e))
		}
		c.Close()
		probe.Close()
	}
}

// ntOutsideDelete: mailboxes deleted from outside, one after the other, are
// each reported as deleted (RFC 5465 5.4), never with a STATUS of a mailbox
// that is gone (whose UIDNEXT 0 no STATUS may carry: RFC 3501 2.3.1.1).
// (On Full, Dovecot's LIST-STATUS may still list a mailbox being deleted,
// followed by "* NO Mailbox doesn't exist" instead of its STATUS; the
// watcher used to take the missing STATUS for zeros, and clients got
// "* STATUS Doomed1 (MESSAGES 0 UIDNEXT 0 UNSEEN 0)" now and then.)
func ntOutsideDelete(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	const n = 8
	for i := range n {
		d.create(fmt.Sprintf("Doomed%d", i))
		d.MustOK(ntAppend(fmt.Sprintf("Doomed%d", i), "doomed"))
	}
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
	for i := range n {
		d.MustOK(fmt.Sprintf("DELETE Doomed%d", i))
		c.expectDeleted(fmt.Sprintf("Doomed%d", i))
	}
	c.silent(ntSilence)
}

// ntLogErrors returns the errors in Dovecot's log.
func ntLogErrors(e *ntEnv) string {
	data, _ := os.ReadFile(filepath.Join(e.dc.Dir, "dovecot.log"))
	var out []string
	for l := range strings.SplitSeq(string(data), "\n") {
		if strings.Contains(l, "Error:") || strings.Contains(l, "Panic:") || strings.Contains(l, "Fatal:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// ntFlagChangeOther: with FlagChange on a mailbox that is not selected, a
// flag change there is reported with STATUS, which carries the new
// HIGHESTMODSEQ once CONDSTORE is enabled (RFC 5465 5.1; RFC 7162 3.1.2.1:
// every flag change raises the mailbox's mod-sequence). \Flagged leaves
// UNSEEN as it is, so only the mod-sequence shows the change. (On Legacy
// the account watcher used to compare only MESSAGES, UIDNEXT, UIDVALIDITY
// and UNSEEN, so such a change was never reported.)
func ntFlagChangeOther(t testing.TB, e *ntEnv, px *ntProxy) {
	u := e.user(t)
	d := e.direct(t, u)
	d.create("A")
	d.MustOK(ntAppend("A", "a"))
	c := px.login(t, u)
	c.MustOK("ENABLE CONDSTORE")
	got := c.MustOK("NOTIFY SET STATUS (mailboxes A (MessageNew MessageExpunge FlagChange))")
	m := ntModSeqRE.FindStringSubmatch(got[0])
	if m == nil {
		t.Fatalf("NOTIFY SET STATUS: %q", got)
	}
	d.MustOK("SELECT A")
	d.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	const wait = 3 * time.Second // Dovecot's own delay is 0.5 s to 1.5 s
	l, err := c.TryReadLine(wait)
	if err != nil {
		t.Fatalf("%v: a \\Flagged change in a non-selected mailbox with FlagChange and CONDSTORE enabled was not reported within %v (HIGHESTMODSEQ was %s)", e.profile, wait, m[4])
	}
	m2 := ntModSeqRE.FindStringSubmatch(l)
	if m2 == nil || m2[1] != "1" || m2[3] != "1" {
		t.Fatalf("after the flag change: %q", l)
	}
	if a, _ := strconv.ParseUint(m[4], 10, 64); !(ntU64(m2[4]) > a) {
		t.Fatalf("HIGHESTMODSEQ did not grow: %q after %s", l, m[4])
	}
}

func ntU64(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// ntOverflowScope: NOTIFICATIONOVERFLOW is for a session that cannot keep up
// with its events (RFC 5465 5.8). Changes its filter does not cover are not
// its events: many of them at once must not turn its NOTIFY off. (The
// extension used to count every event of the account towards MaxQueued and
// filter only when it wrote them.)
func ntOverflowScope(t testing.TB, e *ntEnv, _ *ntProxy) {
	px := e.proxy(t, notify.Config{MaxQueued: 2})
	u := e.user(t)
	d := e.direct(t, u)
	d.create("Drafts")
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (mailboxes INBOX " + ntMsgs + ")")
	probe := px.login(t, u)
	probe.MustOK("NOTIFY SET (personal (MailboxName))")
	// As in ntOverflow, but none of the three changes is c's business.
	finish := c.busy("Drafts")
	for i := range 3 {
		d.create(fmt.Sprintf("Elsewhere%d", i))
		probe.expect(fmt.Sprintf(`* LIST %s "." Elsewhere%d`, e.leaf(), i))
	}
	if got := finish(); len(got) != 1 {
		t.Errorf("three changes outside (mailboxes INBOX ...) with MaxQueued 2, while busy in APPEND: %q, want only the tagged OK", got)
	}
	d.MustOK(ntAppend("INBOX", "for me"))
	if l := c.expectAny(); l != "* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)" {
		t.Fatalf("then new mail in INBOX: got %q, want its STATUS", l)
	}
}

// expectAny reads one line.
func (c *ntClient) expectAny() string {
	c.t.Helper()
	l, err := c.nextLine(ntWait)
	if err != nil {
		c.t.Fatalf("%s: waiting for a line: %v", c.name, err)
	}
	return l
}

// TestNotifyDovecotReference runs the scenarios against Dovecot's own NOTIFY
// (Full profile, no proxy) and through the proxy in front of the same
// Dovecot, and logs a table of where they differ and which follows RFC 5465.
// Both outcomes are asserted: the proxy's must be the RFC's, and Dovecot's
// the one recorded here (2.3.19.1), so that a change on either side shows.
//
// Dovecot's departures seen here: changes of the selected mailbox made
// within about a second of NOTIFY SET are not pushed at all (only the next
// command shows them; later ones are pushed); the FETCH for a flag change
// has no UID; MessageNew, MessageExpunge and FlagChange alone are accepted;
// an unknown event gets BAD, and an unsupported one NO [BADEVENT event]
// without the list of supported events; (subscribed ...) is not
// re-evaluated when subscriptions change; the session's own CREATE is
// reported to it; new mail in INBOX is reported twice under (inboxes ...);
// a flag change in another mailbox is reported without UIDVALIDITY.
// A second NOTIFY SET on a connection does deliver on 2.3.19.1, for the
// selected mailbox and others (selected-second-set, second-notify-set).
func TestNotifyDovecotReference(t *testing.T) {
	e := ntStartDovecot(t, dovecottest.Full, 2*len(ntRefProbes))
	px := e.proxy(t, notify.Config{})
	type result struct{ proxy, dovecot string }
	results := make([]result, len(ntRefProbes))
	var runs []ntRun
	for i, p := range ntRefProbes {
		for _, target := range []string{"proxy", "dovecot"} {
			addr, want, out := px.addr, p.proxy, &results[i].proxy
			if target == "dovecot" {
				addr, out = e.dc.Addr, &results[i].dovecot
				if p.dovecot != "" {
					want = p.dovecot
				}
			}
			runs = append(runs, ntRun{p.id + "/" + target, func(t testing.TB) {
				u := e.user(t)
				c := &ntClient{imaptest.Login(t, addr, u, "pw"+u), t, target + ":" + u}
				*out = p.run(&ntRef{t: t, e: e, c: c, user: u})
				if *out != want {
					t.Errorf("%s, %s:\n got %q\nwant %q", p.id, target, *out, want)
				}
			}})
		}
	}
	ntConcurrently(t, runs)
	var b strings.Builder
	b.WriteString("NOTIFY: Dovecot 2.3 (Full profile) directly, and the proxy in front of it\n")
	for i, p := range ntRefProbes {
		r := results[i]
		verdict := "same"
		if r.proxy != r.dovecot {
			verdict = "differ; follows the RFC: " + p.follows
		}
		fmt.Fprintf(&b, "%s (RFC 5465 %s): %s\n    RFC:     %s\n    proxy:   %s\n    Dovecot: %s\n", p.id, p.section, verdict, p.rfc, r.proxy, r.dovecot)
	}
	t.Log(b.String())
}

// ntRun is one of the runs ntConcurrently makes.
type ntRun struct {
	name string
	run  func(t testing.TB)
}

// ntConcurrently runs each run in a goroutine of its own and then reports
// each as a subtest of t, with what it logged and whether it failed.
//
// The scenarios mostly wait (for Dovecot's notification delay, for polls,
// for silence), and t.Parallel would run only GOMAXPROCS of them at once,
// which on a two-CPU machine turns a few seconds into minutes. So each gets
// an ntT: a testing.TB of its own whose Fatal ends the run's goroutine.
func ntConcurrently(t *testing.T, runs []ntRun) {
	runs = slices.DeleteFunc(slices.Clone(runs), func(r ntRun) bool { return !ntWanted(t.Name() + "/" + r.name) })
	ts := make([]*ntT, len(runs))
	var wg sync.WaitGroup
	for i, r := range runs {
		st := &ntT{T: t, name: r.name}
		ts[i] = st
		wg.Go(func() {
			defer st.cleanup()
			defer func() {
				if v := recover(); v != nil {
					st.Errorf("panic: %v", v)
				}
			}()
			r.run(st)
		})
	}
	wg.Wait()
	for i, r := range runs {
		st := ts[i]
		t.Run(r.name, func(t *testing.T) {
			for _, l := range st.out {
				t.Log(l)
			}
			if st.Failed() {
				t.Fail()
			}
			if st.skipped && !st.Failed() {
				t.SkipNow()
			}
		})
	}
}

// ntWanted reports whether -run selects the test named name, level by
// level as the testing package matches it, so that -run picks scenarios
// here as it does subtests.
func ntWanted(name string) bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	levels := strings.Split(name, "/")
	for i, pat := range strings.Split(f.Value.String(), "/") {
		if i >= len(levels) {
			break
		}
		if ok, err := regexp.MatchString(pat, levels[i]); err == nil && !ok {
			return false
		}
	}
	return true
}

// ntT is the testing.TB of one concurrent run. What it does not define
// (TempDir, Setenv, ...) is the parent test's.
type ntT struct {
	*testing.T
	name     string
	mu       sync.Mutex
	failed   bool
	skipped  bool
	out      []string
	cleanups []func()
}

func (s *ntT) Name() string { return s.T.Name() + "/" + s.name }
func (s *ntT) Helper()      {}

// record notes a message with the test file's frames that led to it.
func (s *ntT) record(msg string) {
	var where []string
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.File, "_test.go") {
			where = append(where, fmt.Sprintf("%s:%d", filepath.Base(f.File), f.Line))
		}
		if !more || len(where) == 3 {
			break
		}
	}
	s.mu.Lock()
	s.out = append(s.out, strings.Join(where, " < ")+": "+msg)
	s.mu.Unlock()
}

func (s *ntT) Log(args ...any)                 { s.record(strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }
func (s *ntT) Logf(format string, args ...any) { s.record(fmt.Sprintf(format, args...)) }
func (s *ntT) Error(args ...any)               { s.record(strings.TrimSuffix(fmt.Sprintln(args...), "\n")); s.Fail() }
func (s *ntT) Errorf(format string, args ...any) {
	s.record(fmt.Sprintf(format, args...))
	s.Fail()
}
func (s *ntT) Fatal(args ...any) {
	s.record(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
	s.FailNow()
}
func (s *ntT) Fatalf(format string, args ...any) {
	s.record(fmt.Sprintf(format, args...))
	s.FailNow()
}
func (s *ntT) Fail() {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
}
func (s *ntT) FailNow() { s.Fail(); runtime.Goexit() }
func (s *ntT) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}
func (s *ntT) Skip(args ...any) { s.record(fmt.Sprint(args...)); s.SkipNow() }
func (s *ntT) Skipf(format string, args ...any) {
	s.record(fmt.Sprintf(format, args...))
	s.SkipNow()
}
func (s *ntT) SkipNow() {
	s.mu.Lock()
	s.skipped = true
	s.mu.Unlock()
	runtime.Goexit()
}
func (s *ntT) Skipped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped
}
func (s *ntT) Cleanup(f func()) {
	s.mu.Lock()
	s.cleanups = append(s.cleanups, f)
	s.mu.Unlock()
}

// cleanup runs the cleanups, last registered first.
func (s *ntT) cleanup() {
	for {
		s.mu.Lock()
		if len(s.cleanups) == 0 {
			s.mu.Unlock()
			return
		}
		f := s.cleanups[len(s.cleanups)-1]
		s.cleanups = s.cleanups[:len(s.cleanups)-1]
		s.mu.Unlock()
		f()
	}
}

// ntRef is what a reference probe works with: the client under test (on the
// proxy or on Dovecot) and the means to change things from outside.
type ntRef struct {
	t    testing.TB
	e    *ntEnv
	c    *ntClient
	user string
	d    *ntClient
}

// outside returns a direct connection to Dovecot for outside changes.
func (r *ntRef) outside() *ntClient {
	if r.d == nil {
		r.d = r.e.direct(r.t, r.user)
	}
	return r.d
}

// ntRefWait is how long a probe waits for an event that may not come:
// Dovecot takes up to 1.5 s. ntRefSettle is how long a probe lets pass after
// NOTIFY SET where Dovecot needs it: it does not report changes of the
// selected mailbox made within about a second of NOTIFY SET.
const (
	ntRefWait   = 3 * time.Second
	ntRefSettle = 2 * time.Second
)

// selectNotify selects INBOX, sets NOTIFY (with the outside connection
// already open, so that a change can follow at once) and waits settle.
func (r *ntRef) selectNotify(spec string, settle time.Duration) {
	r.outside().MustOK("SELECT INBOX")
	r.c.MustOK("SELECT INBOX")
	r.c.MustOK("NOTIFY SET " + spec)
	time.Sleep(settle)
}

var (
	ntRefNumRE    = regexp.MustCompile(`(UIDVALIDITY|HIGHESTMODSEQ) \d+`)
	ntRefRecentRE = regexp.MustCompile(`^\* \d+ RECENT$`)
	ntRefTagRE    = regexp.MustCompile(`^\S+ (OK|NO|BAD)( \[[^]]*\])?.*$`)
)

// ntRefNorm makes a line comparable between the two: numbers that differ
// by nature become N, \Recent goes, and a tagged response is cut to its
// status and response code.
func ntRefNorm(l string) string {
	if strings.HasPrefix(l, "* OK Still here") || ntRefRecentRE.MatchString(l) {
		return "" // IDLE's keep-alive; RECENT depends on who saw the message first
	}
	l = ntRefNumRE.ReplaceAllString(ntNorm(l), "$1 N")
	if m := ntRefTagRE.FindStringSubmatch(l); m != nil && !strings.HasPrefix(l, "* ") {
		return m[1] + m[2]
	}
	return l
}

// events returns what arrives within ntRefWait with no command running,
// normalised, or "nothing".
func (r *ntRef) events() string {
	var got []string
	deadline := time.Now().Add(ntRefWait)
	for {
		l, err := r.c.TryReadLine(time.Until(deadline))
		if err != nil {
			break
		}
		if l = ntRefNorm(l); l != "" {
			got = append(got, l)
		}
	}
	if len(got) == 0 {
		return "nothing"
	}
	return strings.Join(got, " | ")
}

// first returns the first line that arrives within ntRefWait, or
// "nothing", and then waits a moment for more to arrive (appended).
func (r *ntRef) first() string {
	var out []string
	wait := ntRefWait
	for {
		l, err := r.c.TryReadLine(wait)
		if err != nil {
			break
		}
		if l = ntRefNorm(l); l != "" {
			out = append(out, l)
			wait = ntSilence
		}
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, " | ")
}

// tagged runs a command and returns its normalised tagged response.
func (r *ntRef) tagged(cmd string) string {
	got := r.c.Cmd(cmd)
	return ntRefNorm(got[len(got)-1])
}

// untagged runs a command that must succeed and returns its normalised
// untagged responses, sorted, or "nothing".
func (r *ntRef) untagged(cmd string) string {
	var got []string
	for _, l := range imaptest.Untagged(r.c.MustOK(cmd)) {
		got = append(got, ntRefNorm(l))
	}
	if len(got) == 0 {
		return "nothing"
	}
	slices.Sort(got)
	return strings.Join(got, " | ")
}

const ntBadEvent = "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"

// ntRefProbes: proxy is the RFC's outcome, which the proxy gives; dovecot is
// Dovecot's when it differs ("" when the same).
var ntRefProbes = []struct {
	id, section, rfc string
	run              func(r *ntRef) string
	proxy, dovecot   string
	follows          string // which of the two follows the RFC where they differ
}{
	{id: "badevent-unknown", section: "3.1",
		rfc: "NO [BADEVENT (supported events)] for an event not supported",
		run: func(r *ntRef) string {
			return r.tagged("NOTIFY SET (personal (MessageNew MessageExpunge XLemonEvent))")
		},
		proxy: ntBadEvent, dovecot: "BAD", follows: "the proxy"},
	{id: "badevent-metadata", section: "3.1",
		rfc:   "NO [BADEVENT (supported events)]: the code's argument is a parenthesised event list (section 8, unsupported-events-code)",
		run:   func(r *ntRef) string { return r.tagged("NOTIFY SET (personal (MailboxMetadataChange))") },
		proxy: ntBadEvent, dovecot: "NO [BADEVENT MailboxMetadataChange]", follows: "the proxy"},
	{id: "messagenew-alone", section: "5.2",
		rfc:   "BAD: MessageNew needs MessageExpunge",
		run:   func(r *ntRef) string { return r.tagged("NOTIFY SET (personal (MessageNew))") },
		proxy: "BAD", dovecot: "OK", follows: "the proxy"},
	{id: "messageexpunge-alone", section: "5.3",
		rfc:   "BAD: MessageExpunge needs MessageNew",
		run:   func(r *ntRef) string { return r.tagged("NOTIFY SET (personal (MessageExpunge))") },
		proxy: "BAD", dovecot: "OK", follows: "the proxy"},
	{id: "flagchange-alone", section: "5.1",
		rfc:   "BAD: FlagChange needs MessageNew and MessageExpunge",
		run:   func(r *ntRef) string { return r.tagged("NOTIFY SET (personal (FlagChange))") },
		proxy: "BAD", dovecot: "OK", follows: "the proxy"},
	{id: "two-selected", section: "6.1",
		rfc: "BAD: selected and selected-delayed are exclusive",
		run: func(r *ntRef) string {
			return r.tagged("NOTIFY SET (selected " + ntMsgs + ") (selected-delayed " + ntMsgs + ")")
		},
		proxy: "BAD"},
	{id: "fetch-atts-not-selected", section: "5.2",
		rfc: "BAD: MessageNew's fetch attributes only for the selected mailbox",
		run: func(r *ntRef) string {
			return r.tagged("NOTIFY SET (personal (MessageNew (UID) MessageExpunge))")
		},
		proxy: "BAD"},
	{id: "selected-new", section: "5.2",
		rfc: "EXISTS (and the FETCH asked for) for new mail in the selected mailbox, with no command running",
		run: func(r *ntRef) string {
			r.selectNotify("(selected (MessageNew (UID) MessageExpunge))", 0)
			r.outside().MustOK(ntAppend("INBOX", "new"))
			return r.first()
		},
		proxy: "* 1 EXISTS | * 1 FETCH (UID 1)", dovecot: "nothing",
		follows: "the proxy (Dovecot misses changes made within about a second of NOTIFY SET)"},
	{id: "selected-new-later", section: "5.2",
		rfc: "as selected-new, the change made 2 s after NOTIFY SET",
		run: func(r *ntRef) string {
			r.selectNotify("(selected (MessageNew (UID) MessageExpunge))", ntRefSettle)
			r.outside().MustOK(ntAppend("INBOX", "new"))
			return r.first()
		},
		proxy: "* 1 EXISTS | * 1 FETCH (UID 1)"},
	{id: "selected-flag", section: "5.1",
		rfc: "FETCH with the UID for a flag change in the selected mailbox, with no command running",
		run: func(r *ntRef) string {
			r.outside().MustOK(ntAppend("INBOX", "flagged"))
			r.selectNotify("(selected (MessageNew MessageExpunge FlagChange))", 0)
			r.outside().MustOK(`UID STORE 1 +FLAGS (\Flagged)`)
			return r.first()
		},
		proxy: `* 1 FETCH (UID 1 FLAGS (\Flagged))`, dovecot: "nothing",
		follows: "the proxy (Dovecot misses changes made within about a second of NOTIFY SET)"},
	{id: "selected-flag-later", section: "5.1",
		rfc: "as selected-flag, the change made 2 s after NOTIFY SET: the FETCH carries the UID",
		run: func(r *ntRef) string {
			r.outside().MustOK(ntAppend("INBOX", "flagged"))
			r.selectNotify("(selected (MessageNew MessageExpunge FlagChange))", ntRefSettle)
			r.outside().MustOK(`UID STORE 1 +FLAGS (\Flagged)`)
			return r.first()
		},
		proxy: `* 1 FETCH (UID 1 FLAGS (\Flagged))`, dovecot: `* 1 FETCH (FLAGS (\Flagged))`, follows: "the proxy"},
	{id: "selected-expunge", section: "5.3",
		rfc: "EXPUNGE for an expunge in the selected mailbox, with no command running",
		run: func(r *ntRef) string {
			r.outside().MustOK(ntAppend("INBOX", "doomed"))
			r.outside().create("Trash")
			r.selectNotify("(selected "+ntMsgs+")", 0)
			r.outside().MustOK("UID MOVE 1 Trash") // an expunge without a flag change first
			return r.events()
		},
		proxy: "* 1 EXPUNGE", dovecot: "nothing",
		follows: "the proxy (Dovecot misses changes made within about a second of NOTIFY SET)"},
	{id: "selected-second-set", section: "3.1",
		rfc: "after a second NOTIFY SET, events for the selected mailbox keep coming (2 s after it)",
		run: func(r *ntRef) string {
			r.selectNotify("(selected "+ntMsgs+")", 0)
			r.selectNotify("(selected "+ntMsgs+")", ntRefSettle)
			r.outside().MustOK(ntAppend("INBOX", "new"))
			return r.first()
		},
		proxy: "* 1 EXISTS"},
	{id: "other-new", section: "5.2",
		rfc: "STATUS with at least MESSAGES and UIDNEXT for new mail in another mailbox",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.outside().MustOK(ntAppend("Other", "new"))
			return r.first()
		},
		proxy:   "* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)",
		dovecot: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1)", follows: "both"},
	{id: "other-expunge", section: "5.3",
		rfc: "STATUS with at least MESSAGES and UIDNEXT for an expunge in another mailbox",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.outside().create("Trash")
			r.outside().MustOK(ntAppend("Other", "doomed"))
			r.c.MustOK("NOTIFY SET (mailboxes Other " + ntMsgs + ")")
			r.outside().MustOK("SELECT Other")
			r.outside().MustOK("MOVE 1 Trash")
			return r.events()
		},
		proxy: "* STATUS Other (MESSAGES 0 UIDNEXT 2 UNSEEN 0)"},
	{id: "other-flag-condstore", section: "5.1",
		rfc: "STATUS for a flag change in another mailbox, with HIGHESTMODSEQ once CONDSTORE is enabled",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.outside().MustOK(ntAppend("Other", "flagged"))
			r.c.MustOK("ENABLE CONDSTORE")
			r.c.MustOK("NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))")
			r.outside().MustOK("SELECT Other")
			r.outside().MustOK(`STORE 1 +FLAGS (\Flagged)`)
			return r.events()
		},
		proxy: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1 HIGHESTMODSEQ N)", dovecot: "* STATUS Other (HIGHESTMODSEQ N)", follows: "proxy"},
	{id: "condstore-new", section: "5.2",
		rfc: "STATUS carries HIGHESTMODSEQ once CONDSTORE is enabled",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("ENABLE CONDSTORE")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.outside().MustOK(ntAppend("Other", "new"))
			return r.first()
		},
		proxy:   "* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1 HIGHESTMODSEQ N)",
		dovecot: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1 HIGHESTMODSEQ N)", follows: "both"},
	{id: "status-indicator", section: "3.1",
		rfc: "NOTIFY SET STATUS: STATUS (MESSAGES UIDNEXT UIDVALIDITY) of each non-selected mailbox with message events, before the tagged OK",
		run: func(r *ntRef) string {
			r.outside().create("A")
			r.outside().MustOK(ntAppend("A", "a"))
			return r.untagged("NOTIFY SET STATUS (personal " + ntMsgs + ")")
		},
		proxy: "* STATUS A (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1) | * STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY N UNSEEN 0)"},
	{id: "mailbox-create", section: "5.4",
		rfc: "LIST for a new mailbox",
		run: func(r *ntRef) string {
			r.c.MustOK("NOTIFY SET (personal (MailboxName))")
			r.outside().create("New")
			return r.first()
		},
		proxy: `* LIST () "." New`},
	{id: "mailbox-rename", section: "5.4",
		rfc: "LIST of the new name with OLDNAME for a rename",
		run: func(r *ntRef) string {
			r.outside().create("Old")
			r.c.MustOK("NOTIFY SET (personal (MailboxName))")
			r.outside().MustOK("RENAME Old New")
			return r.first()
		},
		proxy: `* LIST () "." New ("OLDNAME" (Old))`},
	{id: "mailbox-delete", section: "5.4",
		rfc: `LIST with \NonExistent for a deleted mailbox`,
		run: func(r *ntRef) string {
			r.outside().create("Old")
			r.c.MustOK("NOTIFY SET (personal (MailboxName))")
			r.outside().MustOK("DELETE Old")
			return r.first()
		},
		proxy: `* LIST (\NonExistent) "." Old`},
	{id: "subscription", section: "5.5",
		rfc: `LIST with \Subscribed for a new subscription, without for an unsubscription`,
		run: func(r *ntRef) string {
			r.outside().create("Sub")
			r.c.MustOK("NOTIFY SET (personal (SubscriptionChange))")
			r.outside().MustOK("SUBSCRIBE Sub")
			got := r.first()
			r.outside().MustOK("UNSUBSCRIBE Sub")
			return got + " || " + r.first()
		},
		proxy: `* LIST (\Subscribed) "." Sub || * LIST () "." Sub`},
	{id: "subscribed-reevaluated", section: "6.4",
		rfc: "(subscribed ...) is re-evaluated when subscriptions change: new mail in a newly subscribed mailbox is reported",
		run: func(r *ntRef) string {
			r.outside().create("Sub")
			r.c.MustOK("NOTIFY SET (subscribed " + ntMsgs + ")")
			r.outside().MustOK("SUBSCRIBE Sub")
			time.Sleep(time.Second)
			r.outside().MustOK(ntAppend("Sub", "new"))
			return r.events()
		},
		proxy: "* STATUS Sub (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", dovecot: "nothing", follows: "the proxy"},
	{id: "inboxes-other", section: "6.3",
		rfc: "(inboxes ...) covers the mailboxes an MDA delivers to; a server that cannot tell MUST treat it as personal",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("NOTIFY SET (inboxes " + ntMsgs + ")")
			r.outside().MustOK(ntAppend("Other", "new"))
			return r.events()
		},
		proxy: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", dovecot: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1)",
		follows: "both: neither can tell where mail is delivered, so inboxes is personal"},
	{id: "inboxes-inbox", section: "6.3",
		rfc: "one STATUS for new mail in INBOX under (inboxes ...)",
		run: func(r *ntRef) string {
			r.c.MustOK("NOTIFY SET (inboxes " + ntMsgs + ")")
			r.outside().MustOK(ntAppend("INBOX", "new"))
			return r.events()
		},
		proxy:   "* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)",
		dovecot: "* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1) | * STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1)",
		follows: "both (Dovecot says it twice)"},
	{id: "second-notify-set", section: "3.1",
		rfc: "a second NOTIFY SET replaces the first, and events keep coming",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.outside().MustOK(ntAppend("Other", "new"))
			return r.first()
		},
		proxy: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", dovecot: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1)", follows: "both"},
	{id: "idle", section: "4",
		rfc: "events arrive during IDLE",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.c.Write("i IDLE\r\n")
			r.c.expectRE(regexp.MustCompile(`^\+ `))
			r.outside().MustOK(ntAppend("Other", "new"))
			got := r.first()
			r.c.Write("DONE\r\n")
			r.c.expectRE(regexp.MustCompile(`^i OK`))
			return got
		},
		proxy: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)", dovecot: "* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY N UNSEEN 1)", follows: "both"},
	{id: "notify-none", section: "3.2",
		rfc: "nothing after NOTIFY NONE",
		run: func(r *ntRef) string {
			r.outside().create("Other")
			r.c.MustOK("NOTIFY SET (personal " + ntMsgs + ")")
			r.c.MustOK("NOTIFY NONE")
			r.outside().MustOK(ntAppend("Other", "new"))
			return r.events()
		},
		proxy: "nothing"},
	{id: "own-change", section: "5",
		rfc: "the session that created a mailbox SHOULD not be told of it",
		run: func(r *ntRef) string {
			r.c.MustOK("NOTIFY SET (personal (MailboxName))")
			for i := 1; ; i++ {
				if r.c.create(fmt.Sprint("Mine", i)) {
					break
				}
				// Dovecot's CREATE race (see create): not the
				// client's own change as far as anyone can tell;
				// whatever it brings is let pass.
				r.events()
			}
			return r.events()
		},
		proxy: "nothing", dovecot: `* LIST () "." Mine1`, follows: "the proxy (a SHOULD)"},
	{id: "selected-delayed-expunge", section: "6.2",
		rfc: "selected-delayed: an expunge waits for a command that allows it",
		run: func(r *ntRef) string {
			r.outside().MustOK(ntAppend("INBOX", "doomed"))
			r.outside().create("Trash")
			r.selectNotify("(selected-delayed "+ntMsgs+")", ntRefSettle)
			r.outside().MustOK("UID MOVE 1 Trash")
			got := r.events()
			return got + " || NOOP: " + r.untagged("NOOP")
		},
		proxy: "nothing || NOOP: * 1 EXPUNGE"},
}
