package compress_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/internal/deflate"
)

// fuzzSource hands out data in pieces whose sizes come from the fuzzer,
// with a timeout between pieces: every point where the reader may park,
// resume or speculate gets exercised.
//
// At most maxPauses timeouts per input: each resume decodes the current
// block again up to where the last read stopped, so a one-byte-per-piece
// feed of a large block costs the square of its size. (In the proxy a
// timeout only comes from an expiring deadline, in IDLE when the hub has
// news, and what a session reads of one block before that is bounded by
// the line limit.) Without the bound, single inputs ran for a minute and
// a 10-minute fuzzing run made a few thousand executions.
type fuzzSource struct {
	data   []byte
	sizes  []byte
	i      int
	pause  bool
	pauses int
}

const maxPauses = 64

// outCap bounds the plaintext compared per input: a decompression bomb
// read through a one-byte buffer would otherwise cost seconds. The proxy
// reads client data through buffers of kilobytes and ends a session whose
// line grows past 64 KiB, so 1 MiB covers every path it takes.
const outCap = 1 << 20

func (s *fuzzSource) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	if s.pause && s.pauses < maxPauses {
		s.pause = false
		s.pauses++
		return 0, timeoutError{}
	}
	n := len(s.data)
	if len(s.sizes) > 0 {
		n = 1 + 16*int(s.sizes[s.i%len(s.sizes)])
		s.i++
	}
	n = min(n, len(s.data), len(p))
	copy(p, s.data[:n])
	s.data = s.data[n:]
	s.pause = true
	return n, nil
}

// FuzzInflate feeds arbitrary bytes, in arbitrary pieces, to the reader the
// proxy uses for client data. It must never panic, and never return data
// that a plain inflater of the same bytes would not: everything it returns
// is a prefix of the reference output, and a stream the reference reads to
// its final block the reader reads completely. Seeds: testdata/fuzz.
func FuzzInflate(f *testing.F) {
	for _, level := range []int{0, 1, 6, flate.HuffmanOnly} {
		var b bytes.Buffer
		fw, _ := flate.NewWriter(&b, level)
		fw.Write([]byte("a1 LOGIN alice secret\r\n"))
		fw.Flush()
		fw.Write(bytes.Repeat([]byte("a2 UID FETCH 1:* (FLAGS)\r\n"), 40))
		fw.Flush()
		fw.Close()
		f.Add(b.Bytes(), []byte{3, 200, 17})
	}
	var b bytes.Buffer
	w := deflate.NewWriter(&b, deflate.WriterOptions{})
	w.Write([]byte("* 1 FETCH (FLAGS (\\Seen))\r\n"))
	w.Flush()
	w.Write([]byte("* 2 FETCH (FLAGS (\\Seen))\r\n"))
	w.Flush()
	f.Add(b.Bytes(), []byte{0})
	f.Add([]byte{0x78, 0x9c, 0x4b, 0x4c, 0x04, 0x00}, []byte{})
	f.Add([]byte{0xff, 0xff}, []byte{1})

	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		if len(data) > 16<<10 {
			return // resuming after every piece costs O(block) each time
		}
		ref, refErr := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(data)), outCap))
		r := deflate.NewReader(&fuzzSource{data: data, sizes: sizes}, nil)
		var got []byte
		buf := make([]byte, 1+len(sizes)*37%4096)
		var err error
		for len(got) <= outCap {
			var n int
			n, err = r.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				var te interface{ Timeout() bool }
				if errors.As(err, &te) && te.Timeout() {
					continue
				}
				break
			}
		}
		if errors.Is(err, deflate.ErrZlibHeader) {
			return // refused up front; the reference may read it as deflate
		}
		if !bytes.HasPrefix(ref, got) && !bytes.HasPrefix(got, ref) {
			t.Fatalf("output differs from the reference: got %d bytes, reference %d", len(got), len(ref))
		}
		if len(got) > len(ref) && len(ref) < outCap {
			t.Fatalf("got %d bytes, more than the reference's %d", len(got), len(ref))
		}
		if refErr == nil && len(ref) < outCap && (err != io.EOF || !bytes.Equal(got, ref)) {
			t.Fatalf("reference read the stream to its end (%d bytes); reader: %d bytes, %v", len(ref), len(got), err)
		}
	})
}
