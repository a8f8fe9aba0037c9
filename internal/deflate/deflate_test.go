package deflate

import (
	"bytes"
	stdflate "compress/flate"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"
)

// timeoutErr is what a net.Conn returns when its deadline passes.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// chunkSource delivers a compressed stream in the given pieces, returning a
// timeout (and nothing) wherever a piece is nil, and EOF at the end.
type chunkSource struct {
	pieces [][]byte
	cur    []byte
}

func (s *chunkSource) Read(p []byte) (int, error) {
	for len(s.cur) == 0 {
		if len(s.pieces) == 0 {
			return 0, io.EOF
		}
		s.cur, s.pieces = s.pieces[0], s.pieces[1:]
		if s.cur == nil {
			return 0, timeoutErr{}
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	return n, nil
}

// imapish returns n bursts of plausible IMAP-like text.
func imapish(rng *rand.Rand, n int) [][]byte {
	words := strings.Fields("FETCH UID FLAGS \\Seen \\Answered ENVELOPE BODYSTRUCTURE INBOX Sent Drafts " +
		"example.org alice bob report meeting invoice Re: Fwd: text plain html utf-8 quoted-printable NIL")
	var out [][]byte
	for i := range n {
		var b bytes.Buffer
		lines := 1 + rng.IntN(40)
		if rng.IntN(10) == 0 {
			lines = 600 + rng.IntN(900) // a big one, beyond the window
		}
		for l := range lines {
			fmt.Fprintf(&b, "* %d FETCH (UID %d", l+1, 1000+i*10+l)
			for range 3 + rng.IntN(12) {
				b.WriteByte(' ')
				b.WriteString(words[rng.IntN(len(words))])
			}
			if rng.IntN(20) == 0 {
				// Some incompressible bytes.
				for range rng.IntN(600) {
					b.WriteByte(byte(rng.Uint32()))
				}
			}
			b.WriteString(")\r\n")
		}
		out = append(out, b.Bytes())
	}
	return out
}

type flusher interface {
	io.Writer
	Flush() error
}

// encode compresses bursts with a peer's writer, flushing after each, and
// returns the compressed bytes of each burst.
func encode(t testing.TB, mk func(io.Writer) flusher, bursts [][]byte) [][]byte {
	t.Helper()
	var buf bytes.Buffer
	w := mk(&buf)
	var out [][]byte
	for _, b := range bursts {
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), buf.Bytes()...))
		buf.Reset()
	}
	return out
}

var peers = map[string]func(io.Writer) flusher{
	"klauspost-1":   func(w io.Writer) flusher { fw, _ := flate.NewWriter(w, 1); return fw },
	"klauspost-9":   func(w io.Writer) flusher { fw, _ := flate.NewWriter(w, 9); return fw },
	"stdlib-6":      func(w io.Writer) flusher { fw, _ := stdflate.NewWriter(w, 6); return fw },
	"stdlib-huff":   func(w io.Writer) flusher { fw, _ := stdflate.NewWriter(w, stdflate.HuffmanOnly); return fw },
	"stdlib-0":      func(w io.Writer) flusher { fw, _ := stdflate.NewWriter(w, 0); return fw },
	"writer":        func(w io.Writer) flusher { return NewWriter(w, WriterOptions{}) },
	"writer-nodict": func(w io.Writer) flusher { return NewWriter(w, WriterOptions{DictSize: -1}) },
	"writer-hold":   func(w io.Writer) flusher { return NewWriter(w, WriterOptions{Hold: true}) },
}

// readBursts reads each burst from r and checks it, checking also that the
// reader let go of its inflater once a burst was read.
func readBursts(t *testing.T, r *Reader, bursts [][]byte, wantIdle bool) {
	t.Helper()
	for i, want := range bursts {
		got := make([]byte, len(want))
		off := 0
		for off < len(got) {
			n, err := r.Read(got[off:min(len(got), off+1+int(uint(i*7919+off)%5000))])
			off += n
			if err != nil {
				if isTimeout(err) {
					continue // the state must survive: read again
				}
				t.Fatalf("burst %d: read after %d of %d bytes: %v", i, off, len(want), err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("burst %d differs", i)
		}
		if wantIdle {
			// The next read finds no input: the reader parks. A timeout
			// piece was placed after every burst for this.
			if _, err := r.Read(make([]byte, 10)); !isTimeout(err) {
				t.Fatalf("burst %d: want a timeout at the burst end, got %v", i, err)
			}
			if r.Active() {
				t.Fatalf("burst %d: inflater still held while idle", i)
			}
		}
	}
}

func TestRoundTripPeers(t *testing.T) {
	for name, mk := range peers {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			bursts := imapish(rng, 30)
			enc := encode(t, mk, bursts)
			// Deliver each burst in random pieces, a timeout after each.
			var pieces [][]byte
			for _, e := range enc {
				for len(e) > 0 {
					k := 1 + rng.IntN(min(len(e), 3000))
					if rng.IntN(4) == 0 {
						k = 1 + rng.IntN(min(len(e), 3))
					}
					pieces = append(pieces, e[:k])
					e = e[k:]
				}
				pieces = append(pieces, nil)
			}
			r := NewReader(&chunkSource{pieces: pieces}, nil)
			readBursts(t, r, bursts, true)
			if _, err := r.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("at the end: %v, want EOF", err)
			}
			_, _, wakes := r.Stats()
			if wakes < int64(len(bursts)) {
				t.Errorf("only %d inflaters built for %d bursts: the reader did not park", wakes, len(bursts))
			}
		})
	}
}

// TestTimeoutsInsideBlocks interrupts reads anywhere. The reader must never
// deliver wrong data; where the interruption came after part of a block had
// been returned it may give up with ErrStreamLost.
func TestTimeoutsInsideBlocks(t *testing.T) {
	lost, ok := 0, 0
	for seed := range uint64(5) {
		rng := rand.New(rand.NewPCG(seed, 7))
		bursts := imapish(rng, 8)
		enc := encode(t, peers["klauspost-1"], bursts)
		var pieces [][]byte
		for _, e := range enc {
			for len(e) > 0 {
				k := 1 + rng.IntN(min(len(e), 200))
				pieces = append(pieces, e[:k])
				if rng.IntN(3) == 0 {
					pieces = append(pieces, nil)
				}
				e = e[k:]
			}
		}
		r := NewReader(&chunkSource{pieces: pieces}, nil)
		want := bytes.Join(bursts, nil)
		var got []byte
		buf := make([]byte, 1+rng.IntN(5000))
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if !bytes.HasPrefix(want, got) {
				t.Fatalf("seed %d: wrong data after %d bytes", seed, len(got))
			}
			if err == nil || isTimeout(err) {
				continue
			}
			if err == io.EOF {
				if !bytes.Equal(got, want) {
					t.Fatalf("seed %d: EOF after %d of %d bytes", seed, len(got), len(want))
				}
				ok++
			} else if errors.Is(err, ErrStreamLost) {
				lost++
			} else {
				t.Fatalf("seed %d: %v", seed, err)
			}
			break
		}
	}
	t.Logf("%d streams complete, %d lost to a timeout after a partial block", ok, lost)
	if ok == 0 {
		t.Fatal("no stream survived its timeouts")
	}
}

func TestPending(t *testing.T) {
	bursts := [][]byte{[]byte("a1 NOOP\r\n"), []byte("a2 LOGOUT\r\n")}
	enc := encode(t, peers["klauspost-1"], bursts)
	all := bytes.Join(enc, nil)
	r := NewReader(&chunkSource{pieces: [][]byte{all[5:]}}, all[:5])
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "a1 NOOP\r\na2 LOGOUT\r\n" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestZlibHeader(t *testing.T) {
	for _, hdr := range [][]byte{{0x78, 0x9c}, {0x78, 0x01}, {0x78, 0xda}, {0x78, 0x5e}} {
		// Header alone, then split from its stream.
		var zb bytes.Buffer
		zb.Write(hdr)
		fw, _ := flate.NewWriter(&zb, 5)
		fw.Write([]byte("a1 NOOP\r\n"))
		fw.Flush()
		for _, pieces := range [][][]byte{{zb.Bytes()}, {zb.Bytes()[:1], zb.Bytes()[1:]}} {
			r := NewReader(&chunkSource{pieces: pieces}, nil)
			_, err := r.Read(make([]byte, 100))
			if !errors.Is(err, ErrZlibHeader) {
				t.Errorf("%x: got %v, want ErrZlibHeader", hdr, err)
			}
		}
	}
}

func TestCorrupt(t *testing.T) {
	for _, in := range [][]byte{
		{0xff, 0xff, 0xff, 0xff},            // reserved block type
		{0x00, 0x05, 0x00, 0x05, 0x00, 'a'}, // stored, LEN/NLEN mismatch
		{0x04, 0x00},                        // dynamic block with a bad table
	} {
		r := NewReader(&chunkSource{pieces: [][]byte{in}}, nil)
		_, err := io.ReadAll(r)
		var ce *CorruptError
		if !errors.As(err, &ce) && err != io.ErrUnexpectedEOF {
			t.Errorf("%x: got %v, want a CorruptError", in, err)
		}
	}
}

// TestPythonVectors reads streams written by zlib with every flush mode
// (testdata/zlib-*.bin, made by testdata/mkvectors.py): partial flushes end
// inside a byte, Z_BLOCK ends without a marker.
func TestPythonVectors(t *testing.T) {
	files, _ := filepath.Glob("testdata/zlib-*-[16].bin")
	if len(files) == 0 {
		t.Fatal("no vectors")
	}
	want, err := os.ReadFile("testdata/plain.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 4))
			var pieces [][]byte
			for len(data) > 0 {
				k := 1 + rng.IntN(min(len(data), 4000))
				pieces = append(pieces, data[:k], nil)
				data = data[k:]
			}
			r := NewReader(&chunkSource{pieces: pieces}, nil)
			var got []byte
			buf := make([]byte, 333)
			for {
				n, err := r.Read(buf)
				got = append(got, buf[:n]...)
				if err == nil || isTimeout(err) {
					continue
				}
				if err != io.EOF {
					t.Fatalf("after %d bytes: %v", len(got), err)
				}
				break
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

func TestWriterBursts(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	bursts := imapish(rng, 50)
	var buf bytes.Buffer
	w := NewWriter(&buf, WriterOptions{})
	fr := stdflate.NewReader(&buf)
	for i, b := range bursts {
		// Write in odd pieces.
		for p := b; len(p) > 0; {
			k := 1 + rng.IntN(len(p))
			w.Write(p[:k])
			p = p[k:]
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if w.buf != nil || len(w.dict) > DefaultDictSize {
			t.Fatalf("burst %d: writer keeps %d bytes of dictionary and a buffer: %v", i, len(w.dict), w.buf != nil)
		}
		// Each burst decodes completely on its own (byte-aligned flush).
		got := make([]byte, len(b))
		if _, err := io.ReadFull(fr, got); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("burst %d: %v", i, err)
		}
		if buf.Len() != 0 {
			t.Fatalf("burst %d: %d bytes left over", i, buf.Len())
		}
	}
}

// TestNoStall feeds zlib streams one flushed piece at a time: after every
// sync, full or partial flush the whole piece must come out without more
// input. (A Z_BLOCK flush promises no such thing.) A peer that waits for
// our answer would otherwise wait forever.
func TestNoStall(t *testing.T) {
	want, err := os.ReadFile("testdata/plain.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"sync", "full", "partial"} {
		for _, level := range []int{1, 9} {
			name := fmt.Sprintf("zlib-%s-%d", mode, level)
			t.Run(name, func(t *testing.T) {
				data, err := os.ReadFile("testdata/" + name + ".bin")
				if err != nil {
					t.Fatal(err)
				}
				idx, err := os.ReadFile("testdata/" + name + ".idx")
				if err != nil {
					t.Fatal(err)
				}
				var pieces [][]byte
				var ends []int
				prev := 0
				for _, l := range strings.Split(strings.TrimSpace(string(idx)), "\n") {
					var c, p int
					fmt.Sscan(l, &c, &p)
					// Each piece, then a timeout: the peer waits.
					pieces = append(pieces, data[prev:c], nil)
					ends = append(ends, p)
					prev = c
				}
				r := NewReader(&chunkSource{pieces: pieces}, nil)
				got := make([]byte, 0, len(want))
				buf := make([]byte, 4096)
				for i, end := range ends {
					for len(got) < end {
						n, err := r.Read(buf[:min(len(buf), end-len(got))])
						got = append(got, buf[:n]...)
						if isTimeout(err) {
							t.Fatalf("piece %d: stalled with %d of %d bytes", i, len(got), end)
						}
						if err != nil {
							t.Fatalf("piece %d: %v", i, err)
						}
					}
					// The piece is complete; the next read meets the
					// timeout (and must leave no inflater behind unless
					// the flush ended inside a byte).
					if _, err := r.Read(buf); !isTimeout(err) {
						t.Fatalf("piece %d: read past the piece: %v", i, err)
					}
				}
				if !bytes.Equal(got, want[:len(got)]) {
					t.Fatal("data differs")
				}
			})
		}
	}
}

// TestConcurrentReadersGrowBuffers: readers of different streams at once,
// each with blocks larger than its pooled input buffer, so that every one
// grows its buffer inside a block. A grown reader put its old buffer back
// in the pool before copying its bytes out of it, and another reader could
// take it and write over them: under -race, TestCompressUpstream (an
// upstream with COMPRESS, the watcher's connection and a session's at
// once) reported it; without the detector the stream could go corrupt.
func TestConcurrentReadersGrowBuffers(t *testing.T) {
	const readers = 8
	done := make(chan error, readers)
	for g := range readers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for round := range 8 {
				plain := make([]byte, 96<<10)
				for i := range plain {
					plain[i] = byte(rng.IntN(256)) // incompressible: stored blocks of 64 KiB
				}
				var z bytes.Buffer
				w, _ := stdflate.NewWriter(&z, stdflate.BestSpeed)
				w.Write(plain)
				w.Close()
				enc := z.Bytes()
				var pieces [][]byte
				for len(enc) > 0 {
					k := min(len(enc), 1+rng.IntN(4096))
					pieces = append(pieces, enc[:k])
					enc = enc[k:]
				}
				got, err := io.ReadAll(NewReader(&chunkSource{pieces: pieces}, nil))
				if err != nil || !bytes.Equal(got, plain) {
					done <- fmt.Errorf("reader %d, round %d: %d bytes, %v; equal %v", g, round, len(got), err, bytes.Equal(got, plain))
					return
				}
			}
			done <- nil
		}()
	}
	for range readers {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
