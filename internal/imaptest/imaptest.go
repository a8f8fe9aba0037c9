// Package imaptest holds what tests of the proxy and its extensions share: a
// scripted line-level IMAP client that shows the exact wire responses, and
// a proxy started in front of an upstream on loopback.
package imaptest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// IOTimeout bounds every read and write of a Client.
const IOTimeout = 10 * time.Second

// Logger discards logs unless LEMON_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("LEMON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Proxy is a proxy.Server serving one loopback listener.
type Proxy struct {
	Srv  *proxy.Server
	Addr string
}

// StartProxy starts a proxy in front of upstream addr with cfg's other
// settings (Upstream.Addr and a short timeout are filled in), and shuts it
// down when the test ends.
func StartProxy(t testing.TB, upAddr string, cfg proxy.Config) *Proxy {
	t.Helper()
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
	srv, err := proxy.NewServer(cfg)
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
		srv.Serve(ln, false)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return &Proxy{Srv: srv, Addr: ln.Addr().String()}
}

// DefaultUpstream is the upstream configuration tests use.
func DefaultUpstream() upstream.Config { return upstream.Config{Timeout: 5 * time.Second} }

// Client is a scripted IMAP client. Every response line is returned as
// read; a literal is appended to its line as "{n}\r\n<data>".
type Client struct {
	t   testing.TB
	nc  net.Conn
	r   *imapcodec.Reader
	seq int
}

// Dial connects to addr and reads the greeting.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, IOTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &Client{t: t, nc: nc, r: imapcodec.NewReader(nc, imapcodec.Limits{MaxLiteral: 1 << 30, MaxLine: 1 << 22})}
	if g := c.ReadLine(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

// Login dials addr and logs in.
func Login(t testing.TB, addr, user, pass string) *Client {
	t.Helper()
	c := Dial(t, addr)
	c.MustOK("LOGIN " + user + " " + pass)
	return c
}

// Close closes the connection.
func (c *Client) Close() { c.nc.Close() }

// Write sends raw bytes.
func (c *Client) Write(s string) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(IOTimeout))
	if _, err := c.nc.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// ReadLine reads one response.
func (c *Client) ReadLine() string {
	c.t.Helper()
	s, err := c.TryReadLine(IOTimeout)
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, s)
	}
	return s
}

// TryReadLine reads one response, waiting at most d.
func (c *Client) TryReadLine(d time.Duration) (string, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
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

// Cmd sends a command (the tag is added) and returns every response line up
// to and including the tagged one. Synchronising literals are sent after
// the continuation request: Cmd("APPEND x {3}", "abc").
func (c *Client) Cmd(text string, literals ...string) []string {
	c.t.Helper()
	c.seq++
	tag := fmt.Sprintf("c%d", c.seq)
	parts := append([]string{tag + " " + text}, literals...)
	var out []string
	for i, p := range parts {
		c.Write(p + "\r\n")
		if i == len(parts)-1 {
			break
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
	for {
		l := c.ReadLine()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
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
