package imapcodec

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		done <- c
	}()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b = <-done
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestSpliceLiteral moves a literal much larger than the Reader's buffer,
// sent in pieces of odd sizes, from one TCP connection to another: the
// part buffered with its header by WriteBufferedLiteral, the rest by
// SpliceLiteral in chunks; the receiver gets it unchanged, and the Reader
// goes on with the line after it.
func TestSpliceLiteral(t *testing.T) {
	const size = 700_001
	body := make([]byte, size)
	rnd := rand.New(rand.NewPCG(5, 6))
	for i := range body {
		body[i] = byte(rnd.UintN(256))
	}
	upSrv, upCli := tcpPair(t)   // the upstream writes to upSrv, the Reader reads upCli
	cliSrv, cliCli := tcpPair(t) // the Reader's side writes to cliSrv, the client reads cliCli

	go func() {
		upSrv.Write([]byte("* 1 FETCH (BODY[] {700001}\r\n"))
		upSrv.Write(body[:1000]) // arrives with the header, most likely
		for rest := body[1000:]; len(rest) > 0; {
			n := min(len(rest), 1+rnd.IntN(50_000))
			upSrv.Write(rest[:n])
			rest = rest[n:]
			time.Sleep(100 * time.Microsecond)
		}
		upSrv.Write([]byte(")\r\n* 2 EXISTS\r\n"))
	}()
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, size)
		_, err := io.ReadFull(cliCli, b)
		if err != nil {
			b = nil
		}
		got <- b
	}()

	r := NewReader(upCli, Limits{})
	if !r.CanSplice() {
		t.Fatal("CanSplice is false for a Reader on a TCP connection")
	}
	line, lit, err := r.ReadLine()
	if err != nil || lit == nil || lit.Size != size {
		t.Fatalf("ReadLine: %q %+v %v", line, lit, err)
	}
	buffered := r.BufferedLiteral()
	if n, err := r.WriteBufferedLiteral(cliSrv); err != nil || n != buffered {
		t.Fatalf("WriteBufferedLiteral: %d, %v; BufferedLiteral said %d", n, err, buffered)
	}
	if r.BufferedLiteral() != 0 {
		t.Fatalf("BufferedLiteral is %d after WriteBufferedLiteral", r.BufferedLiteral())
	}
	moved := buffered
	for r.LiteralRemaining() > 0 {
		n, err := r.SpliceLiteral(cliSrv, 64<<10)
		if err != nil {
			t.Fatalf("SpliceLiteral after %d bytes: %v", moved, err)
		}
		if n > 64<<10 {
			t.Fatalf("SpliceLiteral moved %d bytes, more than asked", n)
		}
		moved += n
	}
	if moved != size {
		t.Fatalf("moved %d bytes, want %d", moved, size)
	}
	if b := <-got; !bytes.Equal(b, body) {
		t.Fatal("the literal arrived changed")
	}
	for _, want := range []string{")", "* 2 EXISTS"} {
		if line, _, err := r.ReadLine(); err != nil || string(line) != want {
			t.Fatalf("after the literal: %q, %v; want %q", line, err, want)
		}
	}
	if _, err := r.SpliceLiteral(cliSrv, 1); err != io.EOF {
		t.Fatalf("SpliceLiteral with no literal: %v, want io.EOF", err)
	}
}

// TestSpliceLiteralRefused: SpliceLiteral moves nothing while part of the
// literal is buffered, or when the Reader does not read straight from TCP
// (a layer such as TLS or COMPRESS in between).
func TestSpliceLiteralRefused(t *testing.T) {
	upSrv, upCli := tcpPair(t)
	cliSrv, _ := tcpPair(t)
	upSrv.Write([]byte("* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n"))
	r := NewReader(upCli, Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if n, err := r.SpliceLiteral(cliSrv, 10); err == nil || n != 0 || r.LiteralRemaining() != 10 {
		t.Fatalf("SpliceLiteral with the literal buffered: %d, %v, %d left", n, err, r.LiteralRemaining())
	}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		// Two writes, two reads: the literal is not buffered with its
		// header.
		a.Write([]byte("* 1 FETCH (BODY[] {3}\r\n"))
		a.Write([]byte("abc)\r\n"))
	}()
	r = NewReader(b, Limits{})
	if r.CanSplice() {
		t.Fatal("CanSplice is true for a Reader on a pipe")
	}
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := r.WriteBufferedLiteral(&buf); err != nil {
		t.Fatal(err)
	}
	if n, err := r.SpliceLiteral(cliSrv, 3); err == nil || n != 0 || r.LiteralRemaining() != 3 {
		t.Fatalf("SpliceLiteral on a pipe: %d, %v, %d left", n, err, r.LiteralRemaining())
	}
	if b, err := io.ReadAll(r.Literal()); err != nil || string(b) != "abc" {
		t.Fatalf("the literal after a refused splice: %q, %v", b, err)
	}
}

// TestSpliceLiteralCut: the stream ends inside the literal, before
// SpliceLiteral begins or while it waits for more of the literal; either
// way it reports io.ErrUnexpectedEOF at once, not at the deadline. (A
// wait for a batch of the literal's bytes with SO_RCVLOWAT, tried and
// dropped, docs/benchmarks.md, hung here when the end came first.)
func TestSpliceLiteralCut(t *testing.T) {
	for _, late := range []bool{false, true} {
		upSrv, upCli := tcpPair(t)
		cliSrv, _ := tcpPair(t)
		r := NewReader(upCli, Limits{})
		upSrv.Write([]byte("* 1 FETCH (BODY[] {100000}\r\n"))
		if _, _, err := r.ReadLine(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.WriteBufferedLiteral(cliSrv); err != nil {
			t.Fatal(err)
		}
		upSrv.Write(make([]byte, 5000))
		if late {
			time.AfterFunc(50*time.Millisecond, func() { upSrv.Close() })
		} else {
			upSrv.Close()
		}
		upCli.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		var err error
		for err == nil && r.LiteralRemaining() > 0 {
			_, err = r.SpliceLiteral(cliSrv, 1<<20)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("closed late %v: SpliceLiteral on a cut stream: %v, want io.ErrUnexpectedEOF", late, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("closed late %v: the end was seen after %v", late, d)
		}
	}
}

// TestSpliceLiteralAfterRelease: a Reader that gave its buffer back
// between two responses (as the proxy's upstream readers do between
// commands) reads the next line with its small first buffer; the literal
// bytes that read took along are written first, the rest spliced.
func TestSpliceLiteralAfterRelease(t *testing.T) {
	upSrv, upCli := tcpPair(t)
	cliSrv, cliCli := tcpPair(t)
	r := NewReader(upCli, Limits{})
	upSrv.Write([]byte("* OK hello\r\n"))
	if line, _, err := r.ReadLine(); err != nil || string(line) != "* OK hello" {
		t.Fatalf("ReadLine: %q, %v", line, err)
	}
	r.Release()
	body := bytes.Repeat([]byte("0123456789abcdefghij\r\n"), 10_000) // 220,000 bytes
	go func() {
		upSrv.Write(append([]byte("* 1 FETCH (BODY[] {220000}\r\n"), body[:100]...))
		time.Sleep(10 * time.Millisecond)
		upSrv.Write(append(body[100:], ")\r\n"...))
	}()
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(body))
		if _, err := io.ReadFull(cliCli, b); err != nil {
			b = nil
		}
		got <- b
	}()
	if _, lit, err := r.ReadLine(); err != nil || lit == nil || lit.Size != int64(len(body)) {
		t.Fatalf("ReadLine: %+v, %v", lit, err)
	}
	if _, err := r.WriteBufferedLiteral(cliSrv); err != nil {
		t.Fatal(err)
	}
	for r.LiteralRemaining() > 0 {
		if _, err := r.SpliceLiteral(cliSrv, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if b := <-got; !bytes.Equal(b, body) {
		t.Fatal("the literal arrived changed")
	}
	if line, _, err := r.ReadLine(); err != nil || string(line) != ")" {
		t.Fatalf("after the literal: %q, %v", line, err)
	}
}
