package proxy

import (
	"context"
	"strings"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/syncstate"
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
