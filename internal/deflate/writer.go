// Package deflate is the raw DEFLATE (RFC 1951) codec behind COMPRESS=DEFLATE
// (RFC 4978), built to cost almost nothing while a connection is idle.
//
// Writer keeps no deflate state between bursts: each burst of output is
// compressed on its own with flate.StatelessDeflate, primed with the last few
// KiB of plaintext already sent as its dictionary, and ends byte-aligned with
// a sync marker. Between bursts only that dictionary (DefaultDictSize) stays
// allocated.
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
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
)

const (
	// DefaultDictSize is how much plaintext a Writer keeps between bursts.
	DefaultDictSize = 2 << 10
	// MaxDictSize is the most StatelessDeflate uses as a dictionary.
	MaxDictSize = 8 << 10
	// chunkSize bounds the plaintext a Writer buffers before compressing
	// part of a long burst.
	chunkSize = 64 << 10
)

var (
	burstPool = sync.Pool{New: func() any { b := make([]byte, 0, MaxDictSize+chunkSize); return &b }}
	outPool   = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// Writer compresses a stream burst by burst. Write buffers plaintext; Flush
// compresses everything buffered and writes it to the underlying writer as
// whole deflate blocks that end on a byte boundary (a sync flush), so the
// peer can decode all of it at once. A long burst is compressed in chunks
// of 64 KiB as it is written.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	dst      io.Writer
	dictSize int
	dict     []byte  // between bursts: the last dictSize bytes of plaintext
	buf      *[]byte // during a burst: dictionary prefix, then pending plaintext
	pre      int     // length of the dictionary prefix in *buf
	err      error

	plain, comp int64 // bytes in and out, for statistics
}

// NewWriter returns a Writer to dst that keeps dictSize bytes of plaintext
// between bursts (0 selects DefaultDictSize; at most MaxDictSize is used;
// a negative size keeps none).
func NewWriter(dst io.Writer, dictSize int) *Writer {
	switch {
	case dictSize == 0:
		dictSize = DefaultDictSize
	case dictSize < 0:
		dictSize = 0
	case dictSize > MaxDictSize:
		dictSize = MaxDictSize
	}
	return &Writer{dst: dst, dictSize: dictSize}
}

// Write buffers p for the current burst.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.begin()
		}
		b := *w.buf
		k := min(len(p), cap(b)-len(b))
		b = append(b, p[:k]...)
		*w.buf = b
		p = p[k:]
		n += k
		if len(b) == cap(b) {
			if err := w.compress(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (w *Writer) begin() {
	w.buf = burstPool.Get().(*[]byte)
	*w.buf = append((*w.buf)[:0], w.dict...)
	w.pre = len(w.dict)
}

// compress compresses the pending plaintext and writes it out. The tail of
// the plaintext stays in the buffer as the dictionary of the next chunk.
func (w *Writer) compress() error {
	b := *w.buf
	if len(b) == w.pre {
		return nil
	}
	out := outPool.Get().(*bytes.Buffer)
	out.Reset()
	err := flate.StatelessDeflate(out, b[w.pre:], false, b[:w.pre])
	if err == nil {
		_, err = w.dst.Write(out.Bytes())
	}
	w.plain += int64(len(b) - w.pre)
	w.comp += int64(out.Len())
	if out.Cap() <= 4*chunkSize {
		outPool.Put(out)
	}
	keep := min(len(b), MaxDictSize)
	copy(b, b[len(b)-keep:])
	*w.buf = b[:keep]
	w.pre = keep
	if err != nil {
		w.err = err
	}
	return err
}

// Flush compresses and writes everything buffered, ending the burst. Only
// the dictionary for the next burst stays allocated.
func (w *Writer) Flush() error {
	if w.buf == nil {
		return w.err
	}
	err := w.compress()
	b := *w.buf
	keep := min(len(b), w.dictSize)
	if w.dict == nil && keep > 0 {
		w.dict = make([]byte, 0, w.dictSize)
	}
	w.dict = append(w.dict[:0], b[len(b)-keep:]...)
	*w.buf = b[:0]
	burstPool.Put(w.buf)
	w.buf = nil
	return err
}

// Buffered returns how many bytes of plaintext wait for Flush.
func (w *Writer) Buffered() int {
	if w.buf == nil {
		return 0
	}
	return len(*w.buf) - w.pre
}

// Stats returns the plaintext bytes compressed so far and the compressed
// bytes written for them.
func (w *Writer) Stats() (plain, compressed int64) { return w.plain, w.comp }
