package webpush

import (
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Bounds of a subscription's fields, far above what push services hand
// out (FCM's and Apple's endpoints are some 200 bytes) and low enough
// that a client cannot make the proxy keep much.
const (
	MaxIDLen       = 128
	MaxEndpointLen = 2048
	maxKeyText     = 128 // a P-256 point is 87 characters of base64url
	maxCodeLen     = 64
)

// Subscription is a Web Push subscription as a client registers it with
// WEBPUSH: its ID among the account's subscriptions, the push service's
// endpoint, and the user agent's keys (RFC 8291 section 2).
type Subscription struct {
	ID       string
	Endpoint string
	P256dh   *ecdh.PublicKey
	Auth     []byte
}

// invalidArg is an argument that is not what its place calls for: BAD.
type invalidArg struct{ msg string }

func (e *invalidArg) Error() string { return e.msg }

func invalid(format string, args ...any) error { return &invalidArg{fmt.Sprintf(format, args...)} }

// refused is a well-formed argument the proxy does not accept: NO.
type refused struct{ msg string }

func (e *refused) Error() string { return e.msg }

// parseSubscription checks and decodes WEBPUSH's arguments. allowHTTP
// admits http endpoints on loopback addresses (tests' push services).
func parseSubscription(id, endpoint, p256dh, auth string, allowHTTP bool) (*Subscription, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if _, err := checkEndpoint(endpoint, allowHTTP); err != nil {
		return nil, err
	}
	key, err := decodeKey(p256dh)
	if err != nil {
		return nil, err
	}
	a, err := decodeB64(auth, "authentication secret")
	if err != nil {
		return nil, err
	}
	if len(a) != authLen {
		return nil, invalid("the authentication secret must be 16 bytes, not %d", len(a))
	}
	return &Subscription{ID: id, Endpoint: endpoint, P256dh: key, Auth: a}, nil
}

func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return invalid("the subscription ID must be 1 to %d bytes", MaxIDLen)
	}
	return nil
}

// checkEndpoint accepts an absolute https URL with a host and without
// user information (RFC 8030 section 5: push resources are https), or
// with allowHTTP an http URL on a loopback address. Which addresses the
// proxy may reach is the HTTP client's policy, checked when it connects.
func checkEndpoint(endpoint string, allowHTTP bool) (*url.URL, error) {
	if len(endpoint) > MaxEndpointLen {
		return nil, invalid("the push endpoint is longer than %d bytes", MaxEndpointLen)
	}
	u, err := url.Parse(endpoint)
	if err != nil || !u.IsAbs() || u.Opaque != "" || u.Hostname() == "" {
		return nil, invalid("the push endpoint is not an absolute URL with a host")
	}
	if u.User != nil || u.Fragment != "" || u.RawFragment != "" {
		return nil, invalid("the push endpoint may not hold user information or a fragment")
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if !allowHTTP || !isLoopback(u.Hostname()) {
			return nil, &refused{"the push endpoint must be an https URL"}
		}
	default:
		return nil, &refused{"the push endpoint must be an https URL"}
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// decodeKey decodes the user agent's public key: an uncompressed P-256
// point, base64url.
func decodeKey(s string) (*ecdh.PublicKey, error) {
	b, err := decodeB64(s, "ECDH public key")
	if err != nil {
		return nil, err
	}
	k, err := ecdh.P256().NewPublicKey(b)
	if err != nil {
		return nil, invalid("the ECDH public key is not an uncompressed P-256 point")
	}
	return k, nil
}

// decodeB64 decodes base64url, with or without padding, as browsers'
// PushSubscription.toJSON gives it; plain base64 is accepted too, as
// some libraries send it.
func decodeB64(s, what string) ([]byte, error) {
	if len(s) > maxKeyText {
		return nil, invalid("the %s is too long", what)
	}
	t := strings.TrimRight(s, "=")
	if b, err := base64.RawURLEncoding.DecodeString(t); err == nil {
		return b, nil
	}
	if b, err := base64.RawStdEncoding.DecodeString(t); err == nil {
		return b, nil
	}
	return nil, invalid("the %s is not base64url", what)
}

// regID is the Registration.ID of a subscription ID: a digest, so that
// the registry's keys hold no client-chosen bytes whatever the client
// sent, and the same ID always replaces the same registration.
func regID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// record is how a subscription is kept: the Data of its registration
// once confirmed, and the pending record before.
type record struct {
	ID       string `json:"id"`
	Endpoint string `json:"endpoint"`
	P256dh   string `json:"p256dh"` // base64url, uncompressed point
	Auth     string `json:"auth"`   // base64url
	// VAPID is the proxy's public key (base64url) when the subscription
	// was made: one made for another key must be confirmed again.
	VAPID string `json:"vapid"`
	// Code and Created are the pending record's: the validation code
	// pushed to the endpoint, and when.
	Code    string    `json:"code,omitempty"`
	Created time.Time `json:"created,omitzero"`
}

func newRecord(sub *Subscription, vapid string) *record {
	enc := base64.RawURLEncoding
	return &record{
		ID:       sub.ID,
		Endpoint: sub.Endpoint,
		P256dh:   enc.EncodeToString(sub.P256dh.Bytes()),
		Auth:     enc.EncodeToString(sub.Auth),
		VAPID:    vapid,
	}
}

// sameSubscription reports whether two records name the same
// subscription with the same fields.
func (r *record) sameSubscription(o *record) bool {
	return r.ID == o.ID && r.Endpoint == o.Endpoint && r.P256dh == o.P256dh && r.Auth == o.Auth
}

func (r *record) encode() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err) // strings and a time only
	}
	return b
}

func decodeRecord(b []byte) (*record, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("webpush: bad subscription record: %w", err)
	}
	if r.Endpoint == "" || r.P256dh == "" || r.Auth == "" {
		return nil, errors.New("webpush: incomplete subscription record")
	}
	return &r, nil
}

// subscription decodes the record's keys for a push.
func (r *record) subscription() (*Subscription, *url.URL, error) {
	u, err := url.Parse(r.Endpoint)
	if err != nil {
		return nil, nil, fmt.Errorf("webpush: bad endpoint in record: %w", err)
	}
	key, err := decodeKey(r.P256dh)
	if err != nil {
		return nil, nil, err
	}
	a, err := decodeB64(r.Auth, "authentication secret")
	if err != nil || len(a) != authLen {
		return nil, nil, errors.New("webpush: bad authentication secret in record")
	}
	return &Subscription{ID: r.ID, Endpoint: r.Endpoint, P256dh: key, Auth: a}, u, nil
}
