// Package push wakes devices that cannot hold an IMAP connection (issue
// 18): a phone registers once, through a channel's IMAP command (a
// METADATA device token, an IMAP WEBPUSH subscription), and is then pushed
// to through that channel whenever one of its watched mailboxes gets new
// mail, whether or not a session of the account is connected.
//
// The package is the channel-neutral part: the Registry that keeps
// registrations per account in accountdata, the watchers of registered
// accounts on the hub, and the durable, retried, coalesced delivery of
// Events to Channels. Each channel (the device-token gateway POST, Web
// Push) implements Channel in a package of its own and registers devices
// through the Registry.
//
// This file is the contract between the two halves; see docs/push.md.
package push

import (
	"context"
	"errors"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// Event is what one push announces: new mail in one mailbox of the
// account. It carries no message content.
type Event struct {
	Mailbox string `json:"mailbox"`
	// Messages is the mailbox's message count after the batch, New how
	// many of them arrived in it (a burst is one Event, not one per
	// message), UIDNext the mailbox's UIDNEXT after it.
	Messages uint32 `json:"messages"`
	New      uint32 `json:"new"`
	UIDNext  uint32 `json:"uidnext"`
	// At is when the hub saw the change (push latency is measured from it).
	At time.Time `json:"at"`
}

// Registration is one device's subscription through one channel.
type Registration struct {
	// Channel names the Channel that delivers to it (Channel.Name).
	Channel string
	// ID identifies the registration among the account's registrations
	// of the channel (the channel derives it from Data, e.g. a digest of
	// the token or of the push endpoint), so that registering the same
	// device again replaces it.
	ID string
	// Data is the channel's own description of the device (the token;
	// the subscription's endpoint and keys), opaque to this package.
	Data []byte
	// Mailboxes lists the mailboxes that push; nil means the configured
	// default (INBOX).
	Mailboxes []string
	Created   time.Time
}

// Channel delivers pushes of one kind.
type Channel interface {
	// Name is the channel's name in Registration.Channel and in metrics
	// ("devicetoken", "webpush").
	Name() string
	// Deliver sends one push to one registration of account. An error
	// that wraps ErrGone removes the registration (the push service
	// answered 404 or 410); one that wraps ErrRejected gives the push up
	// at once; any other error is retried with backoff (no sooner than a
	// *RetryError's After). Outcome sorts an HTTP answer this way.
	// Deliver is called from several goroutines at once, never twice at
	// once for one registration; ctx bounds the attempt.
	Deliver(ctx context.Context, account string, reg Registration, ev Event) error
}

// ErrGone says a registration no longer exists at its push service.
var ErrGone = errors.New("push: registration gone")

// ErrTooMany refuses a registration beyond the per-account limit.
var ErrTooMany = errors.New("push: too many registrations for the account")

// ErrRejected says the push service refused a push for good (an HTTP 4xx
// other than 404, 408, 410, 425 and 429: a malformed token, a payload it
// will never take). A Deliver error that wraps it is not retried: the
// push is given up at once, counted and logged; the registration stays.
var ErrRejected = errors.New("push: push refused by the push service")

// Registrar is what a channel's IMAP command uses to register the session's
// device: the Registry's side facing sessions.
type Registrar interface {
	// Register stores reg for the session's account (replacing one of the
	// same Channel and ID) and starts watching the account if it was not
	// watched. It captures what the proxy needs to log in for the account
	// later (sealed credentials, where the operator chose them).
	Register(ctx context.Context, s *proxy.Session, reg Registration) error
	// Unregister removes the account's registration of channel and id; it
	// is not an error if there is none.
	Unregister(ctx context.Context, account, channel, id string) error
	// Registrations lists the account's registrations of channel.
	Registrations(ctx context.Context, account, channel string) ([]Registration, error)
}

// AccountRegistrar is a Registrar that also registers for an account
// rather than a session: what a channel gets where it is handed a
// proxy.Account (metadata's EntryOwner, for the device-token channel),
// which holds the session's credentials. Register(ctx, s, reg) is
// RegisterAccount(ctx, s.UpstreamAccount(), reg). The Extension is one.
type AccountRegistrar interface {
	Registrar
	RegisterAccount(ctx context.Context, a proxy.Account, reg Registration) error
}
