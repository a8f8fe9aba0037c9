// Package devicetoken is push's device-token channel: a device registers
// by setting the METADATA (RFC 5464) server entry /private/devicetoken
// to its push token, as Delta Chat does with chatmail servers
// (SETMETADATA "" (/private/devicetoken "TOKEN")), and on new mail the
// proxy POSTs the token, as the whole body, to the operator's gateway
// (-push-gateway), which wakes the device through APNs or FCM: the
// contract of chatmail's notification proxy.
//
// The channel is the entry's owner (metadata.Config.Owned): the entry
// never reaches the upstream or METADATA's own records. Each token is one
// registration (its ID a digest of the token), so several devices of an
// account each register theirs. GETMETADATA reads the token registered
// last. Setting the entry to NIL removes every device token of the account
// (METADATA names no device; a device that still wants pushes sets its
// token again, as Delta Chat does at each start).
//
// A token is 1 to MaxToken bytes of printable ASCII without spaces;
// anything else, a mailbox entry, or a registration beyond the account's
// limit is refused with NO and a text that says why, and nothing is
// stored.
//
// # The POST
//
//	POST <gateway> HTTP/1.1
//	Content-Type: text/plain; charset=utf-8
//	X-Lemonproxy-Timestamp: 1765015200                       (with a secret)
//	X-Lemonproxy-Signature: sha256=<64 hex digits>           (with a secret)
//
//	<token>
//
// With -push-gateway-secret, the signature is HMAC-SHA256 keyed with the
// secret file's contents over the timestamp (decimal Unix seconds), a
// period, and the body: the gateway recomputes it, compares in constant
// time, and refuses timestamps far from its clock (replays). The push
// carries nothing else: no sender, no subject, no count.
//
// Answers: 2xx delivered; 404 and 410 remove the token (the gateway says
// the device is gone); 408, 425, 429 and 5xx are retried with backoff;
// other 4xx give the push up (counted, logged).
package devicetoken

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Entry is the METADATA entry a device registers with.
const Entry = "/private/devicetoken"

// ChannelName is the channel's name in registrations and metrics.
const ChannelName = "devicetoken"

// MaxToken bounds a token: APNs tokens are 64 hex digits, FCM tokens
// about 160 characters, chatmail's encrypted tokens under a kilobyte.
const MaxToken = 4096

// Header names of the signature.
const (
	HeaderTimestamp = "X-Lemonproxy-Timestamp"
	HeaderSignature = "X-Lemonproxy-Signature"
)

// Config configures the channel.
type Config struct {
	// Gateway is the URL the tokens are POSTed to: https (plain http only
	// to a loopback address). The operator's own: private addresses are
	// allowed.
	Gateway string
	// Secret, if set, signs every POST (see the package documentation).
	Secret []byte
	// Timeout bounds one POST; default push.DefaultHTTPTimeout.
	Timeout time.Duration
}

// Channel is the device-token channel and the owner of Entry.
type Channel struct {
	reg     push.AccountRegistrar
	gateway string
	secret  []byte
	client  *push.Client
	now     func() time.Time
}

var (
	_ push.Channel        = (*Channel)(nil)
	_ metadata.EntryOwner = (*Channel)(nil)
)

// New returns the channel, registering through reg (the push extension).
func New(reg push.AccountRegistrar, cfg Config) (*Channel, error) {
	policy := gatewayPolicy(cfg.Timeout)
	u, err := policy.CheckURL(cfg.Gateway)
	if err != nil {
		return nil, fmt.Errorf("devicetoken: gateway: %w", err)
	}
	return &Channel{reg: reg, gateway: u.String(), secret: cfg.Secret, client: policy.NewClient(), now: time.Now}, nil
}

// CheckGateway checks a gateway URL as New does, for a configuration
// checked without building the channel (a reload).
func CheckGateway(raw string) error {
	if _, err := gatewayPolicy(0).CheckURL(raw); err != nil {
		return fmt.Errorf("devicetoken: gateway: %w", err)
	}
	return nil
}

// gatewayPolicy is the gateway's address policy: the gateway is the
// operator's, any address, but https unless it is on this machine.
func gatewayPolicy(timeout time.Duration) push.EndpointPolicy {
	return push.EndpointPolicy{AllowPrivate: true, Timeout: timeout}
}

// Name implements push.Channel.
func (*Channel) Name() string { return ChannelName }

// Deliver POSTs the token to the gateway.
func (c *Channel) Deliver(ctx context.Context, account string, reg push.Registration, ev push.Event) error {
	h := http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
	if c.secret != nil {
		ts := strconv.FormatInt(c.now().Unix(), 10)
		h.Set(HeaderTimestamp, ts)
		h.Set(HeaderSignature, Sign(c.secret, ts, reg.Data))
	}
	resp, err := c.client.Post(ctx, c.gateway, h, reg.Data)
	if err != nil {
		return err
	}
	return push.Outcome(resp)
}

// Sign returns the signature header's value for a POST of body at the
// timestamp ts: "sha256=" and the hex HMAC-SHA256 of ts "." body.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// tokenID is a registration's ID: a digest of the token (the token itself
// stays out of keys and logs).
func tokenID(token []byte) string {
	sum := sha256.Sum256(token)
	return hex.EncodeToString(sum[:16])
}

// CheckToken refuses what is not a device token.
func CheckToken(token []byte) error {
	if len(token) == 0 {
		return errors.New("empty")
	}
	if len(token) > MaxToken {
		return fmt.Errorf("longer than %d bytes", MaxToken)
	}
	for _, b := range token {
		if b <= ' ' || b > '~' {
			return errors.New("not printable ASCII without spaces")
		}
	}
	return nil
}

// GetEntry returns the token the account registered last (nil: none).
func (c *Channel) GetEntry(ctx context.Context, a proxy.Account, mailbox, entry string) ([]byte, error) {
	if mailbox != "" {
		return nil, nil
	}
	regs, err := c.reg.Registrations(ctx, a.Name, ChannelName)
	if err != nil {
		return nil, err
	}
	var last *push.Registration
	for i := range regs {
		if last == nil || !regs[i].Created.Before(last.Created) {
			last = &regs[i]
		}
	}
	if last == nil {
		return nil, nil
	}
	return last.Data, nil
}

// SetEntry registers a token, or removes the account's tokens (nil).
func (c *Channel) SetEntry(ctx context.Context, a proxy.Account, mailbox, entry string, value []byte) error {
	if mailbox != "" {
		return &metadata.Refusal{Text: Entry + ` is a server entry: SETMETADATA "" (` + Entry + ` "token").`}
	}
	if value == nil {
		regs, err := c.reg.Registrations(ctx, a.Name, ChannelName)
		if err != nil {
			return err
		}
		for _, r := range regs {
			if err := c.reg.Unregister(ctx, a.Name, ChannelName, r.ID); err != nil {
				return err
			}
		}
		return nil
	}
	if err := CheckToken(value); err != nil {
		return &metadata.Refusal{Text: "Malformed device token (" + err.Error() + "); nothing stored."}
	}
	err := c.reg.RegisterAccount(ctx, a, push.Registration{Channel: ChannelName, ID: tokenID(value), Data: value})
	if errors.Is(err, push.ErrTooMany) {
		return &metadata.Refusal{Code: "METADATA TOOMANY", Text: "Too many devices registered for push on this account; remove one first."}
	}
	return err
}
