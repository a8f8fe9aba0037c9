// Package upstream manages the proxy's connections to the real IMAP server:
// dialling with the configured transport security, authenticating, running
// the proxy's own commands, and pooling authenticated connections per account
// so that client sessions can lease one for a command and give it back.
//
// It speaks the wire protocol through package imapcodec rather than go-imap's
// imapclient, because the proxy must relay arbitrary commands and responses
// byte for byte (unknown FETCH items, VANISHED, unsolicited STATUS...), which
// imapclient cannot do.
package upstream

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Security selects how the connection to the upstream is protected.
type Security string

const (
	SecurityNone     Security = "none"     // plain TCP
	SecurityStartTLS Security = "starttls" // STARTTLS after the greeting
	SecurityTLS      Security = "tls"      // implicit TLS
)

// ParseSecurity validates a -upstream-security value.
func ParseSecurity(s string) (Security, error) {
	switch Security(strings.ToLower(s)) {
	case SecurityNone, "":
		return SecurityNone, nil
	case SecurityStartTLS:
		return SecurityStartTLS, nil
	case SecurityTLS:
		return SecurityTLS, nil
	}
	return "", fmt.Errorf("upstream security %q: want none, starttls or tls", s)
}

// Config says how to reach the upstream server.
type Config struct {
	Addr     string
	Security Security
	// TLS is used for SecurityStartTLS and SecurityTLS; its ServerName
	// defaults to the host part of Addr. Certificates are verified unless
	// the caller sets InsecureSkipVerify.
	TLS *tls.Config
	// Timeout bounds dialling (with Budget.Dial, the wait for room in
	// the account's budget too), the greeting and each of the proxy's
	// own commands. Default 30 s.
	Timeout time.Duration
	// Limits bounds what the upstream may send. Its zero fields take the
	// defaults of a trusted server's answers, not imapcodec's (which are
	// for clients): lines of up to 16 MiB (a SEARCH of a large mailbox is
	// one line; the UIDs of 1:* of a mailbox of 12,000 messages are more
	// than 64 KiB) and literals of up to 1 TiB (message bodies stream, so
	// nothing needs to cap them).
	Limits imapcodec.Limits
	// Compress says when to use COMPRESS=DEFLATE with the upstream
	// (default auto: with non-loopback upstreams that offer it).
	Compress CompressPolicy
	// ForwardClientAddr has Login tell a server that offers ID (RFC
	// 2971) the address of the client it logs in for (WithClientAddr),
	// as Dovecot's x-originating-ip, before the login. A Dovecot that
	// counts the proxy in login_trusted_networks then logs the client's
	// address and keeps its per-address auth penalty per client: without
	// it every login through the proxy comes from the proxy's address,
	// and after a few clients' failed logins all logins wait, up to 15 s.
	// Servers that do not trust the proxy ignore the field.
	ForwardClientAddr bool
}

// clientAddrKey is the context key of WithClientAddr.
type clientAddrKey struct{}

// WithClientAddr returns ctx carrying the address of the client a login
// is made for, which Login forwards when Config.ForwardClientAddr is set.
func WithClientAddr(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, clientAddrKey{}, addr)
}

// Defaults of Config.Limits.
const (
	DefaultMaxLine    = 16 << 20
	DefaultMaxLiteral = 1 << 40
)

// limits returns Limits with its defaults.
func (c *Config) limits() imapcodec.Limits {
	l := c.Limits
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultMaxLine
	}
	if l.MaxLiteral <= 0 {
		l.MaxLiteral = DefaultMaxLiteral
	}
	return l.WithDefaults()
}

func (c *Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 30 * time.Second
	}
	return c.Timeout
}

// Errors returned by Dial and Login.
var (
	// ErrUnavailable wraps every failure to reach or talk to the upstream.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrAuthFailed means the upstream rejected the credentials.
	ErrAuthFailed = errors.New("authentication failed")
	// ErrClosed is returned for commands on a connection that broke.
	ErrClosed = errors.New("upstream connection closed")
)

// StatusError is a tagged NO or BAD answer to one of the proxy's own commands.
type StatusError struct {
	Command string
	Head    imapcodec.ResponseHead
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %s to %s: %s", e.Head.Name, e.Command, e.Head.Text)
}

// Conn is one connection to the upstream server. It is not safe for
// concurrent use: whoever leased it owns it.
type Conn struct {
	nc   net.Conn
	r    *imapcodec.Reader
	w    *bufio.Writer // nil while released (see Release)
	out  io.Writer     // what w writes to; nil when w is the connection's own (compressed)
	cfg  *Config
	caps Caps

	tagSeq     atomic.Uint64
	onClose    atomic.Pointer[func()] // gives the connection's Budget count back
	wShut      bool                   // the sending side is shut (Close)
	broken     bool
	compressed bool // COMPRESS=DEFLATE is on, see compress.go
	// keepsSelected: the server kept its mailbox selected after an
	// EXAMINE that failed (unselectProbe found it so), against RFC 3501
	// 6.3.1. Unselect then probes it no more: the probe and its check
	// would be two commands more than EXAMINE and CLOSE, every time.
	keepsSelected bool

	// Selected is the mailbox selected on this connection ("" if none) and
	// ReadOnly whether it was opened with EXAMINE.
	Selected string
	ReadOnly bool
	// UIDValidity is the selected mailbox's UIDVALIDITY as the SELECT that
	// opened it reported it (0 if unknown). A mailbox deleted and
	// re-created under the same name has another one: a connection that
	// still has the old one selected must select again before it serves
	// the new one.
	UIDValidity uint32
	// SyncedTo is the proxy's mod-sequence of the selected mailbox up to
	// which this connection is known to have seen the mailbox. A server
	// shows a connection new messages only when it syncs (at a command),
	// so a lessee whose client knows more sends NOOP first.
	SyncedTo uint64
	// SyncedUID is the largest UID the proxy's state of the selected
	// mailbox knew when SyncedTo was read: the connection shows every
	// message up to it that still exists (0: none known). Select and
	// Unselect set both to 0.
	SyncedUID uint32

	account  string
	lastUsed time.Time
	lastSeen time.Time // last time the upstream answered
}

var connID atomic.Uint64

// Dial connects to the upstream, reads its greeting and sets up TLS as
// configured. Errors wrap ErrUnavailable.
func Dial(ctx context.Context, cfg *Config) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout())
	defer cancel()
	d := net.Dialer{}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", ErrUnavailable, cfg.Addr, err)
	}
	if cfg.Security == SecurityTLS {
		tc := tls.Client(nc, tlsConfigFor(cfg))
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS with %s: %w", ErrUnavailable, cfg.Addr, err)
		}
		nc = tc
	}
	c := newConn(nc, cfg)
	if err := c.start(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return c, nil
}

func newConn(nc net.Conn, cfg *Config) *Conn {
	c := &Conn{nc: nc, cfg: cfg, r: imapcodec.NewReader(nc, cfg.limits()), out: nc}
	c.tagSeq.Store(connID.Add(1) << 20)
	now := time.Now()
	c.lastUsed, c.lastSeen = now, now
	return c
}

func tlsConfigFor(cfg *Config) *tls.Config {
	var tc *tls.Config
	if cfg.TLS != nil {
		tc = cfg.TLS.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			host = cfg.Addr
		}
		tc.ServerName = host
	}
	if tc.MinVersion == 0 {
		tc.MinVersion = tls.VersionTLS12
	}
	return tc
}

// start reads the greeting, performs STARTTLS if configured and learns the
// capabilities.
func (c *Conn) start(ctx context.Context) error {
	defer c.watch(ctx)()
	line, _, err := c.r.ReadLine()
	if err != nil {
		return fmt.Errorf("reading greeting from %s: %w", c.cfg.Addr, err)
	}
	h, err := imapcodec.ParseResponseHead(line)
	if err != nil || h.Tag != "*" {
		return fmt.Errorf("bad greeting from %s: %q", c.cfg.Addr, truncate(line))
	}
	switch h.Name {
	case "OK":
	case "PREAUTH":
		return fmt.Errorf("upstream %s greeted with PREAUTH; refusing an unauthenticated session", c.cfg.Addr)
	default:
		return fmt.Errorf("upstream %s refused the connection: %s %s", c.cfg.Addr, h.Name, h.Text)
	}
	if h.Code == "CAPABILITY" {
		c.caps = ParseCaps(h.CodeArg)
	}
	if c.caps == nil || c.cfg.Security == SecurityStartTLS {
		if err := c.refreshCaps(ctx); err != nil {
			return err
		}
	}
	if c.cfg.Security != SecurityStartTLS {
		return nil
	}
	if !c.caps.Has("STARTTLS") {
		return fmt.Errorf("upstream %s does not offer STARTTLS", c.cfg.Addr)
	}
	if _, err := c.Exec(ctx, "STARTTLS", nil); err != nil {
		return err
	}
	// Anything the server sent after its OK arrived in plaintext and could
	// have been injected by a man in the middle: refuse it.
	if c.r.Buffered() > 0 {
		return fmt.Errorf("upstream %s sent %d bytes after the STARTTLS response: possible injection, closing", c.cfg.Addr, c.r.Buffered())
	}
	tc := tls.Client(c.nc, tlsConfigFor(c.cfg))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS with %s: %w", c.cfg.Addr, err)
	}
	c.nc = tc
	c.r = imapcodec.NewReader(tc, c.cfg.limits())
	c.releaseWriter()
	c.out = tc
	c.caps = nil
	return c.refreshCaps(ctx)
}

// watch applies ctx's deadline (or the default timeout) to the socket and
// interrupts blocked I/O when ctx is cancelled. Call the returned function
// when the operation is done.
func (c *Conn) watch(ctx context.Context) func() {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(c.cfg.timeout())
	}
	c.nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.nc.SetDeadline(time.Time{})
	}
}

// Watch is watch for callers outside the package that drive the connection
// through Reader and Writer (the relay).
func (c *Conn) Watch(ctx context.Context) func() { return c.watch(ctx) }

// SetDeadline sets the socket deadline; the zero time removes it.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

func (c *Conn) refreshCaps(ctx context.Context) error {
	_, err := c.Exec(ctx, "CAPABILITY", func(r *Response) {
		if r.Head.Tag == "*" && r.Head.Name == "CAPABILITY" {
			c.caps = ParseCaps(r.Head.Text)
		}
	})
	return err
}

// Caps returns the capabilities the upstream announced last.
func (c *Conn) Caps() Caps { return c.caps }

// Reader and Writer give the relay direct access to the wire. Whoever uses
// them must leave the connection between commands, or mark it broken.
func (c *Conn) Reader() *imapcodec.Reader { return c.r }
func (c *Conn) Writer() *bufio.Writer {
	if c.w == nil {
		c.w = writeBufs.Get().(*bufio.Writer)
		c.w.Reset(c.out)
	}
	return c.w
}

// writeBufSize is the size of a connection's write buffer.
const writeBufSize = 4096

// writeBufs holds the write buffers of connections that are not writing:
// watchers in IDLE and pooled connections (thousands, with many idle
// clients) hold none.
var writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}

// Release gives the connection's read and write buffers back to their
// pools when nothing is buffered in them, for a connection about to wait
// (a watcher's IDLE, the pool): the next use takes them again. The
// writer of a compressed connection is its own and stays.
func (c *Conn) Release() {
	c.r.Release()
	if c.w != nil && c.w.Buffered() == 0 {
		c.releaseWriter()
	}
}

// releaseWriter drops the write buffer, and whatever it holds.
func (c *Conn) releaseWriter() {
	if c.w == nil || c.out == nil {
		return
	}
	c.w.Reset(nil)
	writeBufs.Put(c.w)
	c.w = nil
}

// NextTag returns a fresh tag for a command on this connection.
func (c *Conn) NextTag() string {
	return "L" + strconv.FormatUint(c.tagSeq.Add(1), 36)
}

// MarkBroken records that the connection is no longer in a known state; the
// pool closes it instead of reusing it.
func (c *Conn) MarkBroken() { c.broken = true }

// Broken reports whether the connection was marked broken.
func (c *Conn) Broken() bool { return c.broken }

// Seen records that the upstream answered just now.
func (c *Conn) Seen() { c.lastSeen = time.Now() }

// Close closes the network connection.
//
// A connection counted in a Budget is given back only once the server
// has closed its side too (or after closeWait): a server counts a
// connection until it has noticed the close, and the budget must not let
// another one in before (Dovecot's mail_max_userip_connections).
func (c *Conn) Close() error {
	c.broken = true
	f := c.onClose.Swap(nil)
	if f == nil {
		return c.nc.Close()
	}
	if c.shutWrite() {
		c.nc.SetReadDeadline(time.Now().Add(closeWait))
		io.Copy(io.Discard, c.nc)
	}
	err := c.nc.Close()
	(*f)()
	return err
}

// Abort closes the network connection from any goroutine: the goroutine
// that owns the Conn sees its reads and writes fail and marks it broken
// itself. (Close marks it broken at once, which only the owner may do.)
func (c *Conn) Abort() error { return c.nc.Close() }

// shutWrite ends the connection's sending side (the server sees the
// close), once; it reports whether that side is shut.
func (c *Conn) shutWrite() bool {
	if c.wShut {
		return true
	}
	cw, ok := c.nc.(interface{ CloseWrite() error })
	c.wShut = ok && cw.CloseWrite() == nil
	return c.wShut
}

// closeWait bounds how long Close waits for the server to close its side.
const closeWait = 500 * time.Millisecond

// Logout sends LOGOUT and closes the connection, waiting briefly.
func (c *Conn) Logout() {
	if !c.broken {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.Exec(ctx, "LOGOUT", nil)
		cancel()
	}
	c.Close()
}

// Response is a whole response read into memory.
type Response struct {
	Head     imapcodec.ResponseHead
	Segments []imapcodec.Segment
}

// Exec runs one of the proxy's own commands (cmd without tag and CRLF; it must
// not contain synchronising literals) and returns the tagged response. Each
// untagged response is passed to onUntagged if it is not nil. A tagged NO or
// BAD is returned as a *StatusError; an I/O failure marks the connection
// broken and wraps ErrClosed.
func (c *Conn) Exec(ctx context.Context, cmd string, onUntagged func(*Response)) (*Response, error) {
	if c.broken {
		return nil, ErrClosed
	}
	if !imapcodec.InlineLiteralsOnly(cmd) {
		// Exec sends a command whole, without waiting for a
		// continuation: a line break other than a non-synchronising
		// literal's would make the rest a command of its own (a client's
		// value written into the proxy's command).
		return nil, fmt.Errorf("upstream: %s: a line break outside a non-synchronising literal", verb(cmd))
	}
	defer c.watch(ctx)()
	tag := c.NextTag()
	w := c.Writer()
	w.WriteString(tag)
	w.WriteByte(' ')
	w.WriteString(cmd)
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		c.broken = true
		return nil, fmt.Errorf("%w: sending %s: %w", ErrClosed, verb(cmd), err)
	}
	c.lastUsed = time.Now()
	for {
		resp, err := c.ReadResponse()
		if err != nil {
			return nil, fmt.Errorf("%w: reading response to %s: %w", ErrClosed, verb(cmd), err)
		}
		switch resp.Head.Tag {
		case tag:
			if resp.Head.Name != "OK" {
				return resp, &StatusError{Command: verb(cmd), Head: resp.Head}
			}
			if resp.Head.Code == "CAPABILITY" {
				c.caps = ParseCaps(resp.Head.CodeArg)
			}
			return resp, nil
		case "*":
			if resp.Head.Name == "BYE" {
				c.broken = true
			}
			if onUntagged != nil {
				onUntagged(resp)
			}
		case "+":
			c.broken = true
			return nil, fmt.Errorf("%w: unexpected continuation request after %s", ErrClosed, verb(cmd))
		default:
			c.broken = true
			return nil, fmt.Errorf("%w: response with unknown tag %q after %s", ErrClosed, resp.Head.Tag, verb(cmd))
		}
	}
}

// ReadResponse reads one whole response into memory.
func (c *Conn) ReadResponse() (*Response, error) {
	segs, err := c.r.ReadSegments(nil)
	if err != nil {
		c.broken = true
		return nil, err
	}
	return c.parseResponse(segs)
}

// WaitResponse is ReadResponse for a connection waiting for news (IDLE): a
// read deadline that passes between responses, or within a line (the
// reader keeps what it has), leaves the connection usable; only one within
// a literal breaks it.
func (c *Conn) WaitResponse() (*Response, error) {
	segs, err := c.r.ReadSegments(nil)
	if err != nil {
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) || c.r.LiteralRemaining() > 0 {
			c.broken = true
		}
		return nil, err
	}
	return c.parseResponse(segs)
}

func (c *Conn) parseResponse(segs []imapcodec.Segment) (*Response, error) {
	h, err := imapcodec.ParseResponseHead(segs[0].Text)
	if err != nil {
		c.broken = true
		return nil, err
	}
	c.lastSeen = time.Now()
	return &Response{Head: h, Segments: segs}, nil
}

func verb(cmd string) string {
	v, _, _ := strings.Cut(cmd, " ")
	return v
}

func truncate(b []byte) string {
	if len(b) > 80 {
		b = b[:80]
	}
	return string(b)
}

// DialLogin dials cfg's server and logs in as user; on a failed login the
// connection is closed. It is what every new upstream connection of an
// account starts with (leases, watchers).
func DialLogin(ctx context.Context, cfg *Config, user, pass string) (*Conn, error) {
	c, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := c.Login(ctx, user, pass); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Login authenticates with user and pass: AUTHENTICATE PLAIN (with SASL-IR
// when offered) if the server offers it, else LOGIN. A rejection wraps
// ErrAuthFailed; other failures wrap ErrUnavailable.
//
// It returns the text of the upstream's OK, which the proxy passes on.
func (c *Conn) Login(ctx context.Context, user, pass string) (string, error) {
	if err := c.forwardClientAddr(ctx); err != nil {
		return "", err
	}
	var cmd string
	switch {
	case c.caps.Has("AUTH=PLAIN") && c.caps.Has("SASL-IR"):
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
		cmd = "AUTHENTICATE PLAIN " + ir
	case c.caps.Has("LOGINDISABLED"):
		return "", fmt.Errorf("%w: upstream %s has LOGINDISABLED and no AUTH=PLAIN with SASL-IR", ErrUnavailable, c.cfg.Addr)
	case imapcodec.CanQuote(user) && imapcodec.CanQuote(pass):
		b := []byte("LOGIN ")
		b = imapcodec.AppendQuoted(b, user)
		b = append(b, ' ')
		b = imapcodec.AppendQuoted(b, pass)
		cmd = string(b)
	default:
		return "", fmt.Errorf("%w: credentials need literals and the upstream offers no AUTH=PLAIN with SASL-IR", ErrAuthFailed)
	}
	resp, err := c.Exec(ctx, cmd, nil)
	return c.loggedIn(ctx, resp, err)
}

// forwardClientAddr sends ID with the client's address (WithClientAddr)
// when the configuration asks for it and the server offers ID. The
// server's answer does not matter (one that does not trust the proxy
// ignores the field); only a broken connection is an error.
func (c *Conn) forwardClientAddr(ctx context.Context) error {
	addr, ok := ctx.Value(clientAddrKey{}).(netip.Addr)
	if !c.cfg.ForwardClientAddr || !ok || !addr.IsValid() || !c.caps.Has("ID") {
		return nil
	}
	cmd := `ID ("x-originating-ip" "` + addr.Unmap().WithZone("").String() + `")`
	if _, err := c.Exec(ctx, cmd, nil); err != nil {
		if se := (*StatusError)(nil); errors.As(err, &se) {
			return nil
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// LoginAs authenticates as the user authz with the credentials of authc
// (SASL PLAIN's authorization identity, RFC 4616 section 2): a master
// user the operator configured (authc) logs in to any user's account
// (authz), as Dovecot (a passdb with master=yes) and Cyrus
// (proxyservers) allow. The proxy then watches accounts for push without
// holding their users' passwords. It needs AUTH=PLAIN (with SASL-IR when
// offered; else the response goes after the server's continuation
// request); LOGIN has no authorization identity. Errors are Login's.
func (c *Conn) LoginAs(ctx context.Context, authz, authc, pass string) (string, error) {
	if !c.caps.Has("AUTH=PLAIN") {
		return "", fmt.Errorf("%w: upstream %s offers no AUTH=PLAIN, which a master-user login needs", ErrUnavailable, c.cfg.Addr)
	}
	ir := base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + authc + "\x00" + pass))
	if c.caps.Has("SASL-IR") {
		resp, err := c.Exec(ctx, "AUTHENTICATE PLAIN "+ir, nil)
		return c.loggedIn(ctx, resp, err)
	}
	resp, err := c.authenticateContinued(ctx, "AUTHENTICATE PLAIN", ir)
	return c.loggedIn(ctx, resp, err)
}

// authenticateContinued runs an AUTHENTICATE without an initial response:
// the response goes after the server's first continuation request.
func (c *Conn) authenticateContinued(ctx context.Context, cmd, response string) (*Response, error) {
	if c.broken {
		return nil, ErrClosed
	}
	defer c.watch(ctx)()
	tag := c.NextTag()
	w := c.Writer()
	w.WriteString(tag + " " + cmd + "\r\n")
	if err := w.Flush(); err != nil {
		c.broken = true
		return nil, fmt.Errorf("%w: sending %s: %w", ErrClosed, verb(cmd), err)
	}
	c.lastUsed = time.Now()
	sent := false
	for {
		resp, err := c.ReadResponse()
		if err != nil {
			return nil, fmt.Errorf("%w: reading response to %s: %w", ErrClosed, verb(cmd), err)
		}
		switch {
		case resp.Head.Tag == tag:
			if resp.Head.Name != "OK" {
				return resp, &StatusError{Command: verb(cmd), Head: resp.Head}
			}
			if resp.Head.Code == "CAPABILITY" {
				c.caps = ParseCaps(resp.Head.CodeArg)
			}
			return resp, nil
		case resp.Head.Tag == "+" && !sent:
			sent = true
			w.WriteString(response + "\r\n")
			if err := w.Flush(); err != nil {
				c.broken = true
				return nil, fmt.Errorf("%w: sending %s: %w", ErrClosed, verb(cmd), err)
			}
		case resp.Head.Tag == "+":
			// A second challenge: PLAIN has none. Cancel (RFC 3501
			// 6.2.2); the server answers BAD.
			w.WriteString("*\r\n")
			if err := w.Flush(); err != nil {
				c.broken = true
				return nil, fmt.Errorf("%w: sending %s: %w", ErrClosed, verb(cmd), err)
			}
		case resp.Head.Tag == "*":
			if resp.Head.Name == "BYE" {
				c.broken = true
			}
		default:
			c.broken = true
			return nil, fmt.Errorf("%w: response with unknown tag %q after %s", ErrClosed, resp.Head.Tag, verb(cmd))
		}
	}
}

// loggedIn finishes a login whose command was answered with resp and err:
// it sorts the failure, or learns the capabilities and starts compression.
func (c *Conn) loggedIn(ctx context.Context, resp *Response, err error) (string, error) {
	var se *StatusError
	if errors.As(err, &se) && strings.EqualFold(se.Head.Code, "LIMIT") {
		// Not the credentials: the server's limit of connections
		// (Dovecot's mail_max_userip_connections answers NO [LIMIT]).
		return "", fmt.Errorf("%w: %w: %s", ErrUnavailable, ErrLimit, se.Head.Text)
	}
	if errors.As(err, &se) {
		return "", fmt.Errorf("%w: %s", ErrAuthFailed, se.Head.Text)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Capabilities change after login; learn them unless the OK told us.
	if _, err := c.Exec(ctx, "CAPABILITY", func(r *Response) {
		if r.Head.Name == "CAPABILITY" {
			c.caps = ParseCaps(r.Head.Text)
		}
	}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err := c.startCompression(ctx); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return resp.Head.Text, nil
}

// Select makes mailbox the selected mailbox of the connection (read-only
// with EXAMINE), or, for mailbox "", leaves the selected state. It does
// nothing when the connection is already in that state. The untagged
// responses of the SELECT are passed to onUntagged.
func (c *Conn) Select(ctx context.Context, mailbox string, readOnly bool, onUntagged func(*Response)) error {
	if mailbox == c.Selected && readOnly == c.ReadOnly && mailbox != "" {
		return nil
	}
	if mailbox == "" {
		return c.Unselect(ctx)
	}
	cmd := "SELECT "
	if readOnly {
		cmd = "EXAMINE "
	}
	b := imapcodec.AppendString([]byte(cmd), mailbox, true)
	if !c.caps.Has("LITERAL+") && strings.Contains(string(b), "\r\n") {
		return fmt.Errorf("mailbox name needs a literal and the upstream lacks LITERAL+")
	}
	c.Selected, c.UIDValidity = "", 0
	c.SyncedTo, c.SyncedUID = 0, 0 // the lessee sets them (they are the proxy's, of one mailbox)
	var uidValidity uint32
	if _, err := c.Exec(ctx, string(b), func(r *Response) {
		if r.Head.Code == "UIDVALIDITY" {
			uidValidity = ParseUIDValidity(r.Head.CodeArg)
		}
		if onUntagged != nil {
			onUntagged(r)
		}
	}); err != nil {
		return err
	}
	c.Selected, c.ReadOnly, c.UIDValidity = mailbox, readOnly, uidValidity
	return nil
}

// Reopen selects the selected mailbox again, the way it was opened
// (SELECT or EXAMINE). The connection gets a new view of the mailbox and
// its UIDVALIDITY as it is now: a command on a view opened earlier may
// see a mailbox deleted and created again since (go-imap's server shows
// the deleted one; a poll such as NOOP does not change that).
func (c *Conn) Reopen(ctx context.Context) error {
	mailbox, readOnly := c.Selected, c.ReadOnly
	if mailbox == "" {
		return errors.New("upstream: reopen with no mailbox selected")
	}
	c.Selected = ""
	return c.Select(ctx, mailbox, readOnly, nil)
}

// ParseUIDValidity reads the argument of a [UIDVALIDITY n] response code;
// 0 when it is not a valid one.
func ParseUIDValidity(arg string) uint32 {
	v, err := strconv.ParseUint(strings.TrimSpace(arg), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
}

// Selectable asks the upstream (LIST) whether a mailbox it can select is
// named mailbox: false when no LIST response names it, or only one marked
// \NonExistent or \Noselect. The name goes as LIST's pattern, so the
// answer is searched for the name itself (a name with % or * matches
// others); INBOX is compared in any case. The proxy asks after a SELECT
// or EXAMINE failed, to tell a mailbox deleted outside it from a failure
// that says nothing about the mailbox (Dovecot's NO carries no
// [NONEXISTENT]). A malformed LIST response, when no well-formed one
// names the mailbox, is an error: it may have named it, and a caller must
// not take the mailbox for gone.
//
// A name that needs a literal (8-bit, CR, LF, NUL) is refused, LITERAL+
// or not: the proxy never enables UTF8=ACCEPT, so the upstream's names are
// 7-bit (modified UTF-7), such a name is none of them, and a LIST would
// not answer for it. Dovecot refuses it ("not valid mUTF-7"); go-imap's
// server selects it, taken as the 7-bit name it decodes to, and LISTs that
// one ("&ANw-" for "Ü"): "not found" would be wrong there.
func (c *Conn) Selectable(ctx context.Context, mailbox string) (bool, error) {
	b := imapcodec.AppendString([]byte(`LIST "" `), mailbox, true)
	if strings.Contains(string(b), "\r\n") {
		return false, fmt.Errorf("upstream: mailbox name %q needs a literal", mailbox)
	}
	found := false
	var bad error
	_, err := c.Exec(ctx, string(b), func(r *Response) {
		e, ok, err := ParseList(r)
		switch {
		case err != nil:
			bad = cmp.Or(bad, err)
		case !ok || e.Name != mailbox && !(strings.EqualFold(e.Name, "INBOX") && strings.EqualFold(mailbox, "INBOX")):
		case e.Has(`\NonExistent`) || e.Has(`\Noselect`):
		default:
			found = true
		}
	})
	if err == nil && !found {
		err = bad // a malformed line may have named it: no answer
	}
	if err != nil {
		return false, fmt.Errorf("upstream: listing %q: %w", mailbox, err)
	}
	return found, nil
}

// Unselect leaves the selected state without expunging: UNSELECT where the
// upstream offers it, else an EXAMINE of a mailbox that does not exist
// (unselectProbe), or, on a server found to keep its mailbox selected
// after one, EXAMINE of the mailbox and CLOSE.
func (c *Conn) Unselect(ctx context.Context) error {
	if c.Selected == "" {
		return nil
	}
	if c.caps.Has("UNSELECT") {
		if _, err := c.Exec(ctx, "UNSELECT", nil); err != nil {
			return err
		}
		c.Selected, c.SyncedTo, c.SyncedUID = "", 0, 0
		return nil
	}
	if !c.keepsSelected {
		switch left, err := c.unselectProbe(ctx); {
		case err != nil:
			return err
		case left:
			return nil
		}
	}
	// The server keeps the mailbox selected: EXAMINE it again, then CLOSE
	// (CLOSE on a read-only mailbox expunges nothing).
	if !c.ReadOnly {
		if err := c.Select(ctx, c.Selected, true, nil); err != nil {
			return err
		}
	}
	if _, err := c.Exec(ctx, "CLOSE", nil); err != nil {
		return err
	}
	c.Selected, c.SyncedTo, c.SyncedUID = "", 0, 0
	return nil
}

// unselectName is the mailbox unselectProbe asks to EXAMINE. Any name
// that does not exist would do; if it exists after all, it is left again
// with CLOSE, which expunges nothing in a mailbox opened read-only.
const unselectName = "lemonproxy-unselect-probe"

// unselectProbe leaves the selected state of a server without UNSELECT by
// an EXAMINE that fails: RFC 3501 6.3.1 has SELECT (and EXAMINE, 6.3.2)
// deselect the current mailbox before trying the new one, so after a
// failed one no mailbox is selected. The way before it, EXAMINE of the
// selected mailbox and CLOSE, had the server open the mailbox again: on
// Dovecot's maildir a full sync, which waits for the mailbox's locks
// whenever other sessions are changing it (issue 20: under imaptest's
// stress every client STATUS of the mailbox a pooled connection had
// selected cost those two lock-taking commands, docs/per-command.md,
// session 20). A failed EXAMINE takes no lock.
//
// The probe does not rest on the RFC alone (a server may refuse the name
// before it closes anything: Dovecot with a namespace prefix the name
// lacks): after a NO, a UID FETCH of a UID no message has tells the two
// states apart without changing anything (OK while a mailbox is selected,
// BAD or NO in the authenticated state). left reports that the connection
// is in the authenticated state now; false (with no error) means the
// server kept the mailbox selected, as it was, for Unselect's way (and
// the connection does not probe it again, keepsSelected).
func (c *Conn) unselectProbe(ctx context.Context) (left bool, err error) {
	selected, readOnly := c.Selected, c.ReadOnly
	c.Selected, c.SyncedTo, c.SyncedUID = "", 0, 0 // whatever comes, the marks are of no view any more
	b := imapcodec.AppendString([]byte("EXAMINE "), unselectName, true)
	_, err = c.Exec(ctx, string(b), nil)
	var se *StatusError
	switch {
	case err == nil:
		// The name exists, opened read-only.
		if _, err := c.Exec(ctx, "CLOSE", nil); err != nil {
			return false, err
		}
		return true, nil
	case !errors.As(err, &se) || se.Head.Name != "NO":
		return false, err
	}
	_, err = c.Exec(ctx, "UID FETCH 4294967295 (UID)", nil)
	switch {
	case err == nil:
		c.Selected, c.ReadOnly = selected, readOnly
		c.keepsSelected = true
		return false, nil
	case errors.As(err, &se):
		return true, nil
	}
	return false, err
}

// LastUsed returns when the connection last carried a command.
func (c *Conn) LastUsed() time.Time { return c.lastUsed }

// SetReadDeadline sets the read deadline; a deadline in the past wakes a
// reader blocked in ReadLine (the partial line is kept, see imapcodec).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// Alive reports, without waiting, whether an idle connection still looks
// usable: the server has not closed it or reset it, and has not said BYE.
// The pool's connections can die while idle (server restart, autologout);
// this catches that for the price of one system call, before a client's
// command is sent into a dead connection.
func (c *Conn) Alive() bool {
	if c.broken {
		return false
	}
	if c.r.Buffered() == 0 {
		switch socketState(c.nc) {
		case socketIdle:
			return true
		case socketClosed:
			c.broken = true
			return false
		}
	}
	// Something arrived (or the socket cannot be inspected): look at it,
	// waiting at most a moment.
	c.nc.SetReadDeadline(time.Now().Add(time.Millisecond))
	b, err := c.r.Peek(5)
	c.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	switch {
	case err == nil:
		// Unsolicited data waits; only a BYE means the end.
		if len(b) == 5 && strings.EqualFold(string(b), "* BYE") {
			c.broken = true
			return false
		}
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	default:
		c.broken = true
		return false
	}
}
