package bodypart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Source reads a part of one message from the upstream, decoded.
//
// Memory: a part that fits one chunk is read in one FETCH and held; a
// larger one is read as one literal as it arrives, on a connection of its
// own, so a pass over it holds a chunk and the decoders' buffers whatever
// its size. Each call of Decoded starts a new pass.
type Source struct {
	// Convert, when set, takes the data after its
	// Content-Transfer-Encoding is decoded and returns what the reader of
	// Decoded gets, in place of the CRLF step of a text part (CONVERT's
	// charset conversion, which must see the text before line ends are
	// made CRLF, in the target charset).
	Convert func(io.Reader) io.Reader

	ctx   context.Context
	s     *proxy.Session
	uid   uint32
	part  Part
	chunk int
	first []byte // the first chunk, once read
	done  bool   // first holds the whole section
	// closers are the connections of stream, closed by close.
	closers []io.Closer
}

// NewSource returns a Source of part p of message uid of the session's
// selected mailbox, read chunk bytes per upstream FETCH while it fits
// one.
func NewSource(ctx context.Context, s *proxy.Session, uid uint32, p Part, chunk int) *Source {
	return &Source{ctx: ctx, s: s, uid: uid, part: p, chunk: chunk}
}

// Close releases the connections the Source opened.
func (src *Source) Close() {
	for _, c := range src.closers {
		c.Close()
	}
	src.closers = nil
}

// stream opens the section as one literal: a connection of the
// account's own (Account.Dial), the mailbox examined, one UID FETCH
// BODY.PEEK[section] whose literal is read as it arrives. A chunked read
// would cost one FETCH per chunk, and many servers (go-imap's) read the
// whole message for each.
func (src *Source) stream() (*literalStream, error) {
	conn, err := src.s.UpstreamAccount().Dial(src.ctx)
	if err != nil {
		return nil, err
	}
	ls := &literalStream{conn: conn}
	if err := conn.Select(src.ctx, src.s.Mailbox().Name(), true, nil); err != nil {
		ls.Close()
		return nil, err
	}
	tag := conn.NextTag()
	conn.SetDeadline(time.Now().Add(streamTimeout))
	w := conn.Writer()
	fmt.Fprintf(w, "%s UID FETCH %d (BODY.PEEK[%s])\r\n", tag, src.uid, src.part.Section)
	if err := w.Flush(); err != nil {
		ls.Close()
		return nil, err
	}
	r := conn.Reader()
	for {
		conn.SetDeadline(time.Now().Add(streamTimeout))
		line, lit, err := r.ReadLine()
		if err != nil {
			ls.Close()
			return nil, err
		}
		head, err := imapcodec.ParseResponseHead(line)
		if err != nil {
			ls.Close()
			return nil, err
		}
		if head.Tag == tag {
			ls.Close()
			if head.Name != "OK" {
				return nil, fmt.Errorf("UID FETCH %d: %s %s", src.uid, head.Name, head.Text)
			}
			return &literalStream{}, nil // no such message (any more): empty
		}
		if lit == nil {
			continue
		}
		before := strings.ToUpper(string(line[:lit.Start]))
		if head.Tag == "*" && head.Name == "FETCH" && strings.Contains(before, "BODY[") &&
			strings.Contains(before, fmt.Sprintf("UID %d ", src.uid)) {
			ls.r = r.Literal()
			return ls, nil
		}
		if _, err := io.Copy(io.Discard, r.Literal()); err != nil {
			ls.Close()
			return nil, err
		}
	}
}

// streamTimeout bounds each read of a streamed section.
const streamTimeout = time.Minute

// literalStream reads one literal from a connection of its own.
type literalStream struct {
	conn *upstream.Conn
	r    io.Reader
}

func (l *literalStream) Read(p []byte) (int, error) {
	if l.r == nil {
		return 0, io.EOF
	}
	l.conn.SetDeadline(time.Now().Add(streamTimeout))
	return l.r.Read(p)
}

func (l *literalStream) Close() error {
	if l.conn == nil {
		return nil
	}
	err := l.conn.Close()
	l.conn = nil
	return err
}

// Small returns the decoded part when it fits one chunk (inMemory true);
// otherwise the caller streams it with Decoded.
func (src *Source) Small() (data []byte, inMemory bool, err error) {
	if err := src.readFirst(); err != nil {
		return nil, false, err
	}
	if !src.done {
		return nil, false, nil
	}
	r, err := src.Decoded()
	if err != nil {
		return nil, false, err
	}
	data, err = io.ReadAll(r)
	return data, err == nil, err
}

func (src *Source) readFirst() error {
	if src.first != nil || src.done {
		return nil
	}
	cr := &chunkReader{ctx: src.ctx, s: src.s, uid: src.uid, section: src.part.Section, n: src.chunk}
	data, err := cr.fetch()
	if err != nil {
		return err
	}
	src.first, src.done = data, len(data) < src.chunk
	return nil
}

// Decoded returns a reader of the decoded part, from its start. A part
// larger than a chunk is read as one literal on a connection of its own
// (stream), which Close closes.
func (src *Source) Decoded() (io.Reader, error) {
	if err := src.readFirst(); err != nil {
		return nil, err
	}
	cr := &chunkReader{ctx: src.ctx, s: src.s, uid: src.uid, section: src.part.Section, n: src.chunk,
		buf: src.first, off: int64(len(src.first)), eof: src.done}
	if !src.done {
		lr, err := src.stream()
		if err != nil {
			return nil, err
		}
		src.closers = append(src.closers, lr)
		cr = &chunkReader{stream: lr}
	}
	var r io.Reader
	if src.Convert != nil {
		r = src.Convert(decoder(cr, src.part.Enc, false))
	} else {
		r = decoder(cr, src.part.Enc, src.part.Text)
	}
	if !src.part.Header {
		return r, nil
	}
	h, err := src.header()
	if err != nil {
		return nil, err
	}
	return io.MultiReader(bytes.NewReader(h), r), nil
}

// header reads the message's header and sets its
// Content-Transfer-Encoding to binary for the decoded body, in place.
func (src *Source) header() ([]byte, error) {
	cr := &chunkReader{ctx: src.ctx, s: src.s, uid: src.uid, section: "HEADER", n: src.chunk}
	raw, err := cr.fetch()
	if err != nil {
		return nil, err
	}
	if len(raw) >= src.chunk {
		return nil, fmt.Errorf("header of message %d too long", src.uid)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, fmt.Errorf("header of message %d: %w", src.uid, err)
	}
	SetCTE(&h, "binary")
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// SetCTE sets Content-Transfer-Encoding where the field is (Header.Set
// would move it to the top), every other field kept byte for byte; a
// header without one gets it at the end.
func SetCTE(h *textproto.Header, enc string) {
	field := []byte("Content-Transfer-Encoding: " + enc + "\r\n")
	var raws [][]byte
	found := false
	for f := h.Fields(); f.Next(); {
		if strings.EqualFold(f.Key(), "Content-Transfer-Encoding") {
			if !found {
				raws = append(raws, field)
			}
			found = true
			continue
		}
		raw, err := f.Raw()
		if err != nil {
			raw = []byte(f.Key() + ": " + f.Value() + "\r\n")
		}
		raws = append(raws, raw)
	}
	if !found {
		raws = append(raws, field)
	}
	// AddRaw puts a field above those added before it.
	var out textproto.Header
	for i := len(raws) - 1; i >= 0; i-- {
		out.AddRaw(raws[i])
	}
	*h = out
}

// chunkReader reads a section with BODY.PEEK[section]<off.n>, one chunk
// at a time.
type chunkReader struct {
	// stream, when set, is read instead of chunks.
	stream  io.Reader
	ctx     context.Context
	s       *proxy.Session
	uid     uint32
	section string
	n       int
	off     int64
	buf     []byte
	eof     bool
	err     error // the upstream's failure, as opposed to a decoding one
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.stream != nil {
		n, err := r.stream.Read(p)
		if err != nil && err != io.EOF {
			r.err = err
		}
		return n, err
	}
	for len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		data, err := r.fetch()
		if err != nil {
			r.err = err
			return 0, err
		}
		r.buf, r.eof = data, len(data) < r.n
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// fetch reads the chunk at r.off.
func (r *chunkReader) fetch() ([]byte, error) {
	var data []byte
	cmd := fmt.Sprintf("UID FETCH %d (BODY.PEEK[%s]<%d.%d>)", r.uid, r.section, r.off, r.n)
	_, err := r.s.Exec(r.ctx, cmd, func(resp *upstream.Response) {
		if resp.Head.Name != "FETCH" {
			return
		}
		uid, l, ok := FetchList(resp.Segments)
		if !ok || uid != r.uid {
			return
		}
		for i := 0; i+1 < len(l); i += 2 {
			if n, _ := l[i].(imapcodec.Atom); strings.HasPrefix(strings.ToUpper(string(n)), "BODY[") {
				if s, ok := l[i+1].(imapcodec.String); ok {
					data = s.Data
				}
			}
		}
	})
	if err != nil {
		return nil, err
	}
	r.off += int64(len(data))
	return data, nil
}

// decoder decodes r by enc; a text part gets CRLF line ends.
func decoder(cr *chunkReader, enc string, text bool) io.Reader {
	var r io.Reader = cr
	switch enc {
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, &b64Filter{r: cr})
	case "quoted-printable":
		r = quotedprintable.NewReader(cr)
	}
	r = lenient{r, cr}
	if text {
		r = &crlfReader{r: r}
	}
	return r
}

// lenient ends a decoded stream at its first decoding error, as mail
// readers do with damaged parts; a failure of the upstream stays an error.
// Both passes over a part stop at the same byte, so the counted size is
// the sent one.
type lenient struct {
	r  io.Reader
	cr *chunkReader
}

func (l lenient) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err != nil && err != io.EOF && l.cr.err == nil {
		err = io.EOF
	}
	return n, err
}

// b64Filter drops what is not of the base64 alphabet (line breaks,
// spaces), which encoding/base64 would reject.
type b64Filter struct{ r io.Reader }

func (f *b64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// crlfReader turns a bare LF into CRLF.
type crlfReader struct {
	r       io.Reader
	prevCR  bool
	pending []byte
	buf     [4096]byte
	err     error
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.buf[:])
		c.err = err
		out := c.pending[:0]
		for _, b := range c.buf[:n] {
			if b == '\n' && !c.prevCR {
				out = append(out, '\r')
			}
			out = append(out, b)
			c.prevCR = b == '\r'
		}
		c.pending = out
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}
