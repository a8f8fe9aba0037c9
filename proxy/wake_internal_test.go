package proxy

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// lateInterruptConn delays, once, the interrupt (a read deadline in the
// past) a Wake sets from another goroutine: as if that goroutine had been
// descheduled between finding the session waiting for its client and
// setting the deadline.
type lateInterruptConn struct {
	net.Conn
	delay atomic.Bool
}

func (c *lateInterruptConn) SetReadDeadline(t time.Time) error {
	if t.Equal(time.Unix(1, 0)) && c.delay.CompareAndSwap(true, false) {
		time.Sleep(100 * time.Millisecond)
	}
	return c.Conn.SetReadDeadline(t)
}

// TestWakeLandsOnLiteral: a Wake that found the session waiting between
// commands, and whose interrupt lands once the session has read the next
// command and waits for its literal, must not end the session. It did:
// the literal's read timed out at once and the client got "BYE
// Autologout" (a second reviewer's finding).
func TestWakeLandsOnLiteral(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.AddUser("alice", "secret")
	srv, err := NewServer(Config{
		Upstream: upstream.Config{Addr: up.Addr, Timeout: 5 * time.Second},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn := &lateInterruptConn{Conn: sc}
	s := newSession(srv, conn, false)
	done := make(chan struct{})
	go func() { defer close(done); s.run(context.Background(), false) }()
	defer func() { cli.Close(); <-done }()

	cli.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(cli)
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting %q", l)
	}
	for !s.between.Load() {
		time.Sleep(time.Millisecond)
	}
	conn.delay.Store(true)
	woken := make(chan struct{})
	go func() { defer close(woken); s.Wake() }() // its interrupt comes late
	defer func() { <-woken }()
	time.Sleep(10 * time.Millisecond)
	cli.Write([]byte("a LOGIN alice {6}\r\n"))
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+") {
		t.Fatalf("after the literal's announcement: %q", l)
	}
	time.Sleep(200 * time.Millisecond) // a slow link
	cli.Write([]byte("secret\r\n"))
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("LOGIN whose literal came 200 ms after the continuation: %q, want a OK", l)
	}
}
