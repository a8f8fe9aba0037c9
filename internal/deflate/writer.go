// Package deflate is the raw DEFLATE (RFC 1951) codec behind COMPRESS=DEFLATE
// (RFC 4978), built to compress like a stateful deflater while a connection
// is busy and to cost almost nothing while it is idle.
//
// Writer compresses with a stateful deflater (klauspost/compress/flate)
// taken from a shared pool when output starts and given back when the
// connection goes idle: at the end of every burst, or, for a writer in
// hold mode, when its owner calls Release (a session does so when it waits
// for its client). Every burst ends byte-aligned with a sync marker, so a
// returned deflater leaves nothing behind in the stream; the next one is
// primed with the last few KiB of plaintext sent, the only deflate state a
// Writer keeps between bursts (WriterOptions.DictSize). Content the
// deflater finds nothing to match in (base64 attachments) is sent as
// Huffman-only blocks, which klauspost's fast levels would store as is.
//
// Reader holds an inflater only while compressed bytes flow. When the peer
// has sent everything up to a deflate block boundary and nothing more has
// arrived, the inflater is dropped; what is kept is the 32 KiB window the peer
// may still refer to (stored compressed) and the position in the stream. When
// bytes arrive again a new inflater resumes from that checkpoint.
//
// Both sides are correct for any conforming peer: the reader resumes only
// from exact block boundaries reported by the decoder itself, whatever flush
// mode the peer uses.
package deflate

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
)

const (
	// DefaultDictSize is how much plaintext a Writer keeps between bursts.
	DefaultDictSize = 2 << 10
	// MaxDictSize is the most plaintext a Writer keeps between bursts
	// (StatelessDeflate uses no more as its dictionary).
	MaxDictSize = 8 << 10
	// DefaultLevel is the deflater's level (klauspost/compress/flate).
	DefaultLevel = 6
	// chunkSize bounds the plaintext a Writer buffers before compressing
	// part of a long burst: just under the window that klauspost's fast
	// levels encode at once, so that one chunk is one encoding pass.
	chunkSize = 64<<10 - 1
	// minStateful is the smallest burst worth a stateful deflater (whose
	// priming re-encodes the dictionary): smaller ones, when no deflater
	// is held, are compressed statelessly.
	minStateful = 512
)

var (
	chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}
	outPool   = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	huffPool  sync.Pool // of *flate.Writer at HuffmanOnly
)

// Compressors is a pool of stateful deflaters of one level shared by many
// Writers, with a bound on how many are lent out at once. A deflater holds
// 0.8-1.4 MB (1.06 MB at level 6); a Writer that finds none available
// compresses its burst statelessly (flate.StatelessDeflate, about level 1
// with an 8 KiB window) instead, which produces an equally valid stream.
type Compressors struct {
	level int
	pool  sync.Pool
	sem   chan struct{} // nil: no bound
	lent  atomic.Int64
}

// NewCompressors returns a pool of deflaters at level (1-9; 0 selects
// DefaultLevel) of which at most max (0: no bound) are lent out at once.
func NewCompressors(level, max int) (*Compressors, error) {
	if level == 0 {
		level = DefaultLevel
	}
	if level < 1 || level > 9 {
		return nil, fmt.Errorf("deflate: level %d: want 1-9", level)
	}
	c := &Compressors{level: level}
	if max > 0 {
		c.sem = make(chan struct{}, max)
	}
	return c, nil
}

var defaultCompressors, _ = NewCompressors(DefaultLevel, 0)

// Level returns the deflaters' level.
func (c *Compressors) Level() int { return c.level }

// InUse returns how many deflaters are lent out now.
func (c *Compressors) InUse() int { return int(c.lent.Load()) }

// get lends a deflater primed with dict, writing to dst, or returns nil if
// the bound is reached.
func (c *Compressors) get(dst io.Writer, dict []byte) *flate.Writer {
	if c.sem != nil {
		select {
		case c.sem <- struct{}{}:
		default:
			return nil
		}
	}
	c.lent.Add(1)
	fw, _ := c.pool.Get().(*flate.Writer)
	if fw == nil {
		var err error
		if fw, err = flate.NewWriter(dst, c.level); err != nil {
			panic("deflate: " + err.Error()) // the level was checked
		}
		if len(dict) == 0 {
			return fw
		}
	}
	fw.ResetDict(dst, dict)
	return fw
}

func (c *Compressors) put(fw *flate.Writer) {
	fw.ResetDict(nil, nil) // drop references to the writer and dictionary
	c.pool.Put(fw)
	c.lent.Add(-1)
	if c.sem != nil {
		<-c.sem
	}
}

// WriterOptions configure a Writer. The zero value selects the defaults.
type WriterOptions struct {
	// DictSize is how much plaintext the Writer keeps between bursts to
	// prime the next one: 0 selects DefaultDictSize, at most MaxDictSize
	// is used, a negative size keeps none.
	DictSize int
	// Compressors lends the stateful deflaters; nil selects a shared
	// unbounded pool at DefaultLevel.
	Compressors *Compressors
	// Hold keeps a deflater across bursts until Release is called, so
	// that consecutive bursts share the full 32 KiB window. Without it the
	// deflater is given back at the end of every burst.
	Hold bool
}

// Writer compresses a stream burst by burst. Write buffers plaintext and
// compresses it in chunks of up to 64 KiB; Flush compresses everything
// buffered and writes it to the underlying writer as whole deflate blocks
// that end on a byte boundary (a sync flush), so the peer can decode all of
// it at once.
//
// Write and Flush must not be called concurrently with each other; Release
// may be called from any goroutine (it waits while Write or Flush sends).
type Writer struct {
	dst   io.Writer
	comps *Compressors
	hold  bool

	mu         sync.Mutex    // guards the fields below against Release
	dict       []byte        // the last dictSize bytes of plaintext (cap dictSize)
	dictSize   int           //
	buf        *[]byte       // during a burst: plaintext not yet compressed
	fw         *flate.Writer // the lent deflater, or nil
	out        sink          // where fw writes: the current chunk's output
	releaseDue bool          // give fw back at the end of the burst
	err        error

	plain, comp int64 // bytes in and out, for statistics
	huff        int64 // chunks sent Huffman-only
}

// sink is the deflater's output: the pooled buffer of the chunk being
// compressed.
type sink struct{ b *bytes.Buffer }

func (s *sink) Write(p []byte) (int, error) { return s.b.Write(p) }

// NewWriter returns a Writer to dst.
func NewWriter(dst io.Writer, o WriterOptions) *Writer {
	size := o.DictSize
	switch {
	case size == 0:
		size = DefaultDictSize
	case size < 0:
		size = 0
	case size > MaxDictSize:
		size = MaxDictSize
	}
	comps := o.Compressors
	if comps == nil {
		comps = defaultCompressors
	}
	return &Writer{dst: dst, comps: comps, hold: o.Hold, dictSize: size}
}

// Write buffers p for the current burst.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = chunkPool.Get().(*[]byte)
		}
		b := *w.buf
		k := min(len(p), cap(b)-len(b))
		b = append(b, p[:k]...)
		*w.buf = b
		p = p[k:]
		n += k
		if len(b) == cap(b) {
			if err := w.compress(false); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// compress compresses the buffered plaintext and writes it out, ending
// byte-aligned. At the end of a burst (last) the deflater goes back before
// the write, which may block on a slow peer, unless it is held.
func (w *Writer) compress(last bool) error {
	b := *w.buf
	if len(b) == 0 {
		return nil
	}
	out := outPool.Get().(*bytes.Buffer)
	out.Reset()
	w.out.b = out
	if w.fw == nil && (len(b) >= minStateful || len(b) == cap(b)) {
		w.fw = w.comps.get(&w.out, w.dict)
	}
	var err error
	if w.fw == nil {
		err = flate.StatelessDeflate(out, b, false, w.dict)
	} else {
		w.fw.Write(b)
		err = w.fw.Flush()
	}
	if err == nil && len(b) >= 1024 && out.Len() > len(b)-len(b)/8 {
		w.huffmanOnly(b)
		out = w.out.b
	}
	if last && (!w.hold || w.releaseDue) || err != nil {
		w.release()
	}
	if err == nil {
		_, err = w.dst.Write(out.Bytes())
	}
	w.plain += int64(len(b))
	w.comp += int64(out.Len())
	w.out.b = nil
	if out.Cap() <= 4*chunkSize {
		outPool.Put(out)
	}
	w.keepDict(b)
	*w.buf = b[:0]
	if err != nil {
		w.err = err
	}
	return err
}

// huffmanOnly replaces the deflater's output for b, in w.out, with b coded
// Huffman-only if that is smaller. klauspost's fast levels store a block in
// which they find no match at all, although base64 (6 bits of 8 used) codes
// to about 3/4 of its size with a Huffman table alone.
//
// The peer's window includes b whichever was sent, and so does the
// deflater's history, if a deflater made the first version: both versions
// end byte-aligned with a sync marker, so the next block may refer back
// into b either way.
func (w *Writer) huffmanOnly(b []byte) {
	alt := outPool.Get().(*bytes.Buffer)
	alt.Reset()
	hw, _ := huffPool.Get().(*flate.Writer)
	if hw == nil {
		hw, _ = flate.NewWriter(alt, flate.HuffmanOnly)
	} else {
		hw.Reset(alt)
	}
	hw.Write(b)
	err := hw.Flush()
	hw.Reset(nil)
	huffPool.Put(hw)
	if err == nil && alt.Len() < w.out.b.Len() {
		w.out.b, alt = alt, w.out.b
		w.huff++
	}
	outPool.Put(alt)
}

// keepDict appends b to the dictionary, keeping its last dictSize bytes.
func (w *Writer) keepDict(b []byte) {
	if w.dictSize == 0 {
		return
	}
	if w.dict == nil {
		w.dict = make([]byte, 0, w.dictSize)
	}
	if len(b) >= w.dictSize {
		w.dict = append(w.dict[:0], b[len(b)-w.dictSize:]...)
		return
	}
	if drop := len(w.dict) + len(b) - w.dictSize; drop > 0 {
		w.dict = w.dict[:copy(w.dict, w.dict[drop:])]
	}
	w.dict = append(w.dict, b...)
}

// Flush compresses and writes everything buffered, ending the burst. The
// deflater is given back unless the Writer holds it (WriterOptions.Hold)
// and Release has not been called since it was taken.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf == nil {
		return w.err
	}
	err := w.compress(true)
	chunkPool.Put(w.buf)
	w.buf = nil
	if !w.hold || w.releaseDue || err != nil {
		w.release() // if compress had nothing left to do
	}
	return err
}

// Release gives the deflater back to the pool now, or at the end of the
// burst under way, keeping only the dictionary: the owner is about to be
// idle. It may be called from any goroutine.
func (w *Writer) Release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf != nil {
		w.releaseDue = true
		return
	}
	w.release()
}

func (w *Writer) release() {
	w.releaseDue = false
	if w.fw != nil {
		w.comps.put(w.fw)
		w.fw = nil
	}
}

// Close gives back everything the Writer holds; whatever is buffered is
// dropped and later writes fail.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf != nil {
		chunkPool.Put(w.buf)
		w.buf = nil
	}
	w.release()
	w.dict = nil
	if w.err == nil {
		w.err = errWriterClosed
	}
	return nil
}

var errWriterClosed = fmt.Errorf("deflate: writer closed")

// Holding reports whether the Writer holds a deflater now.
func (w *Writer) Holding() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fw != nil
}

// Buffered returns how many bytes of plaintext wait for Flush.
func (w *Writer) Buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf == nil {
		return 0
	}
	return len(*w.buf)
}

// Stats returns the plaintext bytes compressed so far and the compressed
// bytes written for them.
func (w *Writer) Stats() (plain, compressed int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.plain, w.comp
}
