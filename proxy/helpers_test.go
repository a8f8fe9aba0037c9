package proxy_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestMain fails the package if any test leaves a goroutine behind: every
// server, upstream and client a test starts is shut down in its Cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ioTimeout bounds every read a scripted client does.
const ioTimeout = 10 * time.Second

// quietLogger keeps the proxy's logs out of the test output unless -v and
// LEMON_TEST_LOG=1 ask for them.
func quietLogger() *slog.Logger {
	if os.Getenv("LEMON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startUpstream starts an in-memory upstream with the given users
// ("name", "password", ...) and stops it when the test ends.
func startUpstream(t testing.TB, opt memupstream.Options, userPass ...string) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	for i := 0; i+1 < len(userPass); i += 2 {
		if err := up.AddUser(userPass[i], userPass[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// testProxy is a running proxy.Server with one listener.
type testProxy struct {
	srv    *proxy.Server
	addr   string
	served chan error

	once        sync.Once
	shutdownErr error
	serveErr    error
}

// proxyOpts tweaks startProxy.
type proxyOpts struct {
	implicitTLS bool
	// remoteIP, if set, makes accepted connections report this remote
	// address, simulating a client that is not on loopback.
	remoteIP net.IP
}

// baseConfig is the configuration most tests use, against upstream addr.
func baseConfig(addr string) proxy.Config {
	return proxy.Config{
		Upstream:         upstream.Config{Addr: addr, Timeout: 5 * time.Second},
		AuthFailureDelay: 10 * time.Millisecond,
		Extensions:       []proxy.Extension{idle.New()},
		Logger:           quietLogger(),
	}
}

// startProxy starts a server for cfg on a fresh loopback listener and shuts
// it down (checking that Serve returns) when the test ends.
func startProxy(t testing.TB, cfg proxy.Config, opts proxyOpts) *testProxy {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
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
	addr := ln.Addr().String()
	if opts.remoteIP != nil {
		ln = fakeRemoteListener{ln, opts.remoteIP}
	}
	p := &testProxy{srv: srv, addr: addr, served: make(chan error, 1)}
	go func() { p.served <- srv.Serve(ln, opts.implicitTLS) }()
	t.Cleanup(func() {
		if err := p.shutdown(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// shutdown shuts the server down once and reports what went wrong with
// Shutdown or Serve.
func (p *testProxy) shutdown() error {
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.shutdownErr = p.srv.Shutdown(ctx)
		select {
		case p.serveErr = <-p.served:
		case <-time.After(5 * time.Second):
			p.serveErr = errors.New("Serve did not return after Shutdown")
		}
	})
	if p.shutdownErr != nil {
		return fmt.Errorf("Shutdown: %w", p.shutdownErr)
	}
	if p.serveErr != nil {
		return fmt.Errorf("Serve: %w", p.serveErr)
	}
	return nil
}

// fakeRemoteListener makes its connections look as if they came from ip.
type fakeRemoteListener struct {
	net.Listener
	ip net.IP
}

func (l fakeRemoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return fakeRemoteConn{c, &net.TCPAddr{IP: l.ip, Port: 40000}}, nil
}

type fakeRemoteConn struct {
	net.Conn
	remote net.Addr
}

func (c fakeRemoteConn) RemoteAddr() net.Addr { return c.remote }

// client is a scripted raw-protocol IMAP client.
type client struct {
	t        testing.TB
	nc       net.Conn
	br       *bufio.Reader
	greeting string
}

// dial connects to the proxy and reads the greeting.
func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	c.greeting = c.readLine()
	return c
}

// dialTLS connects with implicit TLS and reads the greeting.
func dialTLS(t testing.TB, addr string, cfg *tls.Config) *client {
	t.Helper()
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	c.greeting = c.readLine()
	return c
}

func newClient(t testing.TB, nc net.Conn) *client {
	c := &client{t: t, nc: nc, br: bufio.NewReader(nc)}
	t.Cleanup(func() { nc.Close() })
	return c
}

// write sends raw bytes.
func (c *client) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// send sends one line, adding CRLF.
func (c *client) send(line string) {
	c.t.Helper()
	c.write([]byte(line + "\r\n"))
}

// readLine reads one line and returns it without CRLF.
func (c *client) readLine() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, line)
	}
	if !strings.HasSuffix(line, "\r\n") {
		c.t.Fatalf("line without CRLF: %q", line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// readResponse reads one response: a line, and if it ends in a literal
// header, the literal and the lines after it, all joined with their CRLFs
// ("* 1 FETCH (BODY[] {5}\r\nhello)").
func (c *client) readResponse() string {
	c.t.Helper()
	var sb strings.Builder
	for {
		line := c.readLine()
		sb.WriteString(line)
		n, ok := literalSize(line)
		if !ok {
			return sb.String()
		}
		sb.WriteString("\r\n")
		buf := make([]byte, n)
		c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, err := io.ReadFull(c.br, buf); err != nil {
			c.t.Fatalf("reading literal of %d bytes: %v", n, err)
		}
		sb.Write(buf)
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
	return n, err == nil
}

// readUntilTagged reads responses up to and including the one tagged tag.
func (c *client) readUntilTagged(tag string) []string {
	c.t.Helper()
	var out []string
	for {
		r := c.readResponse()
		out = append(out, r)
		if strings.HasPrefix(r, tag+" ") {
			return out
		}
		if strings.HasPrefix(r, "* BYE") {
			// Keep reading: a BYE is followed by the tagged answer or EOF.
			c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
			if _, err := c.br.Peek(1); err != nil {
				c.t.Fatalf("connection closed after %q while waiting for %s", r, tag)
			}
		}
	}
}

// do sends "tag command" and returns every response up to the tagged one.
func (c *client) do(tag, command string) []string {
	c.t.Helper()
	c.send(tag + " " + command)
	return c.readUntilTagged(tag)
}

// expect reads len(want) responses and compares them exactly. A want
// ending in "*" matches any line with that prefix.
func (c *client) expect(want ...string) {
	c.t.Helper()
	for i, w := range want {
		got := c.readResponse()
		if !match(got, w) {
			c.t.Fatalf("response %d: got %q, want %q", i, got, w)
		}
	}
}

// expectDo runs a command and compares all its responses exactly (see
// expect for patterns).
func (c *client) expectDo(tag, command string, want ...string) {
	c.t.Helper()
	got := c.do(tag, command)
	assertLines(c.t, command, got, want)
}

func assertLines(t testing.TB, what string, got, want []string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = match(got[i], want[i])
	}
	if !ok {
		t.Fatalf("%s:\ngot:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func match(got, want string) bool {
	if p, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(got, p)
	}
	return got == want
}

// expectClosed checks that the server closes the connection (after
// whatever remaining lines, which are returned).
func (c *client) expectClosed() []string {
	c.t.Helper()
	var rest []string
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
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

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// login logs in with LOGIN and checks the OK.
func (c *client) login(user, pass string) {
	c.t.Helper()
	got := c.do("L", "LOGIN "+user+" "+pass)
	if len(got) != 1 || !strings.HasPrefix(got[0], "L OK [CAPABILITY ") {
		c.t.Fatalf("LOGIN %s: %q", user, got)
	}
}

// close closes the client connection.
func (c *client) close() { c.nc.Close() }

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// selfSignedTLS returns a server config with a fresh self-signed certificate
// for 127.0.0.1 and a client config that trusts it. The server config has no
// MinVersion of its own: tests see what the proxy does with a caller's config.
func selfSignedTLS(t testing.TB) (server, clientCfg *tls.Config) {
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
	clientCfg = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, clientCfg
}

// fakeUpstream is a tiny raw-TCP IMAP server for what memupstream cannot
// do: advertise no UNSELECT, and take or serve huge literals without storing
// them. It logs in anyone.
type fakeUpstream struct {
	t    testing.TB
	ln   net.Listener
	caps string // capabilities after login
	// bodySize and chunk describe the one message FETCH 1 BODY[] serves:
	// chunk repeated up to bodySize bytes.
	bodySize int64
	chunk    []byte

	mu       sync.Mutex
	commands []string   // every command line received (tags stripped)
	byConn   [][]string // the same, per connection
	appended []appendRecord
	conns    atomic.Int64
	wg       sync.WaitGroup
	open     map[net.Conn]struct{}
	closed   bool
}

type appendRecord struct {
	size int64
	sum  [32]byte
}

func startFakeUpstream(t testing.TB, caps string) *fakeUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{t: t, ln: ln, caps: caps, open: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeUpstream) addr() string { return f.ln.Addr().String() }

func (f *fakeUpstream) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.open {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// connCommands returns the commands received on each connection, in the
// order the connections were accepted.
func (f *fakeUpstream) connCommands() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]string, len(f.byConn))
	for i, l := range f.byConn {
		out[i] = append([]string(nil), l...)
	}
	return out
}

func (f *fakeUpstream) appends() []appendRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]appendRecord(nil), f.appended...)
}

func (f *fakeUpstream) serve() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			nc.Close()
			return
		}
		f.open[nc] = struct{}{}
		id := len(f.byConn)
		f.byConn = append(f.byConn, nil)
		f.mu.Unlock()
		f.conns.Add(1)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.open, nc)
				f.mu.Unlock()
				nc.Close()
			}()
			f.session(nc, id)
		}()
	}
}

// session serves one connection. It is deliberately simple: one command at
// a time, literals only at the end of APPEND.
func (f *fakeUpstream) session(nc net.Conn, id int) {
	br := bufio.NewReader(nc)
	bw := bufio.NewWriter(nc)
	fmt.Fprintf(bw, "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] fake ready\r\n")
	bw.Flush()
	selected := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		tag, rest, _ := strings.Cut(line, " ")
		name, args, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		f.mu.Lock()
		f.commands = append(f.commands, rest)
		f.byConn[id] = append(f.byConn[id], rest)
		f.mu.Unlock()
		switch name {
		case "CAPABILITY":
			fmt.Fprintf(bw, "* CAPABILITY %s\r\n%s OK done\r\n", f.caps, tag)
		case "AUTHENTICATE", "LOGIN":
			fmt.Fprintf(bw, "%s OK logged in\r\n", tag)
		case "LIST":
			fmt.Fprintf(bw, "* LIST () \"/\" INBOX\r\n%s OK LIST done\r\n", tag)
		case "NOOP", "CHECK":
			fmt.Fprintf(bw, "%s OK %s done\r\n", tag, name)
		case "SELECT", "EXAMINE":
			selected = args
			code := "READ-WRITE"
			if name == "EXAMINE" {
				code = "READ-ONLY"
			}
			fmt.Fprintf(bw, "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n* FLAGS (\\Seen)\r\n%s OK [%s] %s done\r\n", tag, code, name)
		case "CLOSE", "UNSELECT":
			if selected == "" {
				fmt.Fprintf(bw, "%s BAD no mailbox selected\r\n", tag)
			} else {
				selected = ""
				fmt.Fprintf(bw, "%s OK %s done\r\n", tag, name)
			}
		case "FETCH", "UID":
			// The one message has sequence number 1 and UID 1.
			if !strings.Contains(strings.ToUpper(args), "BODY[]") {
				fmt.Fprintf(bw, "* 1 FETCH (UID 1 FLAGS ())\r\n%s OK %s done\r\n", tag, name)
				break
			}
			fmt.Fprintf(bw, "* 1 FETCH (UID 1 BODY[] {%d}\r\n", f.bodySize)
			for left := f.bodySize; left > 0; {
				n := min(left, int64(len(f.chunk)))
				bw.Write(f.chunk[:n])
				left -= n
			}
			fmt.Fprintf(bw, ")\r\n%s OK FETCH done\r\n", tag)
		case "APPEND":
			n, ok := literalSize(strings.Replace(line, "+}", "}", 1))
			if !ok {
				fmt.Fprintf(bw, "%s BAD APPEND needs a literal\r\n", tag)
				break
			}
			nonSync := strings.HasSuffix(line, "+}")
			if strings.HasPrefix(args, "NoSuchBox ") {
				// Refused before the literal; a non-synchronising one
				// comes anyway and is skipped.
				if nonSync {
					if _, err := io.CopyN(io.Discard, br, n); err != nil {
						return
					}
					if _, err := br.ReadString('\n'); err != nil {
						return
					}
				}
				fmt.Fprintf(bw, "%s NO [TRYCREATE] no such mailbox\r\n", tag)
				break
			}
			if !nonSync {
				fmt.Fprintf(bw, "+ go ahead\r\n")
				bw.Flush()
			}
			h := newSummer()
			if _, err := io.CopyN(h, br, n); err != nil {
				return
			}
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			f.mu.Lock()
			f.appended = append(f.appended, appendRecord{n, h.sum()})
			f.mu.Unlock()
			fmt.Fprintf(bw, "%s OK [APPENDUID 1 %d] APPEND done\r\n", tag, len(f.appends()))
		case "LOGOUT":
			fmt.Fprintf(bw, "* BYE bye\r\n%s OK LOGOUT done\r\n", tag)
			bw.Flush()
			return
		default:
			fmt.Fprintf(bw, "%s BAD unknown command\r\n", tag)
		}
		if err := bw.Flush(); err != nil {
			return
		}
	}
}

// summer hashes what is written to it.
type summer struct{ hash.Hash }

func newSummer() *summer { return &summer{sha256.New()} }

func (s *summer) sum() (out [32]byte) {
	copy(out[:], s.Sum(nil))
	return out
}

// forwarder is a TCP relay in front of an upstream that counts the
// connections the proxy opens.
type forwarder struct {
	ln     net.Listener
	target string
	dials  atomic.Int64
	refuse atomic.Bool // hang up on new connections at once
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]struct{}
}

func startForwarder(t testing.TB, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, open: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.open {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

// cut closes every forwarded connection, as an upstream restart would.
func (f *forwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.open {
		c.Close()
		delete(f.open, c)
	}
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open == nil {
		return false
	}
	f.open[c] = struct{}{}
	return true
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		for c := range f.open {
			c.Close()
		}
		f.open = nil
		f.mu.Unlock()
	}()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.dials.Add(1)
		if f.refuse.Load() {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		if !f.track(c) || !f.track(u) {
			c.Close()
			u.Close()
			return
		}
		f.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer f.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}
