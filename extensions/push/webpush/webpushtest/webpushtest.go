// Package webpushtest is a Web Push service for tests (RFC 8030's push
// resource, the receiving end of RFC 8291 and RFC 8292): it makes
// subscriptions as a browser would (a P-256 key pair and an authentication
// secret per subscription, an endpoint on a loopback listener), receives
// the POSTs of the proxy's webpush channel, checks their VAPID token and
// decrypts their aes128gcm body with the subscription's private key, and
// hands the tests what it received.
//
// It is a real check of the sender: the decryption (Decrypt) and the
// token check (VerifyVAPID) are written here from the RFCs, on crypto/hmac
// and crypto/ecdsa, sharing no code with package webpush, and Decrypt is
// tested on the RFCs' own examples. A request that fails a check is
// answered 400 or 403, kept in Rejected, and is not a Message.
package webpushtest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Message is a push the service accepted.
type Message struct {
	// Subscription is the endpoint it was sent to.
	Subscription *Subscription
	// Plaintext is the decrypted body, padding removed; nil for a push
	// without a body.
	Plaintext []byte
	// BodyLen is the length of the encrypted body.
	BodyLen int
	// TTL, Urgency and Topic are the request's headers (RFC 8030).
	TTL, Urgency, Topic string
	// VAPIDKey is the k= parameter of the Authorization header (base64url)
	// and Claims the token's verified claims.
	VAPIDKey string
	Claims   Claims
	At       time.Time
}

// Claims are a VAPID token's claims (RFC 8292 section 2).
type Claims struct {
	Aud string `json:"aud"`
	Exp int64  `json:"exp"`
	Sub string `json:"sub"`
}

// Subscription is a push subscription at the service, as a browser's
// PushManager would hand it to an application.
type Subscription struct {
	// Endpoint, P256dh and Auth are what the client registers (WEBPUSH's
	// arguments): the push resource's URL, the user agent's public key
	// (uncompressed P-256 point) and its 16-byte authentication secret,
	// both base64url without padding.
	Endpoint, P256dh, Auth string

	key    *ecdh.PrivateKey
	auth   []byte
	vapid  string // the applicationServerKey the subscription is restricted to, or ""
	status int    // the answer to pushes; 0: 201
}

// Service is a push service on a loopback listener.
type Service struct {
	srv *httptest.Server

	mu       sync.Mutex
	subs     map[string]*Subscription // by path
	msgs     []Message
	rejected []error
	arrived  chan struct{} // closed and replaced when a message arrives
}

// New starts a service; with useTLS its endpoints are https (the client
// must then be Client's), else http. It is closed when the test ends.
func New(t testing.TB, useTLS bool) *Service {
	t.Helper()
	s := &Service{subs: map[string]*Subscription{}, arrived: make(chan struct{})}
	if useTLS {
		s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	} else {
		s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	}
	t.Cleanup(s.srv.Close)
	return s
}

// Client returns an HTTP client that trusts the service's certificate and
// reaches it on loopback: what the webpush sender is given in tests.
func (s *Service) Client() *http.Client { return s.srv.Client() }

// Origin returns the service's origin, the audience a VAPID token for it
// must name.
func (s *Service) Origin() string { return s.srv.URL }

// Subscribe makes a subscription, restricted to pushes signed with the
// VAPID key applicationServerKey (base64url, as GETVAPID gives it) unless
// that is "" (RFC 8292 section 4).
func (s *Service) Subscribe(t testing.TB, applicationServerKey string) *Subscription {
	t.Helper()
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	auth := make([]byte, 16)
	rand.Read(auth)
	tok := make([]byte, 12)
	rand.Read(tok)
	path := "/push/" + base64.RawURLEncoding.EncodeToString(tok)
	enc := base64.RawURLEncoding
	sub := &Subscription{
		Endpoint: s.srv.URL + path,
		P256dh:   enc.EncodeToString(key.PublicKey().Bytes()),
		Auth:     enc.EncodeToString(auth),
		key:      key,
		auth:     auth,
		vapid:    applicationServerKey,
	}
	s.mu.Lock()
	s.subs[path] = sub
	s.mu.Unlock()
	return sub
}

// SetStatus makes the service answer pushes to sub with code (410: the
// subscription expired) without checking them; 0 restores normal service.
func (s *Service) SetStatus(sub *Subscription, code int) {
	s.mu.Lock()
	sub.status = code
	s.mu.Unlock()
}

// Messages returns the pushes accepted so far, in order of arrival.
func (s *Service) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Rejected returns why requests were refused, in order.
func (s *Service) Rejected() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.rejected...)
}

// Wait returns the n-th accepted push (counting from 1), waiting at most
// timeout for it; it fails the test if it does not come.
func (s *Service) Wait(t testing.TB, n int, timeout time.Duration) Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			m := s.msgs[n-1]
			s.mu.Unlock()
			return m
		}
		ch := s.arrived
		rej := s.rejected
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("webpushtest: push %d did not arrive within %v (rejected: %v)", n, timeout, rej)
		}
	}
}

func (s *Service) reject(w http.ResponseWriter, code int, err error) {
	s.mu.Lock()
	s.rejected = append(s.rejected, err)
	s.mu.Unlock()
	http.Error(w, err.Error(), code)
}

func (s *Service) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	sub := s.subs[r.URL.Path]
	status := 0
	if sub != nil {
		status = sub.status
	}
	s.mu.Unlock()
	if sub == nil {
		http.NotFound(w, r)
		return
	}
	if status != 0 {
		w.WriteHeader(status)
		return
	}
	if r.Method != http.MethodPost {
		s.reject(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s", r.Method))
		return
	}
	now := time.Now()
	claims, k, err := VerifyVAPID(r.Header.Get("Authorization"), s.Origin(), now)
	if err != nil {
		s.reject(w, http.StatusForbidden, err)
		return
	}
	if sub.vapid != "" && k != sub.vapid {
		s.reject(w, http.StatusForbidden, errors.New("signed with a VAPID key the subscription is not restricted to"))
		return
	}
	// RFC 8030 section 5.2: TTL is required, a number of seconds.
	ttl := r.Header.Get("TTL")
	if n, err := strconv.Atoi(ttl); err != nil || n < 0 {
		s.reject(w, http.StatusBadRequest, fmt.Errorf("TTL %q", ttl))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4097))
	if err != nil {
		s.reject(w, http.StatusBadRequest, err)
		return
	}
	// RFC 8291 section 4: a push message is at most 4096 bytes.
	if len(body) > 4096 {
		s.reject(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body of %d bytes", len(body)))
		return
	}
	var plain []byte
	if len(body) > 0 {
		if ce := r.Header.Get("Content-Encoding"); ce != "aes128gcm" {
			s.reject(w, http.StatusBadRequest, fmt.Errorf("Content-Encoding %q", ce))
			return
		}
		if plain, err = Decrypt(body, sub.key, sub.auth); err != nil {
			s.reject(w, http.StatusBadRequest, err)
			return
		}
	}
	m := Message{
		Subscription: sub, Plaintext: plain, BodyLen: len(body),
		TTL: ttl, Urgency: r.Header.Get("Urgency"), Topic: r.Header.Get("Topic"),
		VAPIDKey: k, Claims: claims, At: now,
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	close(s.arrived)
	s.arrived = make(chan struct{})
	s.mu.Unlock()
	w.Header().Set("Location", s.srv.URL+"/message/"+strconv.Itoa(len(s.msgs)))
	w.WriteHeader(http.StatusCreated)
}

// VerifyVAPID checks an Authorization header "vapid t=<JWT>, k=<key>"
// (RFC 8292 section 3) for a push to the service at origin at time now:
// the JWT is an ES256 JWS signed by k (an uncompressed P-256 point,
// base64url), its aud is origin, its exp is after now and at most 24
// hours on, its sub is a mailto: or https: URL. It returns the claims and
// k.
func VerifyVAPID(header, origin string, now time.Time) (Claims, string, error) {
	var c Claims
	scheme, params, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "vapid") {
		return c, "", fmt.Errorf("authorization %q is not vapid", header)
	}
	var t, k string
	for _, p := range strings.Split(params, ",") {
		name, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch strings.ToLower(name) {
		case "t":
			t = v
		case "k":
			k = v
		}
	}
	if t == "" || k == "" {
		return c, "", fmt.Errorf("vapid authorization without t or k: %q", header)
	}
	enc := base64.RawURLEncoding
	kb, err := enc.DecodeString(k)
	if err != nil {
		return c, "", fmt.Errorf("k: %w", err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), kb)
	if err != nil {
		return c, "", fmt.Errorf("k is not a P-256 point: %w", err)
	}
	parts := strings.Split(t, ".")
	if len(parts) != 3 {
		return c, "", fmt.Errorf("token has %d parts", len(parts))
	}
	hb, err := enc.DecodeString(parts[0])
	if err != nil {
		return c, "", fmt.Errorf("token header: %w", err)
	}
	var h struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
	}
	if err := json.Unmarshal(hb, &h); err != nil || h.Alg != "ES256" {
		return c, "", fmt.Errorf("token header %s: not ES256", hb)
	}
	sig, err := enc.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return c, "", errors.New("token signature is not 64 bytes of base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return c, "", errors.New("token signature does not verify with k")
	}
	cb, err := enc.DecodeString(parts[1])
	if err != nil {
		return c, "", fmt.Errorf("token claims: %w", err)
	}
	if err := json.Unmarshal(cb, &c); err != nil {
		return c, "", fmt.Errorf("token claims %s: %w", cb, err)
	}
	exp := time.Unix(c.Exp, 0)
	switch {
	case c.Aud != origin:
		return c, "", fmt.Errorf("token aud %q, want %q", c.Aud, origin)
	case !exp.After(now):
		return c, "", fmt.Errorf("token expired at %v", exp)
	case exp.After(now.Add(24 * time.Hour)):
		return c, "", fmt.Errorf("token exp %v more than 24 hours on", exp)
	case !strings.HasPrefix(c.Sub, "mailto:") && !strings.HasPrefix(c.Sub, "https:"):
		return c, "", fmt.Errorf("token sub %q is not a mailto: or https: URL", c.Sub)
	}
	return c, k, nil
}

// hkdf is RFC 5869's HKDF-Extract and -Expand for one block (at most 32
// bytes), as RFC 8291 section 3.4 spells it out with HMAC-SHA-256.
func hkdf(salt, ikm []byte, info string, n int) []byte {
	mac := hmac.New(sha256.New, salt)
	mac.Write(ikm)
	prk := mac.Sum(nil)
	mac = hmac.New(sha256.New, prk)
	mac.Write([]byte(info))
	mac.Write([]byte{1})
	return mac.Sum(nil)[:n]
}

// Decrypt decodes a Web Push message body (RFC 8291 section 3.4) for the
// user agent key and auth secret: the aes128gcm header's key ID is the
// sender's public key, the input keying material comes from the ECDH
// agreement and auth.
func Decrypt(body []byte, key *ecdh.PrivateKey, auth []byte) ([]byte, error) {
	salt, rs, keyID, records, err := parseHeader(body)
	if err != nil {
		return nil, err
	}
	as, err := ecdh.P256().NewPublicKey(keyID)
	if err != nil {
		return nil, fmt.Errorf("key ID is not the sender's P-256 key: %w", err)
	}
	secret, err := key.ECDH(as)
	if err != nil {
		return nil, err
	}
	info := "WebPush: info\x00" + string(key.PublicKey().Bytes()) + string(keyID)
	ikm := hkdf(auth, secret, info, 32)
	return decodeRecords(ikm, salt, rs, records)
}

// DecodeContent decodes an aes128gcm body (RFC 8188) with the input
// keying material ikm.
func DecodeContent(body, ikm []byte) ([]byte, error) {
	salt, rs, _, records, err := parseHeader(body)
	if err != nil {
		return nil, err
	}
	return decodeRecords(ikm, salt, rs, records)
}

func parseHeader(body []byte) (salt []byte, rs uint32, keyID, records []byte, err error) {
	if len(body) < 21 {
		return nil, 0, nil, nil, fmt.Errorf("body of %d bytes has no aes128gcm header", len(body))
	}
	salt, rs = body[:16], binary.BigEndian.Uint32(body[16:20])
	idlen := int(body[20])
	if len(body) < 21+idlen {
		return nil, 0, nil, nil, errors.New("body shorter than its key ID")
	}
	if rs < 18 {
		return nil, 0, nil, nil, fmt.Errorf("record size %d", rs)
	}
	return salt, rs, body[21 : 21+idlen], body[21+idlen:], nil
}

// decodeRecords decrypts and unpads the records (RFC 8188 section 2).
func decodeRecords(ikm, salt []byte, rs uint32, records []byte) ([]byte, error) {
	cek := hkdf(salt, ikm, "Content-Encoding: aes128gcm\x00", 16)
	nonce := hkdf(salt, ikm, "Content-Encoding: nonce\x00", 12)
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	var out []byte
	for seq := uint64(0); len(records) > 0; seq++ {
		n := min(int(rs), len(records))
		rec := records[:n]
		records = records[n:]
		iv := append([]byte(nil), nonce...)
		for i := range 8 {
			iv[11-i] ^= byte(seq >> (8 * i))
		}
		plain, err := gcm.Open(nil, iv, rec, nil)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", seq, err)
		}
		i := len(plain) - 1
		for i >= 0 && plain[i] == 0 {
			i--
		}
		last := len(records) == 0
		switch {
		case i < 0:
			return nil, fmt.Errorf("record %d has no padding delimiter", seq)
		case last && plain[i] != 2, !last && plain[i] != 1:
			return nil, fmt.Errorf("record %d: delimiter %d", seq, plain[i])
		}
		out = append(out, plain[:i]...)
	}
	return out, nil
}
