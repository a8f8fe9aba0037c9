// Package link is the internal link between cluster nodes: a node where a
// client logs in for an account that another node owns dials the owner,
// proves that it belongs to the cluster, hands the session over
// (proxy.Handoff), and on the owner's OK only copies bytes between the
// client and the link.
//
// # Protocol (LPLINK1)
//
// Both nodes hold the cluster secret S (LoadSecret, at least MinSecretLen
// bytes). Every line ends in CRLF and is at most MaxLine bytes; nonces are
// NonceLen random bytes from crypto/rand, written in lower-case hex; MACs
// are HMAC-SHA256 keyed with S, in lower-case hex.
//
//  1. dialer → listener:  LPLINK1 <nonceD>
//  2. listener → dialer:  <nonceL> <MAC("LPLINK1 listener\x00" | nonceD | nonceL)>
//  3. dialer → listener:  <MAC("LPLINK1 dialer\x00" | nonceL | nonceD | rest)> <rest>
//     where rest is  <from> <handoff JSON>
//  4. listener → dialer:  OK | NOTOWNER [<hint>] | UNAVAILABLE [<text>]
//
// In step 2 the listener proves it knows S for the dialer's fresh nonce;
// the dialer checks that before it sends anything more, so the user's
// credentials in step 3 never go to a peer that does not hold S. In step 3
// the dialer proves the same for the listener's fresh nonce, and the MAC
// covers the rest of the line too, so a step-3 line recorded from one
// connection is refused on any other (a new nonceL), and its handoff
// cannot be altered. The labels keep a MAC of one side from being played
// back as the other's. MACs are compared with hmac.Equal.
//
// The handoff is one line of JSON with the fields of proxy.Handoff:
// {"account","tag","user","pass","addr","tls","via"}; the five strings are
// base64 (standard, padded), so any byte survives; addr is netip.Addr's
// text ("" for the zero Addr). The listener accepts only this exact form,
// byte for byte as the encoder writes it (no unknown or missing fields, no
// null, no spaces): a new field is a new protocol version. <from> is the
// dialer's node name: printable ASCII without space.
//
// After OK the connection is the session's raw IMAP byte stream both ways
// and carries nothing more of the link: the owner's first line on it is
// the tagged answer to the handoff's login. Bytes that either side sent
// right behind the handshake are not lost: Dial and Request.Reply return a
// net.Conn that serves what their handshake reads buffered first. After
// NOTOWNER or UNAVAILABLE the listener closes the connection. A listener
// that finds a malformed line or a wrong version answers "BAD <reason>"
// and closes; after a bad MAC it closes without a word.
//
// Every step must finish within StepTimeout and before the deadline of the
// context passed to Dial or Accept; cancelling that context ends the step
// at once. A malformed line, a bad MAC, a wrong version, an overlong line
// or a timeout ends in an error and a closed connection.
//
// # Security
//
// The link authenticates but does not encrypt, as Dovecot's proxy →
// backend connections by default: the login's password crosses it in
// clear (base64 is no protection), and nothing protects the stream after
// the handshake against a peer that can change packets. The cluster
// network must therefore be private (a separate VLAN, or WireGuard/IPsec
// between the nodes). To run the link over TLS instead, dial a *tls.Conn
// and call DialConn, and pass the listener's *tls.Conn to Accept; the
// handshake runs inside TLS unchanged.
package link

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

const (
	// Version is the first word of the dialer's first line.
	Version = "LPLINK1"
	// MinSecretLen is the shortest cluster secret accepted, in bytes.
	MinSecretLen = 16
	// NonceLen is the length of each side's nonce, in bytes.
	NonceLen = 32
	// MaxLine bounds every line of the handshake, CRLF included. The
	// handoff line carries the login's name and password in base64: a
	// login whose name and password together exceed about 23 KiB cannot
	// be handed over (Dial returns ErrTooLarge).
	MaxLine = 32 << 10
)

// StepTimeout bounds each step of a handshake (a line written or read, the
// TCP connect) when the context's deadline is not earlier. The owner must
// answer a Request within it, or the dialer gives up. Set it before any
// handshake starts (at start-up); it is read without synchronisation.
var StepTimeout = 5 * time.Second

var (
	// ErrAuth is returned when the peer does not prove that it holds the
	// cluster secret.
	ErrAuth = errors.New("link: peer failed authentication (a different cluster secret?)")
	// ErrProtocol is returned for a malformed, unexpected or overlong line.
	ErrProtocol = errors.New("link: protocol error")
	// ErrTooLarge is returned by Dial when the handoff does not fit in a
	// line.
	ErrTooLarge = errors.New("link: handoff too large for the link")
	// ErrSecret is returned for a cluster secret that is too short.
	ErrSecret = fmt.Errorf("link: cluster secret shorter than %d bytes", MinSecretLen)
)

// ReplyKind is the owner's answer to a handoff.
type ReplyKind int

const (
	// ReplyOK: the owner takes the session; the connection becomes its
	// byte stream. (The zero ReplyKind is none of these.)
	ReplyOK ReplyKind = iota + 1
	// ReplyNotOwner: the listener does not own the account; Text may hint
	// at the owner.
	ReplyNotOwner
	// ReplyUnavailable: the account cannot be served there now; Text says
	// why.
	ReplyUnavailable
)

var replyWords = [...]string{ReplyOK: "OK", ReplyNotOwner: "NOTOWNER", ReplyUnavailable: "UNAVAILABLE"}

// String returns the kind's protocol word.
func (k ReplyKind) String() string {
	if k >= ReplyOK && k <= ReplyUnavailable {
		return replyWords[k]
	}
	return fmt.Sprintf("ReplyKind(%d)", int(k))
}

// Reply is the owner's answer to a handoff. Text is empty for ReplyOK.
type Reply struct {
	Kind ReplyKind
	Text string
}

// Request is a handoff that a peer node made, accepted by Accept. Its
// owner must call Reply exactly once.
type Request struct {
	// From is the dialing node's name.
	From    string
	Handoff proxy.Handoff

	conn net.Conn // nil once replied
}

// Dial connects to the link listener at addr (host:port, TCP) and hands h
// over in the name of node from. On ReplyOK it returns the connection,
// which from then on is the session's byte stream; otherwise the
// connection is closed and nil. An error means no reply was had (and the
// connection, if made, is closed).
func Dial(ctx context.Context, addr string, secret []byte, from string, h proxy.Handoff) (net.Conn, Reply, error) {
	// Refuse what cannot be sent before a connection is made.
	if _, err := encodeRest(secret, from, h); err != nil {
		return nil, Reply{}, err
	}
	d := net.Dialer{Deadline: stepDeadline(ctx)}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, Reply{}, fmt.Errorf("link: %w", err)
	}
	return DialConn(ctx, conn, secret, from, h)
}

// DialConn is Dial over a connection already made (a *tls.Conn, for one).
// It closes conn unless it returns it.
func DialConn(ctx context.Context, conn net.Conn, secret []byte, from string, h proxy.Handoff) (net.Conn, Reply, error) {
	s := newSession(ctx, conn)
	defer s.stop()
	raw, rep, err := s.dial(secret, from, h)
	if raw == nil {
		conn.Close()
	}
	return raw, rep, err
}

func (s *session) dial(secret []byte, from string, h proxy.Handoff) (net.Conn, Reply, error) {
	rest, err := encodeRest(secret, from, h)
	if err != nil {
		return nil, Reply{}, err
	}
	nonceD := newNonce()
	if err := s.writeLine("sending the greeting", Version+" "+hex.EncodeToString(nonceD)); err != nil {
		return nil, Reply{}, err
	}
	line, err := s.readLine("reading the listener's proof")
	if err != nil {
		return nil, Reply{}, err
	}
	if reason, ok := strings.CutPrefix(line, "BAD "); ok {
		return nil, Reply{}, fmt.Errorf("%w: the listener refused the greeting: %.200q", ErrProtocol, reason)
	}
	nl, ml, _ := strings.Cut(line, " ")
	nonceL, err1 := decodeHex(nl, NonceLen)
	macL, err2 := decodeHex(ml, sha256.Size)
	if err1 != nil || err2 != nil {
		return nil, Reply{}, fmt.Errorf("%w: the listener's proof %.80q is malformed", ErrProtocol, line)
	}
	if !hmac.Equal(macL, mac(secret, labelListener, nonceD, nonceL, "")) {
		return nil, Reply{}, fmt.Errorf("%w: the listener's proof does not match", ErrAuth)
	}
	// The listener holds the secret: now, and only now, the credentials.
	m := hex.EncodeToString(mac(secret, labelDialer, nonceL, nonceD, rest))
	if err := s.writeLine("sending the handoff", m+" "+rest); err != nil {
		return nil, Reply{}, err
	}
	line, err = s.readLine("reading the reply")
	if err != nil {
		return nil, Reply{}, err
	}
	word, text, _ := strings.Cut(line, " ")
	switch word {
	case "OK":
		if line != "OK" {
			break
		}
		raw, err := s.finish()
		if err != nil {
			return nil, Reply{}, err
		}
		return raw, Reply{Kind: ReplyOK}, nil
	case "NOTOWNER":
		return nil, Reply{Kind: ReplyNotOwner, Text: text}, nil
	case "UNAVAILABLE":
		return nil, Reply{Kind: ReplyUnavailable, Text: text}, nil
	case "BAD":
		return nil, Reply{}, fmt.Errorf("%w: the listener refused the handoff: %.200q", ErrProtocol, text)
	}
	return nil, Reply{}, fmt.Errorf("%w: reply %.80q", ErrProtocol, line)
}

// Accept runs the listener's side of the handshake on conn, a connection
// that a peer node made to the cluster's link port. On success the caller
// decides and answers with Request.Reply. On error conn is closed.
func Accept(ctx context.Context, conn net.Conn, secret []byte) (*Request, error) {
	if len(secret) < MinSecretLen {
		conn.Close()
		return nil, ErrSecret
	}
	s := newSession(ctx, conn)
	defer s.stop()
	r, err := s.accept(secret)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return r, nil
}

func (s *session) accept(secret []byte) (*Request, error) {
	line, err := s.readLine("reading the greeting")
	if err != nil {
		return nil, err
	}
	version, nd, _ := strings.Cut(line, " ")
	if version != Version {
		s.bad("unsupported version, " + Version + " expected")
		return nil, fmt.Errorf("%w: greeting %.80q is not %s", ErrProtocol, line, Version)
	}
	nonceD, err := decodeHex(nd, NonceLen)
	if err != nil {
		s.bad("malformed greeting")
		return nil, fmt.Errorf("%w: greeting %.80q is malformed", ErrProtocol, line)
	}
	nonceL := newNonce()
	m := hex.EncodeToString(mac(secret, labelListener, nonceD, nonceL, ""))
	if err := s.writeLine("sending the proof", hex.EncodeToString(nonceL)+" "+m); err != nil {
		return nil, err
	}
	line, err = s.readLine("reading the handoff")
	if err != nil {
		return nil, err
	}
	md, rest, _ := strings.Cut(line, " ")
	macD, err := decodeHex(md, sha256.Size)
	if err != nil || !hmac.Equal(macD, mac(secret, labelDialer, nonceL, nonceD, rest)) {
		// No word: the peer has not shown that it is one of ours.
		return nil, fmt.Errorf("%w: the dialer's proof does not match", ErrAuth)
	}
	from, js, _ := strings.Cut(rest, " ")
	if err := checkName(from); err != nil {
		s.bad("malformed handoff")
		return nil, err
	}
	h, err := decodeHandoff(js)
	if err != nil {
		s.bad("malformed handoff")
		return nil, err
	}
	raw, err := s.finish()
	if err != nil {
		return nil, err
	}
	r := &Request{From: from, Handoff: h, conn: raw}
	return r, nil
}

// Reply answers the handoff. On ReplyOK it returns the connection, which
// from then on is the session's byte stream (the owner writes the tagged
// answer to the login first); otherwise it closes the connection and
// returns nil. Text is sent with NOTOWNER and UNAVAILABLE only, control
// characters replaced by spaces, cut to fit a line. An error means the
// reply may not have reached the dialer; the connection is then closed.
func (r *Request) Reply(rep Reply) (net.Conn, error) {
	if r.conn == nil {
		return nil, errors.New("link: Reply called twice")
	}
	conn := r.conn
	r.conn = nil
	line := rep.Kind.String()
	switch rep.Kind {
	case ReplyOK:
	case ReplyNotOwner, ReplyUnavailable:
		if t := cleanText(rep.Text, MaxLine-len(line)-3); t != "" {
			line += " " + t
		}
	default:
		conn.Close()
		return nil, fmt.Errorf("link: Reply of unknown kind %v", rep.Kind)
	}
	err := conn.SetWriteDeadline(time.Now().Add(StepTimeout))
	if err == nil {
		_, err = conn.Write([]byte(line + "\r\n"))
	}
	if err == nil {
		err = conn.SetWriteDeadline(time.Time{})
	}
	if err != nil || rep.Kind != ReplyOK {
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("link: sending the reply: %w", err)
		}
		return nil, nil
	}
	return conn, nil
}

// cleanText makes s fit in limit bytes of a reply line.
func cleanText(s string, limit int) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	if len(b) > limit {
		b = b[:limit]
	}
	return strings.ToValidUTF8(strings.TrimSpace(string(b)), "")
}

var (
	labelListener = []byte(Version + " listener\x00")
	labelDialer   = []byte(Version + " dialer\x00")
)

// mac is HMAC-SHA256(secret, label | a | b | rest). The nonces have a fixed
// length, so the concatenation is unambiguous.
func mac(secret, label, a, b []byte, rest string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(label)
	m.Write(a)
	m.Write(b)
	m.Write([]byte(rest))
	return m.Sum(nil)
}

func newNonce() []byte {
	b := make([]byte, NonceLen)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return b
}

func decodeHex(s string, n int) ([]byte, error) {
	if len(s) != 2*n {
		return nil, ErrProtocol
	}
	return hex.DecodeString(s)
}

// checkName checks a node name: 1 to 255 bytes of printable ASCII, no
// space.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("%w: node name of %d bytes", ErrProtocol, len(name))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: node name %q has a byte that is not printable ASCII", ErrProtocol, name)
		}
	}
	return nil
}

// encodeRest returns the part of the handoff line behind the MAC, checked
// to fit.
func encodeRest(secret []byte, from string, h proxy.Handoff) (string, error) {
	if len(secret) < MinSecretLen {
		return "", ErrSecret
	}
	if err := checkName(from); err != nil {
		return "", fmt.Errorf("link: bad node name: %w", err)
	}
	js, err := encodeHandoff(h)
	if err != nil {
		return "", err
	}
	rest := from + " " + string(js)
	if 2*sha256.Size+1+len(rest)+2 > MaxLine {
		return "", fmt.Errorf("%w (%d bytes of JSON; a line holds %d)", ErrTooLarge, len(js), MaxLine)
	}
	return rest, nil
}

// b64 is a string that JSON carries in base64, so that any byte survives.
type b64 string

func (b b64) MarshalText() ([]byte, error) {
	return base64.StdEncoding.AppendEncode(nil, []byte(b)), nil
}

func (b *b64) UnmarshalText(t []byte) error {
	d, err := base64.StdEncoding.Strict().AppendDecode(nil, t)
	*b = b64(d)
	return err
}

// wireHandoff is proxy.Handoff on the link.
type wireHandoff struct {
	Account b64        `json:"account"`
	Tag     b64        `json:"tag"`
	User    b64        `json:"user"`
	Pass    b64        `json:"pass"`
	Addr    netip.Addr `json:"addr"`
	TLS     bool       `json:"tls"`
	Via     b64        `json:"via"`
}

func encodeHandoff(h proxy.Handoff) ([]byte, error) {
	js, err := json.Marshal(wireHandoff{
		Account: b64(h.Account), Tag: b64(h.Tag), User: b64(h.User), Pass: b64(h.Pass),
		Addr: h.Addr, TLS: h.TLS, Via: b64(h.Via),
	})
	if err != nil {
		return nil, fmt.Errorf("link: encoding the handoff: %w", err)
	}
	// Only an address zone that is not UTF-8 could come back otherwise.
	if back, err := decodeHandoff(string(js)); err != nil || back != h {
		return nil, fmt.Errorf("link: the handoff's address %q cannot be carried exactly", h.Addr)
	}
	return js, nil
}

// decodeHandoff accepts exactly what encodeHandoff writes.
func decodeHandoff(js string) (proxy.Handoff, error) {
	var w wireHandoff
	if err := json.Unmarshal([]byte(js), &w); err != nil {
		return proxy.Handoff{}, fmt.Errorf("%w: handoff: %w", ErrProtocol, err)
	}
	if again, err := json.Marshal(w); err != nil || string(again) != js {
		return proxy.Handoff{}, fmt.Errorf("%w: handoff not in canonical form", ErrProtocol)
	}
	return proxy.Handoff{
		Account: string(w.Account), Tag: string(w.Tag), User: string(w.User), Pass: string(w.Pass),
		Addr: w.Addr, TLS: w.TLS, Via: string(w.Via),
	}, nil
}

// A session is one side of a handshake in progress.
type session struct {
	ctx  context.Context
	conn net.Conn
	br   *bufio.Reader
	stop func() bool // stops cancelling the handshake with ctx
}

// longAgo is a deadline in the past: it wakes any pending read or write.
var longAgo = time.Unix(1, 0)

func newSession(ctx context.Context, conn net.Conn) *session {
	return &session{
		ctx:  ctx,
		conn: conn,
		br:   bufio.NewReaderSize(conn, MaxLine),
		stop: context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) }),
	}
}

// stepDeadline is when a step must be done.
func stepDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(StepTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

// deadline arms the deadline of the next step.
func (s *session) deadline(what string) error {
	if err := s.conn.SetDeadline(stepDeadline(s.ctx)); err != nil {
		return s.fail(what, err)
	}
	// Should ctx end after this check, its AfterFunc sets the deadline
	// after we did.
	if err := s.ctx.Err(); err != nil {
		return s.fail(what, err)
	}
	return nil
}

// fail describes err, and says so when it comes of the context's end (the
// connection's deadline, set to the context's, may pass a moment before
// the context sees its own).
func (s *session) fail(what string, err error) error {
	cerr := s.ctx.Err()
	if d, ok := s.ctx.Deadline(); ok && cerr == nil && !time.Now().Before(d) {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("link: %s: %w (%w)", what, cerr, err)
	}
	return fmt.Errorf("link: %s: %w", what, err)
}

func (s *session) writeLine(what, line string) error {
	if err := s.deadline(what); err != nil {
		return err
	}
	if _, err := s.conn.Write([]byte(line + "\r\n")); err != nil {
		return s.fail(what, err)
	}
	return nil
}

// readLine reads a line of at most MaxLine bytes and returns it without
// its CRLF.
func (s *session) readLine(what string) (string, error) {
	if err := s.deadline(what); err != nil {
		return "", err
	}
	b, err := s.br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return "", fmt.Errorf("link: %s: %w: line longer than %d bytes", what, ErrProtocol, MaxLine)
	case err != nil:
		return "", s.fail(what, err)
	case len(b) < 2 || b[len(b)-2] != '\r':
		return "", fmt.Errorf("link: %s: %w: line not ended by CRLF", what, ErrProtocol)
	}
	return string(b[:len(b)-2]), nil
}

// bad tells the peer why it is refused, as far as the step's deadline
// allows.
func (s *session) bad(reason string) {
	s.conn.Write([]byte("BAD " + reason + "\r\n"))
}

// finish ends the handshake: ctx no longer applies, the deadlines are
// cleared, and the returned connection serves first what was read behind
// the handshake.
func (s *session) finish() (net.Conn, error) {
	if !s.stop() {
		return nil, s.fail("ending the handshake", s.ctx.Err())
	}
	if err := s.conn.SetDeadline(time.Time{}); err != nil {
		return nil, s.fail("ending the handshake", err)
	}
	n := s.br.Buffered()
	if n == 0 {
		return s.conn, nil
	}
	rest, _ := s.br.Peek(n)
	return &bufferedConn{Conn: s.conn, buf: append([]byte(nil), rest...)}, nil
}

// bufferedConn is a connection whose first bytes were read already. It
// passes CloseWrite on, so that a *net.TCPConn can still be half-closed.
type bufferedConn struct {
	net.Conn
	buf []byte
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	if len(c.buf) == 0 {
		c.buf = nil
	}
	return n, nil
}

// CloseWrite shuts down the writing side of the connection, if it can be.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("link: %T cannot close its writing side alone", c.Conn)
}
