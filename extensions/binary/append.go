package binary

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// maxMIMEDepth bounds the nesting of multiparts re-encoded.
const maxMIMEDepth = 20

// maxHeaderBytes bounds one header block read while re-encoding: headers
// are the only part of a message held in memory.
const maxHeaderBytes = 256 << 10

// refusal is a tagged answer decided while the command is read.
type refusal struct{ status, code, text string }

// spoolFailed is the refusal of a command whose spool write failed: LIMIT
// when the spools' disk space for the whole process is taken
// (urlfetch.SetSpoolDiskTotal), UNAVAILABLE for a failure of the disk.
func spoolFailed(s *proxy.Session, sp *urlfetch.Spool) *refusal {
	if errors.Is(sp.Err(), urlfetch.ErrSpoolFull) {
		return &refusal{"NO", "LIMIT", "Too many messages are being re-encoded at the moment; try again later."}
	}
	s.Logger().Warn("binary: spool write failed", "err", sp.Err())
	return errUnavailable
}

func (r *refusal) Error() string { return r.text }

var (
	errUnavailable = &refusal{"NO", "UNAVAILABLE", "The message cannot be re-encoded now; try again later."}
	errTooLarge    = errors.New("re-encoded message over the limit")
)

// spooled is one literal of the client's command, in the spool.
type spooled struct {
	off, n int64
	binary bool
}

// serveAppend answers an APPEND whose first message is a literal8 (~{n})
// for an upstream without BINARY: each literal is spooled as it arrives
// (urlfetch.Spool: a file beyond urlfetch.SpoolMemory), each literal8 message is
// re-encoded from the spool into the spool (reencode: two passes, so its
// size is known before the upstream literal starts), and the command goes
// down the chain as a plain APPEND with non-synchronising literals
// (Exchange.Restream), which the relay sends to the upstream, waiting for
// its continuation requests where it lacks LITERAL+.
func (e *Extension) serveAppend(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if lit := x.Segments[0].Literal; lit == nil || !lit.Binary {
		return next(ctx, x)
	}
	maxMsg, maxCmd := s.AppendLimits()
	if e.maxAppend > 0 {
		maxMsg = min(maxMsg, e.maxAppend)
	}
	sp, spErr := urlfetch.NewSpool(e.spoolDir, s.Account())
	if spErr != nil {
		s.Logger().Warn("binary: cannot create a spool file", "err", spErr)
	} else {
		defer sp.Close()
	}
	var lits []spooled
	onLiteral := func(segs []imapcodec.Segment, r io.Reader) error {
		if spErr != nil {
			return errUnavailable
		}
		off := sp.Size()
		n, err := io.Copy(sp, r)
		if sp.Err() != nil {
			return spoolFailed(s, sp)
		}
		if err != nil {
			return err // the client's connection
		}
		lits = append(lits, spooled{off: off, n: n, binary: segs[len(segs)-1].Literal.Binary})
		return nil
	}
	ok, err := x.ReadStreamed(maxMsg, onLiteral)
	if !ok {
		var r *refusal
		if errors.As(err, &r) {
			return x.Reply(r.status, r.code, r.text)
		}
		return err
	}
	if len(x.Segments) > 2 || len(bytes.TrimSpace(x.Segments[1].Text)) > 0 {
		// More follows the first message: a MULTIAPPEND (RFC 3502).
		// Relayed as it is, it would reach an upstream without
		// MULTIAPPEND (where extensions/catenate offers it in the
		// upstream's stead, reading every APPEND but these), which may
		// store the first message and then fail.
		if !s.UpstreamCaps().Has("MULTIAPPEND") {
			return x.Reply("NO", "CANNOT", "Several messages in one APPEND whose first is a literal8 are not supported here; send them one per APPEND.")
		}
	}
	out := make([]spooled, len(lits))
	var total int64
	for i, l := range lits {
		if !l.binary {
			out[i] = l
			total += l.n
			continue
		}
		off := sp.Size()
		err := reencodeFrom(&capWriter{w: sp, n: min(maxMsg, maxCmd-total)}, io.NewSectionReader(sp, l.off, l.n))
		switch {
		case errors.Is(err, errTooLarge):
			return x.Reply("NO", "TOOBIG", fmt.Sprintf("The re-encoded message would exceed the limit of %d bytes.", min(maxMsg, maxCmd)))
		case sp.Err() != nil:
			r := spoolFailed(s, sp)
			return x.Reply(r.status, r.code, r.text)
		case err != nil:
			return x.Reply("NO", "PARSE", "Cannot re-encode the message: "+err.Error()+".")
		}
		out[i] = spooled{off: off, n: sp.Size() - off}
		total += out[i].n
	}
	first, rest := build(x.Segments, out, sp)
	x.Restream(first, rest)
	return next(ctx, x)
}

// build makes the plain APPEND sent upstream from the client's command
// (segs: its text, each literal's header) and its literals' spooled
// replacements: every literal non-synchronising, none a literal8.
func build(segs []imapcodec.Segment, lits []spooled, sp *urlfetch.Spool) (imapcodec.Segment, io.Reader) {
	text := bytes.Clone(segs[0].Text)
	first := imapcodec.Segment{Text: text, Literal: &imapcodec.LiteralHeader{Size: lits[0].n, NonSync: true, Start: len(text)}}
	var rs []io.Reader
	for i, l := range lits {
		rs = append(rs, io.NewSectionReader(sp, l.off, l.n))
		seg := segs[i+1]
		b := bytes.Clone(seg.Text)
		if seg.Literal != nil {
			b = imapcodec.LiteralHeader{Size: lits[i+1].n, NonSync: true}.Format(b)
		}
		rs = append(rs, bytes.NewReader(append(b, '\r', '\n')))
	}
	return first, io.MultiReader(rs...)
}

// capWriter fails once more than n bytes would be written.
type capWriter struct {
	w io.Writer
	n int64
}

func (c *capWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.n {
		return 0, errTooLarge
	}
	n, err := c.w.Write(p)
	c.n -= int64(n)
	return n, err
}

// reencode is reencodeFrom over a message in memory.
func reencode(w io.Writer, msg []byte) error {
	return reencodeFrom(w, bytes.NewReader(msg))
}

// reencodeFrom writes the message src holds with every leaf part that an
// IMAP4rev1 server cannot store as it is (Content-Transfer-Encoding
// binary, or 7bit/8bit data holding NUL, a bare CR or LF, or a line over
// 998 octets, RFC 5322 2.1.1) in base64, and its Content-Transfer-Encoding
// set so. Other parts are copied unchanged; multiparts and message/rfc822
// parts are walked (go-message's textproto reads the headers and
// multiparts). A multipart's preamble and epilogue are dropped.
//
// It streams: the first pass walks the message deciding, leaf by leaf,
// whether to encode it (the header must say so before the body, and
// whether 7bit data is valid is known only at its end); the second walks
// it again writing. Memory is the readers' buffers and one header block
// (at most maxHeaderBytes), whatever the message's size.
func reencodeFrom(w io.Writer, src io.ReadSeeker) error {
	rc := &recoder{}
	if err := rc.message(io.Discard, src); err != nil {
		return err
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	rc.writing = true
	bw := bufio.NewWriter(w)
	if err := rc.message(bw, src); err != nil {
		return err
	}
	return bw.Flush()
}

// recoder walks a message; the first pass (writing false) fills plan, the
// second follows it.
type recoder struct {
	writing bool
	plan    []bool // per leaf that may need encoding, in order: encode it
	next    int
}

func (rc *recoder) message(w io.Writer, src io.Reader) error {
	br := bufio.NewReader(src)
	h, err := readHeader(br)
	if err != nil {
		return err
	}
	origCTE := h.Get("Content-Transfer-Encoding")
	h2, body, err := rc.entity(h, br, 0)
	if err != nil {
		return err
	}
	if h2.Get("Mime-Version") == "" && h2.Get("Content-Transfer-Encoding") == "base64" && origCTE != "base64" {
		h2.Add("MIME-Version", "1.0")
	}
	if err := textproto.WriteHeader(w, h2); err != nil {
		return err
	}
	return body(w)
}

// readHeader reads a header block, up to and with the blank line that
// ends it, of at most maxHeaderBytes, and parses it with go-message's
// textproto (which itself reads without bound).
func readHeader(br *bufio.Reader) (textproto.Header, error) {
	var buf []byte
	start := 0 // where the line being read starts in buf
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxHeaderBytes {
			return textproto.Header{}, errors.New("header too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return textproto.Header{}, err
		}
		if line := string(buf[start:]); line == "\n" || line == "\r\n" {
			break
		}
		start = len(buf)
	}
	return textproto.ReadHeader(bufio.NewReader(bytes.NewReader(buf)))
}

// entity returns the header an entity is written with and what writes its
// body, reading the body only when that is called.
func (rc *recoder) entity(h textproto.Header, body io.Reader, depth int) (textproto.Header, func(io.Writer) error, error) {
	if depth > maxMIMEDepth {
		return h, nil, errors.New("MIME parts nested too deep")
	}
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	switch {
	case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
		return h, func(w io.Writer) error {
			mr := textproto.NewMultipartReader(body, params["boundary"])
			mw := textproto.NewMultipartWriter(w)
			if err := mw.SetBoundary(params["boundary"]); err != nil {
				return err
			}
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				ph, pbody, err := rc.entity(p.Header, p, depth+1)
				if err != nil {
					return err
				}
				pw, err := mw.CreatePart(ph)
				if err != nil {
					return err
				}
				if err := pbody(pw); err != nil {
					return err
				}
			}
			return mw.Close()
		}, nil
	case mt == "message/rfc822":
		return h, func(w io.Writer) error {
			br := bufio.NewReader(body)
			inner, err := readHeader(br)
			if err != nil {
				return err
			}
			ih, ibody, err := rc.entity(inner, br, depth+1)
			if err != nil {
				return err
			}
			if err := textproto.WriteHeader(w, ih); err != nil {
				return err
			}
			return ibody(w)
		}, nil
	}
	copyBody := func(w io.Writer) error { _, err := io.Copy(w, body); return err }
	cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	if cte != "binary" && cte != "" && cte != "7bit" && cte != "8bit" {
		return h, copyBody, nil
	}
	if !rc.writing {
		return h, func(io.Writer) error {
			enc := cte == "binary"
			if !enc {
				var sc scanner
				if _, err := io.Copy(&sc, body); err != nil {
					return err
				}
				enc = sc.invalid()
			}
			rc.plan = append(rc.plan, enc)
			return nil
		}, nil
	}
	if rc.next >= len(rc.plan) {
		return h, nil, errors.New("message changed between passes")
	}
	enc := rc.plan[rc.next]
	rc.next++
	if !enc {
		return h, copyBody, nil
	}
	bodypart.SetCTE(&h, "base64")
	return h, func(w io.Writer) error { return writeBase64(w, body) }, nil
}

// scanner finds data an IMAP4rev1 server may refuse or damage: NUL, a CR
// not followed by LF, an LF not preceded by CR, a line over 998 octets.
type scanner struct {
	bad    bool
	prevCR bool
	line   int
}

func (sc *scanner) Write(p []byte) (int, error) {
	for _, c := range p {
		if sc.bad {
			break
		}
		if sc.prevCR && c != '\n' {
			sc.bad = true
			break
		}
		switch c {
		case 0:
			sc.bad = true
		case '\n':
			if !sc.prevCR {
				sc.bad = true
			}
			sc.prevCR, sc.line = false, 0
			continue
		case '\r':
			sc.prevCR = true
		}
		sc.line++
		if sc.line > 998 {
			sc.bad = true
		}
	}
	return len(p), nil
}

// invalid tells the verdict once all data was written.
func (sc *scanner) invalid() bool { return sc.bad || sc.prevCR }

// writeBase64 writes what r holds in base64, in lines of 76 characters,
// the last ended by CRLF too.
func writeBase64(w io.Writer, r io.Reader) error {
	lw := &lineWriter{w: w}
	enc := base64.NewEncoder(base64.StdEncoding, lw)
	if _, err := io.Copy(enc, r); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\r\n")
	return err
}

// lineWriter breaks what it writes into lines of 76 characters.
type lineWriter struct {
	w   io.Writer
	col int
}

func (lw *lineWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if lw.col == 76 {
			if _, err := io.WriteString(lw.w, "\r\n"); err != nil {
				return n, err
			}
			lw.col = 0
		}
		k := min(len(p), 76-lw.col)
		m, err := lw.w.Write(p[:k])
		n += m
		lw.col += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}
