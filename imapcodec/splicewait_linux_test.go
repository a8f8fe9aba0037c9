package imapcodec

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rcvlowat reads c's SO_RCVLOWAT.
func rcvlowat(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestSpliceLiteralWaitsForBatch: a literal that arrives in many small
// writes moves in few pieces. While SpliceLiteral waits, the upstream
// socket's SO_RCVLOWAT is the part of the literal it asked for, so the
// kernel does not wake it for each write; the wait ends when the last
// byte of the literal is there, although nothing follows it, and the
// Reader's own reads after the literal get their default of 1 back: a
// 3-byte line that comes later is read at once.
func TestSpliceLiteralWaitsForBatch(t *testing.T) {
	upSrv, upCli := tcpPair(t)
	cliSrv, cliCli := tcpPair(t)
	r := NewReader(upCli, Limits{})
	body := bytes.Repeat([]byte("0123456789abcdef"), 6400) // 102,400 bytes
	upSrv.Write([]byte("* 1 FETCH (BODY[] {102400}\r\n"))
	if _, lit, err := r.ReadLine(); err != nil || lit == nil {
		t.Fatalf("ReadLine: %+v, %v", lit, err)
	}
	if _, err := r.WriteBufferedLiteral(cliSrv); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(body))
		if _, err := io.ReadFull(cliCli, b); err != nil {
			b = nil
		}
		got <- b
	}()
	sent := make(chan int, 1)
	lowats := make(chan int, 1)
	go func() {
		// The Reader's first read took what the header's segment
		// carried: nothing of the body, which is written only now.
		for i := 0; i < len(body); i += 2048 {
			upSrv.Write(body[i : i+2048])
			if i == len(body)/2 {
				time.Sleep(20 * time.Millisecond)
				lowats <- rcvlowat(t, upCli)
			}
			time.Sleep(200 * time.Microsecond)
		}
		sent <- len(body)
	}()
	upCli.SetReadDeadline(time.Now().Add(5 * time.Second))
	calls := 0
	for r.LiteralRemaining() > 0 {
		calls++
		if _, err := r.SpliceLiteral(cliSrv, 1<<20); err != nil {
			t.Fatalf("SpliceLiteral: %v", err)
		}
	}
	<-sent
	if lw := <-lowats; lw != len(body) {
		t.Errorf("SO_RCVLOWAT while half the literal had come: %d, want %d", lw, len(body))
	}
	if calls > 2 {
		t.Errorf("SpliceLiteral returned %d times for a literal written in 50 pieces; want it to wait for the whole", calls)
	}
	if lw := rcvlowat(t, upCli); lw != 1 {
		t.Errorf("SO_RCVLOWAT after the literal: %d, want 1", lw)
	}
	if b := <-got; !bytes.Equal(b, body) {
		t.Fatal("the literal arrived changed")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		upSrv.Write([]byte(")\r\n"))
	}()
	upCli.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, _, err := r.ReadLine(); err != nil || string(line) != ")" {
		t.Fatalf("after the literal: %q, %v", line, err)
	}
}
