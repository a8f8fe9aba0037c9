package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// spliceBody returns a fake upstream serving one message of size bytes
// (a random chunk of chunkSize repeated) and the message itself.
func spliceBody(t *testing.T, size int64, chunkSize int, paced bool) (*fakeUpstream, []byte) {
	t.Helper()
	chunk := make([]byte, chunkSize)
	rnd := rand.New(rand.NewPCG(3, uint64(chunkSize)))
	for i := range chunk {
		chunk[i] = byte(rnd.UintN(256))
	}
	var want bytes.Buffer
	for left := size; left > 0; left -= int64(len(chunk)) {
		want.Write(chunk[:min(left, int64(len(chunk)))])
	}
	f := startFakeUpstream(t, "IMAP4rev1 LITERAL+")
	f.bodySize, f.chunk, f.paced = size, chunk, paced
	return f, want.Bytes()
}

// fetchSpliced sends FETCH 1 BODY[] and checks that the body arrives byte
// for byte after wantLine, followed by the rest of the response.
func fetchSpliced(t *testing.T, c *imaptest.Client, tag, wantLine string, want []byte) {
	t.Helper()
	fetchInto(t, c, tag, wantLine, want, make([]byte, len(want)))
}

// fetchInto is fetchSpliced reading the body into got, as long as want.
func fetchInto(t *testing.T, c *imaptest.Client, tag, wantLine string, want, got []byte) {
	t.Helper()
	c.Send(tag + " FETCH 1 BODY[]")
	if got := c.ReadRawLine(); got != wantLine {
		t.Fatalf("FETCH: got %q, want %q", got, wantLine)
	}
	if _, err := io.ReadFull(c.R, got); err != nil {
		t.Fatalf("reading the literal: %v", err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("the literal differs from the upstream's from byte %d of %d", i, len(want))
	}
	c.Expect(")", tag+" OK FETCH done")
}

// TestSpliceLargeLiteral: a literal far larger than the proxy's buffers
// and than one splice, arriving at once or in many small reads, reaches the
// client unchanged, and moves by splice(2): all of it but the part the
// upstream reader had buffered with the response's first line. Twice in a
// row on one connection, so the reader is where it should be after each.
func TestSpliceLargeLiteral(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int64
		chunk int
		paced bool
	}{
		{"at once", 3<<20 + 12345, 64 << 10, false},
		{"in many reads", 1<<20 + 4321, 7001, true},
		{"just above the inline limit", 64<<10 + 1, 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, want := spliceBody(t, tc.size, tc.chunk, tc.paced)
			p := startProxy(t, baseConfig(f.addr()))
			c := imaptest.Dial(t, p.Addr)
			c.LoginTagged("u", "p")
			c.MustOK("SELECT INBOX")
			line := fmt.Sprintf("* 1 FETCH (BODY[] {%d}", tc.size)
			fetchSpliced(t, c, "f1", line, want)
			fetchSpliced(t, c, "f2", line, want)
			c.ExpectDo("n", "NOOP", "n OK NOOP completed.")

			st := p.Srv.Stats()
			// At most the upstream reader's 4 KiB buffer per literal is
			// written from user space.
			if st.LiteralBytesCopied != 0 || st.LiteralBytesSpliced < 2*(tc.size-4096) || st.LiteralBytesSpliced > 2*tc.size {
				t.Errorf("spliced %d and copied %d bytes of two %d-byte literals: want all but the buffered heads spliced, none copied",
					st.LiteralBytesSpliced, st.LiteralBytesCopied, tc.size)
			}
		})
	}
}

// dropFetch is a response filter that drops every streamed FETCH
// response, so the relay reads its literal and throws it away.
type dropFetch struct{}

func (dropFetch) Name() string { return "dropfetch" }
func (dropFetch) FilterResponse(s *proxy.Session, r *proxy.Response) *proxy.Response {
	if r.Streamed && r.Head.Name == "FETCH" {
		return nil
	}
	return r
}

// markFetch is a response filter that rewrites the line before a
// streamed literal, as ResponseFilter allows: the literal still moves by
// splice, behind the filter's line.
type markFetch struct{}

func (markFetch) Name() string { return "markfetch" }
func (markFetch) FilterResponse(s *proxy.Session, r *proxy.Response) *proxy.Response {
	if r.Streamed && r.Head.Name == "FETCH" {
		r.Segments[0].Text = bytes.Replace(r.Segments[0].Text, []byte("FETCH ("), []byte("FETCH (X-MARK 1 "), 1)
	}
	return r
}

// TestSpliceFallbacks: where the bytes cannot move socket to socket (TLS
// or COMPRESS towards the client) the literal is copied through the proxy,
// and where a filter drops the response it is read and discarded; every
// byte still arrives exactly, and the session stays in step.
func TestSpliceFallbacks(t *testing.T) {
	const size = 1<<20 + 999
	srvTLS, cliTLS := imaptest.SelfSignedTLS(t)
	for _, tc := range []struct {
		name            string
		exts            []proxy.Extension
		tls, compress   bool
		line            string // "" when the response is dropped
		spliced, copied bool
	}{
		{name: "plain, filter rewrites the line", exts: []proxy.Extension{markFetch{}}, line: fmt.Sprintf("* 1 FETCH (X-MARK 1 BODY[] {%d}", size), spliced: true},
		{name: "implicit TLS", tls: true, line: fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size), copied: true},
		{name: "COMPRESS", exts: []proxy.Extension{compress.New()}, compress: true, line: fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size), copied: true},
		{name: "filter drops the response", exts: []proxy.Extension{dropFetch{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, want := spliceBody(t, size, 9000, true)
			cfg := baseConfig(f.addr())
			cfg.Extensions = tc.exts
			var opts []imaptest.Option
			if tc.tls {
				cfg.TLS = srvTLS
				opts = append(opts, imaptest.ImplicitTLS())
			}
			p := startProxy(t, cfg, opts...)
			var c *imaptest.Client
			if tc.tls {
				c = imaptest.DialTLS(t, p.Addr, cliTLS)
			} else {
				c = imaptest.Dial(t, p.Addr)
			}
			c.LoginTagged("u", "p")
			if tc.compress {
				c.Compress()
			}
			c.MustOK("SELECT INBOX")
			if tc.line == "" {
				c.ExpectDo("f", "FETCH 1 BODY[]", "f OK FETCH done")
			} else {
				fetchSpliced(t, c, "f", tc.line, want)
			}
			c.ExpectDo("n", "NOOP", "n OK NOOP completed.")

			st := p.Srv.Stats()
			if got := st.LiteralBytesSpliced > 0; got != tc.spliced {
				t.Errorf("spliced %d bytes; want spliced: %v", st.LiteralBytesSpliced, tc.spliced)
			}
			if tc.copied && st.LiteralBytesCopied != size || !tc.copied && st.LiteralBytesCopied != 0 {
				t.Errorf("copied %d bytes; want copied: %v (%d)", st.LiteralBytesCopied, tc.copied, size)
			}
			if tc.spliced && st.LiteralBytesSpliced < size-4096 {
				t.Errorf("spliced %d bytes of %d", st.LiteralBytesSpliced, size)
			}
		})
	}
}

// TestInlineLiteralsPooled: bodies small enough to be held in memory for
// the response filters (up to 64 KiB) are read into pooled buffers: a
// download of many of them allocates far less per message than its
// size, and every body still arrives byte for byte, also when responses
// follow each other on the same connection.
//
// Not parallel: ReadMemStats counts the whole process.
func TestInlineLiteralsPooled(t *testing.T) {
	const size, fetches = 40 << 10, 200
	f, want := spliceBody(t, size, 3000, false)
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("u", "p")
	c.MustOK("SELECT INBOX")
	line := fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size)
	fetchSpliced(t, c, "w", line, want) // warm the pools

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got := make([]byte, size)
	for range fetches {
		fetchInto(t, c, "f", line, want, got)
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / fetches
	t.Logf("allocated %d B per FETCH of a %d-byte body (the test's client and the fake upstream included)", per, size)
	if per > size/2 && !raceDetector {
		t.Errorf("allocated %d B per FETCH of a %d-byte body: the body is not read into a pooled buffer", per, size)
	}
	if st := p.Srv.Stats(); st.LiteralBytesSpliced != 0 || st.LiteralBytesCopied != 0 {
		t.Errorf("a body held in memory counted as streamed: %+v", st)
	}
}
