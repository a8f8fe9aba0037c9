package proxy_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestLargeLiteralsStream sends a 50 MB APPEND and FETCHes a 50 MB body
// through the proxy and checks that the proxy streams them: the process
// allocates far less than the literal's size meanwhile. The upstream is the
// fake one, which hashes APPEND literals and generates the FETCH body on the
// fly without holding either in memory (memupstream would store the
// message and drown the proxy's share in its own allocations); the client
// writes from and reads into small buffers. So nearly all allocation during
// the transfer is the proxy's.
//
// Not parallel: ReadMemStats counts the whole process.
func TestLargeLiteralsStream(t *testing.T) {
	const size = 50 << 20
	chunk := make([]byte, 64<<10)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range chunk {
		chunk[i] = byte(rnd.UintN(256))
	}
	want := newSummer()
	for left := size; left > 0; left -= len(chunk) {
		want.Write(chunk[:min(left, len(chunk))])
	}
	wantSum := want.sum()

	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	f.bodySize, f.chunk = size, chunk
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("u", "p")
	c.ExpectDo("s", "SELECT INBOX", "* 1 EXISTS", "* 0 RECENT", "* OK [UIDVALIDITY 7] ok", "* OK [UIDNEXT 2] ok", `* FLAGS (\Seen)`, "s OK [READ-WRITE] SELECT done")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	// APPEND, synchronising literal.
	c.Send(fmt.Sprintf("a APPEND INBOX {%d}", size))
	c.Expect("+ *")
	for left := size; left > 0; left -= len(chunk) {
		c.WriteBytes(chunk[:min(left, len(chunk))])
	}
	c.WriteBytes([]byte("\r\n"))
	c.Expect("a OK [APPENDUID 1 1] APPEND done")

	// FETCH, read straight into the hash.
	c.Send("f FETCH 1 BODY[]")
	if got, want := c.ReadRawLine(), fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size); got != want {
		t.Fatalf("FETCH: got %q, want %q", got, want)
	}
	h := newSummer()
	if _, err := io.CopyN(h, c.R, size); err != nil {
		t.Fatalf("reading the FETCH literal: %v", err)
	}
	c.Expect(")", "f OK FETCH done")

	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB while moving 2 x %d MiB; heap in use %d -> %d KiB",
		alloc>>10, size>>20, before.HeapInuse>>10, after.HeapInuse>>10)

	if h.sum() != wantSum {
		t.Error("the FETCHed body differs from what the upstream sent")
	}
	ap := f.appends()
	if len(ap) != 1 || ap[0].size != size || ap[0].sum != wantSum {
		t.Errorf("the upstream received %+v, want one literal of %d bytes with the client's content", ap, size)
	}
	if alloc > 8<<20 {
		t.Errorf("the proxy allocated %d MiB to relay %d MiB literals: not streamed", alloc>>20, size>>20)
	}
}
