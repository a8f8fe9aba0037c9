package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// This file holds what the core offers extensions about mailboxes: the
// selected mailbox as the client knows it, and, through the MailboxService
// every Provisioner gets, the hub's state of any mailbox of an account.

// Mailbox is an extension's view of the session's selected mailbox.
type Mailbox struct{ m *selectedMailbox }

// Mailbox returns the selected mailbox, or nil outside the selected state.
func (s *Session) Mailbox() *Mailbox {
	if s.mbox == nil {
		return nil
	}
	return &Mailbox{s.mbox}
}

// Name returns the mailbox's name as the upstream knows it.
func (m *Mailbox) Name() string { return m.m.name }

// ReadOnly reports whether the mailbox was opened read-only.
func (m *Mailbox) ReadOnly() bool { return m.m.readOnly }

// State returns the hub's shared state of the mailbox.
func (m *Mailbox) State() *syncstate.Mailbox { return m.m.state }

// UIDs returns the messages as the client knows them, in sequence order. The
// slice is shared and must not be modified.
func (m *Mailbox) UIDs() []uint32 { return m.m.view }

// SeqOf returns the client's sequence number of uid, or 0 if the client
// does not know the message.
func (m *Mailbox) SeqOf(uid uint32) uint32 { return m.m.view.seqOf(uid) }

// UIDOf returns the UID of the client's sequence number seq, or 0.
func (m *Mailbox) UIDOf(seq uint32) uint32 { return m.m.view.uidOf(seq) }

// AnnounceFlags returns the FLAGS response the client must get before a
// FETCH response showing flags when one of them is a keyword it was not
// told of (RFC 3501 7.2.6), and counts it as told; nil otherwise. For
// extensions that write FETCH responses of their own, with the state's
// flags: the mailbox's FLAGS response came from the upstream, which may
// not have had a keyword another session created since.
func (m *Mailbox) AnnounceFlags(flags []string) []byte { return m.m.newKeywords(flags) }

// ModSeq returns the mod-sequence up to which the client has been told of
// every change.
func (m *Mailbox) ModSeq() uint64 { return m.m.pos }

// Sync asks the hub's watcher to check the upstream now, waiting at most
// timeout, so that the state includes everything the upstream knows
// (before a conditional STORE, say).
func (m *Mailbox) Sync(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return m.m.sub.Sync(ctx)
}

// SetEnabled marks an extension as enabled for the session without an
// ENABLE command (RFC 7162's CONDSTORE-enabling commands do this).
func (s *Session) SetEnabled(name string) { s.setEnabled(strings.ToUpper(name)) }

// An Account is an authenticated upstream identity as an extension may
// keep it beyond one command: its name (the key of the pool, the hub and
// every per-account structure) and what opens connections logged in as it.
// It holds the credentials, not the session.
type Account struct {
	Name string
	dial hub.DialFunc
	// user and pass are the session's credentials (UpstreamAccount);
	// empty for an account an extension made (NewAccount).
	user, pass string
}

// NewAccount makes an Account named name (an account key, as
// Session.Account and UpstreamService.AccountOf give them) whose
// connections dial opens: for an extension that logs in without a
// session of the account (push watches registered accounts with a master
// user's login, or with credentials it kept). dial must return a
// connection logged in as that account and nobody else, counted in the
// account's budget (UpstreamService.Dial does both).
func NewAccount(name string, dial func(ctx context.Context) (*upstream.Conn, error)) Account {
	return Account{Name: name, dial: dial}
}

// Dial opens a new upstream connection logged in as the account, for an
// extension's own long-lived connection (NOTIFY's account watcher).
func (a Account) Dial(ctx context.Context) (*upstream.Conn, error) {
	if a.dial == nil {
		return nil, errors.New("proxy: not authenticated")
	}
	return a.dial(ctx)
}

// Credentials returns the user name and password a session of the account
// logged in with, for an extension that must log in later without a
// session and was allowed by the operator to keep them (push's sealed
// credentials: encrypted at rest, never logged). ok is false for an
// account an extension made with NewAccount. The password is the user's
// secret: an extension that keeps it says how in its documentation.
func (a Account) Credentials() (user, password string, ok bool) {
	if a.user == "" && a.pass == "" {
		return "", "", false
	}
	return a.user, a.pass, true
}

// UpstreamAccount returns the session's authenticated upstream identity
// (its Name is empty before login).
func (s *Session) UpstreamAccount() Account {
	if s.account == "" {
		return Account{}
	}
	return Account{Name: s.account, dial: s.watcherDial(), user: s.user, pass: s.pass}
}

// UpstreamService opens upstream connections for an extension's own
// logins, where no session of the account is there to lend its
// credentials (Provisioner gets it in Services.Upstream).
type UpstreamService struct{ srv *Server }

// Dial dials the upstream for account (an account key) within the
// account's connection budget (upstream.Budget: ctx may be
// upstream.Optional) and logs in with login, which must log in as that
// account (Conn.LoginAs for a master user, Conn.Login with kept
// credentials). A login refused for the server's connection limit is
// tried again, as sessions' logins are.
func (u *UpstreamService) Dial(ctx context.Context, account string, login func(context.Context, *upstream.Conn) error) (*upstream.Conn, error) {
	c, _, err := u.srv.pool.Budget().DialWith(ctx, &u.srv.cfg.Upstream, account, func(ctx context.Context, c *upstream.Conn) (string, error) {
		return "", login(ctx, c)
	})
	return c, err
}

// AccountOf returns the account key of a login as user (Session.AccountOf).
func (u *UpstreamService) AccountOf(user string) string { return u.srv.accountKey(user) }

// UserOf returns the user name an account key was made from (after the
// username format: lower case by default), as the upstream knows the
// user: what a master user's login names as the authorization identity.
// ok is false for a key of another upstream.
func (u *UpstreamService) UserOf(account string) (user string, ok bool) {
	return strings.CutPrefix(account, u.srv.cfg.Upstream.Addr+"\x00")
}

// MailboxService gives extensions the hub's state of any mailbox of an
// account, whether or not a session has it selected.
type MailboxService struct {
	hub    *hub.Hub
	delims *sync.Map // Server.delims
}

// canonicalMailbox spells a mailbox name as the hub keys it: INBOX in any
// case, and as the head of the hierarchy once a session of the account
// has learnt its delimiter (canonicalName).
func (ms *MailboxService) canonicalMailbox(account, name string) string {
	delim := ""
	if h, ok := ms.delims.Load(account); ok && needsDelim(name) {
		delim = h.(Hierarchy).Delim
	}
	return canonicalName(name, delim)
}

// Canonical spells a mailbox name of account as the hub keys it
// (canonicalName: inbox.x is INBOX.x where "." is the delimiter), for an
// extension that keys or compares mailboxes without a session. The
// account's hierarchy delimiter, needed only for a name that starts with
// INBOX in another case, is the one a session learnt, or else asked of c
// (LIST "" "", then kept for the account); c may be nil.
func (ms *MailboxService) Canonical(ctx context.Context, account string, c *upstream.Conn, name string) string {
	if _, known := ms.delims.Load(account); !known && c != nil && needsDelim(name) {
		if h, err := listHierarchy(ctx, c.Exec); err == nil {
			ms.delims.Store(account, h)
		}
	}
	return ms.canonicalMailbox(account, name)
}

// NeedsDelimiter reports whether spelling a mailbox name of account as
// the hub keys it waits on the account's hierarchy delimiter, not known
// yet: a name that starts with INBOX in another case (inbox.x is INBOX.x
// only where "." is the delimiter). Canonical with a connection asks for
// it then. An extension that keys data by the canonical name without a
// session (push's cursors) asks before it relies on the spelling.
func (ms *MailboxService) NeedsDelimiter(account, name string) bool {
	_, known := ms.delims.Load(account)
	return !known && needsDelim(name)
}

// State returns the hub's state of a mailbox, up to date with the upstream.
// The caller must call release when done; the hub keeps the mailbox
// watched for its grace period after that, so asking again soon is cheap.
func (ms *MailboxService) State(ctx context.Context, a Account, name string) (st *syncstate.Mailbox, release func(), err error) {
	sub, err := ms.hub.Watch(ctx, hub.Key{Account: a.Name, Mailbox: ms.canonicalMailbox(a.Name, name)}, a.dial, func() {})
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	sub.Sync(sctx) // on failure the state is as the watcher last saw it
	return sub.State(), sub.Close, nil
}

// StateAt is State for a mailbox the upstream has just given as of
// uidValidity, where the hub's state may be of another (the mailbox was
// deleted and created again under the name outside the proxy, unseen by
// its watcher): the hub starts the state over (hub.Resync) until it is of
// uidValidity, or fails when ctx ends first.
func (ms *MailboxService) StateAt(ctx context.Context, a Account, name string, uidValidity uint32) (st *syncstate.Mailbox, release func(), err error) {
	key := hub.Key{Account: a.Name, Mailbox: ms.canonicalMailbox(a.Name, name)}
	if err := ms.hub.Resync(ctx, key, uidValidity); err != nil {
		return nil, nil, err
	}
	st, release, err = ms.State(ctx, a, name)
	if err == nil && st.UIDValidity() != uidValidity {
		release()
		err = fmt.Errorf("state of %q has UIDVALIDITY %d, the upstream %d", name, st.UIDValidity(), uidValidity)
	}
	return st, release, err
}

// Watch subscribes to the hub's watcher of a mailbox: notify is called
// (from the watcher's goroutine, so it must not block) whenever the
// mailbox's state changed. The caller must call release when done.
func (ms *MailboxService) Watch(ctx context.Context, a Account, name string, notify func()) (st *syncstate.Mailbox, release func(), err error) {
	sub, err := ms.Subscribe(ctx, a, name, notify)
	if err != nil {
		return nil, nil, err
	}
	return sub.State(), sub.Close, nil
}

// Subscribe is Watch for an extension that keeps its watch for long
// (push's watchers of registered accounts): it returns the hub's
// subscription itself, whose Err tells when the state it follows is
// stale (the mailbox's UIDVALIDITY changed, or its watcher failed: close
// it and subscribe again) and whose LastChangeRead tells when the
// upstream's report of the latest change was read. The caller must Close
// it.
func (ms *MailboxService) Subscribe(ctx context.Context, a Account, name string, notify func()) (*hub.Subscription, error) {
	sub, err := ms.hub.Watch(ctx, hub.Key{Account: a.Name, Mailbox: ms.canonicalMailbox(a.Name, name)}, a.dial, notify)
	if err != nil {
		return nil, err
	}
	sub.SetIdle(true) // the caller waits for pushes
	return sub, nil
}

// Refresh brings the hub's state of a mailbox up to date on a connection
// the caller lends (logged in as the account), without a watcher of its
// own, and returns the mailbox's HIGHESTMODSEQ: NOTIFY's account watcher
// reports the proxy's mod-sequences of every mailbox on its one connection.
func (ms *MailboxService) Refresh(ctx context.Context, a Account, name string, c *upstream.Conn) (uint64, error) {
	st, err := ms.hub.Refresh(ctx, hub.Key{Account: a.Name, Mailbox: ms.canonicalMailbox(a.Name, name)}, c)
	if err != nil {
		return 0, err
	}
	return st.HighestModSeq(), nil
}

// Relay runs a command of the proxy's own (not the client's: command is
// its text without tag, "UID FETCH 7:9 (ENVELOPE)") on a leased upstream
// connection in the session's state, and relays its untagged answers to
// the client in the client's terms, through the usual filters, as if they
// were unsolicited (NOTIFY's MessageNew fetch attributes). Its tagged
// answer is not relayed. An upstream failure is returned as an error that
// is not a client failure: the client still has what it was told and can
// ask itself. A returned error that wraps ErrClientGone means the client
// is gone.
func (s *Session) Relay(ctx context.Context, command string) error {
	if !imapcodec.InlineLiteralsOnly(command) {
		// Written whole, without waiting for a continuation: a line
		// break outside a non-synchronising literal would send the rest
		// as commands of their own (a client's value in the command).
		return fmt.Errorf("proxy: %q: a line break outside a non-synchronising literal", truncate(command))
	}
	cmd, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: []byte("proxy " + command)}}, s.cfg.Limits)
	if err != nil {
		return err
	}
	x := s.newExchange(ctx, cmd, false)
	run := func(up *upstream.Conn) (*upstream.Response, error) {
		upTag := up.NextTag()
		w := up.Writer()
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		w.WriteString(upTag + " " + command + "\r\n")
		if err := w.Flush(); err != nil {
			up.MarkBroken()
			return nil, err
		}
		if _, err := s.readResponses(x, up, upTag, nil); err != nil {
			if errors.As(err, new(*writeError)) || errors.Is(err, errClientStream) {
				return nil, errors.Join(ErrClientGone, err)
			}
			return nil, err
		}
		return nil, nil
	}
	if len(s.ahead) > 0 {
		// Not on the connection that carries commands sent ahead.
		_, err := s.besideAhead(ctx, true, run)
		return err
	}
	up, err := s.lease(ctx, true, nil)
	if err != nil {
		return err
	}
	defer s.release()
	_, err = run(up)
	return err
}

// Exec runs a command of the proxy's own (command without tag, "UID
// SEARCH ALL"; no synchronising literals) on a leased upstream connection
// in the session's state (in the selected state, with the session's
// mailbox selected) and hands each untagged response to handle as the
// upstream sent it: UIDs, the upstream's own words. Nothing reaches the
// client; an extension that changes the mailbox (a MOVE it synthesizes)
// tells the client through the hub (Mailbox().Sync), as the core does.
// Responses are read whole into memory: not for message bodies. It returns
// the tagged response; a tagged NO or BAD is an *upstream.StatusError.
//
// Call it from ServeCommand, before next or after next returned, never
// from a response filter (the command's own connection may be in the
// middle of its answer).
func (s *Session) Exec(ctx context.Context, command string, handle func(*upstream.Response)) (*upstream.Response, error) {
	return s.onConn(ctx, true, func(up *upstream.Conn) (*upstream.Response, error) {
		return up.Exec(ctx, command, handle)
	})
}

// onConn runs fn on the session's upstream connection, leased for the call
// if the session holds none (restore: brought into the session's mailbox
// state), or, while commands sent ahead wait for their answers on it, on
// another one (besideAhead).
func (s *Session) onConn(ctx context.Context, restore bool, fn func(*upstream.Conn) (*upstream.Response, error)) (*upstream.Response, error) {
	if len(s.ahead) > 0 {
		return s.besideAhead(ctx, restore, fn)
	}
	held := s.up != nil && !s.up.Broken()
	up, err := s.lease(ctx, restore, nil)
	if err != nil {
		return nil, err
	}
	if !held {
		defer s.release()
	}
	return fn(up)
}

// ExecIn is Exec with another mailbox open: it runs command on a leased
// upstream connection with mailbox selected read-only (EXAMINE), for an
// extension that must read messages outside the session's mailbox (the
// copies a synthesized COPYUID names). The connection's mailbox is left
// that way; the next lease for the session's own mailbox selects it
// again. Like Exec, it may be called from an OnTagged hook, on the
// connection whose command has just been answered.
//
// A connection that has the mailbox EXAMINEd already (an earlier ExecIn
// left it so) EXAMINEs it again first. Dovecot, like other servers, runs
// a command on the view the connection had after its previous one: a
// message delivered since would not be found (a URLFETCH of it answered
// NIL). A NOOP would bring that view up to date, but not to a mailbox
// deleted and created again since: go-imap's server keeps showing the
// deleted one (its message answered a URLFETCH of the new one's); Dovecot
// showed no message at the new one's UID 1 (NIL). A new EXAMINE costs a little more than a NOOP and
// reads the mailbox as it is now. Once per client command: the later
// calls of the same command (a URLFETCH reads a large part in chunks, one
// ExecIn each) see what the first saw, as one upstream command would.
func (s *Session) ExecIn(ctx context.Context, mailbox, command string, handle func(*upstream.Response)) (*upstream.Response, error) {
	return s.onConn(ctx, false, func(up *upstream.Conn) (*upstream.Response, error) {
		now := examinedView{conn: weak.Make(up), mailbox: mailbox}
		switch {
		case up.Selected != mailbox || !up.ReadOnly:
			if err := up.Select(ctx, mailbox, true, nil); err != nil {
				return nil, err
			}
		case s.examined != now:
			if err := up.Reopen(ctx); err != nil {
				return nil, err
			}
		}
		s.examined = now
		return up.Exec(ctx, command, handle)
	})
}

// examinedView is a connection that ExecIn brought up to date with a
// mailbox during the current command. The connection is held weakly: an
// idle session does not keep a closed one in memory.
type examinedView struct {
	conn    weak.Pointer[upstream.Conn]
	mailbox string
}

// ErrClientGone marks errors that mean the client cannot be written to.
var ErrClientGone = errors.New("proxy: client gone")
