package proxy

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// This file holds what the core offers extensions about mailboxes: the
// selected mailbox as the client knows it, and the hub's state of any other.

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
func (m *Mailbox) SeqOf(uid uint32) uint32 { return m.m.seqOf(uid) }

// ModSeq returns the mod-sequence up to which the client has been told of
// every change.
func (m *Mailbox) ModSeq() uint64 { return m.m.pos }

// SetEnabled marks an extension as enabled for the session without an
// ENABLE command (RFC 7162's CONDSTORE-enabling commands do this).
func (s *Session) SetEnabled(name string) { s.enabled[strings.ToUpper(name)] = true }

// Relayed returns the command being relayed, as the rewriters left it, or
// nil.
func (s *Session) Relayed() *Relayed { return s.cmd }

// MailboxState returns the hub's state of a mailbox of the session's
// account, up to date with the upstream, whether or not the session has it
// selected. The caller must call release when done; the hub keeps the
// mailbox watched for its grace period after that, so asking again soon is
// cheap.
func (s *Session) MailboxState(ctx context.Context, name string) (st *syncstate.Mailbox, release func(), err error) {
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	sub, err := s.srv.hub.Watch(ctx, hub.Key{Account: s.account, Mailbox: name}, s.watcherDial(), func() {})
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := sub.Sync(sctx); err != nil {
		s.log.Debug("mailbox sync failed", "mailbox", name, "err", err)
	}
	return sub.State(), sub.Close, nil
}

// UpstreamDialer returns a function that opens a new upstream connection
// logged in as the session's user, for an extension's own long-lived
// connection (NOTIFY's account watcher). It captures the credentials, not
// the session.
func (s *Session) UpstreamDialer() func(ctx context.Context) (*upstream.Conn, error) {
	return s.watcherDial()
}

// WatchMailbox subscribes to the hub's watcher of a mailbox of the
// session's account: notify is called (from the watcher's goroutine, so it
// must not block) whenever the mailbox's state changed. The caller must call
// release when done.
func (s *Session) WatchMailbox(ctx context.Context, name string, notify func()) (st *syncstate.Mailbox, release func(), err error) {
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	sub, err := s.srv.hub.Watch(ctx, hub.Key{Account: s.account, Mailbox: name}, s.watcherDial(), notify)
	if err != nil {
		return nil, nil, err
	}
	return sub.State(), sub.Close, nil
}

// FetchUIDs fetches data items of messages of the selected mailbox by UID
// on a leased connection and relays the FETCH responses to the client in
// its numbering, through the usual filters (NOTIFY's MessageNew fetch
// attributes). An upstream failure is logged and otherwise ignored: the
// client still has the EXISTS and can fetch itself. A returned error means
// the client is gone.
func (s *Session) FetchUIDs(ctx context.Context, uids, items string) error {
	if s.mbox == nil {
		return nil
	}
	up, err := s.Upstream(ctx)
	if err != nil {
		s.log.Warn("cannot fetch new messages for NOTIFY", "err", err)
		return nil
	}
	defer s.release()
	tag := up.NextTag()
	w := up.Writer()
	up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
	w.WriteString(tag + " UID FETCH " + uids + " " + items + "\r\n")
	if err := w.Flush(); err != nil {
		up.MarkBroken()
		s.log.Warn("cannot fetch new messages for NOTIFY", "err", err)
		return nil
	}
	if _, err := s.RelayResponses(up, tag, s.srv.cfg.Upstream.Timeout, nil); err != nil {
		if errors.As(err, new(*writeError)) {
			return err
		}
		s.log.Warn("cannot fetch new messages for NOTIFY", "err", err)
	}
	return nil
}

// MailboxRefresher returns a function that brings the hub's state of a
// mailbox of the session's account up to date on a connection the caller
// lends (logged in as the session's user), without a watcher of its own,
// and returns the mailbox's HIGHESTMODSEQ: NOTIFY's account watcher reports
// the proxy's mod-sequences of every mailbox on its one connection. It
// captures the account, not the session.
func (s *Session) MailboxRefresher() func(ctx context.Context, mailbox string, c *upstream.Conn) (uint64, error) {
	h, account := s.srv.hub, s.account
	return func(ctx context.Context, mailbox string, c *upstream.Conn) (uint64, error) {
		if strings.EqualFold(mailbox, "INBOX") {
			mailbox = "INBOX"
		}
		st, err := h.Refresh(ctx, hub.Key{Account: account, Mailbox: mailbox}, c)
		if err != nil {
			return 0, err
		}
		return st.HighestModSeq(), nil
	}
}
