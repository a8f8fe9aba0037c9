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
	mustOK(t, c.cmd("LOGIN alice alicepass"))
	want := sha256.New()
	io.Copy(want, io.MultiReader(strings.NewReader(header), newBody(size)))

	// APPEND with a synchronising literal, streamed from a generator.
	io.WriteString(c.nc, fmt.Sprintf("a1 APPEND INBOX {%d}\r\n", total))
	if l := c.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND: got %q, want continuation", l)
	}
	c.nc.SetWriteDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(c.nc, io.MultiReader(strings.NewReader(header), newBody(size))); err != nil {
		t.Fatal(err)
	}
	io.WriteString(c.nc, "\r\n")
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	if l := c.readLine(); !strings.HasPrefix(l, "a1 OK") {
		t.Fatalf("APPEND: %q", l)
	}

	mustOK(t, c.cmd("SELECT INBOX"))
	io.WriteString(c.nc, "a2 FETCH 1 BODY.PEEK[]\r\n")
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, lit, err := c.r.ReadLine()
	if err != nil || lit == nil || lit.Size != total {
		t.Fatalf("FETCH: %q %+v %v", line, lit, err)
	}
	got := sha256.New()
	if _, err := io.Copy(got, c.r.Literal()); err != nil {
		t.Fatal(err)
	}
	if l := c.readLine(); l != ")" {
		t.Fatalf("after literal: %q", l)
	}
	if l := c.readLine(); !strings.HasPrefix(l, "a2 OK") {
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
