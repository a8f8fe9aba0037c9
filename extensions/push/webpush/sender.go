package webpush

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/push"
)

// ChannelName is the channel's name in push.Registration.Channel and in
// the push core's metrics.
const ChannelName = "webpush"

// Payload chooses what a push announcing new mail carries.
type Payload int

const (
	// PayloadCounts (the default) carries, encrypted end to end, the
	// subscription ID, the mailbox's name and its counts: see the
	// package documentation for the JSON. No message content.
	PayloadCounts Payload = iota
	// PayloadNone sends a push without a body: a bare wake-up, which
	// tells the push service nothing but its timing.
	PayloadNone
)

// Defaults of SenderConfig.
const (
	DefaultTTL     = 24 * time.Hour
	DefaultUrgency = "normal"
	DefaultTimeout = 10 * time.Second
)

// SenderConfig configures a Sender.
type SenderConfig struct {
	// KeyFile holds the VAPID key pair, made on first start
	// (LoadOrCreateKey): filepath.Join(dataDir, KeyFileName).
	KeyFile string
	// HTTPClient makes the POSTs to push services. It is required, and
	// is the push core's client, whose dialer enforces which addresses
	// the proxy may reach (no requests into the operator's network on a
	// client's say-so); tests pass a loopback client.
	HTTPClient *http.Client
	// Subject is the VAPID token's "sub" (RFC 8292 section 2.1), the
	// operator's contact for push services: "mailto:..." or an https
	// URL. Empty: "mailto:postmaster@" and the machine's host name.
	Subject string
	// Payload chooses what a push announcing new mail carries.
	Payload Payload
	// TTL is how long a push service keeps a push for a device that is
	// offline (RFC 8030 section 5.2); 0: DefaultTTL. Pushes for one
	// mailbox replace each other at the push service (Topic), so a device
	// that comes back online gets one per mailbox, not a backlog.
	TTL time.Duration
	// Urgency is the pushes' Urgency (RFC 8030 section 5.3): "very-low",
	// "low", "normal" or "high"; "": DefaultUrgency, which lets a phone
	// in power saving wake for mail as for a chat message.
	Urgency string
	// Timeout bounds one POST; 0: DefaultTimeout.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Sender signs, encrypts and POSTs Web Push messages: the push.Channel
// named "webpush", and the validation pushes of the WEBPUSH command.
type Sender struct {
	key     *ecdsa.PrivateKey
	pub     string // base64url uncompressed public key
	client  *http.Client
	subject string
	payload Payload
	ttl     string
	urgency string
	timeout time.Duration
	log     *slog.Logger
}

// NewSender loads (or makes, on first start) the VAPID key and returns the
// channel.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.HTTPClient == nil {
		return nil, errors.New("webpush: SenderConfig.HTTPClient is required (the push core's client)")
	}
	if cfg.KeyFile == "" {
		return nil, errors.New("webpush: SenderConfig.KeyFile is required")
	}
	key, err := LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	// A push service answers a push itself (RFC 8030 section 5): a
	// redirect is a failure to retry, not an invitation to POST the
	// message, signed for the endpoint's origin, somewhere else. The
	// copy shares the client's transport (and its address policy).
	client := *cfg.HTTPClient
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	s := &Sender{
		key:     key,
		pub:     base64.RawURLEncoding.EncodeToString(publicKeyBytes(key)),
		client:  &client,
		subject: cfg.Subject,
		payload: cfg.Payload,
		ttl:     strconv.Itoa(int(orDefault(cfg.TTL, DefaultTTL) / time.Second)),
		urgency: cfg.Urgency,
		timeout: orDefault(cfg.Timeout, DefaultTimeout),
		log:     cfg.Logger,
	}
	if s.subject == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		s.subject = "mailto:postmaster@" + host
	}
	switch s.urgency {
	case "":
		s.urgency = DefaultUrgency
	case "very-low", "low", "normal", "high":
	default:
		return nil, fmt.Errorf("webpush: unknown urgency %q", cfg.Urgency)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Name implements push.Channel.
func (*Sender) Name() string { return ChannelName }

// PublicKey returns the VAPID public key as GETVAPID gives it: the
// uncompressed P-256 point, base64url without padding, the form a
// browser's PushManager.subscribe takes as applicationServerKey.
func (s *Sender) PublicKey() string { return s.pub }

// mailPayload is the JSON of PayloadCounts.
type mailPayload struct {
	ID       string `json:"id"`
	Mailbox  string `json:"mailbox,omitempty"`
	Messages uint32 `json:"messages"`
	New      uint32 `json:"new"`
	UIDNext  uint32 `json:"uidnext"`
}

// validationPayload is the JSON of a validation push.
type validationPayload struct {
	ID         string `json:"id"`
	Validation string `json:"validation"`
}

// padTo is the granularity plaintexts are padded to, so that the push
// service cannot tell mailboxes (or counts) apart by the length of what
// it relays.
const padTo = 128

// Deliver implements push.Channel: one push announcing ev to the
// subscription reg holds. A subscription the push service no longer knows
// (404, 410) or a registration that cannot be read is ErrGone; any other
// failure is an error to retry, a *StatusError when the service answered.
func (s *Sender) Deliver(ctx context.Context, account string, reg push.Registration, ev push.Event) error {
	rec, err := decodeRecord(reg.Data)
	if err != nil {
		return fmt.Errorf("%w: %w", push.ErrGone, err)
	}
	sub, u, err := rec.subscription()
	if err != nil {
		return fmt.Errorf("%w: %w", push.ErrGone, err)
	}
	var plain []byte
	if s.payload == PayloadCounts {
		p := mailPayload{ID: rec.ID, Mailbox: ev.Mailbox, Messages: ev.Messages, New: ev.New, UIDNext: ev.UIDNext}
		plain, _ = json.Marshal(p)
		if len(plain) > MaxPlaintext {
			p.Mailbox = "" // a name too long to carry: the device looks
			plain, _ = json.Marshal(p)
		}
	}
	return s.post(ctx, sub, u, plain, s.ttl, s.urgency, topic(ev.Mailbox))
}

// validate pushes code to a new subscription (the WEBPUSH command), for
// the client to confirm it with ACKWEBPUSH: high urgency and a short
// lifetime, since the client waits for it.
func (s *Sender) validate(ctx context.Context, sub *Subscription, code string) error {
	u, err := url.Parse(sub.Endpoint) // checked by parseSubscription
	if err != nil {
		return err
	}
	plain, _ := json.Marshal(validationPayload{ID: sub.ID, Validation: code})
	return s.post(ctx, sub, u, plain, "300", "high", "")
}

// topic names the pushes of one mailbox at the push service (RFC 8030
// section 5.4: a newer push replaces an undelivered one with the same
// topic): 32 base64url characters of a digest, not the name itself.
func topic(mailbox string) string {
	sum := sha256.Sum256([]byte(mailbox))
	return base64.RawURLEncoding.EncodeToString(sum[:24])
}

// post sends one push: plain encrypted for sub (no body when plain is
// nil), signed with the VAPID key for the endpoint's origin.
func (s *Sender) post(ctx context.Context, sub *Subscription, u *url.URL, plain []byte, ttl, urgency, topic string) error {
	var body []byte
	if plain != nil {
		as, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		salt := make([]byte, 16)
		rand.Read(salt)
		pad := 0
		if r := len(plain) % padTo; r != 0 {
			pad = min(padTo-r, MaxPlaintext-len(plain))
		}
		if body, err = encrypt(plain, pad, sub.P256dh, sub.Auth, as, salt); err != nil {
			return err
		}
	}
	aud := origin(u)
	auth, err := vapidAuthorization(s.key, s.pub, aud, s.subject, time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sub.Endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webpush: push to %s: %w", aud, err)
	}
	if body != nil {
		req.Header.Set("Content-Encoding", "aes128gcm")
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	req.Header.Set("TTL", ttl)
	req.Header.Set("Urgency", urgency)
	if topic != "" {
		req.Header.Set("Topic", topic)
	}
	req.Header.Set("Authorization", auth)
	resp, err := s.client.Do(req)
	if err != nil {
		// A *url.Error names the whole endpoint, which is a secret of
		// the subscription (whoever has it can push to the device, at
		// least to services without VAPID restriction): keep the origin.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webpush: push to %s: %w", aud, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	se := &StatusError{Status: resp.StatusCode, Origin: aud}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra > 0 {
		se.RetryAfter = time.Duration(ra) * time.Second
	}
	// Sorted as push.Outcome sorts a gateway's answers: gone, worth
	// retrying (no sooner than Retry-After), or refused for good.
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound || code == http.StatusGone:
		return fmt.Errorf("%w: %w", push.ErrGone, se)
	case code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests || code >= 500:
		return &push.RetryError{Err: se, After: se.RetryAfter}
	default:
		return fmt.Errorf("%w: %w", push.ErrRejected, se)
	}
}

// StatusError is a push service's answer other than 2xx.
type StatusError struct {
	Status int
	Origin string // the push service, never the whole endpoint
	// RetryAfter is the service's Retry-After in seconds, if it sent one
	// (429, 503).
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("webpush: %s answered %d %s", e.Origin, e.Status, http.StatusText(e.Status))
}
