package imapcodec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// lineResult is what one ReadLine call is expected to return.
type lineResult struct {
	line string
	lit  *LiteralHeader
	err  error // compared with errors.Is; nil means success
}

func checkLine(t *testing.T, what string, gotLine []byte, gotLit *LiteralHeader, gotErr error, want lineResult) {
	t.Helper()
	if want.err != nil {
		if !errors.Is(gotErr, want.err) {
			t.Fatalf("%s: err = %v, want %v", what, gotErr, want.err)
		}
		return
	}
	if gotErr != nil {
		t.Fatalf("%s: unexpected error %v", what, gotErr)
	}
	if string(gotLine) != want.line {
		t.Fatalf("%s: line = %q, want %q", what, gotLine, want.line)
	}
	switch {
	case want.lit == nil && gotLit != nil:
		t.Fatalf("%s: lit = %+v, want none", what, *gotLit)
	case want.lit != nil && gotLit == nil:
		t.Fatalf("%s: no literal, want %+v", what, *want.lit)
	case want.lit != nil && *gotLit != *want.lit:
		t.Fatalf("%s: lit = %+v, want %+v", what, *gotLit, *want.lit)
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	tests := []struct {
		in, want Limits
	}{
		{Limits{}, Limits{DefaultMaxLine, DefaultMaxLiteral, DefaultMaxInlineLiteral, DefaultMaxDepth}},
		{Limits{-1, -1, -1, -1}, Limits{DefaultMaxLine, DefaultMaxLiteral, DefaultMaxInlineLiteral, DefaultMaxDepth}},
		{Limits{10, 20, 5, 3}, Limits{10, 20, 5, 3}},
		// MaxInlineLiteral is clamped to MaxLiteral.
		{Limits{MaxLiteral: 100}, Limits{DefaultMaxLine, 100, 100, DefaultMaxDepth}},
		{Limits{MaxLiteral: 100, MaxInlineLiteral: 1000}, Limits{DefaultMaxLine, 100, 100, DefaultMaxDepth}},
	}
	for _, tt := range tests {
		if got := tt.in.WithDefaults(); got != tt.want {
			t.Errorf("%+v.WithDefaults() = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if got := NewReader(strings.NewReader(""), Limits{MaxLine: 7}).Limits(); got.MaxLine != 7 || got.MaxDepth != DefaultMaxDepth {
		t.Errorf("Reader.Limits() = %+v", got)
	}
}

func TestLiteralHeaderFormat(t *testing.T) {
	tests := []struct {
		h    LiteralHeader
		want string
	}{
		{LiteralHeader{Size: 0}, "{0}"},
		{LiteralHeader{Size: 5}, "{5}"},
		{LiteralHeader{Size: 5, NonSync: true}, "{5+}"},
		{LiteralHeader{Size: 12345, Binary: true}, "~{12345}"},
		{LiteralHeader{Size: 7, Binary: true, NonSync: true}, "~{7+}"},
		{LiteralHeader{Size: 1 << 40, Start: 99}, "{1099511627776}"},
	}
	for _, tt := range tests {
		if got := string(tt.h.Format([]byte("x "))); got != "x "+tt.want {
			t.Errorf("%+v.Format = %q, want %q", tt.h, got, "x "+tt.want)
		}
	}
}

func TestReadLine(t *testing.T) {
	small := Limits{MaxLine: 10, MaxLiteral: 100}
	tests := []struct {
		name string
		in   string
		lim  Limits
		want lineResult
	}{
		{"crlf", "a1 NOOP\r\nrest", Limits{}, lineResult{line: "a1 NOOP"}},
		{"bare lf", "a1 NOOP\nrest", Limits{}, lineResult{line: "a1 NOOP"}},
		{"empty crlf", "\r\n", Limits{}, lineResult{line: ""}},
		{"empty lf", "\n", Limits{}, lineResult{line: ""}},
		{"inner cr kept", "a\rb\r\n", Limits{}, lineResult{line: "a\rb"}},
		{"only last cr stripped", "x\r\r\n", Limits{}, lineResult{line: "x\r"}},
		{"nul kept", "a\x00b\r\n", Limits{}, lineResult{line: "a\x00b"}},
		{"eof at start", "", Limits{}, lineResult{err: io.EOF}},
		{"eof mid-line", "a1 NOOP", Limits{}, lineResult{err: io.ErrUnexpectedEOF}},
		{"eof after cr", "a1 NOOP\r", Limits{}, lineResult{err: io.ErrUnexpectedEOF}},

		// Line length: MaxLine excludes the line ending.
		{"maxline crlf", "0123456789\r\n", small, lineResult{line: "0123456789"}},
		{"maxline lf", "0123456789\n", small, lineResult{line: "0123456789"}},
		{"maxline+1 crlf", "0123456789A\r\n", small, lineResult{err: ErrLineTooLong}},
		{"maxline+1 lf", "0123456789A\n", small, lineResult{err: ErrLineTooLong}},
		{"maxline+1 cr only", "0123456789\r\r\n", small, lineResult{err: ErrLineTooLong}},
		{"long without newline", strings.Repeat("x", 50), small, lineResult{err: ErrLineTooLong}},
		{"maxline then eof", "0123456789", small, lineResult{err: io.ErrUnexpectedEOF}},
		{"header counts towards maxline", "abcdef{100}\r\n", small, lineResult{err: ErrLineTooLong}},
		{"default maxline", strings.Repeat("x", DefaultMaxLine) + "\r\n", Limits{}, lineResult{line: strings.Repeat("x", DefaultMaxLine)}},
		{"default maxline+1", strings.Repeat("x", DefaultMaxLine+1) + "\r\n", Limits{}, lineResult{err: ErrLineTooLong}},
		{"default maxline+1 lf", strings.Repeat("x", DefaultMaxLine+1) + "\n", Limits{}, lineResult{err: ErrLineTooLong}},
		{"huge line", strings.Repeat("x", 1<<20), Limits{}, lineResult{err: ErrLineTooLong}},

		// Literal headers.
		{"sync", "a LOGIN {5}\r\n", Limits{}, lineResult{line: "a LOGIN {5}", lit: &LiteralHeader{Size: 5, Start: 8}}},
		{"sync lf", "a LOGIN {5}\n", Limits{}, lineResult{line: "a LOGIN {5}", lit: &LiteralHeader{Size: 5, Start: 8}}},
		{"nonsync", "a LOGIN {5+}\r\n", Limits{}, lineResult{line: "a LOGIN {5+}", lit: &LiteralHeader{Size: 5, NonSync: true, Start: 8}}},
		{"binary", "a APPEND x ~{5}\r\n", Limits{}, lineResult{line: "a APPEND x ~{5}", lit: &LiteralHeader{Size: 5, Binary: true, Start: 11}}},
		{"binary nonsync", "~{5+}\r\n", Limits{}, lineResult{line: "~{5+}", lit: &LiteralHeader{Size: 5, Binary: true, NonSync: true, Start: 0}}},
		{"zero", "{0}\r\n", Limits{}, lineResult{line: "{0}", lit: &LiteralHeader{Size: 0, Start: 0}}},
		{"leading zeros", "x {007}\r\n", Limits{}, lineResult{line: "x {007}", lit: &LiteralHeader{Size: 7, Start: 2}}},
		{"last brace wins", "x {1}{2}\r\n", Limits{}, lineResult{line: "x {1}{2}", lit: &LiteralHeader{Size: 2, Start: 5}}},
		{"tilde not adjacent", "x ~ {2}\r\n", Limits{}, lineResult{line: "x ~ {2}", lit: &LiteralHeader{Size: 2, Start: 4}}},
		{"at maxliteral", "{100}\r\n", small, lineResult{line: "{100}", lit: &LiteralHeader{Size: 100}}},
		{"over maxliteral", "{101}\r\n", small, lineResult{err: ErrLiteralTooLarge}},
		{"over default maxliteral", fmt.Sprintf("{%d}\r\n", DefaultMaxLiteral+1), Limits{}, lineResult{err: ErrLiteralTooLarge}},
		{"18 digits", "{999999999999999999}\r\n", Limits{}, lineResult{err: ErrLiteralTooLarge}},
		{"19 digits", "{1000000000000000000}\r\n", Limits{}, lineResult{err: ErrLiteralTooLarge}},
		{"40 digits", "{" + strings.Repeat("9", 40) + "}\r\n", Limits{}, lineResult{err: ErrLiteralTooLarge}},

		// Lines that merely end in "}".
		{"letters", "a {abc}\r\n", Limits{}, lineResult{line: "a {abc}"}},
		{"no open brace", "x}\r\n", Limits{}, lineResult{line: "x}"}},
		{"lone close", "}\r\n", Limits{}, lineResult{line: "}"}},
		{"empty braces", "a {}\r\n", Limits{}, lineResult{line: "a {}"}},
		{"plus only", "a {+}\r\n", Limits{}, lineResult{line: "a {+}"}},
		{"double plus", "a {5++}\r\n", Limits{}, lineResult{line: "a {5++}"}},
		{"leading plus", "a {+5}\r\n", Limits{}, lineResult{line: "a {+5}"}},
		{"negative", "a {-1}\r\n", Limits{}, lineResult{line: "a {-1}"}},
		{"space inside", "a { 5}\r\n", Limits{}, lineResult{line: "a { 5}"}},
		{"minus", "a {5-}\r\n", Limits{}, lineResult{line: "a {5-}"}},
		{"not at end", "a {5} \r\n", Limits{}, lineResult{line: "a {5} "}},
		{"unclosed", "a {5\r\n", Limits{}, lineResult{line: "a {5"}},
		{"inner brace", "a {5x}\r\n", Limits{}, lineResult{line: "a {5x}"}},
		{"quoted braces", "a \"{5}\"\r\n", Limits{}, lineResult{line: "a \"{5}\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), tt.lim)
			line, lit, err := r.ReadLine()
			checkLine(t, "ReadLine", line, lit, err, tt.want)
			if tt.want.err == nil {
				if tt.want.lit != nil {
					if got := r.LiteralRemaining(); got != tt.want.lit.Size {
						t.Errorf("LiteralRemaining = %d, want %d", got, tt.want.lit.Size)
					}
				} else if got := r.LiteralRemaining(); got != 0 {
					t.Errorf("LiteralRemaining = %d, want 0", got)
				}
			}
		})
	}
}

// TestReadLineSequence checks how lines and literals follow each other.
func TestReadLineSequence(t *testing.T) {
	type step struct {
		// readLit, if >= 0, reads that many literal bytes (after ReadLine)
		// and checks they equal litData.
		readLit int
		litData string
		want    lineResult
	}
	tests := []struct {
		name  string
		in    string
		steps []step
	}{
		{
			name: "unread literal is skipped",
			in:   "a LOGIN {5}\r\nhello {3+}\r\nbob\r\nb NOOP\r\n",
			steps: []step{
				{readLit: -1, want: lineResult{line: "a LOGIN {5}", lit: &LiteralHeader{Size: 5, Start: 8}}},
				{readLit: -1, want: lineResult{line: " {3+}", lit: &LiteralHeader{Size: 3, NonSync: true, Start: 1}}},
				{readLit: -1, want: lineResult{line: ""}},
				{readLit: -1, want: lineResult{line: "b NOOP"}},
				{readLit: -1, want: lineResult{err: io.EOF}},
			},
		},
		{
			name: "partly read literal",
			in:   "a {10}\r\n0123456789\r\nb NOOP\r\n",
			steps: []step{
				{readLit: 4, litData: "0123", want: lineResult{line: "a {10}", lit: &LiteralHeader{Size: 10, Start: 2}}},
				{readLit: -1, want: lineResult{line: ""}},
				{readLit: -1, want: lineResult{line: "b NOOP"}},
			},
		},
		{
			name: "literal containing line endings and headers",
			in:   "a {12}\r\n{3}\r\nx\ny\r\n\r\n\r\nb\n",
			steps: []step{
				{readLit: 12, litData: "{3}\r\nx\ny\r\n\r\n", want: lineResult{line: "a {12}", lit: &LiteralHeader{Size: 12, Start: 2}}},
				{readLit: -1, want: lineResult{line: ""}},
				{readLit: -1, want: lineResult{line: "b"}},
			},
		},
		{
			name: "zero-length literal",
			in:   "a {0}\r\n\r\n",
			steps: []step{
				{readLit: 0, want: lineResult{line: "a {0}", lit: &LiteralHeader{Size: 0, Start: 2}}},
				{readLit: -1, want: lineResult{line: ""}},
				{readLit: -1, want: lineResult{err: io.EOF}},
			},
		},
		{
			name: "eof in unread literal",
			in:   "a {10}\r\nabc",
			steps: []step{
				{readLit: -1, want: lineResult{line: "a {10}", lit: &LiteralHeader{Size: 10, Start: 2}}},
				{readLit: -1, want: lineResult{err: io.ErrUnexpectedEOF}},
			},
		},
		{
			name: "eof right after literal",
			in:   "a {3}\r\nabc",
			steps: []step{
				{readLit: -1, want: lineResult{line: "a {3}", lit: &LiteralHeader{Size: 3, Start: 2}}},
				{readLit: -1, want: lineResult{err: io.EOF}},
			},
		},
		{
			name: "eof mid-line after literal",
			in:   "a {3}\r\nabc)",
			steps: []step{
				{readLit: 3, litData: "abc", want: lineResult{line: "a {3}", lit: &LiteralHeader{Size: 3, Start: 2}}},
				{readLit: -1, want: lineResult{err: io.ErrUnexpectedEOF}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), Limits{})
			for i, st := range tt.steps {
				line, lit, err := r.ReadLine()
				checkLine(t, fmt.Sprintf("step %d", i), line, lit, err, st.want)
				if st.readLit >= 0 {
					buf := make([]byte, st.readLit)
					if _, err := io.ReadFull(r.Literal(), buf); err != nil {
						t.Fatalf("step %d: reading literal: %v", i, err)
					}
					if string(buf) != st.litData {
						t.Fatalf("step %d: literal = %q, want %q", i, buf, st.litData)
					}
					if want := lit.Size - int64(st.readLit); r.LiteralRemaining() != want {
						t.Fatalf("step %d: LiteralRemaining = %d, want %d", i, r.LiteralRemaining(), want)
					}
				}
			}
		})
	}
}

func TestLiteralReader(t *testing.T) {
	r := NewReader(strings.NewReader("a {5}\r\nhello\r\nb {3}\r\nab"), Limits{})
	// No literal yet: Literal is empty.
	if n, err := r.Literal().Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("Literal before any line: %d, %v", n, err)
	}
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	// Reads are capped at the literal's end.
	buf := make([]byte, 100)
	n, err := r.Literal().Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Literal().Read = %q, %v", buf[:n], err)
	}
	if n, err := r.Literal().Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Literal().Read at end = %d, %v", n, err)
	}
	// An empty Read inside a literal consumes nothing.
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Literal().Read(nil); n != 0 || err != nil {
		t.Fatalf("empty Read = %d, %v", n, err)
	}
	// The stream ends one byte early.
	data, err := io.ReadAll(r.Literal())
	if string(data) != "ab" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadAll(truncated literal) = %q, %v; want \"ab\", ErrUnexpectedEOF", data, err)
	}
}

func TestReadLiteral(t *testing.T) {
	r := NewReader(strings.NewReader("a {5}\r\nhello{0}\r\n\r\nc {4}\r\nabc"), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if b, err := r.ReadLiteral(); err != nil || string(b) != "hello" {
		t.Fatalf("ReadLiteral = %q, %v", b, err)
	}
	if r.LiteralRemaining() != 0 {
		t.Fatalf("LiteralRemaining = %d", r.LiteralRemaining())
	}
	line, lit, err := r.ReadLine()
	checkLine(t, "second line", line, lit, err, lineResult{line: "{0}", lit: &LiteralHeader{}})
	if b, err := r.ReadLiteral(); err != nil || len(b) != 0 {
		t.Fatalf("ReadLiteral({0}) = %q, %v", b, err)
	}
	if line, _, err := r.ReadLine(); err != nil || len(line) != 0 {
		t.Fatalf("ReadLine = %q, %v", line, err)
	}
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if b, err := r.ReadLiteral(); !errors.Is(err, io.ErrUnexpectedEOF) || b != nil {
		t.Fatalf("ReadLiteral(truncated) = %q, %v; want nil, ErrUnexpectedEOF", b, err)
	}
}

func TestBuffered(t *testing.T) {
	r := NewReader(strings.NewReader("a STARTTLS\r\nb NOOP\r\n"), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if got := r.Buffered(); got != len("b NOOP\r\n") {
		t.Fatalf("Buffered = %d, want %d", got, len("b NOOP\r\n"))
	}
	r = NewReader(strings.NewReader("a STARTTLS\r\n"), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if got := r.Buffered(); got != 0 {
		t.Fatalf("Buffered = %d, want 0", got)
	}
}

// patternReader generates n bytes of a fixed pattern without holding them.
type patternReader struct{ off, n int64 }

func patternByte(off int64) byte { return byte(off*7 + off/251) }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		b[i] = patternByte(p.off + int64(i))
	}
	p.off += int64(len(b))
	return len(b), nil
}

// patternChecker verifies data written to it against the pattern.
type patternChecker struct {
	off int64
	bad bool
}

func (c *patternChecker) Write(b []byte) (int, error) {
	for i, x := range b {
		if x != patternByte(c.off+int64(i)) {
			c.bad = true
		}
	}
	c.off += int64(len(b))
	return len(b), nil
}

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

func TestLiteralStreamingLarge(t *testing.T) {
	const size = 10 << 20
	const allocBound = 1 << 20 // far below the literal's size
	newStream := func() io.Reader {
		return io.MultiReader(
			strings.NewReader(fmt.Sprintf("a APPEND INBOX {%d}\r\n", size)),
			&patternReader{n: size},
			strings.NewReader("\r\nb NOOP\r\n"),
		)
	}

	t.Run("Literal", func(t *testing.T) {
		r := NewReader(newStream(), Limits{})
		_, lit, err := r.ReadLine()
		if err != nil || lit == nil || lit.Size != size {
			t.Fatalf("ReadLine: lit %+v, err %v", lit, err)
		}
		buf := make([]byte, 32*1024)
		var chk patternChecker
		before := totalAlloc()
		n, err := io.CopyBuffer(&chk, r.Literal(), buf)
		allocated := totalAlloc() - before
		if err != nil || n != size || chk.bad {
			t.Fatalf("copied %d bytes, err %v, corrupt %v", n, err, chk.bad)
		}
		if allocated > allocBound {
			t.Errorf("streaming a %d-byte literal allocated %d bytes", size, allocated)
		}
		line, _, err := r.ReadLine()
		if err != nil || string(line) != "" {
			t.Fatalf("line after literal = %q, %v", line, err)
		}
		if line, _, err = r.ReadLine(); err != nil || string(line) != "b NOOP" {
			t.Fatalf("next command = %q, %v", line, err)
		}
	})

	t.Run("skip", func(t *testing.T) {
		r := NewReader(newStream(), Limits{})
		if _, _, err := r.ReadLine(); err != nil {
			t.Fatal(err)
		}
		before := totalAlloc()
		line, lit, err := r.ReadLine()
		allocated := totalAlloc() - before
		if err != nil || lit != nil || len(line) != 0 {
			t.Fatalf("ReadLine after skipped literal = %q, %v, %v", line, lit, err)
		}
		if allocated > allocBound {
			t.Errorf("skipping a %d-byte literal allocated %d bytes", size, allocated)
		}
	})

	t.Run("ReadSegments refuses", func(t *testing.T) {
		r := NewReader(newStream(), Limits{})
		before := totalAlloc()
		segs, err := r.ReadSegments(func(LiteralHeader) error {
			t.Error("continuation requested for a refused literal")
			return nil
		})
		allocated := totalAlloc() - before
		if !errors.Is(err, ErrLiteralTooLarge) {
			t.Fatalf("ReadSegments err = %v, want ErrLiteralTooLarge", err)
		}
		if len(segs) != 1 || segs[0].Data != nil {
			t.Fatalf("segments = %+v", segs)
		}
		if allocated > allocBound {
			t.Errorf("refusing a %d-byte literal allocated %d bytes", size, allocated)
		}
	})
}

func TestReadLineAllocs(t *testing.T) {
	r := NewReader(io.MultiReader(
		strings.NewReader("warm up\r\n"),
		&repeatReader{s: "a1 UID FETCH 1:* (FLAGS)\r\n"},
	), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, err := r.ReadLine(); err != nil {
			t.Fatal(err)
		}
	})
	// The line buffer is reused; at most the literal header escapes.
	if allocs > 1 {
		t.Errorf("ReadLine allocates %v times per line", allocs)
	}
}

type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c := copy(b[n:], r.s[r.off:])
		n += c
		r.off = (r.off + c) % len(r.s)
	}
	return n, nil
}

// pipe returns a Reader over one end of a net.Pipe and a function that
// writes to the other end in the background and waits for the write.
func pipe(t *testing.T) (net.Conn, *Reader, func(string) <-chan error) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() {
		server.Close()
		client.Close()
	})
	write := func(s string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := client.Write([]byte(s))
			done <- err
		}()
		return done
	}
	return server, NewReader(server, Limits{}), write
}

func wait(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write did not complete")
	}
}

func expectTimeout(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

// timeoutUntilWritten calls ReadLine with short deadlines until the
// background write done has been consumed; every call must time out.
func timeoutUntilWritten(t *testing.T, conn net.Conn, r *Reader, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		line, _, err := r.ReadLine()
		expectTimeout(t, err)
		if line != nil {
			t.Fatalf("ReadLine returned %q with a timeout", line)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("write: %v", err)
			}
			conn.SetReadDeadline(time.Time{})
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("write did not complete")
		}
	}
}

func TestReadLineDeadlineKeepsPartialLine(t *testing.T) {
	conn, r, write := pipe(t)

	// Half a line arrives; the deadline interrupts the wait for the rest.
	timeoutUntilWritten(t, conn, r, write("a1 UID FE"))
	// More of it, and another timeout.
	timeoutUntilWritten(t, conn, r, write("TCH 1:*"))

	done := write(" (FLAGS)\r\na2 NOOP\r\n")
	line, lit, err := r.ReadLine()
	checkLine(t, "resumed line", line, lit, err, lineResult{line: "a1 UID FETCH 1:* (FLAGS)"})
	line, lit, err = r.ReadLine()
	checkLine(t, "next line", line, lit, err, lineResult{line: "a2 NOOP"})
	wait(t, done)
}

// TestReadLineDeadlineKeepsPartialLiteralHeader interrupts a line in the
// middle of its literal header.
func TestReadLineDeadlineKeepsPartialLiteralHeader(t *testing.T) {
	conn, r, write := pipe(t)
	timeoutUntilWritten(t, conn, r, write("a LOGIN {1"))
	done := write("2}\r\n")
	line, lit, err := r.ReadLine()
	checkLine(t, "line", line, lit, err, lineResult{line: "a LOGIN {12}", lit: &LiteralHeader{Size: 12, Start: 8}})
	wait(t, done)
}

func TestReadLineDeadlineBetweenLines(t *testing.T) {
	conn, r, write := pipe(t)
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, _, err := r.ReadLine()
	expectTimeout(t, err)
	conn.SetReadDeadline(time.Time{})
	done := write("a1 NOOP\r\n")
	line, lit, err := r.ReadLine()
	checkLine(t, "line", line, lit, err, lineResult{line: "a1 NOOP"})
	wait(t, done)
}

// TestReadLineDeadlineWhileSkippingLiteral interrupts the skipping of an
// unread literal: the bytes skipped before the deadline must not be skipped
// again.
func TestReadLineDeadlineWhileSkippingLiteral(t *testing.T) {
	conn, r, write := pipe(t)
	done := write("a APPEND x {10}\r\n0123")
	line, lit, err := r.ReadLine()
	checkLine(t, "header", line, lit, err, lineResult{line: "a APPEND x {10}", lit: &LiteralHeader{Size: 10, Start: 11}})
	wait(t, done)

	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, _, err = r.ReadLine()
	expectTimeout(t, err)
	if got := r.LiteralRemaining(); got != 6 {
		t.Errorf("LiteralRemaining after interrupted skip = %d, want 6", got)
	}

	conn.SetReadDeadline(time.Time{})
	done = write("456789\r\nb NOOP\r\n")
	line, lit, err = r.ReadLine()
	checkLine(t, "end of command", line, lit, err, lineResult{line: ""})
	line, lit, err = r.ReadLine()
	checkLine(t, "next command", line, lit, err, lineResult{line: "b NOOP"})
	wait(t, done)
}

func TestLiteralDeadline(t *testing.T) {
	conn, r, write := pipe(t)
	done := write("a {10}\r\n0123")
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	wait(t, done)
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 10)
	n, err := io.ReadFull(r.Literal(), buf)
	expectTimeout(t, err)
	if n != 4 || string(buf[:n]) != "0123" || r.LiteralRemaining() != 6 {
		t.Fatalf("read %q, remaining %d", buf[:n], r.LiteralRemaining())
	}
	conn.SetReadDeadline(time.Time{})
	done = write("456789\r\n")
	rest, err := io.ReadAll(r.Literal())
	if err != nil || string(rest) != "456789" {
		t.Fatalf("rest of literal = %q, %v", rest, err)
	}
	line, _, err := r.ReadLine()
	if err != nil || len(line) != 0 {
		t.Fatalf("ReadLine = %q, %v", line, err)
	}
	wait(t, done)
}

func TestReadSegments(t *testing.T) {
	type want struct {
		segs  []Segment
		conts []LiteralHeader
		err   error
	}
	lit := func(size int64, start int) *LiteralHeader { return &LiteralHeader{Size: size, Start: start} }
	tests := []struct {
		name    string
		in      string
		lim     Limits
		contErr error
		want    want
	}{
		{
			name: "no literal",
			in:   "a1 NOOP\r\nnext",
			want: want{segs: []Segment{{Text: []byte("a1 NOOP")}}},
		},
		{
			name: "two synchronising literals",
			in:   "a LOGIN {3}\r\nbob {4}\r\npass\r\nnext",
			want: want{
				segs: []Segment{
					{Text: []byte("a LOGIN "), Literal: lit(3, 8), Data: []byte("bob")},
					{Text: []byte(" "), Literal: lit(4, 1), Data: []byte("pass")},
					{Text: []byte("")},
				},
				conts: []LiteralHeader{*lit(3, 8), *lit(4, 1)},
			},
		},
		{
			name: "non-synchronising literal",
			in:   "a LOGIN {3+}\r\nbob pw\r\n",
			want: want{
				segs: []Segment{
					{Text: []byte("a LOGIN "), Literal: &LiteralHeader{Size: 3, NonSync: true, Start: 8}, Data: []byte("bob")},
					{Text: []byte(" pw")},
				},
			},
		},
		{
			name: "binary literal",
			in:   "a APPEND x ~{3}\r\na\x00b\r\n",
			want: want{
				segs: []Segment{
					{Text: []byte("a APPEND x "), Literal: &LiteralHeader{Size: 3, Binary: true, Start: 11}, Data: []byte("a\x00b")},
					{Text: []byte("")},
				},
				conts: []LiteralHeader{{Size: 3, Binary: true, Start: 11}},
			},
		},
		{
			name: "empty literal",
			in:   "a {0}\r\n\r\n",
			want: want{
				segs:  []Segment{{Text: []byte("a "), Literal: lit(0, 2), Data: []byte{}}, {Text: []byte("")}},
				conts: []LiteralHeader{*lit(0, 2)},
			},
		},
		{
			name: "inline limit exact",
			in:   "a {4}\r\nabcd\r\n",
			lim:  Limits{MaxInlineLiteral: 4},
			want: want{
				segs:  []Segment{{Text: []byte("a "), Literal: lit(4, 2), Data: []byte("abcd")}, {Text: []byte("")}},
				conts: []LiteralHeader{*lit(4, 2)},
			},
		},
		{
			name: "inline limit exceeded",
			in:   "a {5}\r\nabcde\r\n",
			lim:  Limits{MaxInlineLiteral: 4},
			want: want{segs: []Segment{{Text: []byte("a "), Literal: lit(5, 2)}}, err: ErrLiteralTooLarge},
		},
		{
			name: "inline limit exceeded by non-synchronising literal",
			in:   "a {5+}\r\nabcde\r\n",
			lim:  Limits{MaxInlineLiteral: 4},
			want: want{segs: []Segment{{Text: []byte("a "), Literal: &LiteralHeader{Size: 5, NonSync: true, Start: 2}}}, err: ErrLiteralTooLarge},
		},
		{
			name: "second literal exceeds inline limit",
			in:   "a {1}\r\nx {5}\r\nabcde\r\n",
			lim:  Limits{MaxInlineLiteral: 4},
			want: want{
				segs: []Segment{
					{Text: []byte("a "), Literal: lit(1, 2), Data: []byte("x")},
					{Text: []byte(" "), Literal: lit(5, 1)},
				},
				conts: []LiteralHeader{*lit(1, 2)},
				err:   ErrLiteralTooLarge,
			},
		},
		{
			name:    "continuation refused",
			in:      "a {3}\r\nabc\r\n",
			contErr: errRefused,
			want: want{
				segs:  []Segment{{Text: []byte("a "), Literal: lit(3, 2)}},
				conts: []LiteralHeader{*lit(3, 2)},
				err:   errRefused,
			},
		},
		{
			name: "over MaxLiteral",
			in:   "a {101}\r\n",
			lim:  Limits{MaxLiteral: 100},
			want: want{err: ErrLiteralTooLarge},
		},
		{
			name: "text limit is four lines",
			in:   strings.Repeat("aaaaaa{0}\r\n", 5) + "\r\n",
			lim:  Limits{MaxLine: 10},
			want: want{
				segs:  slices.Repeat([]Segment{{Text: []byte("aaaaaa"), Literal: lit(0, 6), Data: []byte{}}}, 4),
				conts: slices.Repeat([]LiteralHeader{*lit(0, 6)}, 4),
				err:   ErrLineTooLong,
			},
		},
		{
			name: "eof in literal",
			in:   "a {5}\r\nab",
			want: want{segs: []Segment{{Text: []byte("a "), Literal: lit(5, 2)}}, conts: []LiteralHeader{*lit(5, 2)}, err: io.ErrUnexpectedEOF},
		},
		{
			name: "eof after literal",
			in:   "a {2}\r\nab",
			want: want{segs: []Segment{{Text: []byte("a "), Literal: lit(2, 2), Data: []byte("ab")}}, conts: []LiteralHeader{*lit(2, 2)}, err: io.EOF},
		},
		{
			name: "eof",
			in:   "",
			want: want{err: io.EOF},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), tt.lim)
			var conts []LiteralHeader
			segs, err := r.ReadSegments(func(h LiteralHeader) error {
				conts = append(conts, h)
				return tt.contErr
			})
			if tt.want.err == nil && err != nil || tt.want.err != nil && !errors.Is(err, tt.want.err) {
				t.Fatalf("err = %v, want %v", err, tt.want.err)
			}
			if !segmentsEqual(segs, tt.want.segs) {
				t.Errorf("segments =\n%s\nwant\n%s", fmtSegs(segs), fmtSegs(tt.want.segs))
			}
			if fmt.Sprint(conts) != fmt.Sprint(tt.want.conts) {
				t.Errorf("continuations = %+v, want %+v", conts, tt.want.conts)
			}
		})
	}
}

var errRefused = errors.New("refused")

func TestReadSegmentsNilContinue(t *testing.T) {
	r := NewReader(strings.NewReader("* 1 FETCH (BODY[] {5}\r\nhello)\r\n* 2 EXISTS\r\n"), Limits{})
	segs, err := r.ReadSegments(nil)
	if err != nil || len(segs) != 2 || string(segs[0].Data) != "hello" || string(segs[1].Text) != ")" {
		t.Fatalf("ReadSegments = %s, %v", fmtSegs(segs), err)
	}
	segs, err = r.ReadSegments(nil)
	if err != nil || len(segs) != 1 || string(segs[0].Text) != "* 2 EXISTS" {
		t.Fatalf("ReadSegments = %s, %v", fmtSegs(segs), err)
	}
}

// TestReadSegmentsCopies checks that segments do not alias the reader's
// line buffer.
func TestReadSegmentsCopies(t *testing.T) {
	r := NewReader(strings.NewReader("a {1}\r\nx b\r\nc d\r\n"), Limits{})
	segs, err := r.ReadSegments(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadSegments(nil); err != nil {
		t.Fatal(err)
	}
	if string(segs[0].Text) != "a " || string(segs[1].Text) != " b" {
		t.Fatalf("segments changed by a later read: %s", fmtSegs(segs))
	}
}

func TestAppendSegments(t *testing.T) {
	for _, in := range []string{
		"a1 NOOP\r\n",
		"\r\n",
		"a LOGIN {3}\r\nbob {4+}\r\npass\r\n",
		"a APPEND INBOX (\\Seen) ~{3}\r\na\x00b\r\n",
		"* 1 FETCH (BODY[] {0}\r\n)\r\n",
	} {
		segs, err := NewReader(strings.NewReader(in), Limits{}).ReadSegments(nil)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := string(AppendSegments(nil, segs)); got != in {
			t.Errorf("AppendSegments(ReadSegments(%q)) = %q", in, got)
		}
	}
	// Bare LF and leading zeros are normalised.
	segs, err := NewReader(strings.NewReader("a {03}\nabc\n"), Limits{}).ReadSegments(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(AppendSegments([]byte("x"), segs)); got != "xa {3}\r\nabc\r\n" {
		t.Errorf("AppendSegments = %q", got)
	}
}

func segmentsEqual(a, b []Segment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Text, b[i].Text) || !bytes.Equal(a[i].Data, b[i].Data) ||
			(a[i].Data == nil) != (b[i].Data == nil) ||
			(a[i].Literal == nil) != (b[i].Literal == nil) ||
			a[i].Literal != nil && *a[i].Literal != *b[i].Literal {
			return false
		}
	}
	return true
}

func fmtSegs(segs []Segment) string {
	var b strings.Builder
	for _, s := range segs {
		fmt.Fprintf(&b, "  {Text: %q", s.Text)
		if s.Literal != nil {
			fmt.Fprintf(&b, ", Literal: %+v, Data: %q (nil %v)", *s.Literal, s.Data, s.Data == nil)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// TestCancelLiteral: after a refused synchronising literal the peer never
// sends its bytes, so the next line follows the header directly.
func TestCancelLiteral(t *testing.T) {
	r := NewReader(strings.NewReader("a APPEND x {5}\r\nb NOOP\r\n"), Limits{})
	if _, lit, err := r.ReadLine(); err != nil || lit == nil {
		t.Fatalf("ReadLine: %v %v", lit, err)
	}
	r.CancelLiteral()
	if r.LiteralRemaining() != 0 {
		t.Fatalf("LiteralRemaining = %d", r.LiteralRemaining())
	}
	line, lit, err := r.ReadLine()
	checkLine(t, "next command", line, lit, err, lineResult{line: "b NOOP"})
}

// released reports whether r holds no buffer.
func released(r *Reader) bool { return r.br == nil }

// TestReleaseBetweenLines: a released Reader holds no buffer while it
// waits, and reads the next line whole, short or long.
func TestReleaseBetweenLines(t *testing.T) {
	conn, r, write := pipe(t)
	done := write("a1 NOOP\r\n")
	line, lit, err := r.ReadLine()
	checkLine(t, "first", line, lit, err, lineResult{line: "a1 NOOP"})
	wait(t, done)
	if released(r) {
		t.Fatal("Reader without a buffer after reading")
	}
	r.Release()
	if !released(r) {
		t.Fatal("Release kept the buffer with nothing buffered")
	}
	// Waiting (and timing out) takes no buffer.
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, _, err = r.ReadLine()
	expectTimeout(t, err)
	if !released(r) {
		t.Fatal("a read that timed out took a buffer")
	}
	conn.SetReadDeadline(time.Time{})

	for _, n := range []int{1, firstReadSize - 2, firstReadSize - 1, firstReadSize, firstReadSize + 1, bufSize - 2, bufSize, 3 * bufSize, DefaultMaxLine} {
		want := "a2 " + strings.Repeat("x", max(n-3, 0))
		want = want[:n]
		done := write(want + "\r\nb NOOP\r\n")
		line, lit, err := r.ReadLine()
		checkLine(t, fmt.Sprintf("%d-byte line", n), line, lit, err, lineResult{line: want})
		line, lit, err = r.ReadLine()
		checkLine(t, fmt.Sprintf("line after the %d-byte line", n), line, lit, err, lineResult{line: "b NOOP"})
		wait(t, done)
		r.Release()
		if !released(r) {
			t.Fatalf("after the %d-byte line: Release kept the buffer", n)
		}
		if cap(r.line) > maxKeptLine {
			t.Fatalf("after the %d-byte line: Release kept a line buffer of %d bytes", n, cap(r.line))
		}
	}
	// The line limit holds for a line that starts in the small buffer.
	done = write(strings.Repeat("y", DefaultMaxLine+1) + "\r\n")
	_, _, err = r.ReadLine()
	if !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("over-long line after Release: err = %v", err)
	}
	conn.Close()
	<-done
}

// TestReleaseKeepsBufferedInput: Release does nothing while bytes are
// buffered, and nothing read is lost.
func TestReleaseKeepsBufferedInput(t *testing.T) {
	r := NewReader(strings.NewReader("a1 NOOP\r\na2 IDLE\r\nDONE\r\n"), Limits{})
	r.Release() // nothing read yet: no effect
	want := []string{"a1 NOOP", "a2 IDLE", "DONE"}
	for i, w := range want {
		line, lit, err := r.ReadLine()
		checkLine(t, fmt.Sprintf("line %d", i), line, lit, err, lineResult{line: w})
		r.Release()
		if i < len(want)-1 && released(r) {
			t.Fatalf("line %d: Release dropped %d buffered bytes", i, r.Buffered())
		}
	}
	if _, _, err := r.ReadLine(); err != io.EOF {
		t.Fatalf("at the end: err = %v, want io.EOF", err)
	}
}

// TestReleaseKeepsPartialLine: a line interrupted by deadlines, with
// Release between the attempts (as IDLE does), comes out whole.
func TestReleaseKeepsPartialLine(t *testing.T) {
	conn, r, write := pipe(t)
	timeoutUntilWritten(t, conn, r, write("a1 UID FE"))
	r.Release()
	if !released(r) {
		t.Fatal("Release kept the buffer")
	}
	timeoutUntilWritten(t, conn, r, write("TCH 1:*"))
	r.Release()
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, _, err := r.ReadLine()
	expectTimeout(t, err)
	conn.SetReadDeadline(time.Time{})
	done := write(" (FLAGS)\r\na2 NOOP\r\n")
	line, lit, err := r.ReadLine()
	checkLine(t, "resumed line", line, lit, err, lineResult{line: "a1 UID FETCH 1:* (FLAGS)"})
	line, lit, err = r.ReadLine()
	checkLine(t, "next line", line, lit, err, lineResult{line: "a2 NOOP"})
	wait(t, done)
}

// TestReleaseInLiteral: released between a literal's header and its bytes
// (a synchronising literal: the peer waits for "+"), the Reader reads or
// skips the literal as usual.
func TestReleaseInLiteral(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("skip=%v", skip), func(t *testing.T) {
			conn, r, write := pipe(t)
			done := write("a APPEND x {100}\r\n")
			line, lit, err := r.ReadLine()
			checkLine(t, "header", line, lit, err, lineResult{line: "a APPEND x {100}", lit: &LiteralHeader{Size: 100, Start: 11}})
			wait(t, done)
			r.Release()
			if !released(r) {
				t.Fatal("Release kept the buffer")
			}
			conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := r.Literal().Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("literal read before the bytes came: %v", err)
			}
			conn.SetReadDeadline(time.Time{})
			data := strings.Repeat("0123456789", 10)
			done = write(data + "\r\nb NOOP\r\n")
			if !skip {
				got, err := r.ReadLiteral()
				if err != nil || string(got) != data {
					t.Fatalf("literal = %q, %v", got, err)
				}
			}
			line, lit, err = r.ReadLine()
			checkLine(t, "end of command", line, lit, err, lineResult{line: ""})
			line, lit, err = r.ReadLine()
			checkLine(t, "next command", line, lit, err, lineResult{line: "b NOOP"})
			wait(t, done)
		})
	}
}

// dataEOFReader returns its data and io.EOF from the same Read.
type dataEOFReader struct{ data string }

func (d *dataEOFReader) Read(p []byte) (int, error) {
	n := copy(p, d.data)
	d.data = d.data[n:]
	if len(d.data) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestReleaseFirstReadError: an error that comes with the first read's
// data is reported after the data; one without data leaves the Reader
// released.
func TestReleaseFirstReadError(t *testing.T) {
	src := &dataEOFReader{data: "a1 NOOP\r\n"}
	r := NewReader(io.MultiReader(strings.NewReader("a0 IDLE\r\n"), src), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	line, lit, err := r.ReadLine()
	checkLine(t, "line", line, lit, err, lineResult{line: "a1 NOOP"})
	if _, _, err := r.ReadLine(); err != io.EOF {
		t.Fatalf("err = %v, want io.EOF", err)
	}

	r = NewReader(io.MultiReader(strings.NewReader("a0 IDLE\r\n"), &dataEOFReader{data: "a1 NO"}), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if _, _, err := r.ReadLine(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("half a line, then EOF: err = %v, want io.ErrUnexpectedEOF", err)
	}
	r = NewReader(strings.NewReader("a0 IDLE\r\n"), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if _, _, err := r.ReadLine(); err != io.EOF {
		t.Fatalf("EOF while released: err = %v, want io.EOF", err)
	}
	if !released(r) {
		t.Fatal("a read that failed without data took a buffer")
	}
	if _, err := r.Peek(1); err != io.EOF {
		t.Fatalf("Peek: err = %v, want io.EOF", err)
	}
}

// TestReleaseTakeBuffered: bytes the first read got after the line are
// handed over by TakeBuffered (COMPRESS starts mid-stream).
func TestReleaseTakeBuffered(t *testing.T) {
	r := NewReader(io.MultiReader(strings.NewReader("a0 IDLE\r\n"), strings.NewReader("a1 COMPRESS DEFLATE\r\n\x01\x02\x03")), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	line, lit, err := r.ReadLine()
	checkLine(t, "line", line, lit, err, lineResult{line: "a1 COMPRESS DEFLATE"})
	if got := r.TakeBuffered(); string(got) != "\x01\x02\x03" {
		t.Fatalf("TakeBuffered = %q", got)
	}
	if got := r.Buffered(); got != 0 {
		t.Fatalf("Buffered after TakeBuffered = %d", got)
	}
}

// chopReader returns its data in pieces of random size, with a timeout
// (and no data) now and then, like a network connection with a deadline
// used to wake the reader.
type chopReader struct {
	data []byte
	rnd  *rand.Rand
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (c *chopReader) Read(p []byte) (int, error) {
	if c.rnd.IntN(4) == 0 {
		return 0, timeoutError{}
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), 1+c.rnd.IntN(200))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// TestReleaseEquivalence reads random streams of lines and literals in
// random pieces, with timeouts between them, once calling Release before
// every ReadLine and literal read and once never: the results must be the
// same.
func TestReleaseEquivalence(t *testing.T) {
	lim := Limits{MaxLine: 300, MaxLiteral: 5000}
	for seed := range uint64(300) {
		rnd := rand.New(rand.NewPCG(seed, 1))
		var stream []byte
		for range 1 + rnd.IntN(30) {
			line := strings.Repeat("x", rnd.IntN(320))
			switch rnd.IntN(4) {
			case 0:
				n := rnd.IntN(6000)
				line = fmt.Sprintf("%s {%d}", line, n)
				stream = append(stream, line+"\r\n"...)
				stream = append(stream, bytes.Repeat([]byte{'L'}, n)...)
			case 1:
				stream = append(stream, line+"\n"...)
			default:
				stream = append(stream, line+"\r\n"...)
			}
		}
		if rnd.IntN(2) == 0 {
			stream = stream[:rnd.IntN(len(stream)+1)]
		}
		pieceSeed := rnd.Uint64()
		run := func(release bool) []string {
			r := NewReader(&chopReader{data: stream, rnd: rand.New(rand.NewPCG(pieceSeed, 2))}, lim)
			var out []string
			buf := make([]byte, 1+rnd.IntN(100))
			for range 100000 {
				if release {
					r.Release()
				}
				line, lit, err := r.ReadLine()
				if errors.Is(err, timeoutError{}) {
					continue
				}
				if err != nil {
					return append(out, "error: "+err.Error())
				}
				out = append(out, fmt.Sprintf("%q %+v", line, lit))
				if lit == nil || lit.Size%3 == 0 {
					continue // left to be skipped
				}
				var data []byte
				for r.LiteralRemaining() > 0 {
					if release {
						r.Release()
					}
					n, err := r.Literal().Read(buf)
					data = append(data, buf[:n]...)
					if err != nil && !errors.Is(err, timeoutError{}) {
						return append(out, "literal error: "+err.Error())
					}
				}
				out = append(out, fmt.Sprintf("literal %d bytes", len(data)))
			}
			t.Fatal("no end")
			return nil
		}
		a, b := run(false), run(true)
		if !slices.Equal(a, b) {
			t.Fatalf("seed %d: without Release\n%s\nwith Release\n%s", seed, strings.Join(a, "\n"), strings.Join(b, "\n"))
		}
	}
}

// TestWait: a released Reader waits without taking a buffer; a deadline
// ends the wait with its error and leaves the Reader as it was; what the
// wait read comes out whole in the next lines, short or long; a Reader
// holding a buffer waits in it, and an error after data is reported by a
// later read.
func TestWait(t *testing.T) {
	conn, r, write := pipe(t)
	done := write("* OK ready\r\n")
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	wait(t, done)
	r.Release()
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	expectTimeout(t, r.Wait())
	if !released(r) || r.Buffered() != 0 {
		t.Fatalf("a wait that timed out: released %v, %d bytes buffered", released(r), r.Buffered())
	}
	conn.SetReadDeadline(time.Time{})
	for _, n := range []int{1, firstReadSize - 2, firstReadSize, firstReadSize + 1, bufSize + 1} {
		want := "* " + strings.Repeat("x", n)
		done := write(want + "\r\n* 3 EXISTS\r\n")
		if err := r.Wait(); err != nil {
			t.Fatalf("%d bytes: Wait: %v", n, err)
		}
		if !released(r) || r.Buffered() == 0 {
			t.Fatalf("%d bytes: after Wait: released %v, %d bytes buffered", n, released(r), r.Buffered())
		}
		if err := r.Wait(); err != nil || r.Buffered() == 0 { // input waiting: returns at once
			t.Fatalf("%d bytes: second Wait: %v, %d buffered", n, err, r.Buffered())
		}
		line, lit, err := r.ReadLine()
		checkLine(t, fmt.Sprintf("%d-byte line", n), line, lit, err, lineResult{line: want})
		line, lit, err = r.ReadLine()
		checkLine(t, "next line", line, lit, err, lineResult{line: "* 3 EXISTS"})
		wait(t, done)
		r.Release()
	}
	// Holding a buffer (not released): waits in it, keeps what came.
	done = write("* 4 EXISTS\r\n")
	if _, err := r.Peek(1); err != nil {
		t.Fatal(err)
	}
	wait(t, done)
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if released(r) {
		t.Fatal("Reader without a buffer after reading")
	}
	done = write("* 5 EXISTS\r\n")
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	line, lit, err := r.ReadLine()
	checkLine(t, "line waited for in the buffer", line, lit, err, lineResult{line: "* 5 EXISTS"})
	wait(t, done)

	// Data and EOF from the same read: the data first, then the EOF.
	r = NewReader(io.MultiReader(strings.NewReader("* OK\r\n"), &dataEOFReader{data: "* BYE\r\n"}), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if err := r.Wait(); err != nil {
		t.Fatalf("Wait with data and EOF: %v", err)
	}
	if err := r.Wait(); err != nil {
		t.Fatalf("second Wait with data and EOF pending: %v", err)
	}
	line, lit, err = r.ReadLine()
	checkLine(t, "line before EOF", line, lit, err, lineResult{line: "* BYE"})
	if _, _, err := r.ReadLine(); err != io.EOF {
		t.Fatalf("after the line: err = %v, want io.EOF", err)
	}
	if err := r.Wait(); err != io.EOF {
		t.Fatalf("Wait at the end: err = %v, want io.EOF", err)
	}

	// The same, the line read before the next Wait: the EOF that came
	// with it is Wait's to report (nil would say input is waiting).
	r = NewReader(io.MultiReader(strings.NewReader("* OK\r\n"), &dataEOFReader{data: "* BYE\r\n"}), Limits{})
	if _, _, err := r.ReadLine(); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if err := r.Wait(); err != nil {
		t.Fatalf("Wait with data and EOF: %v", err)
	}
	line, lit, err = r.ReadLine()
	checkLine(t, "line with EOF", line, lit, err, lineResult{line: "* BYE"})
	if err := r.Wait(); err != io.EOF {
		t.Fatalf("Wait after the line that came with EOF: err = %v, want io.EOF", err)
	}
}
