// Package accountwatch watches the mailbox list of an upstream account: which
// mailboxes exist, which are subscribed, and their STATUS counters. NOTIFY
// (RFC 5465) needs that for every mailbox a client cares about besides the
// selected one. Watching each of them with its own IDLE would cost one
// upstream connection per mailbox. Instead one connection per account,
// shared by every session of the account that set NOTIFY, polls: LIST and
// LSUB, then STATUS of each mailbox (one LIST-STATUS where the upstream
// offers it). It compares each poll with the one before and reports the
// differences as events.
//
// Polls run every Config.PollInterval and at once when the proxy learns of a
// change itself (Manager.Poke: a session created a mailbox, appended a
// message, or the hub saw new mail in INBOX), so changes made through the
// proxy are announced without waiting for the interval.
package accountwatch

import (
	"log/slog"
	"time"
)

// Config tunes the watchers. Zero values select the defaults.
type Config struct {
	// PollInterval bounds how long a change in a mailbox waits for a
	// full poll of its account to see it (upstreams without NOTIFY): full
	// polls start PollInterval apart, so a change is seen within
	// PollInterval plus the jitter of its mailbox's place in the poll.
	// (Starting them earlier by the last poll's duration, to remove that
	// jitter, made a saturated upstream busier still: in a 1,000-account
	// benchmark on two vCPUs events then took seconds more.) Default 30 s.
	PollInterval time.Duration
	// Grace is how long a watcher lives on after its last subscriber left.
	// Default 10 s.
	Grace time.Duration
	// Timeout bounds each upstream command. Default 30 s.
	Timeout time.Duration
	// MaxMailboxes bounds how many mailboxes of one account are watched.
	// Default 10,000.
	MaxMailboxes int
	Logger       *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 30 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.MaxMailboxes <= 0 {
		c.MaxMailboxes = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Status is what STATUS says of a mailbox.
type Status struct {
	Messages, UIDNext, UIDValidity, Unseen uint32
	// UpModSeq is the upstream's HIGHESTMODSEQ where it has CONDSTORE:
	// used only to notice flag changes, never shown to clients.
	UpModSeq uint64
}

// Mailbox is one mailbox of the account.
type Mailbox struct {
	Name       string
	Delim      string // "" when the upstream has no hierarchy
	Attrs      []string
	Subscribed bool
	// Selectable is false for \Noselect and \NonExistent entries, which
	// have no STATUS.
	Selectable bool
	Status     Status
	// ModSeq is the proxy's own HIGHESTMODSEQ of the mailbox (see
	// WatchOptions.Refresh), 0 when not known.
	ModSeq uint64
	// hasStatus tells whether Status came from the upstream in this poll.
	hasStatus bool
}

// Kind is the kind of an Event.
type Kind int

const (
	Created Kind = iota
	Deleted
	Renamed
	Subscribed
	Unsubscribed
	// Messages: MESSAGES, UIDNEXT or UIDVALIDITY changed (new mail or
	// expunges).
	Messages
	// Flags: UNSEEN or the upstream's HIGHESTMODSEQ changed without a
	// change of messages.
	Flags
)

func (k Kind) String() string {
	return [...]string{"created", "deleted", "renamed", "subscribed", "unsubscribed", "messages", "flags"}[k]
}

// Event is one difference between two polls.
type Event struct {
	Kind    Kind
	Mailbox Mailbox
	OldName string // for Renamed
}
