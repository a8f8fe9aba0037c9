// Package imaptest is the test harness the proxy's tests share, so that
// every package starts a proxy, scripts a client and quiets logs the same
// way instead of each keeping a copy:
//
//   - StartProxy runs a proxy.Server on a loopback listener in front of an
//     upstream, with Options for implicit TLS, a faked remote address,
//     small socket buffers and configuration edits, and checks on cleanup
//     that it shuts down and that Serve returns.
//   - Client is a scripted line-level IMAP client that shows the exact wire
//     responses: tagged commands (numbered by Cmd, or named by Do), literals
//     both ways, untagged lines read one by one with timeouts, exact
//     transcript checks (Expect, ExpectDo), STARTTLS and COMPRESS=DEFLATE.
//   - Logger is the logger for proxies under test: silent unless
//     LEMON_TEST_LOG asks for logs on stderr.
//
// Internal test files of packages this one imports (package proxy, package
// hub) cannot use it, as that would be an import cycle; they keep small
// helpers of their own.
//
// The quick test tier, go test -short ./..., runs the tests that need
// nothing but Go; helpers that start external programs (dovecottest.Start,
// integration's requireTool) skip under -short, and so do slow tests.
package imaptest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// IOTimeout is a Client's default bound on every read and write: long
// enough for a loaded CI machine, short enough that a hang fails the test
// rather than the whole run.
const IOTimeout = 10 * time.Second

// LogEnv names the environment variable that turns on the logs of proxies
// under test: "1" or "debug" for everything, or "info", "warn", "error".
// Unset, logs are discarded, since a failing test's own messages are what
// matters and thousands of sessions' logs would bury them.
const LogEnv = "LEMON_TEST_LOG"

// Logger returns the logger for a proxy under test: discarding, or text on
// stderr at the level LogEnv asks for. It writes to stderr rather than to
// t.Log because sessions may still log after their test has returned.
func Logger() *slog.Logger {
	v := os.Getenv(LogEnv)
	if v == "" {
		return slog.New(slog.DiscardHandler)
	}
	level := slog.LevelDebug
	if v != "1" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			level = slog.LevelDebug
		}
	}
	return StderrLogger(level)
}

// StderrLogger logs at level and above to stderr, for benchmarks whose
// errors must be seen whatever LogEnv says.
func StderrLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// DefaultUpstream is the upstream configuration tests use.
func DefaultUpstream() upstream.Config { return upstream.Config{Timeout: 5 * time.Second} }

// Proxy is a proxy.Server serving one loopback listener.
type Proxy struct {
	Srv  *proxy.Server
	Addr string

	served          chan error
	shutdownTimeout time.Duration
	once            sync.Once
	shutdownErr     error
	serveErr        error
}

// Option changes how StartProxy starts a proxy.
type Option func(*options)

type options struct {
	implicitTLS     bool
	remoteIP        net.IP
	remoteIPs       func() net.IP
	bufSize         int
	edits           []func(*proxy.Config)
	shutdownTimeout time.Duration
}

// ImplicitTLS serves TLS from the first byte (port 993 style); the
// configuration's TLS must be set.
func ImplicitTLS() Option { return func(o *options) { o.implicitTLS = true } }

// RemoteIP makes accepted connections report ip as their remote address,
// so that tests can play a client that is not on loopback (plaintext
// LOGIN rules, per-address limits).
func RemoteIP(ip net.IP) Option { return func(o *options) { o.remoteIP = ip } }

// RemoteIPFunc is RemoteIP with an address of next's choosing for each
// accepted connection (clients spread over many addresses).
func RemoteIPFunc(next func() net.IP) Option { return func(o *options) { o.remoteIPs = next } }

// SmallBuffers sets the socket send and receive buffers of accepted client
// connections to n bytes, so that a slow client fills them quickly and the
// proxy's writes block.
func SmallBuffers(n int) Option { return func(o *options) { o.bufSize = n } }

// Configure edits the configuration before the server is made, after
// StartProxy has filled in its defaults.
func Configure(edit func(*proxy.Config)) Option {
	return func(o *options) { o.edits = append(o.edits, edit) }
}

// ShutdownTimeout bounds the cleanup's Shutdown (default 10 s); benchmarks
// with thousands of sessions need longer.
func ShutdownTimeout(d time.Duration) Option { return func(o *options) { o.shutdownTimeout = d } }

// StartProxy starts a proxy in front of upstream upAddr with cfg's other
// settings, and shuts it down when the test ends, failing the test if
// Shutdown fails or Serve does not return cleanly. Zero settings get test
// defaults: a 5 s upstream timeout, a 10 ms delay after failed logins
// (the production one would slow every test of a refused login) and
// Logger().
func StartProxy(t testing.TB, upAddr string, cfg proxy.Config, opts ...Option) *Proxy {
	t.Helper()
	o := options{shutdownTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	cfg.Upstream.Addr = upAddr
	if cfg.Upstream.Timeout == 0 {
		cfg.Upstream.Timeout = 5 * time.Second
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = 10 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	for _, edit := range o.edits {
		edit(&cfg)
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Srv: srv, Addr: ln.Addr().String(), served: make(chan error, 1), shutdownTimeout: o.shutdownTimeout}
	if o.remoteIP != nil || o.remoteIPs != nil || o.bufSize > 0 {
		ln = testListener{ln, o.remoteIP, o.remoteIPs, o.bufSize}
	}
	go func() { p.served <- srv.Serve(ln, o.implicitTLS) }()
	t.Cleanup(func() {
		if err := p.Shutdown(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// Shutdown shuts the server down (once; later calls report the same) and
// says what went wrong with Shutdown or Serve. Tests call it to shut down
// early; the cleanup calls it anyway.
func (p *Proxy) Shutdown() error {
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.shutdownTimeout)
		defer cancel()
		p.shutdownErr = p.Srv.Shutdown(ctx)
		select {
		case p.serveErr = <-p.served:
		case <-time.After(5 * time.Second):
			p.serveErr = errors.New("serve did not return after shutdown")
		}
	})
	if p.shutdownErr != nil {
		return fmt.Errorf("shutdown: %w", p.shutdownErr)
	}
	if p.serveErr != nil {
		return fmt.Errorf("serve: %w", p.serveErr)
	}
	return nil
}

// testListener applies RemoteIP and SmallBuffers to accepted connections.
type testListener struct {
	net.Listener
	remoteIP  net.IP
	remoteIPs func() net.IP
	bufSize   int
}

func (l testListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok && l.bufSize > 0 {
		tc.SetWriteBuffer(l.bufSize)
		tc.SetReadBuffer(l.bufSize)
	}
	if l.remoteIPs != nil {
		return remoteConn{c, &net.TCPAddr{IP: l.remoteIPs(), Port: 40000}}, nil
	}
	if l.remoteIP != nil {
		return remoteConn{c, &net.TCPAddr{IP: l.remoteIP, Port: 40000}}, nil
	}
	return c, nil
}

type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

// Client is a scripted IMAP client. Responses are returned as read, without
// the final CRLF; a response with literals comes whole, each literal
// appended to its line as "{n}\r\n<data>". Conn and R are there for tests
// that go below the line level (socket options, reading a stream raw);
// whatever R has buffered belongs to the next response.
type Client struct {
	Conn     net.Conn
	R        *bufio.Reader
	Greeting string
	// Timeout bounds each read and write (IOTimeout unless changed).
	Timeout time.Duration

	t   testing.TB
	w   io.Writer                  // Conn, or the deflater after COMPRESS
	fw  interface{ Flush() error } // the deflater, nil without COMPRESS
	seq int

	// part is a response read in part when a read failed (a timeout of
	// TryReadLine, say); the next read carries on with it. litLeft is what
	// is left of its literal, if it stopped inside one.
	part    []byte
	litLeft int64
}

// Dial connects to addr and reads the greeting into Greeting, whatever it
// is: tests of refused connections check it themselves.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, IOTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return NewClient(t, nc)
}

// DialTLS is Dial with implicit TLS.
func DialTLS(t testing.TB, addr string, cfg *tls.Config) *Client {
	t.Helper()
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: IOTimeout}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return NewClient(t, nc)
}

// NewClient makes a client of a connection (closed when the test ends) and
// reads the greeting.
func NewClient(t testing.TB, nc net.Conn) *Client {
	t.Helper()
	t.Cleanup(func() { nc.Close() })
	c := &Client{Conn: nc, R: bufio.NewReader(nc), Timeout: IOTimeout, t: t, w: nc}
	c.Greeting = c.ReadLine()
	return c
}

// Login dials addr, checks for an OK greeting and logs in.
func Login(t testing.TB, addr, user, pass string) *Client {
	t.Helper()
	c := Dial(t, addr)
	c.MustGreetOK()
	c.MustOK("LOGIN " + user + " " + pass)
	return c
}

// MustGreetOK fails the test unless the greeting was an OK.
func (c *Client) MustGreetOK() {
	c.t.Helper()
	if !strings.HasPrefix(c.Greeting, "* OK") {
		c.t.Fatalf("greeting %q", c.Greeting)
	}
}

// T returns the test the client belongs to, for helpers built on a Client
// that fail that test.
func (c *Client) T() testing.TB { return c.t }

// Close closes the connection.
func (c *Client) Close() { c.Conn.Close() }

// Write sends raw bytes (through the deflater after COMPRESS).
func (c *Client) Write(s string) {
	c.t.Helper()
	c.WriteBytes([]byte(s))
}

// WriteBytes is Write for bytes, for tests that build large or binary
// input.
func (c *Client) WriteBytes(b []byte) {
	c.t.Helper()
	if err := c.TryWrite(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// TryWrite is Write that returns the error instead of failing the test,
// for writes from another goroutine or writes the server may refuse.
func (c *Client) TryWrite(b []byte) error {
	c.Conn.SetWriteDeadline(time.Now().Add(c.Timeout))
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	if c.fw != nil {
		return c.fw.Flush()
	}
	return nil
}

// Send sends one line, adding CRLF.
func (c *Client) Send(line string) {
	c.t.Helper()
	c.Write(line + "\r\n")
}

// ReadRawLine reads one line as sent, without its CRLF and without
// following a literal it announces.
func (c *Client) ReadRawLine() string {
	c.t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
	line, err := c.R.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, line)
	}
	if !strings.HasSuffix(line, "\r\n") {
		c.t.Fatalf("line without CRLF: %q", line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// ReadLine reads one response.
func (c *Client) ReadLine() string {
	c.t.Helper()
	s, err := c.TryReadLine(c.Timeout)
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, s)
	}
	return s
}

// TryReadLine reads one response, waiting at most d. On an error it returns
// what it has of the response, and the next read carries on with it: a
// timeout loses nothing.
func (c *Client) TryReadLine(d time.Duration) (string, error) {
	c.Conn.SetReadDeadline(time.Now().Add(d))
	for {
		if c.litLeft > 0 {
			n := min(c.litLeft, 64<<10)
			start := len(c.part)
			c.part = append(c.part, make([]byte, n)...)
			got, err := io.ReadFull(c.R, c.part[start:])
			c.part = c.part[:start+got]
			c.litLeft -= int64(got)
			if err != nil {
				return string(c.part), err
			}
			continue
		}
		chunk, err := c.R.ReadSlice('\n')
		c.part = append(c.part, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return string(c.part), err
		}
		if !bytes.HasSuffix(c.part, []byte("\r\n")) {
			s := string(c.part)
			c.part = nil
			return s, fmt.Errorf("line without CRLF: %q", s)
		}
		if n, ok := literalSize(string(c.part[:len(c.part)-2])); ok {
			c.litLeft = n
			continue
		}
		s := string(c.part[:len(c.part)-2])
		c.part = nil
		return s, nil
	}
}

// literalSize recognises a "{n}" at the end of a server line.
func literalSize(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(line[i+1:len(line)-1], 10, 64)
	return n, err == nil && n >= 0
}

// Cmd sends a command (the tag is added) and returns every response up to
// and including the tagged one. Synchronising literals are sent after the
// continuation request: Cmd("APPEND x {3}", "abc"); a non-synchronising
// one ("{3+}") at once.
func (c *Client) Cmd(text string, literals ...string) []string {
	c.t.Helper()
	c.seq++
	tag := fmt.Sprintf("c%d", c.seq)
	parts := append([]string{tag + " " + text}, literals...)
	var out []string
	for i, p := range parts {
		c.Write(p + "\r\n")
		if i == len(parts)-1 || strings.HasSuffix(p, "+}") {
			continue
		}
		for {
			l := c.ReadLine()
			out = append(out, l)
			if strings.HasPrefix(l, "+") {
				break
			}
			if strings.HasPrefix(l, tag+" ") {
				return out
			}
		}
	}
	return append(out, c.ReadUntilTagged(tag)...)
}

// MustOK is Cmd that fails the test unless the tagged response is OK.
func (c *Client) MustOK(text string, literals ...string) []string {
	c.t.Helper()
	lines := c.Cmd(text, literals...)
	if !strings.HasPrefix(Tagged(lines), "OK") {
		c.t.Fatalf("%s: want OK, got %q", text, lines)
	}
	return lines
}

// ReadUntilTagged reads responses up to and including the one tagged tag.
// After a BYE it goes on reading, since the tagged answer may follow, and
// fails the test at once if the connection closed instead.
func (c *Client) ReadUntilTagged(tag string) []string {
	c.t.Helper()
	var out []string
	for {
		r := c.ReadLine()
		out = append(out, r)
		if strings.HasPrefix(r, tag+" ") {
			return out
		}
		if strings.HasPrefix(r, "* BYE") {
			c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
			if _, err := c.R.Peek(1); err != nil {
				c.t.Fatalf("connection closed after %q while waiting for %s", r, tag)
			}
		}
	}
}

// Do sends "tag command" and returns every response up to the tagged one,
// for transcripts that name their own tags.
func (c *Client) Do(tag, command string) []string {
	c.t.Helper()
	c.Send(tag + " " + command)
	return c.ReadUntilTagged(tag)
}

// Expect reads len(want) responses and compares them exactly. A want
// ending in "*" matches any response with that prefix.
func (c *Client) Expect(want ...string) {
	c.t.Helper()
	for i, w := range want {
		got := c.ReadLine()
		if !Match(got, w) {
			c.t.Fatalf("response %d: got %q, want %q", i, got, w)
		}
	}
}

// ExpectDo runs a command with Do and compares all its responses exactly
// (see Expect for patterns).
func (c *Client) ExpectDo(tag, command string, want ...string) {
	c.t.Helper()
	AssertLines(c.t, command, c.Do(tag, command), want)
}

// AssertLines fails the test unless got matches want line by line (see
// Client.Expect for patterns).
func AssertLines(t testing.TB, what string, got, want []string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = Match(got[i], want[i])
	}
	if !ok {
		t.Fatalf("%s:\ngot:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// Match reports whether got is want, or begins with want's text before a
// final "*".
func Match(got, want string) bool {
	if p, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(got, p)
	}
	return got == want
}

// ExpectClosed checks that the server closes the connection, and returns
// the raw lines it sent before.
func (c *Client) ExpectClosed() []string {
	c.t.Helper()
	var rest []string
	c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
	for {
		line, err := c.R.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || IsReset(err) {
				if line != "" {
					rest = append(rest, line)
				}
				return rest
			}
			c.t.Fatalf("waiting for the server to close: %v (lines so far %q)", err, rest)
		}
		rest = append(rest, strings.TrimSuffix(line, "\r\n"))
	}
}

// IsReset reports whether err is the peer resetting the connection (or a
// write after it did), which is how a server's close looks when it hung up
// with client bytes unread.
func IsReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// ExpectBye reads until the connection ends and returns the last response,
// which must be an untagged BYE.
func (c *Client) ExpectBye() string {
	c.t.Helper()
	var last string
	for {
		l, err := c.TryReadLine(c.Timeout)
		if err != nil {
			break
		}
		last = l
	}
	if !strings.HasPrefix(last, "* BYE") {
		c.t.Fatalf("want a BYE before the connection closed, last line %q", last)
	}
	return last
}

// LoginTagged logs in with "L LOGIN" and checks for exactly the tagged OK
// with a CAPABILITY code that RFC 9051 clients expect.
func (c *Client) LoginTagged(user, pass string) {
	c.t.Helper()
	got := c.Do("L", "LOGIN "+user+" "+pass)
	if len(got) != 1 || !strings.HasPrefix(got[0], "L OK [CAPABILITY ") {
		c.t.Fatalf("LOGIN %s: %q", user, got)
	}
}

// StartTLS upgrades the connection after a STARTTLS OK was read, failing
// the test if the server sent anything more in plaintext.
func (c *Client) StartTLS(cfg *tls.Config) {
	c.t.Helper()
	if n := c.R.Buffered(); n > 0 {
		b, _ := c.R.Peek(n)
		c.t.Fatalf("server sent %q in plaintext after the STARTTLS OK", b)
	}
	tc := tls.Client(c.Conn, cfg)
	tc.SetDeadline(time.Now().Add(c.Timeout))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.Conn, c.w = tc, tc
	c.R = bufio.NewReader(tc)
}

// Compress runs COMPRESS DEFLATE and switches the client over.
func (c *Client) Compress() {
	c.t.Helper()
	c.MustOK("COMPRESS DEFLATE")
	c.StartCompression(5)
}

// StartCompression switches the client to deflate the way real clients do
// (a stateful deflater at level with a sync flush after each write, an
// inflater over everything after the OK), once an OK to COMPRESS was read.
func (c *Client) StartCompression(level int) {
	c.t.Helper()
	c.InflateResponses()
	out := &flushWriter{out: chunkSender{conn: c.Conn}}
	fw, err := flate.NewWriter(&out.out, level)
	if err != nil {
		c.t.Fatal(err)
	}
	out.fw = fw
	c.fw, c.w = out, out
}

// flushWriter sends what the deflater makes of one write, sync flush
// included, in a single write on the connection, as zlib-based clients do
// (deflate with Z_SYNC_FLUSH into a buffer, then send it). The deflater
// itself writes a flush in pieces (a stored block's header, its length,
// its data, then the empty block that ends the flush, in 1 and 4 bytes):
// the server can read and act on the command from the first pieces, and
// after a LOGOUT it closes the connection, as RFC 3501 6.1.3 says it
// must, while the client is still writing the rest. That write then hits
// a connection the server has closed and fails with a reset or a broken
// pipe (TestCompressTLS flaked so under load). Sent whole, a command is
// all in the server's hands by the time it reads it.
//
// While the deflater compresses a large write (a literal, a compression
// bomb), its output goes out in chunks as it comes, so that tests of the
// server's limits see the first bytes early rather than after the whole
// write is compressed. What Flush makes, the input's end with the sync
// flush, always goes out in one write.
type flushWriter struct {
	fw  *flate.Writer // writes into out
	out chunkSender
}

func (w *flushWriter) Write(p []byte) (int, error) { return w.fw.Write(p) }

// Flush ends the deflate block and sends it with everything not sent yet.
func (w *flushWriter) Flush() error {
	w.out.hold = true
	err := w.fw.Flush()
	w.out.hold = false
	if err != nil {
		return err
	}
	return w.out.send()
}

// chunkSender collects the deflater's output for the connection, sending
// it once it has flushWriterChunk bytes unless told to hold it.
type chunkSender struct {
	conn io.Writer
	buf  bytes.Buffer
	hold bool
}

const flushWriterChunk = 1024

func (s *chunkSender) Write(p []byte) (int, error) {
	s.buf.Write(p)
	if !s.hold && s.buf.Len() >= flushWriterChunk {
		if err := s.send(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (s *chunkSender) send() error {
	_, err := s.conn.Write(s.buf.Bytes())
	s.buf.Reset()
	return err
}

// InflateResponses inflates everything read from now on, and nothing
// written: for tests that compress their commands by hand. Bytes already
// read past the COMPRESS OK are the start of the compressed stream.
func (c *Client) InflateResponses() {
	c.R = bufio.NewReader(flate.NewReader(io.MultiReader(bytes.NewReader(c.buffered()), c.Conn)))
}

// StartLightCompression is StartCompression with package deflate's codec on
// the client side, which keeps no window, so that thousands of clients fit
// in memory.
func (c *Client) StartLightCompression() {
	c.R = bufio.NewReader(deflate.NewReader(c.Conn, c.buffered()))
	w := deflate.NewWriter(c.Conn, deflate.WriterOptions{})
	c.fw, c.w = w, w
}

// buffered takes what R has read ahead of the responses returned so far.
func (c *Client) buffered() []byte {
	b, _ := c.R.Peek(c.R.Buffered())
	return bytes.Clone(b)
}

// Tagged returns the tagged line of a response, without its tag.
func Tagged(lines []string) string {
	_, rest, _ := strings.Cut(lines[len(lines)-1], " ")
	return rest
}

// Untagged returns the untagged lines of a response.
func Untagged(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "* ") {
			out = append(out, l)
		}
	}
	return out
}

// WaitFor polls cond every 5 ms until it holds, failing the test after 5 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// SelfSignedTLS returns a server configuration with a fresh self-signed
// certificate for 127.0.0.1 and localhost, and a client configuration that
// trusts it (ServerName 127.0.0.1). The server configuration has no
// MinVersion of its own: tests see what the proxy does with a caller's.
func SelfSignedTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lemonproxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}}
	client = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client
}
