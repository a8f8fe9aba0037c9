package deflate

import (
	"bytes"
	stdflate "compress/flate"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// mixedBursts returns n bursts of what a proxy sends: IMAP responses, base64
// attachments (no matches, but a skewed alphabet), random binary, prose
// repeated beyond the window, in sizes from a few bytes to 300 KB.
func mixedBursts(rng *rand.Rand, n int) [][]byte {
	out := imapish(rng, n)
	for i := range out {
		switch rng.IntN(6) {
		case 0:
			raw := randomBytes(rng, rng.IntN(160<<10))
			enc := base64.StdEncoding.EncodeToString(raw)
			var b strings.Builder
			fmt.Fprintf(&b, "* %d FETCH (BODY[2] {%d}\r\n", i+1, len(enc)+2*(len(enc)/76))
			for len(enc) > 76 {
				b.WriteString(enc[:76] + "\r\n")
				enc = enc[76:]
			}
			b.WriteString(enc + ")\r\n")
			out[i] = []byte(b.String())
		case 1:
			out[i] = randomBytes(rng, rng.IntN(100<<10))
		case 2:
			out[i] = bytes.Repeat(out[i], 1+rng.IntN(50))
		case 3:
			out[i] = out[i][:rng.IntN(min(len(out[i]), 40))]
		}
	}
	return out
}

// randomBytes returns n random bytes seeded from rng.
func randomBytes(rng *rand.Rand, n int) []byte {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rng.Uint32())
	}
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// burstChecker checks that an independent inflater yields exactly each
// burst, complete with nothing more than what the writer had sent at its
// Flush.
type burstChecker struct {
	t   *testing.T
	buf *bytes.Buffer // compressed bytes the writer wrote
	dec io.Reader     // an independent inflater (the standard library's) over buf
	n   int
}

func newBurstChecker(t *testing.T) *burstChecker {
	var buf bytes.Buffer
	return &burstChecker{t: t, buf: &buf, dec: stdflate.NewReader(&buf)}
}

func (c *burstChecker) check(want []byte) {
	c.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.dec, got); err != nil {
		c.t.Fatalf("burst %d (%d bytes): %v", c.n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("burst %d (%d bytes) differs", c.n, len(want))
	}
	if c.buf.Len() != 0 {
		c.t.Fatalf("burst %d: %d compressed bytes left over after its end", c.n, c.buf.Len())
	}
	c.n++
}

// TestWriterRoundTrip writes bursts of every kind with every setting, a
// deflater held or not across bursts, given back in the middle of bursts
// and between them, lent by a pool that sometimes has none to lend (the
// burst is then compressed statelessly): the standard library's inflater
// must read every burst exactly, each right after its Flush.
func TestWriterRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		level, dict  int
		hold, scarce bool
	}{
		{5, 0, true, false},
		{5, 0, false, false},
		{1, 0, true, false},
		{5, -1, true, false},
		{5, MaxDictSize, false, false},
		{5, 0, true, true},
		{1, MaxDictSize, false, true},
	} {
		name := fmt.Sprintf("level%d/dict%d/hold=%v/scarce=%v", tc.level, tc.dict, tc.hold, tc.scarce)
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.level), uint64(tc.dict+10)))
			comps, err := NewCompressors(tc.level, 1)
			if err != nil {
				t.Fatal(err)
			}
			if tc.scarce {
				// Another writer holds the only deflater.
				other := NewWriter(io.Discard, WriterOptions{Compressors: comps, Hold: true})
				defer other.Close()
				other.Write(bytes.Repeat([]byte("x"), 4096))
				other.Flush()
			}
			c := newBurstChecker(t)
			w := NewWriter(c.buf, WriterOptions{DictSize: tc.dict, Compressors: comps, Hold: tc.hold})
			for i, b := range mixedBursts(rng, 30) {
				for p := b; len(p) > 0; {
					k := 1 + rng.IntN(len(p))
					if _, err := w.Write(p[:k]); err != nil {
						t.Fatal(err)
					}
					p = p[k:]
					if rng.IntN(8) == 0 {
						w.Release() // the deflater goes back at the Flush
					}
				}
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
				c.check(b)
				if rng.IntN(3) == 0 {
					w.Release()
				}
				if !tc.hold && w.Holding() {
					t.Fatalf("burst %d: deflater held after Flush without Hold", i)
				}
			}
			w.Close()
			if comps.InUse() != 0 && !tc.scarce {
				t.Fatalf("%d deflaters lent out after Close", comps.InUse())
			}
		})
	}
}

// TestWriterReleaseConcurrent gives the deflater back from another
// goroutine while bursts are written, as a session's reader does while
// its writer sends a push (run with -race).
func TestWriterReleaseConcurrent(t *testing.T) {
	comps, _ := NewCompressors(5, 0)
	c := newBurstChecker(t)
	w := NewWriter(c.buf, WriterOptions{Compressors: comps, Hold: true})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				w.Release()
				w.Holding()
			}
		}
	}()
	rng := rand.New(rand.NewPCG(9, 9))
	for _, b := range mixedBursts(rng, 60) {
		w.Write(b)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		c.check(b)
	}
	close(stop)
	wg.Wait()
	w.Release()
	if comps.InUse() != 0 || w.Holding() {
		t.Fatalf("deflater still lent out after Release")
	}
}

// TestWriterHoldRelease checks when the deflater is taken and given back.
func TestWriterHoldRelease(t *testing.T) {
	comps, _ := NewCompressors(5, 0)
	c := newBurstChecker(t)
	w := NewWriter(c.buf, WriterOptions{Compressors: comps, Hold: true})
	small := []byte("* 3 EXISTS\r\n")
	big := bytes.Repeat([]byte("* 1 FETCH (FLAGS (\\Seen))\r\n"), 100)

	w.Write(small)
	w.Flush()
	c.check(small)
	if w.Holding() || comps.InUse() != 0 {
		t.Fatal("a small burst took a deflater")
	}
	w.Write(big)
	w.Flush()
	c.check(big)
	if !w.Holding() || comps.InUse() != 1 {
		t.Fatal("a burst of responses did not take a deflater, or Hold did not keep it")
	}
	w.Write(small) // held: compressed with the whole window
	w.Flush()
	c.check(small)
	w.Release()
	if w.Holding() || comps.InUse() != 0 {
		t.Fatal("Release between bursts did not give the deflater back")
	}
	w.Write(big)
	w.Release() // in the middle of a burst: at its end
	if !w.Holding() {
		// (Holding takes the lock Release took; the burst is under way.)
		t.Log("deflater not taken yet: the burst is buffered")
	}
	w.Write(big)
	w.Flush()
	c.check(append(append([]byte(nil), big...), big...))
	if w.Holding() || comps.InUse() != 0 {
		t.Fatal("Release during a burst did not give the deflater back at its end")
	}
	// Without Hold every Flush gives it back.
	w2 := NewWriter(io.Discard, WriterOptions{Compressors: comps})
	w2.Write(big)
	w2.Flush()
	if w2.Holding() || comps.InUse() != 0 {
		t.Fatal("Flush without Hold kept the deflater")
	}
	w.Close()
	if _, err := w.Write(big); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestWriterBound: with the pool's one deflater lent out, another writer
// compresses statelessly, and both streams stay valid.
func TestWriterBound(t *testing.T) {
	comps, _ := NewCompressors(5, 1)
	c1, c2 := newBurstChecker(t), newBurstChecker(t)
	w1 := NewWriter(c1.buf, WriterOptions{Compressors: comps, Hold: true})
	w2 := NewWriter(c2.buf, WriterOptions{Compressors: comps, Hold: true})
	rng := rand.New(rand.NewPCG(4, 4))
	bursts := mixedBursts(rng, 20)
	big := bytes.Repeat([]byte("* 1 FETCH (FLAGS (\\Seen))\r\n"), 100)
	w1.Write(big)
	w1.Flush()
	c1.check(big)
	for _, b := range bursts {
		w2.Write(b)
		w2.Flush()
		c2.check(b)
		if w2.Holding() {
			t.Fatal("a second deflater was lent out beyond the bound")
		}
	}
	w1.Release()
	w2.Write(big)
	w2.Flush()
	c2.check(big)
	if !w2.Holding() || comps.InUse() != 1 {
		t.Fatal("the deflater given back was not lent again")
	}
	w2.Close()
	w1.Close()
	if comps.InUse() != 0 {
		t.Fatalf("%d lent out after Close", comps.InUse())
	}
}

// TestWriterHuffmanOnly: a base64 attachment, in which klauspost's fast
// levels find no match and store every block as is, leaves as
// Huffman-only blocks, about 3/4 of its size; text does not.
func TestWriterHuffmanOnly(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	raw := randomBytes(rng, 200<<10)
	att := []byte(base64.StdEncoding.EncodeToString(raw))
	text := bytes.Join(imapish(rng, 200), nil)
	for _, tc := range []struct {
		name     string
		in       []byte
		maxRatio float64
		huff     bool
	}{
		{"base64", att, 0.77, true},
		{"text", text, 0.4, false},
		{"random", raw, 1.001, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newBurstChecker(t)
			w := NewWriter(c.buf, WriterOptions{Hold: true})
			w.Write(tc.in)
			w.Flush()
			n := c.buf.Len()
			c.check(tc.in)
			if r := float64(n) / float64(len(tc.in)); r > tc.maxRatio {
				t.Errorf("%d bytes compressed to %d (%.3f), want at most %.3f", len(tc.in), n, r, tc.maxRatio)
			}
			if (w.huff > 0) != tc.huff {
				t.Errorf("%d chunks sent Huffman-only", w.huff)
			}
			w.Close()
		})
	}
}

// FuzzWriter writes fuzzer-chosen bytes in fuzzer-chosen pieces, with
// Flush and Release between them: the standard library's inflater must
// read every burst exactly.
func FuzzWriter(f *testing.F) {
	f.Add([]byte("* 1 FETCH (FLAGS (\\Seen))\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"), []byte{3, 0x80, 7, 0x40})
	f.Add(bytes.Repeat([]byte("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="), 100), []byte{0xff, 0x81})
	f.Fuzz(func(t *testing.T, data, ops []byte) {
		comps, _ := NewCompressors(1+len(ops)%9, 1)
		c := newBurstChecker(t)
		w := NewWriter(c.buf, WriterOptions{DictSize: len(data) % (MaxDictSize + 2), Compressors: comps, Hold: len(ops)%2 == 0})
		var burst []byte
		for i := 0; len(data) > 0; i++ {
			op := byte(0x3f)
			if len(ops) > 0 {
				op = ops[i%len(ops)]
			}
			// Pieces of up to 64 KiB: repeat the data to reach chunk
			// boundaries with small inputs.
			k := min(len(data), 1+int(op&0x3f)*37)
			piece := data[:k]
			if op&0x40 != 0 {
				piece = bytes.Repeat(piece, 1+int(op&0x3f))
			}
			data = data[k:]
			w.Write(piece)
			burst = append(burst, piece...)
			if op&0x80 != 0 || len(data) == 0 {
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
				c.check(burst)
				burst = burst[:0]
			}
			if op&0x20 != 0 {
				w.Release()
			}
		}
		w.Close()
		if comps.InUse() != 0 {
			t.Fatalf("%d deflaters lent out after Close", comps.InUse())
		}
	})
}
