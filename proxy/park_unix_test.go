//go:build unix

package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestTryReadTLS: what parking relies on in crypto/tls. In try mode the
// connection under TLS refuses to read; TLS then still returns the rest
// of a record it decrypted, reports errWouldWait (temporary, so not kept
// as the connection's error) once it has nothing, and reads on as before
// when the mode ends. waitReadable returns when bytes arrive, and when a
// read deadline (a Wake's) passes.
func TestTryReadTLS(t *testing.T) {
	srvCfg, cliCfg := imaptest.SelfSignedTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli := make(chan *tls.Conn, 1)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), cliCfg)
		if err != nil {
			t.Error(err)
			close(cli)
			return
		}
		cli <- c
	}()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ic, try, wait, ok := proxy.Parkable(nc)
	if !ok {
		t.Fatal("an accepted TCP connection is not parkable")
	}
	tc := tls.Server(ic, srvCfg)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c := <-cli
	if c == nil {
		return
	}
	defer c.Close()

	// One record, of which the server reads only the start.
	if _, err := io.WriteString(c, "a NOOP\r\nb NOOP\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := io.ReadFull(tc, buf[:4]); err != nil || string(buf[:n]) != "a NO" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	try(true)
	n, err := tc.Read(buf)
	if err != nil || string(buf[:n]) != "OP\r\nb NOOP\r\n" {
		t.Fatalf("try read of the rest of the record: %q, %v", buf[:n], err)
	}
	n, err = tc.Read(buf)
	if n != 0 || !errors.Is(err, proxy.ErrWouldWait) {
		t.Fatalf("try read with nothing held: %q, %v; want %v", buf[:n], err, proxy.ErrWouldWait)
	}
	try(false)

	// A wait cut short by a deadline in the past, as Wake does.
	tc.SetReadDeadline(time.Unix(1, 0))
	start := time.Now()
	wait()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waitReadable ignored the deadline (%v)", d)
	}
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))

	// Bytes arriving while it waits.
	go func() {
		time.Sleep(50 * time.Millisecond)
		io.WriteString(c, "c NOOP\r\n")
	}()
	wait()
	n, err = tc.Read(buf)
	if err != nil || string(buf[:n]) != "c NOOP\r\n" {
		t.Fatalf("read after the wait: %q, %v", buf[:n], err)
	}
}
