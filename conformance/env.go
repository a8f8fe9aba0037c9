package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// T is a scenario's environment: its connections, its mailboxes and their
// cleanup.
type T struct {
	cfg  Config
	caps map[string]bool
	base string // unique mailbox name stem for this scenario
	tr   *transcript
	// deadline ends when the run's deadline passes (Config.Deadline): no
	// connection is opened after it, and cut closes those open.
	deadline context.Context

	// mu guards clients against cut, which runs on its own goroutine;
	// the scenario's goroutine is the only one that adds to it.
	mu        sync.Mutex
	clients   []*Client
	setup     *Client // target connection for fixtures and cleanup
	outside   *Client // connection making "outside" changes
	outsideMb string  // mailbox selected on outside
	mailboxes []string
	subs      []string
	// In the second account (-user2): mailboxes and subscriptions to
	// remove at cleanup.
	mailboxes2 []string
	subs2      []string
	// Message-IDs of messages this scenario put in the INBOX of -user,
	// removed at cleanup.
	inboxMsgs []string
	// Server metadata entries (RFC 5464, mailbox "") of -user, set to NIL
	// at cleanup.
	entries []string
	k       int
	note    string
}

// Note records an observation shown with a passing result (the Lemonade
// report uses it).
func (t *T) Note(s string) { t.note = s }

// Has reports whether the server advertised (or the run forced) cap.
func (t *T) Has(cap string) bool { return t.caps[cap] }

// Connect opens a connection to the target; the greeting has been read.
func (t *T) Connect() (*Client, error) {
	return t.dial(t.cfg.Target, fmt.Sprintf("c%d", len(t.clients)+1), t.tr)
}

// dial opens a connection of the scenario's, closed by cleanup or, when
// the run's deadline passes first, by cut.
func (t *T) dial(ep Endpoint, name string, tr *transcript) (*Client, error) {
	ctx := t.deadline
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := dial(ctx, ep, t.cfg.Timeout, tr, name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ctx.Err() != nil {
		c.Close()
		return nil, fmt.Errorf("connecting to %s: %w", ep.Addr, context.Cause(ctx))
	}
	t.clients = append(t.clients, c)
	return c, nil
}

// cut closes every connection of the scenario: the run's deadline passed
// while it ran. Whatever the scenario waits for then ends at once.
func (t *T) cut() {
	t.mu.Lock()
	cs := slices.Clone(t.clients)
	t.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// Login opens a connection to the target and logs in.
func (t *T) Login() (*Client, error) {
	c, err := t.Connect()
	if err != nil {
		return nil, err
	}
	if err := login(c, t.cfg.User, t.cfg.Pass); err != nil {
		return nil, err
	}
	return c, nil
}

// setupClient returns the connection used for fixtures.
func (t *T) setupClient() (*Client, error) {
	if t.setup != nil {
		return t.setup, nil
	}
	c, err := t.dial(t.cfg.Target, "setup", t.tr)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	if err := login(c, t.cfg.User, t.cfg.Pass); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	t.setup = c
	return c, nil
}

// Outside returns the connection that makes changes behind the tested
// connection's back.
func (t *T) Outside() (*Client, error) {
	if t.outside != nil {
		return t.outside, nil
	}
	c, err := t.dial(t.cfg.Outside, "outside", t.tr)
	if err != nil {
		return nil, fmt.Errorf("outside connection: %w", err)
	}
	if err := login(c, t.cfg.OutsideUser, t.cfg.OutsidePass); err != nil {
		return nil, fmt.Errorf("outside connection: %w", err)
	}
	t.outside = c
	return c, nil
}

// Name returns a fresh mailbox name for this scenario and registers it
// for deletion at the end. It does not create the mailbox.
func (t *T) Name() string {
	t.k++
	n := t.base + "-" + strconv.Itoa(t.k)
	t.mailboxes = append(t.mailboxes, n)
	return n
}

// Mailbox creates a mailbox holding n test messages and returns its name
// and the messages' UIDs in order.
func (t *T) Mailbox(n int) (string, []uint32, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return "", nil, err
	}
	if err := createFresh(c, name); err != nil {
		return "", nil, fmt.Errorf("setup: %w", err)
	}
	for i := range n {
		res, err := c.Append(name, "", testMessage(name, i+1, 0))
		if err != nil {
			return "", nil, fmt.Errorf("setup: %w", err)
		}
		if !res.OK() {
			return "", nil, fmt.Errorf("setup: APPEND refused: %s", status(res))
		}
	}
	uids, err := t.uids(c, name)
	if err != nil {
		return "", nil, fmt.Errorf("setup: %w", err)
	}
	if len(uids) != n {
		return "", nil, fmt.Errorf("setup: appended %d messages, mailbox holds %d", n, len(uids))
	}
	return name, uids, nil
}

// uids lists the UIDs of a mailbox in the order of its messages, using
// EXAMINE so that nothing changes. A SEARCH response lists its numbers in
// any order; UIDs ascend with sequence numbers (RFC 3501 2.3.1.1), so the
// sorted UIDs are the messages' order, which scenarios index by.
func (t *T) uids(c *Client, name string) ([]uint32, error) {
	if err := mustOK(c, "EXAMINE "+quote(name)); err != nil {
		return nil, err
	}
	res, err := c.Do("UID SEARCH ALL")
	if err != nil {
		return nil, err
	}
	if !res.OK() {
		return nil, fmt.Errorf("UID SEARCH ALL: %s", status(res))
	}
	s, err := search(res.Untagged)
	if err != nil {
		return nil, err
	}
	if err := mustOK(c, "CLOSE"); err != nil {
		return nil, err
	}
	slices.Sort(s.Nums)
	return s.Nums, nil
}

// SetupStore runs "STORE args" on mailbox through the setup connection
// (SELECT, STORE, CLOSE), to prepare flags before the scenario looks.
func (t *T) SetupStore(mailbox, args string) error {
	c, err := t.setupClient()
	if err != nil {
		return err
	}
	for _, cmd := range []string{"SELECT " + quote(mailbox), "STORE " + args, "CLOSE"} {
		if err := mustOK(c, cmd); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	return nil
}

// outsideSelect selects mailbox on the outside connection, unless it is
// already selected there.
func (t *T) outsideSelect(mailbox string) (*Client, error) {
	c, err := t.Outside()
	if err != nil {
		return nil, err
	}
	if t.outsideMb != mailbox {
		if err := mustOK(c, "SELECT "+quote(mailbox)); err != nil {
			return nil, fmt.Errorf("outside: %w", err)
		}
		t.outsideMb = mailbox
	}
	return c, nil
}

// OutsideStore changes flags of the message with uid from the outside
// connection, e.g. OutsideStore(mb, 2, `+FLAGS (\Flagged)`).
func (t *T) OutsideStore(mailbox string, uid uint32, change string) error {
	c, err := t.outsideSelect(mailbox)
	if err != nil {
		return err
	}
	op, flags, _ := strings.Cut(change, " ")
	if err := mustOK(c, fmt.Sprintf("UID STORE %d %s.SILENT %s", uid, op, flags)); err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	return nil
}

// OutsideExpunge expunges the messages with the given UIDs from the
// outside connection.
func (t *T) OutsideExpunge(mailbox string, uids ...uint32) error {
	c, err := t.outsideSelect(mailbox)
	if err != nil {
		return err
	}
	if err := mustOK(c, fmt.Sprintf(`UID STORE %s +FLAGS.SILENT (\Deleted)`, uidList(uids))); err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	if err := mustOK(c, "EXPUNGE"); err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	return nil
}

// OutsideAppend appends a test message from the outside connection.
func (t *T) OutsideAppend(mailbox string) error {
	c, err := t.Outside()
	if err != nil {
		return err
	}
	t.k++
	res, err := c.Append(mailbox, "", testMessage(mailbox, 100+t.k, 0))
	if err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	if !res.OK() {
		return fmt.Errorf("outside: APPEND refused: %s", status(res))
	}
	return nil
}

// OutsideCreate creates a mailbox from the outside connection (see
// createFresh).
func (t *T) OutsideCreate(name string) error {
	c, err := t.Outside()
	if err != nil {
		return err
	}
	if err := createFresh(c, name); err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	return nil
}

// createFresh creates a mailbox whose name only this scenario uses and
// requires success. Dovecot 2.3 (maildir) sometimes answers such a CREATE
// with NO [ALREADYEXISTS] although it did create the mailbox, when another
// session lists the mailboxes at that moment (docs/conformance.md; a proxy
// watching the account does so all the time). Nobody else uses the name, so
// a mailbox that exists after that answer is the one this CREATE made, and
// the scenario goes on: what it checks is something else.
func createFresh(c *Client, name string) error {
	cmd := "CREATE " + quote(name)
	res, err := c.Do(cmd)
	if err != nil {
		return err
	}
	if res.OK() {
		return nil
	}
	if res.Status.Name == "NO" && res.Status.Code == "ALREADYEXISTS" {
		if ok, lerr := exists(c, name); lerr == nil && ok {
			return nil
		}
	}
	return fmt.Errorf("%s: expected OK, got %q", shorten(cmd), status(res))
}

// exists reports whether LIST shows mailbox.
func exists(c *Client, mailbox string) (bool, error) {
	res, err := doOK(c, `LIST "" `+quote(mailbox))
	if err != nil {
		return false, err
	}
	for _, r := range findAll(res.Untagged, "LIST") {
		if d, err := r.list(); err == nil && d.Name == mailbox && !d.has(`\NonExistent`) {
			return true, nil
		}
	}
	return false, nil
}

// OutsideDo runs an authenticated-state command (CREATE, RENAME ...) on
// the outside connection.
func (t *T) OutsideDo(cmd string) error {
	c, err := t.Outside()
	if err != nil {
		return err
	}
	if err := mustOK(c, cmd); err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	return nil
}

// Subscribed registers a subscription to be removed at cleanup.
func (t *T) Subscribed(name string) { t.subs = append(t.subs, name) }

// ServerEntry registers a server metadata entry of -user (SETMETADATA on
// the mailbox "") to be removed at cleanup. Unlike a mailbox's entries,
// which go with the mailbox, it outlives the scenario; removing it at
// cleanup, on a fresh connection, works even when the scenario's own
// connection broke or timed out, and a removal that fails is reported.
func (t *T) ServerEntry(name string) { t.entries = append(t.entries, name) }

// Second logs in to the target as the second account (-user2), or skips
// the scenario when none was given.
func (t *T) Second() (*Client, error) {
	if t.cfg.User2 == "" {
		return nil, skipf("no second account given (-user2)")
	}
	c, err := t.dial(t.cfg.Target, "user2", t.tr)
	if err != nil {
		return nil, err
	}
	if err := login(c, t.cfg.User2, t.cfg.Pass2); err != nil {
		return nil, err
	}
	return c, nil
}

// Name2 returns a fresh mailbox name for the second account and registers
// it for deletion there; it subscribes nothing and creates nothing.
func (t *T) Name2() string {
	n := t.Name()
	t.mailboxes = t.mailboxes[:len(t.mailboxes)-1]
	t.mailboxes2 = append(t.mailboxes2, n)
	return n
}

// Subscribed2 registers a subscription of the second account to be removed
// at cleanup.
func (t *T) Subscribed2(name string) { t.subs2 = append(t.subs2, name) }

// OutsideAppendInbox appends a test message to INBOX from the outside
// connection; cleanup removes it again (and only it).
func (t *T) OutsideAppendInbox() error {
	c, err := t.Outside()
	if err != nil {
		return err
	}
	t.k++
	stem := fmt.Sprintf("%s-inbox-%d", t.base, t.k)
	msg := testMessage(stem, t.k, 0)
	t.inboxMsgs = append(t.inboxMsgs, fmt.Sprintf("<%s.%d@conformance.example.org>", stem, t.k))
	res, err := c.Append("INBOX", "", msg)
	if err != nil {
		return fmt.Errorf("outside: %w", err)
	}
	if !res.OK() {
		return fmt.Errorf("outside: APPEND to INBOX refused: %s", status(res))
	}
	return nil
}

// cleanup deletes what the scenario created and closes its connections.
func (t *T) cleanup() error {
	if t.deadline != nil && t.deadline.Err() != nil {
		// The server may be the reason the deadline passed: trying would
		// cost a timeout per connection. Say what stays behind instead.
		t.cut()
		return t.leftBehind(context.Cause(t.deadline))
	}
	var errs []string
	if len(t.mailboxes) > 0 || len(t.subs) > 0 || len(t.inboxMsgs) > 0 || len(t.entries) > 0 {
		errs = append(errs, t.cleanAccount(t.cfg.User, t.cfg.Pass, t.mailboxes, t.subs, t.inboxMsgs, t.entries)...)
	}
	if len(t.mailboxes2) > 0 || len(t.subs2) > 0 {
		errs = append(errs, t.cleanAccount(t.cfg.User2, t.cfg.Pass2, t.mailboxes2, t.subs2, nil, nil)...)
	}
	t.mu.Lock()
	cs := slices.Clone(t.clients)
	t.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// leftBehind reports what cleanup did not remove because of why, or nil
// when the scenario had created nothing.
func (t *T) leftBehind(why error) error {
	var left []string
	add := func(what string, names []string) {
		if len(names) > 0 {
			left = append(left, what+" "+strings.Join(names, " "))
		}
	}
	add("mailboxes", t.mailboxes)
	add("subscriptions", t.subs)
	add("INBOX messages with Message-ID", t.inboxMsgs)
	add("server entries", t.entries)
	add("mailboxes of -user2", t.mailboxes2)
	add("subscriptions of -user2", t.subs2)
	if len(left) == 0 {
		return nil
	}
	return fmt.Errorf("not done (%v); may be left on the server: %s", why, strings.Join(left, "; "))
}

// cleanAccount removes subscriptions, server metadata entries, mailboxes
// and INBOX messages (by Message-ID) from one account, on a fresh
// connection: the scenario's own may be in any state (compressed, idling,
// broken).
func (t *T) cleanAccount(user, pass string, mailboxes, subs, inboxMsgs, entries []string) []string {
	var errs []string
	c, err := t.dial(t.cfg.Target, "cleanup", nil)
	if err == nil {
		defer c.Close()
		err = login(c, user, pass)
	}
	if err != nil {
		return []string{err.Error()}
	}
	defer c.Do("LOGOUT")
	for _, s := range subs {
		c.Do("UNSUBSCRIBE " + quote(s))
	}
	// A BAD means the server has no METADATA (its capability was forced
	// on with -force-caps), so the scenario set nothing.
	for _, e := range entries {
		cmd := `SETMETADATA "" (` + e + ` NIL)`
		res, err := c.Do(cmd)
		if err != nil {
			return append(errs, err.Error())
		}
		if !res.OK() && res.Status.Name != "BAD" {
			errs = append(errs, cmd+": "+status(res))
		}
	}
	// Children first: names made later may be below earlier ones.
	for i := len(mailboxes) - 1; i >= 0; i-- {
		res, err := c.Do("DELETE " + quote(mailboxes[i]))
		if err != nil {
			return append(errs, err.Error())
		}
		if !res.OK() && res.Status.Code != "NONEXISTENT" && !strings.Contains(strings.ToLower(res.Status.Text), "exist") {
			errs = append(errs, "DELETE "+mailboxes[i]+": "+status(res))
		}
	}
	if len(inboxMsgs) > 0 {
		if err := t.removeInboxMessages(c, inboxMsgs); err != nil {
			errs = append(errs, "INBOX: "+err.Error())
		}
	}
	return errs
}

// removeInboxMessages expunges the messages with the given Message-IDs
// from INBOX and nothing else: with UID EXPUNGE (UIDPLUS) when offered,
// else with EXPUNGE only if no other message of INBOX is \Deleted.
func (t *T) removeInboxMessages(c *Client, ids []string) error {
	if err := mustOK(c, "SELECT INBOX"); err != nil {
		return err
	}
	var uids []uint32
	for _, id := range ids {
		res, err := doOK(c, "UID SEARCH HEADER Message-ID "+quote(id))
		if err != nil {
			return err
		}
		s, err := search(res.Untagged)
		if err != nil {
			return err
		}
		uids = append(uids, s.Nums...)
	}
	if len(uids) == 0 {
		return nil
	}
	set := uidList(uids)
	if err := mustOK(c, `UID STORE `+set+` +FLAGS.SILENT (\Deleted)`); err != nil {
		return err
	}
	if t.caps["UIDPLUS"] {
		return mustOK(c, "UID EXPUNGE "+set)
	}
	res, err := doOK(c, "UID SEARCH DELETED")
	if err != nil {
		return err
	}
	s, err := search(res.Untagged)
	if err != nil {
		return err
	}
	if !sameSet(s.Nums, uids) {
		return failf("without UIDPLUS the test messages (UIDs %s) stay in INBOX flagged \\Deleted: other messages are \\Deleted too", set)
	}
	return mustOK(c, "EXPUNGE")
}

// mustOK runs cmd and requires a tagged OK.
func mustOK(c *Client, cmd string) error {
	_, err := doOK(c, cmd)
	return err
}

// doOK runs cmd, requires a tagged OK and returns the result.
func doOK(c *Client, cmd string) (*Reply, error) {
	res, err := c.Do(cmd)
	if err != nil {
		return res, err
	}
	if !res.OK() {
		return res, fmt.Errorf("%s: expected OK, got %q", shorten(cmd), status(res))
	}
	return res, nil
}

// testMessage builds a small RFC 5322 message; size pads the body.
func testMessage(mailbox string, n, size int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Conformance <conformance@example.org>\r\n")
	fmt.Fprintf(&b, "To: Test <test@example.org>\r\n")
	fmt.Fprintf(&b, "Subject: Message %d\r\n", n)
	fmt.Fprintf(&b, "Date: Mon, 2 Nov 2026 10:00:%02d +0000\r\n", n%60)
	fmt.Fprintf(&b, "Message-ID: <%s.%d@conformance.example.org>\r\n", mailbox, n)
	b.WriteString("\r\n")
	fmt.Fprintf(&b, "Body of message %d.\r\n", n)
	line := "The quick brown fox jumps over the lazy dog, again and again.\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func uidList(uids []uint32) string {
	s := make([]string, len(uids))
	for i, u := range uids {
		s[i] = strconv.FormatUint(uint64(u), 10)
	}
	return strings.Join(s, ",")
}

func asAtom(v imapcodec.Value) (string, bool) {
	a, ok := v.(imapcodec.Atom)
	return string(a), ok
}
