package deflate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
)

const (
	windowSize = 32 << 10 // the deflate window: how far back a peer may refer
	inBufSize  = 16 << 10 // compressed input buffer while inflating
	// maxCarry bounds the compressed bytes of one block kept so that a read
	// interrupted inside the block can be resumed. Blocks are rarely larger.
	maxCarry = 256 << 10
)

var (
	inPool    = sync.Pool{New: func() any { b := make([]byte, inBufSize); return &b }}
	winPool   = sync.Pool{New: func() any { b := make([]byte, 0, windowSize); return &b }}
	plainPool sync.Pool // of flate readers for the stored windows
)

// Errors reported by Reader. Each one ends the stream for good.
var (
	// ErrZlibHeader means the stream starts with a zlib (RFC 1950) header
	// where raw deflate (RFC 1951) was expected.
	ErrZlibHeader = errors.New("deflate: stream starts with a zlib header, not raw deflate")
	// ErrStreamLost means a read was interrupted (a deadline) inside a
	// deflate block too large to keep, so the decoder's state is gone.
	ErrStreamLost = errors.New("deflate: read interrupted inside an oversized deflate block; stream state lost")
)

// CorruptError reports input that is not valid raw deflate.
type CorruptError struct {
	Offset int64 // compressed bytes read before the fault, about
	Err    error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("deflate: corrupt input near offset %d: %v", e.Offset, e.Err)
}
func (e *CorruptError) Unwrap() error { return e.Err }

// errPark is handed to the decoder to make it give up when it wants input
// that has not arrived and the stream can be resumed later.
var errPark = errors.New("deflate: parked")

// Reader inflates a raw deflate stream, holding the inflater (about 70 KiB
// with its window) only while compressed data flows; see the package
// documentation. A Reader is not safe for concurrent use.
//
// Read errors from the source are passed on. A deadline that expires while
// the reader waits for input loses nothing, and the next Read carries on: a
// new decoder resumes from the last block boundary, decodes again what the
// old one had returned of the current block and drops it. (This needs the
// compressed bytes of the current block; for a block larger than 256 KiB a
// deadline inside it ends the stream with ErrStreamLost.)
type Reader struct {
	src io.Reader

	// The checkpoint: the last block boundary the decoder reported. A new
	// decoder can start there, given the window at that point and the
	// compressed bytes from it on.
	cpComp int64 // compressed offset of the boundary (the byte it is in)
	cpBit  uint8 // bits of that byte that belong to the previous block
	cpUnc  int64 // plaintext produced up to the boundary
	drift  int64 // bits the decoder's offsets run ahead, see onBlockEnd

	// While parked (no decoder): the window, compressed, and its length;
	// carry holds the compressed bytes from cpComp on that were already
	// received.
	hz     []byte
	winLen int
	carry  []byte

	// While active.
	fr   io.ReadCloser
	win  *[]byte // window at the checkpoint, copied at every block end
	in   *[]byte // compressed input; (*in)[0] is at stream offset base
	base int64
	pos  int
	end  int
	seen int64 // stream offset up to which a decoder has consumed input

	produced int64 // plaintext returned so far
	skip     int64 // plaintext a resumed decoder repeats, to be dropped

	// failed is the error the source handed the decoder (which keeps it
	// for good); failOK tells whether the stream can resume from the
	// checkpoint.
	failed error
	failOK bool

	zchecked bool
	err      error

	// ready holds plaintext a speculative decode proved complete (see
	// speculate), served before anything else; specEnd is the stream
	// offset up to which the last speculation looked.
	ready    []byte
	specEnd  int64
	specCp   int64 // block (checkpoint) that specWork counts for
	specWork int64

	wakes   int64
	specs   int64
	holding atomic.Bool // fr != nil, readable from any goroutine
}

// NewReader returns a Reader of the raw deflate stream in src. pending holds
// bytes of the stream already read from src (they come first).
func NewReader(src io.Reader, pending []byte) *Reader {
	r := &Reader{src: src}
	if len(pending) > 0 {
		r.carry = append([]byte(nil), pending...)
	}
	return r
}

// Active reports whether the reader holds an inflater right now. It is safe
// to call from any goroutine.
func (r *Reader) Active() bool { return r.holding.Load() }

// Stats returns the compressed bytes consumed, the plaintext produced and
// how many times an inflater was built.
func (r *Reader) Stats() (compressed, plain, inflaters int64) {
	c := r.seen
	if r.fr != nil {
		c = max(c, r.base+int64(r.pos))
	}
	return c, r.produced, r.wakes
}

// Read reads plaintext.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(r.ready) > 0 {
			n := copy(p, r.ready)
			r.ready = r.ready[n:]
			if len(r.ready) == 0 {
				r.ready = nil
			}
			return n, nil
		}
		if r.fr == nil {
			var got []byte
			if r.cpComp+int64(len(r.carry)) <= r.seen {
				// Everything received has been decoded: wait for the
				// peer without holding a decoder. The compressed bytes
				// land in p first; Read may use all of p as scratch.
				q := p[:min(len(p), inBufSize)]
				n, err := r.src.Read(q)
				if n == 0 {
					if err == nil {
						continue
					}
					if err == io.EOF && len(r.carry) > 0 {
						err = io.ErrUnexpectedEOF
					}
					return 0, err
				}
				got = q[:n]
			}
			if err := r.resume(got); err != nil {
				r.close()
				r.err = err
				return 0, err
			}
		}
		n, err := r.fr.Read(p)
		if cause := r.failed; cause != nil {
			// The source failed the decoder; whatever it returned now is
			// what it had decoded past the checkpoint.
			r.failed = nil
			if r.failOK {
				r.park()
				if cause == errPark {
					continue
				}
				return 0, cause
			}
			r.close()
			switch {
			case isTimeout(cause):
				r.err = ErrStreamLost
			case cause == io.EOF:
				r.err = io.ErrUnexpectedEOF
			default:
				r.err = cause
			}
			return 0, r.err
		}
		if r.skip > 0 && n > 0 {
			k := int(min(r.skip, int64(n)))
			copy(p, p[k:n])
			n -= k
			r.skip -= int64(k)
		}
		r.produced += int64(n)
		switch {
		case err == nil:
			if n > 0 {
				return n, nil
			}
		case err == io.EOF:
			// A final block: the peer ended the compressed stream.
			r.close()
			r.err = io.EOF
			if n > 0 {
				return n, nil
			}
			return 0, io.EOF
		default:
			r.err = &CorruptError{Offset: r.base + int64(r.pos), Err: err}
			r.close()
			return 0, r.err
		}
	}
}

// resume builds a decoder at the checkpoint, fed with the carried bytes and
// then got.
func (r *Reader) resume(got []byte) error {
	r.in = inPool.Get().(*[]byte)
	if need := len(r.carry) + len(got); need > len(*r.in) {
		inPool.Put(r.in)
		b := make([]byte, need+inBufSize)
		r.in = &b
	}
	buf := *r.in
	r.base = r.cpComp
	r.pos = 0
	r.end = copy(buf, r.carry)
	r.end += copy(buf[r.end:], got)
	r.carry = r.carry[:0]
	if err := r.zcheck(); err != nil {
		return err
	}
	r.win = winPool.Get().(*[]byte)
	w := (*r.win)[:0]
	if r.winLen > 0 {
		var err error
		if w, err = inflateWindow(w, r.hz, r.winLen); err != nil {
			return fmt.Errorf("deflate: stored window: %w", err)
		}
	}
	*r.win = w
	r.wakes++
	r.drift = 0
	r.holding.Store(true)
	r.fr = flate.NewReaderOpts((*source)(r),
		flate.WithPartialBlock(),
		flate.WithEobCallback(r.onBlockEnd),
		flate.WithResumeFrom(flate.InflateCheckpoint{
			UncompressedOffset: r.cpUnc,
			CompressedOffset:   r.cpComp,
			BitOffset:          r.cpBit,
			Window:             w,
		}))
	return nil
}

// onBlockEnd records each block boundary as the new checkpoint.
//
// The decoder's compressed offset runs ahead of the truth after a stored
// block that begins with bytes it had already read ahead (klauspost/compress
// v1.20.4 counts those bytes twice). A stored block ends with no bits read
// ahead, so a reported position beyond the bytes actually consumed is
// exactly that excess, which is then subtracted from every later report.
func (r *Reader) onBlockEnd(cp flate.InflateCheckpoint) {
	consumed := (r.base + int64(r.pos)) * 8
	bit := cp.CompressedOffset*8 + int64(cp.BitOffset) - r.drift
	if bit > consumed {
		r.drift += bit - consumed
		bit = consumed
	}
	r.cpComp, r.cpBit, r.cpUnc = bit/8, uint8(bit%8), cp.UncompressedOffset
	*r.win = append((*r.win)[:0], cp.Window...)
}

// park drops the decoder, keeping what a new one needs to carry on from the
// checkpoint: the window (compressed) and the bytes received since.
func (r *Reader) park() {
	buf := *r.in
	r.seen = max(r.seen, r.base+int64(r.end))
	r.carry = append(r.carry[:0], buf[r.cpComp-r.base:r.end]...)
	if len(r.carry) == 0 && cap(r.carry) > 64 {
		r.carry = nil
	}
	r.skip = r.produced - r.cpUnc
	w := *r.win
	r.winLen = len(w)
	r.hz = compressWindow(r.hz[:0], w)
	r.release()
}

// release returns the decoder's buffers.
func (r *Reader) release() {
	r.fr = nil
	r.holding.Store(false)
	if r.win != nil {
		*r.win = (*r.win)[:0]
		winPool.Put(r.win)
		r.win = nil
	}
	if r.in != nil {
		if len(*r.in) == inBufSize {
			inPool.Put(r.in)
		}
		r.in = nil
	}
}

func (r *Reader) close() {
	if r.in != nil {
		r.seen = max(r.seen, r.base+int64(r.pos))
	}
	r.release()
	r.hz, r.carry = nil, nil
}

// Close releases the reader's buffers; later reads fail.
func (r *Reader) Close() error {
	r.close()
	if r.err == nil {
		r.err = errors.New("deflate: reader closed")
	}
	return nil
}

// zcheck reports a zlib header at the start of the stream.
func (r *Reader) zcheck() error {
	if r.zchecked || r.in == nil || r.base != 0 || r.end < 2 {
		return nil
	}
	r.zchecked = true
	b := *r.in
	// RFC 1950: CM 8, CINFO <= 7, and FCHECK makes CMF*256+FLG a
	// multiple of 31. As raw deflate such a first byte would start a
	// stored block with non-zero padding bits, which no encoder writes.
	if b[0]&0x0f == 8 && b[0]>>4 <= 7 && (uint(b[0])<<8|uint(b[1]))%31 == 0 {
		return ErrZlibHeader
	}
	return nil
}

// source is the decoder's view of the compressed input.
type source Reader

func (s *source) ReadByte() (byte, error) {
	r := (*Reader)(s)
	for r.pos == r.end {
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	c := (*r.in)[r.pos]
	r.pos++
	return c, nil
}

func (s *source) Read(p []byte) (int, error) {
	r := (*Reader)(s)
	for r.pos == r.end {
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*r.in)[r.pos:r.end])
	r.pos += n
	return n, nil
}

// fill reads more compressed input for the decoder, or makes it stop (with
// errPark) when it sits at a block boundary with nothing new to decode.
func (r *Reader) fill() error {
	buf := *r.in
	cpIdx := r.cpComp - r.base // where the checkpoint is in buf; < 0 if gone
	if cpIdx >= 0 && r.produced == r.cpUnc && int64(r.pos)-cpIdx <= 1 {
		// The decoder has consumed everything up to the block boundary
		// (and at most the one byte it ends in, whose remaining bits are
		// too few to decode any symbol), and returned everything it
		// decoded. Nothing is lost by dropping it here.
		r.failed, r.failOK = errPark, true
		return errPark
	}
	if cpIdx >= 0 && r.base+int64(r.end) > r.specEnd && r.speculate(buf[cpIdx:r.end]) {
		r.failed, r.failOK = errPark, true
		return errPark
	}
	if r.end == len(buf) {
		// Make room, keeping the bytes from the checkpoint on while the
		// block is not too large.
		keep := r.pos
		if cpIdx >= 0 && r.end-int(cpIdx) < maxCarry {
			keep = int(cpIdx)
		}
		old := r.in
		if keep < len(buf)/4 && len(buf) < maxCarry {
			b := make([]byte, min(2*len(buf), maxCarry))
			r.in = &b
		}
		r.end = copy(*r.in, buf[keep:r.end])
		if r.in != old && len(buf) == inBufSize {
			// Back to the pool only once its bytes are copied out: another
			// connection's reader may take it at once and write over them.
			inPool.Put(old)
		}
		r.base += int64(keep)
		r.pos -= keep
		buf = *r.in
	}
	n, err := r.src.Read(buf[r.end:])
	r.end += n
	if n > 0 {
		if err := r.zcheck(); err != nil {
			r.failed, r.failOK = err, false
			return err
		}
		return nil
	}
	if err == nil {
		return nil
	}
	r.failed, r.failOK = err, r.cpComp >= r.base && err != io.EOF
	return err
}

// Speculation.
//
// The decoder asks for input before it has decoded a block's last symbols:
// klauspost/compress reads up to 10 bits past the end-of-block code of a
// non-final dynamic block. After a zlib Z_PARTIAL_FLUSH (mbsync uses it)
// those bits are not sent until the peer's next command, so the decoder
// would sit on a complete command while the peer waits for the answer.
//
// So when the input runs dry inside a block, a second decoder runs from the
// checkpoint over the bytes received plus zero padding. Every block it ends
// within the real bytes is genuine (a block's symbols depend only on its
// own bits); its plaintext is handed out and the reader parks at the last
// such boundary. Output past that boundary, made from padding, is dropped,
// as is the stalled decoder. If no block ends within the real bytes (the
// peer is simply not done sending), nothing changes.

// Each speculation re-decodes the current block, so it is bounded: in the
// compressed bytes it looks at, in the plaintext it keeps, and in the work
// spent on one block in total (a block that inflates enormously, sent in
// small pieces, would otherwise cost a full decode per piece). A block
// beyond these bounds is only returned once its end has been read, as a
// plain inflater would.
const (
	specPadding      = 8         // zero bytes after the real ones
	maxSpecInput     = 256 << 10 // compressed bytes from the checkpoint
	maxSpecOutput    = 1 << 20   // plaintext kept while looking for a boundary
	maxSpecBlockWork = 16 << 20  // plaintext decoded speculating on one block
)

// speculate looks for block boundaries in real, the compressed bytes from
// the checkpoint on. On success the checkpoint and window are moved to the
// last boundary found and its plaintext is in r.ready.
func (r *Reader) speculate(real []byte) bool {
	r.specEnd = r.base + int64(r.end)
	if r.specCp != r.cpComp {
		r.specCp, r.specWork = r.cpComp, 0
	}
	if len(real) > maxSpecInput || r.specWork > maxSpecBlockWork {
		return false
	}
	r.specs++
	in := make([]byte, len(real)+specPadding)
	copy(in, real)
	br := bytes.NewReader(in)
	realBits := int64(len(real)) * 8
	var (
		found  bool
		cp     flate.InflateCheckpoint
		drift  int64
		win    = winPool.Get().(*[]byte)
		start  = r.cpComp
		outLen int64
	)
	fr := flate.NewReaderOpts(br,
		flate.WithPartialBlock(),
		flate.WithEobCallback(func(c flate.InflateCheckpoint) {
			consumed := (int64(len(in)) - int64(br.Len())) * 8
			bit := (c.CompressedOffset-start)*8 + int64(c.BitOffset) - drift
			if bit > consumed {
				drift += bit - consumed
				bit = consumed
			}
			if bit > realBits {
				return
			}
			found = true
			cp = flate.InflateCheckpoint{UncompressedOffset: c.UncompressedOffset, CompressedOffset: start + bit/8, BitOffset: uint8(bit % 8)}
			*win = append((*win)[:0], c.Window...)
			outLen = c.UncompressedOffset - r.cpUnc
		}),
		flate.WithResumeFrom(flate.InflateCheckpoint{
			UncompressedOffset: r.cpUnc,
			CompressedOffset:   r.cpComp,
			BitOffset:          r.cpBit,
			Window:             *r.win,
		}))
	var out bytes.Buffer
	_, err := io.Copy(&out, io.LimitReader(fr, maxSpecOutput+1))
	_ = err // an error is expected: the padding is not a valid block
	r.specWork += int64(out.Len())
	if !found || outLen > int64(out.Len()) || out.Len() > maxSpecOutput || cp.UncompressedOffset < r.produced {
		*win = (*win)[:0]
		winPool.Put(win)
		return false
	}
	// Hand out what is new, and move the checkpoint.
	if fresh := out.Bytes()[r.produced-r.cpUnc : outLen]; len(fresh) > 0 {
		r.ready = append([]byte(nil), fresh...)
	}
	r.produced = cp.UncompressedOffset
	r.cpComp, r.cpBit, r.cpUnc = cp.CompressedOffset, cp.BitOffset, cp.UncompressedOffset
	old := r.win
	r.win = win
	*old = (*old)[:0]
	winPool.Put(old)
	return true
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// appender is an io.Writer that appends to a slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

// compressWindow appends win, compressed, to dst.
func compressWindow(dst, win []byte) []byte {
	if len(win) == 0 {
		return dst
	}
	a := appender{dst}
	if err := flate.StatelessDeflate(&a, win, false, nil); err != nil {
		panic("deflate: compressing to memory failed: " + err.Error())
	}
	if cap(a.b) > len(a.b)+len(a.b)/4+64 {
		a.b = append([]byte(nil), a.b...)
	}
	return a.b
}

// inflateWindow appends the n bytes of window compressed in hz to dst.
func inflateWindow(dst, hz []byte, n int) ([]byte, error) {
	br := bytes.NewReader(hz)
	fr, _ := plainPool.Get().(io.ReadCloser)
	if fr == nil {
		fr = flate.NewReader(br)
	} else if err := fr.(flate.Resetter).Reset(br, nil); err != nil {
		return dst, err
	}
	dst = dst[:n]
	_, err := io.ReadFull(fr, dst)
	plainPool.Put(fr)
	return dst, err
}
