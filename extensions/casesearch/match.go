package casesearch

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"slices"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/charset" // also makes go-message decode text parts' charsets
	"github.com/emersion/go-message/textproto"
	"golang.org/x/text/transform"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/casemap"
)

// Bounds of what one message may make the scanner hold.
const (
	// maxHeaderBytes bounds a header block read into memory: the
	// message's, a body part's MIME header, an attached message's. Past
	// it the rest of the message is not searched (what was found before
	// stands).
	maxHeaderBytes = 1 << 20
	// maxDepth bounds the nesting of multiparts and attached messages
	// that are searched.
	maxDepth = 16
	// textChunk is how much folded text is compared at a time.
	textChunk = 32 << 10
)

// wordDecoder decodes RFC 2047 encoded words in the charsets go-message
// knows.
var wordDecoder = mime.WordDecoder{CharsetReader: charset.Reader}

// scanner evaluates a command's atoms on one message at a time, as RFC
// 3501 6.4.4 (and RFC 9051) describe the keys and as Dovecot reads them:
//
//   - SUBJECT and HEADER look at the message's own header fields of that
//     name: the text after the colon, unfolded (line breaks removed, the
//     white space kept) and RFC 2047 encoded words decoded. The empty
//     string matches a message that has the field.
//   - FROM, TO, CC and BCC look at the field's addresses as the
//     upstream's ENVELOPE parsed them, each written out as Dovecot writes
//     it for its own address search (addressTexts): comments and folding
//     gone, a name beside its address; a string matches within one
//     address. The upstream's parser, not one of the proxy's, decides
//     what the addresses are.
//   - BODY looks at the text of the body parts whose media type is text/*
//     (or that have none), transfer encoding and charset decoded, in
//     messages attached as message/rfc822 too; other parts are not
//     searched.
//   - TEXT looks at the same text and at every header field of the
//     message, of its body parts and of attached messages, as
//     "Name:value" with the value as above.
//
// Strings compare by their i;unicode-casemap canonical forms
// (internal/casemap). A string never matches across two header fields or
// two parts.
type scanner struct {
	atoms   []atom
	needles [][]byte // the atoms' needles, for bytes.Contains
	found   []bool   // per atom, for the message being scanned
	left    int      // atoms not found yet
	// Buffers kept from one message to the next: a search reads
	// thousands, and go-message and x/text would allocate them anew for
	// each (most of what an evaluation allocated before).
	buf   []byte                // folded text: textChunk plus the longest needle
	src   []byte                // text before folding
	fold  transform.Transformer // casemap.Transformer, Reset for each text
	br    *bufio.Reader         // a message's own header
	limit headerLimit           // under br while it reads the header
}

func newScanner(atoms []atom) *scanner {
	longest := 0
	for _, a := range atoms {
		longest = max(longest, len(a.needle))
	}
	sc := &scanner{atoms: atoms, found: make([]bool, len(atoms)), buf: make([]byte, textChunk+longest),
		src: make([]byte, 0, 4096), fold: casemap.Transformer()}
	sc.br = bufio.NewReader(&sc.limit)
	for _, a := range atoms {
		sc.needles = append(sc.needles, []byte(a.needle))
	}
	return sc
}

// reset starts a message: no atom found yet, except those that hold for
// any message (an empty BODY or TEXT string).
func (sc *scanner) reset() {
	sc.left = len(sc.atoms)
	for i, a := range sc.atoms {
		sc.found[i] = false
		if (a.kind == kindBody || a.kind == kindText) && a.needle == "" {
			sc.hit(i)
		}
	}
}

func (sc *scanner) hit(i int) {
	if !sc.found[i] {
		sc.found[i] = true
		sc.left--
	}
}

func (sc *scanner) done() bool { return sc.left == 0 }

// headerFields scans header fields (BODY.PEEK[HEADER.FIELDS (...)]) for
// the header atoms.
func (sc *scanner) headerFields(data []byte) {
	sc.limit = headerLimit{r: bytes.NewReader(data), n: -1}
	sc.br.Reset(&sc.limit)
	h, _ := textproto.ReadHeader(sc.br)
	// A field that does not parse ends the header; those before count.
	sc.header(h, true)
}

// message scans a whole message (BODY.PEEK[]), streamed. It reads the
// header as message.ReadWithOptions does, into the scanner's own buffer.
func (sc *scanner) message(r io.Reader) error {
	sc.reset()
	for i, a := range sc.atoms {
		if a.kind == kindAddress {
			sc.hit(i) // the ENVELOPE's to decide (envelope), not the text's
		}
	}
	if sc.done() {
		return nil
	}
	sc.limit = headerLimit{r: r, n: maxHeaderBytes}
	sc.br.Reset(&sc.limit)
	h, err := textproto.ReadHeader(sc.br)
	sc.header(h, true)
	if err != nil || sc.done() {
		return err
	}
	sc.limit.n = -1
	e, _ := message.New(message.Header{Header: h}, sc.br)
	return sc.body(e, 0)
}

// headerLimit reads r, failing past n bytes (no limit when n < 0).
type headerLimit struct {
	r io.Reader
	n int64
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, errHeaderTooLong
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// entity scans an attached message: its header, then its body.
func (sc *scanner) entity(r io.Reader, depth int) error {
	e, err := message.ReadWithOptions(r, &message.ReadOptions{MaxHeaderBytes: maxHeaderBytes})
	if e == nil {
		return err // no header to read: nothing to search
	}
	sc.header(e.Header.Header, false)
	if sc.done() {
		return nil
	}
	return sc.body(e, depth)
}

// body scans an entity's body: a multipart's parts, an attached message,
// or text.
func (sc *scanner) body(e *message.Entity, depth int) error {
	if depth >= maxDepth {
		return nil
	}
	mediaType, params, _ := e.Header.ContentType()
	mediaType = strings.ToLower(mediaType)
	switch {
	case strings.HasPrefix(mediaType, "multipart/"):
		boundary := params["boundary"]
		if boundary == "" {
			return nil
		}
		mr := textproto.NewMultipartReader(newHeaderGuard(e.Body, boundary), boundary)
		for !sc.done() {
			p, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			sc.header(p.Header, false)
			// Unknown encodings and charsets leave the part as it is,
			// searched raw.
			pe, _ := message.New(message.Header{Header: p.Header}, p)
			if err := sc.body(pe, depth+1); err != nil {
				return err
			}
		}
		return nil
	case mediaType == "message/rfc822" || mediaType == "message/global":
		return sc.entity(e.Body, depth+1)
	case mediaType == "" || strings.HasPrefix(mediaType, "text/"):
		return sc.text(e.Body)
	}
	return nil // an image, a PDF: not text (as Dovecot, which skips them)
}

// header scans the fields of a header: for TEXT atoms always, for header
// atoms when it is the message's own (top).
func (sc *scanner) header(h textproto.Header, top bool) {
	for f := h.Fields(); f.Next() && !sc.done(); {
		var folded, line string // Fold of the value and of "Name:value"
		for i, a := range sc.atoms {
			if sc.found[i] {
				continue
			}
			switch {
			case a.kind == kindHeader && top && strings.EqualFold(a.field, f.Key()):
				if a.needle == "" {
					sc.hit(i)
					continue
				}
			case a.kind == kindText:
			default:
				continue
			}
			if folded == "" && line == "" {
				name, value := fieldText(f)
				folded = casemap.Fold(value)
				line = casemap.Fold(name) + ":" + folded
			}
			text := folded
			if a.kind == kindText {
				text = line
			}
			if strings.Contains(text, a.needle) {
				sc.hit(i)
			}
		}
	}
}

// envelopeFields are the indexes of the address keys' fields in an
// ENVELOPE (RFC 3501 7.4.2).
var envelopeFields = map[string]int{"from": 2, "to": 5, "cc": 6, "bcc": 7}

// envelope scans an ENVELOPE for the address atoms. An empty string
// matches a message that has the field.
func (sc *scanner) envelope(env imapcodec.List) {
	type field struct {
		folded  []string // of each address
		present bool
	}
	fields := map[int]field{}
	for i, a := range sc.atoms {
		k, ok := envelopeFields[a.field]
		if sc.found[i] || a.kind != kindAddress || !ok || k >= len(env) {
			continue
		}
		f, done := fields[k]
		if !done {
			var texts []string
			texts, f.present = addressTexts(env[k])
			for _, t := range texts {
				f.folded = append(f.folded, casemap.Fold(t))
			}
			fields[k] = f
		}
		if f.present && (a.needle == "" || slices.ContainsFunc(f.folded, func(t string) bool { return strings.Contains(t, a.needle) })) {
			sc.hit(i)
		}
	}
}

// addressTexts writes each address of an ENVELOPE address list out as
// Dovecot 2.3 writes an address for its FROM, TO, CC and BCC keys, which
// match one address at a time (never across the comma between two),
// encoded words decoded: "name <mailbox@host>" (the name quoted unless it
// is all atext or holds an encoded word; a route as
// "<@route:mailbox@host>"), "mailbox@host" without a name, "group: " for
// the start of a group and ": " for its end. present is false for NIL
// (no such field).
func addressTexts(v imapcodec.Value) (texts []string, present bool) {
	l, ok := v.(imapcodec.List)
	if !ok {
		return nil, false
	}
	for _, av := range l {
		a, ok := av.(imapcodec.List)
		if !ok || len(a) != 4 {
			continue
		}
		name, route, mailbox := nstring(a[0]), nstring(a[1]), nstring(a[2])
		var b []byte
		switch {
		case imapcodec.IsNil(a[3]): // a group's start (mailbox is its name) or end
			b = append(append(b, mailbox...), ": "...)
		case name == "":
			b = append(append(append(b, mailbox...), '@'), nstring(a[3])...)
		default:
			if strings.Contains(name, "=?") || isAtext(name) {
				b = append(b, name...)
			} else {
				b = append(b, '"')
				for i := 0; i < len(name); i++ {
					if name[i] == '"' || name[i] == '\\' {
						b = append(b, '\\')
					}
					b = append(b, name[i])
				}
				b = append(b, '"')
			}
			b = append(b, " <"...)
			if route != "" {
				b = append(append(append(b, '@'), route...), ':')
			}
			b = append(append(append(append(b, mailbox...), '@'), nstring(a[3])...), '>')
		}
		text := string(b)
		if strings.Contains(text, "=?") {
			if d, err := wordDecoder.DecodeHeader(text); err == nil {
				text = d
			}
		}
		texts = append(texts, text)
	}
	return texts, true
}

// isAtext reports whether s is all RFC 5322 atext (8-bit bytes counted
// in, as Dovecot counts them).
func isAtext(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80, c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// nstring returns the text of an nstring, "" for NIL.
func nstring(v imapcodec.Value) string {
	s, _ := imapcodec.AsString(v)
	if imapcodec.IsNil(v) {
		return ""
	}
	return s
}

// fieldText returns a header field's name as written and its value: the
// text after the colon with line breaks removed (RFC 5322 2.2.3's
// unfolding; the white space stays, as Dovecot keeps it) and RFC 2047
// encoded words decoded (kept as they are when they do not decode).
func fieldText(f textproto.HeaderFields) (name, value string) {
	raw, err := f.Raw()
	i := bytes.IndexByte(raw, ':')
	if err != nil || i < 0 {
		return f.Key(), f.Value()
	}
	var b strings.Builder
	b.Grow(len(raw) - i)
	for _, c := range raw[i+1:] {
		if c != '\r' && c != '\n' {
			b.WriteByte(c)
		}
	}
	value = b.String()
	if strings.Contains(value, "=?") {
		if d, err := wordDecoder.DecodeHeader(value); err == nil {
			value = d
		}
	}
	return string(raw[:i]), value
}

// text scans a text part for the BODY and TEXT atoms not found yet,
// folding it as a stream: it holds a chunk and the longest needle, never
// the part.
func (sc *scanner) text(r io.Reader) error {
	var want []int
	longest := 0
	for i, a := range sc.atoms {
		if !sc.found[i] && (a.kind == kindBody || a.kind == kindText) {
			want = append(want, i)
			longest = max(longest, len(a.needle))
		}
	}
	if len(want) == 0 {
		return nil
	}
	sc.fold.Reset()
	src := sc.src[:0]
	keep := 0 // folded bytes carried over from the chunk before: a match may straddle
	eof := false
	for {
		if !eof && len(src) < cap(src) {
			n, err := r.Read(src[len(src):cap(src)])
			src = src[:len(src)+n]
			switch {
			case err == io.EOF:
				eof = true
			case err != nil:
				return err
			}
		}
		nDst, nSrc, err := sc.fold.Transform(sc.buf[keep:keep+textChunk], src, eof)
		if nDst == 0 && nSrc == 0 && err == transform.ErrShortSrc && len(src) == cap(src) {
			return err // cannot happen: folding needs far less look-ahead
		}
		src = src[:copy(src, src[nSrc:])]
		data := sc.buf[:keep+nDst]
		left := want[:0]
		for _, i := range want {
			if bytes.Contains(data, sc.needles[i]) {
				sc.hit(i)
			} else {
				left = append(left, i)
			}
		}
		want = left
		switch {
		case len(want) == 0:
			return nil
		case err == nil && eof:
			return nil // everything read and folded
		case err != nil && err != transform.ErrShortDst && err != transform.ErrShortSrc:
			return err
		}
		// ErrShortSrc: a rune or a combining sequence cut at the end
		// of src waits for more; ErrShortDst: the chunk is full.
		keep = min(len(data), longest-1)
		copy(sc.buf, data[len(data)-keep:])
	}
}

// headerGuard passes a multipart body through, and fails it once the MIME
// header of one of its parts (from the line that starts with the
// delimiter to the blank line after it) runs past maxHeaderBytes:
// go-message reads a part's header whole into memory, and nothing else
// bounds it.
type headerGuard struct {
	r     io.Reader
	delim []byte // "--" + boundary
	// state of the line being read
	atStart  bool // the next byte starts a line
	matched  int  // bytes of delim the line starts with; -1: it does not
	dashes   int  // for a delimiter line: the "--" after it that closes the multipart
	spaced   bool // white space after the delimiter
	inHeader bool // between a delimiter line and the blank line after it
	lineLen  int  // bytes of the current line other than CR
	n        int  // bytes of the current header
	err      error
}

// errHeaderTooLong ends the scan of a message with a part header past
// maxHeaderBytes.
var errHeaderTooLong = errors.New("casesearch: MIME part header too long")

func newHeaderGuard(r io.Reader, boundary string) *headerGuard {
	return &headerGuard{r: r, delim: []byte("--" + boundary), atStart: true}
}

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	for k, c := range p[:n] {
		if g.inHeader {
			g.n++
			if g.n > maxHeaderBytes {
				g.err = errHeaderTooLong
				return k, g.err
			}
			switch c {
			case '\n':
				if g.lineLen == 0 {
					g.inHeader = false // the blank line: the part's body follows
					g.atStart = true
				}
				g.lineLen = 0
			case '\r':
			default:
				g.lineLen++
			}
			continue
		}
		if g.atStart {
			g.atStart, g.matched, g.dashes, g.spaced = false, 0, 0, false
		}
		switch {
		case c == '\n':
			// A delimiter line (the delimiter, then white space) opens a
			// part header; "--boundary--" closes the multipart.
			if g.matched == len(g.delim) && g.dashes == 0 {
				g.inHeader, g.n, g.lineLen = true, 0, 0
			}
			g.atStart = true
		case g.matched < 0: // not a delimiter line
		case g.matched < len(g.delim):
			if c == g.delim[g.matched] {
				g.matched++
			} else {
				g.matched = -1
			}
		case c == '-' && g.dashes < 2 && !g.spaced:
			g.dashes++
		case c == ' ' || c == '\t' || c == '\r':
			if g.dashes == 1 {
				g.matched = -1
			}
			g.spaced = true
		default:
			g.matched = -1 // "--boundaryX": text that only starts like one
		}
	}
	return n, err
}
