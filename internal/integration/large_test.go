package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// bodyReader generates a deterministic message body of n bytes in lines.
type bodyReader struct {
	n, off int64
	line   []byte
}

func newBody(n int64) *bodyReader {
	return &bodyReader{n: n, line: []byte(strings.Repeat("0123456789abcdef", 4) + "\r\n")}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.off >= b.n {
		return 0, io.EOF
	}
	k := 0
	for k < len(p) && b.off < b.n {
		p[k] = b.line[b.off%int64(len(b.line))]
		k++
		b.off++
	}
	return k, nil
}

// TestLargeMessageStreams appends a 50 MB message through the proxy and
// fetches it back, checking the bytes and that the proxy's heap never grows
// by more than a small fraction of the message: literals stream through.
func TestLargeMessageStreams(t *testing.T) {
	const size = 50 << 20
	header := "From: big@example.org\r\nSubject: big\r\n\r\n"
	total := int64(len(header)) + size
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)

	// Sample the heap while the transfer runs.
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()

	c := dialRaw(t, addr)
	mustOK(t, c.Cmd("LOGIN alice alicepass"))
	want := sha256.New()
	io.Copy(want, io.MultiReader(strings.NewReader(header), newBody(size)))

	// APPEND with a synchronising literal, streamed from a generator.
	c.Write(fmt.Sprintf("a1 APPEND INBOX {%d}\r\n", total))
	if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND: got %q, want continuation", l)
	}
	c.Conn.SetWriteDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(c.Conn, io.MultiReader(strings.NewReader(header), newBody(size))); err != nil {
		t.Fatal(err)
	}
	c.Write("\r\n")
	if l := c.ReadLine(); !strings.HasPrefix(l, "a1 OK") {
		t.Fatalf("APPEND: %q", l)
	}

	mustOK(t, c.Cmd("SELECT INBOX"))
	c.Write("a2 FETCH 1 BODY.PEEK[]\r\n")
	// The literal is streamed raw rather than read whole by ReadLine: the
	// point is that nothing holds the message in memory.
	if line := c.ReadRawLine(); !strings.HasSuffix(line, fmt.Sprintf(" {%d}", total)) {
		t.Fatalf("FETCH: %q, want a literal of %d bytes", line, total)
	}
	c.Conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := sha256.New()
	if _, err := io.CopyN(got, c.R, total); err != nil {
		t.Fatal(err)
	}
	if l := c.ReadLine(); l != ")" {
		t.Fatalf("after literal: %q", l)
	}
	if l := c.ReadLine(); !strings.HasPrefix(l, "a2 OK") {
		t.Fatalf("FETCH: %q", l)
	}
	close(stop)
	wg.Wait()
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("fetched body differs from the appended one")
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap growth during a %d MB APPEND and FETCH: %.1f MB", size>>20, float64(growth)/(1<<20))
	if growth > 8<<20 {
		t.Errorf("heap grew by %d bytes: literals are not streamed", growth)
	}
}
