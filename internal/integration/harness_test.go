// Package integration tests lemonproxy end to end against real Dovecot
// servers (internal/dovecottest) and real clients (Python's imaplib, mbsync).
package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

var profiles = []dovecottest.Profile{dovecottest.Full, dovecottest.Legacy, dovecottest.LegacyNoIdle}

// startProxy runs a proxy in front of upstreamAddr and returns its address.
func startProxy(t testing.TB, upstreamAddr string, opts ...func(*proxy.Config)) (string, *proxy.Server) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := proxy.Config{
		Upstream:         upstream.Config{Addr: upstreamAddr, Timeout: 10 * time.Second},
		AuthFailureDelay: 10 * time.Millisecond,
		Extensions:       []proxy.Extension{idle.New()},
		Logger:           log,
	}
	cfg.Hub.PollInterval = 300 * time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln, false)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return ln.Addr().String(), srv
}

// requireTool finds a client program; missing in CI (where the test script
// installs it) is a failure, elsewhere a skip. Under -short it always skips:
// external clients belong to the full tier.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s; skipped under -short", name)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(dovecottest.RequireEnv) == "1" {
			t.Fatalf("%s not installed (scripts/test.sh installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// rawClient is a scripted IMAP client that records every response line.
type rawClient struct {
	t   testing.TB
	nc  net.Conn
	r   *imapcodec.Reader
	seq int
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{t: t, nc: nc, r: imapcodec.NewReader(nc, imapcodec.Limits{MaxLiteral: 1 << 30})}
	c.readLine() // greeting
	return c
}

// readLine reads one response line; a literal is appended to it as
// "{n}\r\n<data>" so transcripts keep message contents.
func (c *rawClient) readLine() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b strings.Builder
	for {
		line, lit, err := c.r.ReadLine()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		b.Write(line)
		if lit == nil {
			return b.String()
		}
		data, err := c.r.ReadLiteral()
		if err != nil {
			c.t.Fatalf("read literal: %v", err)
		}
		b.WriteString("\r\n")
		b.Write(data)
	}
}

// cmd sends a command (tag added) and returns all response lines up to and
// including the tagged one. A "{n}" synchronising literal in the command is
// sent after the server's continuation request: write it as
// cmd("APPEND x {3}", "abc").
func (c *rawClient) cmd(text string, literals ...string) []string {
	c.t.Helper()
	c.seq++
	tag := fmt.Sprintf("c%d", c.seq)
	parts := append([]string{tag + " " + text}, literals...)
	var out []string
	for i, p := range parts {
		c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c.nc, p); err != nil {
			c.t.Fatal(err)
		}
		if i < len(parts)-1 {
			if _, err := io.WriteString(c.nc, "\r\n"); err != nil {
				c.t.Fatal(err)
			}
			if !strings.HasSuffix(p, "+}") {
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
		}
	}
	io.WriteString(c.nc, "\r\n")
	for {
		l := c.readLine()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
}

// last returns the tagged line of a response list, without its tag.
func last(lines []string) string {
	_, rest, _ := strings.Cut(lines[len(lines)-1], " ")
	return rest
}

func mustOK(t testing.TB, lines []string) []string {
	t.Helper()
	if !strings.HasPrefix(last(lines), "OK") {
		t.Fatalf("want OK, got %q", lines)
	}
	return lines
}

func sampleMessage(i int, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender %d <s%d@example.org>\r\nTo: rcpt@example.org\r\nSubject: message %d\r\nDate: Mon, 2 Nov 2026 10:%02d:00 +0000\r\nMessage-ID: <m%d@example.org>\r\n\r\n%s\r\n", i, i, i, i%60, i, body)
	return b.Bytes()
}
