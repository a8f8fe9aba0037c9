// Package webpush is the Web Push channel of issue 18: IMAP WEBPUSH
// (draft-gougeon-imap-webpush) lets a client register a Web Push
// subscription (RFC 8030) over IMAP, and the proxy then pushes to it,
// encrypted end to end (RFC 8291, aes128gcm of RFC 8188) and signed with
// its VAPID key (RFC 8292), whenever the push core (package push) sees new
// mail for the account, whether or not a session is connected.
//
// Two values: the Sender is the push.Channel "webpush" (it encrypts, signs
// and POSTs a push), and the Extension answers the draft's commands in
// sessions and registers confirmed subscriptions with the push core
// through a push.Registrar. The Sender is made first, so that the push
// core can be given it as a channel and the Extension the core as its
// Registrar.
//
// # Commands
//
// The capability is WEBPUSH, after login, where the upstream does not have
// it itself (then the commands are relayed). The commands, in the
// authenticated and selected states:
//
//	GETVAPID                              * VAPID "<key>"
//	WEBPUSH id endpoint p256dh auth       create or update a subscription
//	WEBPUSH id NIL                        delete it (OK if there is none)
//	ACKWEBPUSH id code                    confirm it
//
// GETVAPID gives the proxy's VAPID public key (the uncompressed P-256 point,
// base64url without padding), which the client passes to its push
// service as the applicationServerKey of the subscription.
//
// WEBPUSH's arguments are the subscription's ID (chosen by the client,
// unique per account: the same ID updates the subscription), the push
// endpoint (an https URL), the user agent's ECDH public key (an
// uncompressed P-256 point, base64url) and its 16-byte authentication
// secret (base64url), as PushSubscription.toJSON gives them. A new
// subscription, or one whose fields changed, is not active until the client
// confirms it: the proxy pushes to it, there and then, a validation code
// (the JSON below), answers
//
//   - WEBPUSH "<id>" INACTIVE
//   - VAPID "<key>"
//     tag OK WEBPUSH completed.
//
// and the client sends the code back with ACKWEBPUSH, which activates the
// subscription (registers it with the push core). Updating an active
// subscription with different fields deactivates it until then. A
// subscription activated under another VAPID key (the key file was
// replaced) is deactivated by the next WEBPUSH for it and confirmed
// again. WEBPUSH with the same fields for an active subscription is
// answered OK alone.
//
// Malformed arguments (not a URL, not base64url, a key that is not a point
// of the curve, a secret that is not 16 bytes, anything over its bound)
// are BAD; an http endpoint (https is required, except http on loopback
// with Config.AllowHTTP, for tests), too many subscriptions waiting for
// confirmation, a validation push the push service refused or that could
// not be sent, a wrong code: NO. Whatever is refused stores nothing.
//
// Draft version. This follows draft-gougeon-imap-webpush as far as its
// text could be read when it was written (the GETVAPID, WEBPUSH and
// ACKWEBPUSH commands and WEBPUSH's create, update, delete and
// confirmation rules, from -02's text); the untagged WEBPUSH response's
// state word, ACKWEBPUSH's arguments and the JSON of the pushes are this
// package's choices. docs/webpush.md lists them; they are all in this
// file, parse.go and sender.go.
//
// # Pushes
//
// A push is an HTTP POST to the endpoint, with Content-Encoding: aes128gcm
// (one record, the plaintext padded to a multiple of 128 bytes),
// Authorization: vapid t=<ES256 JWT: aud the endpoint's origin, exp 12
// hours on, sub SenderConfig.Subject>, k=<public key>, TTL (24 hours),
// Urgency ("normal") and, for mail, a Topic derived from the mailbox, so
// that an offline device is handed one push per mailbox, the latest. Its
// plaintext (SenderConfig.Payload: PayloadCounts, the default) is
//
//	{"id":"<subscription id>","mailbox":"INBOX","messages":12,"new":1,"uidnext":13}
//
// (the subscription ID tells a device that registered several accounts
// with one push endpoint which one it is); PayloadNone sends no body at
// all. The validation push is {"id":"<subscription id>","validation":
// "<code>"} with Urgency high and a TTL of 5 minutes. A push service that
// answers 404 or 410 has forgotten the subscription: Deliver returns
// push.ErrGone and the push core removes the registration; any other
// failure is a *StatusError (or a transport error) the core retries.
//
// # Keys and records
//
// The VAPID key pair is generated on first start in the data directory,
// file KeyFileName ("webpush-vapid.pem", PKCS #8 PEM, mode 0600); a key
// file readable by others is refused. A cluster's nodes must share it.
//
// A confirmed subscription is a push.Registration of channel "webpush"
// whose ID is a digest of the client's subscription ID and whose Data is
// the JSON record in subscription.go (ID, endpoint, keys, and the VAPID
// key it was made for). Subscriptions waiting for ACKWEBPUSH are this
// package's own, in the account data store (proxy.Services.Data) under
//
//	"webpush/pending/" + hex digest of the subscription ID
//
// for at most Config.PendingTTL (24 hours), at most Config.MaxPending (10)
// per account. One session may cause at most Config.MaxValidations (16)
// validation pushes, so that no client can make the proxy POST without
// bound. Everything is keyed by the session's account: one account's
// subscriptions are never read, changed or pushed to for another.
//
// # Place in the chain
//
// Anywhere: its commands are its own and it sees no other.
package webpush

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// PendingPrefix is the key prefix of the subscriptions waiting for
// confirmation in the account data store.
const PendingPrefix = "webpush/pending/"

// Defaults of Config.
const (
	DefaultMaxPending     = 10
	DefaultPendingTTL     = 24 * time.Hour
	DefaultMaxValidations = 16
)

// Config configures the Extension.
type Config struct {
	// Sender pushes the validation codes and gives the VAPID key.
	Sender *Sender
	// Registrar is the push core, with which confirmed subscriptions are
	// registered.
	Registrar push.Registrar
	// AllowHTTP accepts http endpoints on loopback addresses (for tests'
	// push services); https is required otherwise.
	AllowHTTP bool
	// MaxPending bounds the subscriptions of an account waiting for
	// ACKWEBPUSH; 0: DefaultMaxPending.
	MaxPending int
	// PendingTTL is how long a subscription may wait for ACKWEBPUSH; 0:
	// DefaultPendingTTL.
	PendingTTL time.Duration
	// MaxValidations bounds the validation pushes one session may cause;
	// 0: DefaultMaxValidations.
	MaxValidations int
}

// Extension answers GETVAPID, WEBPUSH and ACKWEBPUSH; see the package
// documentation.
type Extension struct {
	sender         *Sender
	reg            push.Registrar
	allowHTTP      bool
	maxPending     int
	pendingTTL     time.Duration
	maxValidations int
	data           accountdata.Store
	now            func() time.Time

	// locks serialise the changes to one account's subscriptions (by a
	// hash of its name; a fixed array, so nothing grows per account).
	seed  maphash.Seed
	locks [64]sync.Mutex
}

// New returns the extension. Sender and Registrar are required.
func New(cfg Config) (*Extension, error) {
	if cfg.Sender == nil || cfg.Registrar == nil {
		return nil, errors.New("webpush: Config.Sender and Config.Registrar are required")
	}
	e := &Extension{
		sender:         cfg.Sender,
		reg:            cfg.Registrar,
		allowHTTP:      cfg.AllowHTTP,
		maxPending:     cfg.MaxPending,
		pendingTTL:     orDefault(cfg.PendingTTL, DefaultPendingTTL),
		maxValidations: cfg.MaxValidations,
		now:            time.Now,
		seed:           maphash.MakeSeed(),
	}
	if e.maxPending <= 0 {
		e.maxPending = DefaultMaxPending
	}
	if e.maxValidations <= 0 {
		e.maxValidations = DefaultMaxValidations
	}
	return e, nil
}

// Name identifies the extension.
func (*Extension) Name() string { return "webpush" }

// Provision takes the account data store, where pending subscriptions
// are kept.
func (e *Extension) Provision(svc proxy.Services) error {
	if svc.Data == nil {
		return errors.New("webpush: no account data store")
	}
	e.data = svc.Data
	return nil
}

// Capabilities advertises WEBPUSH after login, unless the upstream has it.
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected || up.Has("WEBPUSH") {
		return nil
	}
	return []string{"WEBPUSH"}
}

// Commands names the draft's commands.
func (*Extension) Commands() []string { return []string{"GETVAPID", "WEBPUSH", "ACKWEBPUSH"} }

// ServeCommand answers the commands; before login, and where the upstream
// has WEBPUSH, it passes them on.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.Account() == "" || x.Streamed() || s.UpstreamCaps().Has("WEBPUSH") {
		return next(ctx, x)
	}
	// Parsed anew from the segments: x.Command's parser may have been
	// read by a handler before this one.
	cmd, err := imapcodec.ParseCommand(x.Segments, imapcodec.Limits{})
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+".")
	}
	a, err := parseArgs(x.Name, cmd.Args)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	switch x.Name {
	case "GETVAPID":
		if err := s.Write(vapidResponse(nil, e.sender.pub)); err != nil {
			return err
		}
		return x.Reply("OK", "", "GETVAPID completed.")
	case "WEBPUSH":
		if a.Delete {
			return e.remove(ctx, x, a.ID)
		}
		sub, err := parseSubscription(a.ID, a.Endpoint, a.P256dh, a.Auth, e.allowHTTP)
		var r *refused
		switch {
		case errors.As(err, &r):
			return x.Reply("NO", "", "Cannot create the subscription: "+r.msg+".")
		case err != nil:
			return x.Reply("BAD", "", "Error in IMAP command WEBPUSH: "+err.Error()+".")
		}
		return e.subscribe(ctx, x, sub)
	case "ACKWEBPUSH":
		return e.confirm(ctx, x, a.ID, a.Code)
	}
	return next(ctx, x)
}

func vapidResponse(b []byte, key string) []byte {
	b = append(b, "* VAPID "...)
	b = imapcodec.AppendQuoted(b, key)
	return append(b, "\r\n"...)
}

func webpushResponse(b []byte, id, state string) []byte {
	b = append(b, "* WEBPUSH "...)
	if imapcodec.CanQuote(id) {
		b = imapcodec.AppendQuoted(b, id)
	} else {
		b = imapcodec.AppendString(b, id, false) // a literal
	}
	b = append(b, ' ')
	b = append(b, state...)
	return append(b, "\r\n"...)
}

func (e *Extension) lock(account string) func() {
	m := &e.locks[maphash.String(e.seed, account)%uint64(len(e.locks))]
	m.Lock()
	return m.Unlock
}

// active returns the account's confirmed subscription with the ID, or nil.
func (e *Extension) active(ctx context.Context, account, id string) (*record, error) {
	regs, err := e.reg.Registrations(ctx, account, ChannelName)
	if err != nil {
		return nil, err
	}
	want := regID(id)
	for _, r := range regs {
		if r.ID != want {
			continue
		}
		rec, err := decodeRecord(r.Data)
		if err != nil {
			return nil, err
		}
		return rec, nil
	}
	return nil, nil
}

// pending returns the account's subscriptions waiting for confirmation,
// by store key, and the keys of those that waited too long.
func (e *Extension) pending(account string) (live map[string]*record, expired []string, err error) {
	live = map[string]*record{}
	now := e.now()
	err = e.data.List(account, PendingPrefix, func(k string, v []byte) bool {
		rec, err := decodeRecord(v)
		if err != nil || now.Sub(rec.Created) > e.pendingTTL || rec.Created.After(now.Add(time.Minute)) {
			expired = append(expired, k)
			return true
		}
		live[k] = rec
		return true
	})
	return live, expired, err
}

type validationsKey struct{}

// unavailable answers a command whose state the proxy could not read or
// write.
func unavailable(x *proxy.Exchange, what string, err error) error {
	x.Session().Logger().Warn("WEBPUSH: "+what, "err", err)
	return x.Reply("NO", "UNAVAILABLE", "Cannot "+what+" now; try again later.")
}

// subscribe answers WEBPUSH id endpoint p256dh auth.
func (e *Extension) subscribe(ctx context.Context, x *proxy.Exchange, sub *Subscription) error {
	s := x.Session()
	account := s.Account()
	rec := newRecord(sub, e.sender.pub)
	act, err := e.active(ctx, account, sub.ID)
	if err != nil {
		return unavailable(x, "read the subscriptions", err)
	}
	if act != nil && act.sameSubscription(rec) && act.VAPID == rec.VAPID {
		return x.Reply("OK", "", "WEBPUSH completed.")
	}
	key := PendingPrefix + regID(sub.ID)
	live, _, err := e.pending(account)
	if err != nil {
		return unavailable(x, "read the subscriptions", err)
	}
	if old := live[key]; old != nil && old.sameSubscription(rec) && old.VAPID == rec.VAPID {
		rec.Code = old.Code // the client may yet receive the first push
	} else {
		delete(live, key)
		if len(live) >= e.maxPending {
			return x.Reply("NO", "LIMIT", "Too many subscriptions wait for ACKWEBPUSH.")
		}
		rec.Code = newCode()
	}
	n, _ := s.Value(validationsKey{}).(int)
	if n >= e.maxValidations {
		return x.Reply("NO", "LIMIT", "Too many WEBPUSH commands in this session.")
	}
	s.SetValue(validationsKey{}, n+1)

	if err := e.sender.validate(ctx, sub, rec.Code); err != nil {
		s.Logger().Info("WEBPUSH: validation push failed", "err", err)
		var se *StatusError
		if errors.As(err, &se) {
			return x.Reply("NO", "", fmt.Sprintf("The push service refused the subscription: %d %s.", se.Status, http.StatusText(se.Status)))
		}
		return x.Reply("NO", "UNAVAILABLE", "Cannot reach the push service.")
	}

	unlock := e.lock(account)
	live, expired, err := e.pending(account)
	if err == nil {
		delete(live, key)
		if len(live) >= e.maxPending {
			unlock()
			return x.Reply("NO", "LIMIT", "Too many subscriptions wait for ACKWEBPUSH.")
		}
		rec.Created = e.now()
		err = e.data.Write(account, []accountdata.Record{{Key: key, Value: rec.encode()}}, expired)
	}
	unlock()
	if err != nil {
		return unavailable(x, "store the subscription", err)
	}
	if act != nil {
		// Updated (or made for another VAPID key): inactive until confirmed.
		if err := e.reg.Unregister(ctx, account, ChannelName, regID(sub.ID)); err != nil {
			return unavailable(x, "update the subscription", err)
		}
	}
	if err := s.Write(vapidResponse(webpushResponse(nil, sub.ID, "INACTIVE"), e.sender.pub)); err != nil {
		return err
	}
	return x.Reply("OK", "", "WEBPUSH completed.")
}

// newCode returns a validation code: 128 random bits, base64url.
func newCode() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// remove answers WEBPUSH id NIL.
func (e *Extension) remove(ctx context.Context, x *proxy.Exchange, id string) error {
	account := x.Session().Account()
	unlock := e.lock(account)
	err := accountdata.Delete(e.data, account, PendingPrefix+regID(id))
	unlock()
	if err == nil {
		err = e.reg.Unregister(ctx, account, ChannelName, regID(id))
	}
	if err != nil {
		return unavailable(x, "delete the subscription", err)
	}
	return x.Reply("OK", "", "WEBPUSH completed.")
}

// confirm answers ACKWEBPUSH id code.
func (e *Extension) confirm(ctx context.Context, x *proxy.Exchange, id, code string) error {
	s := x.Session()
	account := s.Account()
	key := PendingPrefix + regID(id)
	unlock := e.lock(account)
	defer unlock()
	live, _, err := e.pending(account)
	if err != nil {
		return unavailable(x, "read the subscriptions", err)
	}
	rec := live[key]
	if rec == nil {
		act, err := e.active(ctx, account, id)
		if err != nil {
			return unavailable(x, "read the subscriptions", err)
		}
		if act != nil && act.VAPID == e.sender.pub {
			return x.Reply("OK", "", "ACKWEBPUSH completed: the subscription is active.")
		}
		return x.Reply("NO", "NONEXISTENT", "No subscription with this ID waits for confirmation.")
	}
	if subtle.ConstantTimeCompare([]byte(code), []byte(rec.Code)) != 1 {
		return x.Reply("NO", "", "Wrong validation code.")
	}
	if rec.VAPID != e.sender.pub {
		return x.Reply("NO", "", "The VAPID key changed: send WEBPUSH again.")
	}
	rec.Code, rec.Created = "", time.Time{}
	err = e.reg.Register(ctx, s, push.Registration{Channel: ChannelName, ID: regID(id), Data: rec.encode(), Created: e.now()})
	switch {
	case errors.Is(err, push.ErrTooMany):
		return x.Reply("NO", "LIMIT", "Too many push registrations for this account.")
	case err != nil:
		return unavailable(x, "register the subscription", err)
	}
	if err := accountdata.Delete(e.data, account, key); err != nil {
		s.Logger().Warn("ACKWEBPUSH: removing the pending record", "err", err)
	}
	return x.Reply("OK", "", "ACKWEBPUSH completed.")
}
