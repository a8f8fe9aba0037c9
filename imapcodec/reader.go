package imapcodec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
)

// LiteralHeader describes the literal announced at the end of a line.
type LiteralHeader struct {
	// Size is the number of octets that follow the line's CRLF.
	Size int64
	// NonSync is true for "{n+}" (RFC 7888 LITERAL+ and LITERAL-): the sender
	// does not wait for a continuation request.
	NonSync bool
	// Binary is true for "~{n}" (RFC 3516 literal8).
	Binary bool
	// Start is the offset in the line where the header ("{" or "~") begins.
	Start int
}

// Format appends the header's wire form ("~{n+}") to b.
func (h LiteralHeader) Format(b []byte) []byte {
	if h.Binary {
		b = append(b, '~')
	}
	b = append(b, '{')
	b = strconv.AppendInt(b, h.Size, 10)
	if h.NonSync {
		b = append(b, '+')
	}
	return append(b, '}')
}

// Reader reads IMAP lines and literals from a byte stream.
//
// After ReadLine returns a line that ends in a literal header, the literal's
// bytes are available through Literal (or ReadLiteral); whatever part of the
// literal the caller leaves unread is skipped by the next ReadLine.
//
// The read buffer (4 KiB) comes from a pool shared by all Readers when the
// first read needs it. A Reader that will wait a long time for its next
// input (a session between commands) can give it back with Release.
type Reader struct {
	br     *bufio.Reader // nil while the Reader holds no buffer
	src    source        // what br reads from
	lim    Limits
	remain int64 // unread bytes of the current literal
	line   []byte
	// partial is set when a read deadline interrupted a line: the bytes
	// read so far are kept and the next ReadLine continues the line, so
	// deadlines can be used to wake a blocked reader without losing data.
	partial bool
	// released is set by Release: the next read waits with first instead
	// of a pooled buffer.
	released bool
	first    [firstReadSize]byte
}

// bufSize is the size of a Reader's buffer.
const bufSize = 4096

// firstReadSize is the buffer a released Reader reads into while it waits:
// a phone's idle commands (DONE, IDLE, NOOP) fit; a longer command costs one
// more read, which finds the rest already there.
const firstReadSize = 64

// maxKeptLine is the largest line buffer Release keeps.
const maxKeptLine = 256

// bufPool holds the buffers of Readers that do not need one now.
var bufPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}

// source is the stream under a Reader's buffer: first what a released
// Reader's first read got (and that read's error), then r.
type source struct {
	r       io.Reader
	pending []byte
	err     error
}

func (s *source) Read(p []byte) (int, error) {
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	if err := s.err; err != nil {
		s.err = nil
		return 0, err
	}
	return s.r.Read(p)
}

// NewReader returns a Reader over r with the given limits.
func NewReader(r io.Reader, lim Limits) *Reader {
	lim = lim.WithDefaults()
	return &Reader{src: source{r: r}, lim: lim}
}

// buf returns the Reader's buffer, taking one from the pool if it holds
// none. A released Reader first waits for input with its small buffer; if
// that read fails (a read deadline, the end of the stream) without data,
// the error is returned and the Reader stays without a buffer.
func (r *Reader) buf() (*bufio.Reader, error) {
	if r.br != nil {
		return r.br, nil
	}
	if r.released {
		if len(r.src.pending) == 0 && r.src.err == nil { // else Wait has read
			n, err := r.src.Read(r.first[:])
			if n == 0 && err != nil {
				return nil, err
			}
			r.src.pending, r.src.err = r.first[:n], err
		}
		r.released = false
	}
	r.br = bufPool.Get().(*bufio.Reader)
	r.br.Reset(&r.src)
	return r.br, nil
}

// Release gives the Reader's buffer back to the pool if nothing is
// buffered, so that a Reader that waits a long time for input holds only a
// few bytes: the next read waits with a small buffer of the Reader's own
// and takes a pooled buffer again once input arrives. It also drops a line
// buffer grown by a long line. A line interrupted by a read deadline is
// kept (see ReadLine), and so is the state of the current literal. Release
// does nothing if bytes are buffered.
//
// An error the underlying stream returned together with data and not yet
// reported is dropped; a network connection reports it again on the next
// read (a closed connection, a deadline in the past).
func (r *Reader) Release() {
	if r.br == nil || r.br.Buffered() > 0 || len(r.src.pending) > 0 || r.src.err != nil {
		return
	}
	r.br.Reset(nil)
	bufPool.Put(r.br)
	r.br = nil
	r.released = true
	if !r.partial && cap(r.line) > maxKeptLine {
		r.line = nil
	}
}

// Wait blocks until input arrives, without taking a pooled buffer: a
// Reader that holds none (released, or not read from yet) reads into its
// few bytes of its own, and keeps what came for the next ReadLine. It
// returns the read's error when nothing came; an error that came with data
// is reported once the data has been read (by Wait or a read). A Reader
// holding a buffer waits in it. Wait returns nil only with input buffered.
//
// Wait is for a goroutine whose only work is to wait on a connection that
// may stay quiet for a long time (a hub watcher in IDLE): it holds the
// connection's few bytes and a stack barely deeper than the socket read.
func (r *Reader) Wait() error {
	if r.Buffered() > 0 {
		return nil
	}
	if err := r.src.err; err != nil {
		// It came with data that has been read since: its turn now.
		r.src.err = nil
		return err
	}
	if r.br != nil {
		_, err := r.br.Peek(1)
		return err
	}
	n, err := r.src.Read(r.first[:])
	if n == 0 {
		return err
	}
	r.src.pending, r.src.err = r.first[:n], err
	return nil
}

// Limits returns the limits in force.
func (r *Reader) Limits() Limits { return r.lim }

// Buffered returns how many bytes have been read from the underlying stream
// but not yet consumed. The STARTTLS handling uses it to detect (and discard)
// plaintext pipelined behind the STARTTLS command.
func (r *Reader) Buffered() int {
	n := len(r.src.pending)
	if r.br != nil {
		n += r.br.Buffered()
	}
	return n
}

// ReadLine reads one line of text and returns it without its line ending. If
// the line ends in a literal header, lit describes it and the header is still
// part of line (at lit.Start). The returned slice is valid until the next call.
//
// A bare LF is accepted as a line ending, as most servers do.
func (r *Reader) ReadLine() (line []byte, lit *LiteralHeader, err error) {
	for r.remain > 0 {
		// Account for what was skipped even on error, so that a read
		// deadline interrupting the skip does not skip those bytes twice.
		br, err := r.buf()
		if err == nil {
			var n int
			n, err = br.Discard(int(min(r.remain, int64(^uint(0)>>1))))
			r.remain -= int64(n)
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the stream ended inside the literal
			}
			return nil, nil, err
		}
	}
	if !r.partial {
		r.line = r.line[:0]
	}
	r.partial = false
	for {
		var chunk []byte
		br, err := r.buf()
		if err == nil {
			chunk, err = br.ReadSlice('\n')
		}
		if len(r.line)+len(chunk) > r.lim.MaxLine+2 {
			return nil, nil, fmt.Errorf("imapcodec: %w (limit %d bytes)", ErrLineTooLong, r.lim.MaxLine)
		}
		r.line = append(r.line, chunk...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(r.line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			r.partial = true
		}
		return nil, nil, err
	}
	line = r.line[:len(r.line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > r.lim.MaxLine {
		return nil, nil, fmt.Errorf("imapcodec: %w (limit %d bytes)", ErrLineTooLong, r.lim.MaxLine)
	}
	h, ok, err := parseLiteralHeader(line)
	if err != nil {
		return line, nil, err
	}
	if !ok {
		return line, nil, nil
	}
	r.remain = h.Size
	if h.Size > r.lim.MaxLiteral {
		// The literal is pending as any other: the next ReadLine skips
		// its bytes (a non-synchronising literal the peer sends anyway),
		// and CancelLiteral forgets a synchronising one it will not send.
		// So a caller may refuse the command and go on.
		return line, &h, fmt.Errorf("imapcodec: %w: %d bytes announced, limit %d", ErrLiteralTooLarge, h.Size, r.lim.MaxLiteral)
	}
	return line, &h, nil
}

// parseLiteralHeader recognises "{n}", "{n+}" and "~{n}" at the end of line.
func parseLiteralHeader(line []byte) (LiteralHeader, bool, error) {
	n := len(line)
	if n < 3 || line[n-1] != '}' {
		return LiteralHeader{}, false, nil
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return LiteralHeader{}, false, nil
	}
	digits := line[open+1 : n-1]
	var h LiteralHeader
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		h.NonSync = true
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 {
		return LiteralHeader{}, false, nil
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return LiteralHeader{}, false, nil
		}
	}
	if len(digits) > 18 {
		return LiteralHeader{}, false, fmt.Errorf("imapcodec: %w: literal size %q out of range", ErrLiteralTooLarge, digits)
	}
	size, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return LiteralHeader{}, false, fmt.Errorf("imapcodec: %w: bad literal size %q", ErrSyntax, digits)
	}
	h.Size = size
	h.Start = open
	if open > 0 && line[open-1] == '~' {
		h.Binary = true
		h.Start = open - 1
	}
	return h, true, nil
}

// Literal returns a reader for the unread rest of the current literal. It
// returns io.EOF at the literal's end and io.ErrUnexpectedEOF if the stream
// ends early.
func (r *Reader) Literal() io.Reader { return (*literalReader)(r) }

type literalReader Reader

func (lr *literalReader) Read(p []byte) (int, error) {
	r := (*Reader)(lr)
	if r.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	br, err := r.buf()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	n, err := br.Read(p)
	r.remain -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// BufferedLiteral returns how many bytes of the current literal the Reader
// already holds: the part that WriteBufferedLiteral writes and that must
// reach the destination before anything SpliceLiteral moves.
func (r *Reader) BufferedLiteral() int64 {
	return min(int64(r.Buffered()), r.remain)
}

// WriteBufferedLiteral writes the bytes of the current literal that the
// Reader already holds (BufferedLiteral) to w straight from its buffer,
// and consumes them. After it, nothing of the literal is buffered and the
// rest may be moved by SpliceLiteral.
func (r *Reader) WriteBufferedLiteral(w io.Writer) (int64, error) {
	var written int64
	for r.remain > 0 && r.Buffered() > 0 {
		// The stream's order: what br holds, then what a released
		// Reader's first read got and br has not taken yet.
		var chunk []byte
		if r.br != nil && r.br.Buffered() > 0 {
			chunk, _ = r.br.Peek(int(min(int64(r.br.Buffered()), r.remain)))
			r.br.Discard(len(chunk)) // Peek's bytes stay valid until the next read
		} else {
			chunk = r.src.pending[:min(int64(len(r.src.pending)), r.remain)]
			r.src.pending = r.src.pending[len(chunk):]
		}
		r.remain -= int64(len(chunk))
		n, err := w.Write(chunk)
		written += int64(n)
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// Splicer is what SpliceLiteral can move a literal into: a TCP
// connection, whose ReadFrom has Linux move the bytes from another TCP
// connection with splice(2), without copying them into the process.
type Splicer interface {
	ReadFrom(io.Reader) (int64, error)
}

// CanSplice reports whether the Reader reads straight from a TCP
// connection, with no layer (TLS, COMPRESS) in between, so that
// SpliceLiteral may take the current literal's bytes from the connection
// itself. It is cheap: a type check.
func (r *Reader) CanSplice() bool {
	_, ok := r.src.r.(*net.TCPConn)
	return ok
}

// SpliceLiteral moves up to n bytes of the current literal from the
// Reader's TCP connection to dst with dst.ReadFrom (for a *net.TCPConn
// dst: splice(2) on Linux, a plain copy elsewhere), bypassing the
// Reader's buffer. Whatever of the literal is buffered must have been
// written first (WriteBufferedLiteral); otherwise, or when CanSplice is
// false, it returns an error and moves nothing. The caller sets the
// deadlines of both connections before each call and calls again until
// LiteralRemaining is 0. A failure leaves the stream in an unknown place
// (bytes may have been read and not written): the connection cannot be
// used for IMAP any more.
func (r *Reader) SpliceLiteral(dst Splicer, n int64) (int64, error) {
	if r.remain <= 0 {
		return 0, io.EOF
	}
	tc, ok := r.src.r.(*net.TCPConn)
	if !ok {
		return 0, errors.New("imapcodec: SpliceLiteral: the Reader does not read straight from a TCP connection")
	}
	if r.Buffered() > 0 || r.src.err != nil {
		return 0, errors.New("imapcodec: SpliceLiteral: part of the literal is buffered")
	}
	lr := &io.LimitedReader{R: tc, N: min(n, r.remain)}
	want := lr.N
	moved, err := dst.ReadFrom(lr)
	r.remain -= moved
	if err == nil && moved < want {
		err = io.ErrUnexpectedEOF // the stream ended inside the literal
	}
	return moved, err
}

// ReadLiteral reads the whole current literal into memory. The caller must
// have checked its size against its own limit.
func (r *Reader) ReadLiteral() ([]byte, error) {
	buf := make([]byte, r.remain)
	_, err := io.ReadFull(r.Literal(), buf)
	if err != nil {
		return nil, err
	}
	return buf, nil
}

// TakeBuffered returns the bytes read from the underlying stream but not yet
// consumed, and forgets them. A protocol layer that starts mid-stream
// (COMPRESS) must decode them as the first bytes of the new layer.
func (r *Reader) TakeBuffered() []byte {
	if r.Buffered() == 0 {
		return nil
	}
	n := r.br.Buffered() // a Reader with bytes buffered holds its buffer
	b, _ := r.br.Peek(n)
	b = append([]byte(nil), b...)
	r.br.Discard(n)
	b = append(b, r.src.pending...)
	r.src.pending = nil
	return b
}

// PeekLine returns the next line, without its line ending, if all of it is
// already buffered and it ends in no literal header, without consuming it
// and without reading from the underlying stream; ok is false otherwise.
// The slice is the Reader's buffer: valid until the next read. A proxy that
// passes a client's pipelined commands on before their turn looks at the
// next one with it (proxy/ahead.go) and then reads it with ReadLine.
func (r *Reader) PeekLine() (line []byte, ok bool) {
	if r.remain > 0 || r.partial || r.br == nil {
		return nil, false
	}
	n := r.br.Buffered()
	if n == 0 {
		return nil, false
	}
	b, _ := r.br.Peek(n)
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, false
	}
	line = b[:i]
	if k := len(line); k > 0 && line[k-1] == '\r' {
		line = line[:k-1]
	}
	if len(line) > r.lim.MaxLine {
		return nil, false // ReadLine refuses it
	}
	if _, lit, _ := parseLiteralHeader(line); lit {
		return nil, false
	}
	return line, true
}

// Fill reads once from the underlying stream into the Reader's buffer,
// behind what it holds, if there is room: for a caller that knows input
// is waiting (the read would wait otherwise) and wants to look at it with
// PeekLine. An error of the stream is left for the next read to report.
func (r *Reader) Fill() {
	if r.br == nil || r.remain > 0 {
		return
	}
	if n := r.br.Buffered(); n < r.br.Size() {
		r.br.Peek(n + 1)
	}
}

// Peek returns up to n bytes that can be read next, reading from the
// underlying stream if nothing is buffered. With a read deadline in the past
// it tells, without waiting, whether the peer sent something (a timeout
// error means nothing arrived; io.EOF that the peer closed).
func (r *Reader) Peek(n int) ([]byte, error) {
	br, err := r.buf()
	if err != nil {
		return nil, err
	}
	if b := br.Buffered(); b > 0 {
		return br.Peek(min(n, b))
	}
	if _, err := br.Peek(1); err != nil {
		return nil, err
	}
	return br.Peek(min(n, br.Buffered()))
}

// CancelLiteral forgets the current literal without reading it: for a
// synchronising literal that was refused, the peer never sends its bytes.
func (r *Reader) CancelLiteral() { r.remain = 0 }

// LiteralRemaining returns how many bytes of the current literal are unread.
func (r *Reader) LiteralRemaining() int64 { return r.remain }

// A Segment is one line of a command or response plus the literal that ends
// it, if any. A whole command or response is a sequence of segments of which
// only the last has no literal.
type Segment struct {
	// Text is the line without its CRLF; a literal header, if any, has been
	// removed (see Literal).
	Text []byte
	// Literal is the announced literal, nil for the last segment.
	Literal *LiteralHeader
	// Data holds the literal's bytes when it was read into memory.
	Data []byte
}

// ContinueFunc is called by ReadSegments before a synchronising literal is
// read, so the caller can send its continuation request ("+ ...") or refuse
// the literal by returning an error.
type ContinueFunc func(h LiteralHeader) error

// ReadSegments reads a whole command or response into memory, literals
// included, refusing literals larger than Limits.MaxInlineLiteral with an
// error wrapping ErrLiteralTooLarge. cont is called before each synchronising
// literal; it may be nil.
func (r *Reader) ReadSegments(cont ContinueFunc) ([]Segment, error) {
	var segs []Segment
	total := 0
	for {
		line, lit, err := r.ReadLine()
		if err != nil {
			return segs, err
		}
		total += len(line)
		if total > r.lim.MaxLine*4 {
			return segs, fmt.Errorf("imapcodec: %w (command of more than %d bytes of text)", ErrLineTooLong, r.lim.MaxLine*4)
		}
		if lit == nil {
			segs = append(segs, Segment{Text: bytes.Clone(line)})
			return segs, nil
		}
		seg := Segment{Text: bytes.Clone(line[:lit.Start]), Literal: lit}
		segs = append(segs, seg)
		if lit.Size > r.lim.MaxInlineLiteral {
			return segs, fmt.Errorf("imapcodec: %w: %d bytes, limit %d", ErrLiteralTooLarge, lit.Size, r.lim.MaxInlineLiteral)
		}
		if !lit.NonSync && cont != nil {
			if err := cont(*lit); err != nil {
				return segs, err
			}
		}
		data, err := r.ReadLiteral()
		if err != nil {
			return segs, err
		}
		segs[len(segs)-1].Data = data
	}
}

// AppendSegments appends the wire form of segs to b, with each literal's
// header in its original form and CRLF line endings.
func AppendSegments(b []byte, segs []Segment) []byte {
	for _, s := range segs {
		b = append(b, s.Text...)
		if s.Literal != nil {
			b = s.Literal.Format(b)
			b = append(b, '\r', '\n')
			b = append(b, s.Data...)
		}
	}
	return append(b, '\r', '\n')
}
