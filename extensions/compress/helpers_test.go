package compress_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/klauspost/compress/flate"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestMain fails the package if a test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ioTimeout = 10 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("LEMON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// env is an in-memory upstream with user alice and a proxy in front of it
// with the COMPRESS and IDLE extensions.
type env struct {
	up   *memupstream.Server
	ext  *compress.Extension
	srv  *proxy.Server
	addr string
}

type envOpts struct {
	tls *tls.Config // serve implicit TLS with this configuration
}

func newEnv(t testing.TB, opts envOpts) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: append([]imap.Cap{imap.CapIdle}, memupstream.DefaultCaps...)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	ext := compress.New()
	srv, err := proxy.NewServer(proxy.Config{
		Upstream:         upstream.Config{Addr: up.Addr, Timeout: 5 * time.Second},
		AuthFailureDelay: 10 * time.Millisecond,
		TLS:              opts.tls,
		Extensions:       []proxy.Extension{ext, idle.New()},
		Logger:           testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln, opts.tls != nil)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return &env{up: up, ext: ext, srv: srv, addr: ln.Addr().String()}
}

// client is a scripted IMAP client that can turn on COMPRESS=DEFLATE the
// way real clients do: a stateful zlib-style deflater with a sync flush
// after each command, and an inflater over everything after the OK.
type client struct {
	t   testing.TB
	nc  net.Conn
	r   *imapcodec.Reader
	w   io.Writer
	fw  interface{ Flush() error } // nil until compression is on
	seq int
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, nc)
}

func newClient(t testing.TB, nc net.Conn) *client {
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, nc: nc, w: nc, r: imapcodec.NewReader(nc, imapcodec.Limits{MaxLiteral: 1 << 30, MaxLine: 1 << 20})}
	if g := c.readLine(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

// write sends raw bytes (compressed when compression is on) and flushes.
func (c *client) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.w.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	if c.fw != nil {
		if err := c.fw.Flush(); err != nil {
			c.t.Fatalf("flush: %v", err)
		}
	}
}

// readLine reads one response line; a literal is appended to it as
// "{n}\r\n<data>".
func (c *client) readLine() string {
	c.t.Helper()
	s, err := c.tryReadLine()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return s
}

func (c *client) tryReadLine() (string, error) {
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	var b strings.Builder
	for {
		line, lit, err := c.r.ReadLine()
		if err != nil {
			return b.String(), err
		}
		b.Write(line)
		if lit == nil {
			return b.String(), nil
		}
		data, err := c.r.ReadLiteral()
		if err != nil {
			return b.String(), err
		}
		b.WriteString("\r\n")
		b.Write(data)
	}
}

// cmd sends a command (tag added) and returns every response line up to and
// including the tagged one. Synchronising literals are sent after the
// continuation request: cmd("APPEND x {3}", "abc").
func (c *client) cmd(text string, literals ...string) []string {
	c.t.Helper()
	c.seq++
	tag := fmt.Sprintf("c%d", c.seq)
	parts := append([]string{tag + " " + text}, literals...)
	var out []string
	for i, p := range parts {
		if i == len(parts)-1 {
			c.write([]byte(p + "\r\n"))
			break
		}
		c.write([]byte(p + "\r\n"))
		for {
			l := c.readLine()
			out = append(out, l)
			if strings.HasPrefix(l, "+") {
				break
			}
			if strings.HasPrefix(l, tag+" ") {
				return out
			}
		}
	}
	for {
		l := c.readLine()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
}

func (c *client) mustOK(text string, literals ...string) []string {
	c.t.Helper()
	lines := c.cmd(text, literals...)
	if !strings.HasPrefix(tagged(lines), "OK") {
		c.t.Fatalf("%s: want OK, got %q", text, lines)
	}
	return lines
}

// tagged returns the tagged line of a response, without its tag.
func tagged(lines []string) string {
	_, rest, _ := strings.Cut(lines[len(lines)-1], " ")
	return rest
}

// startCompression switches the client to deflate after an OK to COMPRESS:
// bytes already read past the OK are the start of the compressed stream.
func (c *client) startCompression(level int) {
	pending := c.r.TakeBuffered()
	src := io.MultiReader(strings.NewReader(string(pending)), c.nc)
	c.r = imapcodec.NewReader(flate.NewReader(src), imapcodec.Limits{MaxLiteral: 1 << 30, MaxLine: 1 << 20})
	fw, err := flate.NewWriter(c.nc, level)
	if err != nil {
		c.t.Fatal(err)
	}
	c.fw, c.w = fw, fw
}

// startLightCompression is startCompression with package deflate's codec
// on the client side too, so that thousands of clients fit in memory.
func (c *client) startLightCompression() {
	pending := c.r.TakeBuffered()
	c.r = imapcodec.NewReader(deflate.NewReader(c.nc, pending), imapcodec.Limits{MaxLiteral: 1 << 30, MaxLine: 1 << 20})
	w := deflate.NewWriter(c.nc, 0)
	c.fw, c.w = w, w
}

// compress runs COMPRESS DEFLATE and switches the client over.
func (c *client) compress() {
	c.t.Helper()
	c.mustOK("COMPRESS DEFLATE")
	c.startCompression(5)
}

// expectBye reads until the connection ends and returns the last line read,
// which must be an untagged BYE.
func (c *client) expectBye() string {
	c.t.Helper()
	var last string
	for {
		l, err := c.tryReadLine()
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

// selfSignedTLS returns a server configuration with a fresh certificate and
// a client configuration that trusts it.
func selfSignedTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool, ServerName: "localhost"}
}

// waitFor polls cond for up to 5 s.
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

// io_multi reads pending first, then nc.
func io_multi(pending []byte, nc net.Conn) io.Reader {
	return io.MultiReader(bytes.NewReader(pending), nc)
}
