package faultnet

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, r *Relay) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAll reads until EOF or an error and returns what came.
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("no EOF after %d bytes", len(b))
	}
	return b
}

func waitFired(t *testing.T, h *Handle) *Conn {
	t.Helper()
	select {
	case <-h.Fired():
		return h.Conn()
	case <-time.After(5 * time.Second):
		t.Fatalf("%v did not fire", h)
		return nil
	}
}

func TestCutAfterBytes(t *testing.T) {
	r := Start(t, echoServer(t))
	h := r.Add(Fault{Dir: ToClient, After: 1000, Action: Cut, Data: []byte("!")})
	c := dial(t, r)
	data := bytes.Repeat([]byte("0123456789"), 1000)
	go c.Write(data) // may fail once the relay has cut
	got := readAll(t, c)
	if want := append(data[:1000:1000], '!'); !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes %q..., want the first 1000 and '!'", len(got), got[:min(len(got), 20)])
	}
	conn := waitFired(t, h)
	<-conn.Done()
	if conn.ID != 1 || conn.ClientClosed() {
		t.Errorf("conn %d, client closed %v", conn.ID, conn.ClientClosed())
	}
}

// TestMatchAcrossReads: the pattern is written in two pieces; the fault
// arms where it ends and replaces the rest of the echo.
func TestMatchAcrossReads(t *testing.T) {
	r := Start(t, echoServer(t))
	h := r.Add(Fault{Match: []byte("MAGIC"), MatchDir: ToServer, Dir: ToServer, After: 2, Action: Replace, Data: []byte("<junk>")})
	c := dial(t, r)
	c.Write([]byte("abcMA"))
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "abcMA" {
		t.Fatalf("echo before the match: %q %v", buf, err)
	}
	c.Write([]byte("GIC12345"))
	buf = make([]byte, len("GIC12<junk>"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "GIC12<junk>" {
		t.Fatalf("after the match: %q %v", buf, err)
	}
	conn := waitFired(t, h)
	c.Write([]byte("more"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(buf); n != 0 || err == nil {
		t.Fatalf("bytes after Replace: %q %v", buf[:n], err)
	}
	c.Close()
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed after the client closed")
	}
	if !conn.ClientClosed() {
		t.Error("ClientClosed false after the client hung up")
	}
	if got := conn.Bytes(ToServer); got != int64(len("abcMAGIC12<junk>")) {
		t.Errorf("Bytes(ToServer) = %d", got)
	}
}

// TestCrossDirectionAndConn: a match in one direction arms an action in the
// other, only on the chosen connection; Inject and Note leave the stream
// going.
func TestCrossDirectionAndConn(t *testing.T) {
	r := Start(t, echoServer(t))
	note := r.Add(Fault{Match: []byte("X"), MatchDir: ToServer, Action: Note, Dir: ToServer})
	inj := r.Add(Fault{Conn: 2, Match: []byte("go"), MatchDir: ToServer, Dir: ToClient, Action: Inject, Data: []byte("[in]")})
	c1 := dial(t, r)
	c2 := dial(t, r)
	roundTrip := func(c net.Conn, send, want string) {
		t.Helper()
		c.Write([]byte(send))
		buf := make([]byte, len(want))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
			t.Fatalf("sent %q: got %q %v, want %q", send, buf, err, want)
		}
	}
	roundTrip(c1, "go", "go") // connection 1: no injection
	roundTrip(c2, "go", "[in]go")
	roundTrip(c2, "go", "go") // fired once
	roundTrip(c2, "aXb", "aXb")
	if c := waitFired(t, note); c.ID != 2 {
		t.Errorf("note fired on connection %d, want 2", c.ID)
	}
	if c := waitFired(t, inj); c.ID != 2 {
		t.Errorf("inject fired on connection %d, want 2", c.ID)
	}
	if n := r.Open(); n != 2 {
		t.Errorf("%d open connections, want 2", n)
	}
	r.CutAll()
	for _, c := range r.Conns() {
		<-c.Done()
	}
}

// TestCutDrainsServer: after a cut, a server in the middle of a large write
// finishes it, and then reads the end of the stream.
func TestCutDrainsServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	result := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			result <- err
			return
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, 8<<20)); err != nil {
			result <- err
			return
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		result <- err
	}()
	r := Start(t, ln.Addr().String())
	h := r.Add(Fault{Dir: ToClient, After: 64 << 10, Action: Cut})
	c := dial(t, r)
	if got := readAll(t, c); len(got) != 64<<10 {
		t.Errorf("the client got %d bytes, want %d", len(got), 64<<10)
	}
	if err := <-result; !errors.Is(err, io.EOF) {
		t.Errorf("the server's write or read ended with %v, want its write done and EOF", err)
	}
	<-waitFired(t, h).Done()
}

// TestHold: a Hold stops one direction where it fires until Release; the
// other goes on meanwhile, and nothing is lost.
func TestHold(t *testing.T) {
	r := Start(t, echoServer(t))
	h := r.Add(Fault{Match: []byte("wait"), MatchDir: ToServer, Dir: ToClient, Action: Hold})
	c := dial(t, r)
	c.Write([]byte("abc wait"))
	buf := make([]byte, len("abc wait"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The echo of "abc wait" passes (it was read before the match armed
	// the hold, or held at its first byte: either way it arrives after
	// Release at the latest); what follows is held.
	waitFired(t, h)
	c.Write([]byte("123"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n, _ := io.ReadFull(c, buf)
	rest := append([]byte(nil), buf[:n]...)
	if bytes.Contains(rest, []byte("123")) {
		t.Fatalf("bytes passed a hold: %q", rest)
	}
	h.Release()
	h.Release() // twice is fine
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	all := make([]byte, len("abc wait123")-len(rest))
	if _, err := io.ReadFull(c, all); err != nil {
		t.Fatalf("after Release: %q %v", all, err)
	}
	if got := string(rest) + string(all); got != "abc wait123" {
		t.Fatalf("got %q after the hold", got)
	}
}

// TestHoldClose: closing the relay ends a hold nobody released.
func TestHoldClose(t *testing.T) {
	r, err := Listen(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	h := r.Add(Fault{Dir: ToClient, Action: Hold})
	c := dial(t, r)
	c.Write([]byte("x"))
	waitFired(t, h)
	r.Close() // returns: the held pump is let go
}
