package convert

import (
	"errors"
	"io"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/ianaindex"
	"golang.org/x/text/encoding/unicode"
	"golang.org/x/text/transform"
)

// lookupCharset finds a charset by its MIME name or an alias: the IANA
// registry first (so ISO-8859-1 is ISO-8859-1 and US-ASCII is ASCII,
// where the WHATWG index, built for web pages, takes both for
// windows-1252), then the WHATWG index for the aliases mail software
// writes (utf8, x-sjis, gb2312).
func lookupCharset(name string) (encoding.Encoding, bool) {
	name = strings.TrimSpace(name)
	if name == "" {
		return nil, false
	}
	if e, err := ianaindex.MIME.Encoding(name); err == nil && e != nil {
		return e, true
	}
	if e, err := htmlindex.Get(name); err == nil && e != nil {
		return e, true
	}
	return nil, false
}

// isUTF8 tells whether e is UTF-8, which needs no encoder.
func isUTF8(e encoding.Encoding) bool { return e == unicode.UTF8 }

// errUnrepresentable is a character of the source the target charset
// cannot represent, with no unknown-character-replacement given
// (RFC 5259 7.1: the conversion fails with BADPARAMETERS).
var errUnrepresentable = errors.New("convert: a character cannot be represented in the target charset")

// transcode returns r (text in charset from) in charset to; unrepresentable
// characters become repl (already in the target charset) or, when
// hasRepl is false, end the stream with errUnrepresentable. lf, when not
// nil, counts the line feeds of the text (its lines, whatever the target's
// encoding of them). Bare LF becomes CRLF (RFC 3516 4.3, as BINARY does).
func transcode(r io.Reader, from, to encoding.Encoding, repl []byte, hasRepl bool, lf *int64) io.Reader {
	var t []transform.Transformer
	t = append(t, from.NewDecoder(), &crlf{lf: lf})
	if !isUTF8(to) {
		t = append(t, &encodeOrReplace{enc: to.NewEncoder(), repl: repl, hasRepl: hasRepl})
	}
	return transform.NewReader(r, transform.Chain(t...))
}

// crlf turns bare LF into CRLF in UTF-8 text and counts line feeds.
type crlf struct {
	prevCR bool
	lf     *int64
}

func (c *crlf) Reset() { c.prevCR = false }

func (c *crlf) Transform(dst, src []byte, atEOF bool) (nDst, nSrc int, err error) {
	for nSrc < len(src) {
		b := src[nSrc]
		need := 1
		if b == '\n' && !c.prevCR {
			need = 2
		}
		if nDst+need > len(dst) {
			return nDst, nSrc, transform.ErrShortDst
		}
		if need == 2 {
			dst[nDst] = '\r'
			nDst++
		}
		dst[nDst] = b
		nDst++
		nSrc++
		c.prevCR = b == '\r'
		if b == '\n' && c.lf != nil {
			*c.lf++
		}
	}
	return nDst, nSrc, nil
}

// encodeOrReplace encodes UTF-8 into a charset, replacing what it cannot
// represent with repl, or failing.
type encodeOrReplace struct {
	enc     *encoding.Encoder
	repl    []byte
	hasRepl bool
}

func (e *encodeOrReplace) Reset() { e.enc.Reset() }

func (e *encodeOrReplace) Transform(dst, src []byte, atEOF bool) (nDst, nSrc int, err error) {
	for {
		d, s, err := e.enc.Transform(dst[nDst:], src[nSrc:], atEOF)
		nDst += d
		nSrc += s
		if err == nil || err == transform.ErrShortDst || err == transform.ErrShortSrc {
			return nDst, nSrc, err
		}
		// The encoder stopped at a rune it cannot represent (a
		// RepertoireError), or invalid UTF-8, which the decoders
		// before it never produce.
		if !utf8.FullRune(src[nSrc:]) && !atEOF {
			return nDst, nSrc, transform.ErrShortSrc
		}
		_, size := utf8.DecodeRune(src[nSrc:])
		if !e.hasRepl {
			return nDst, nSrc, errUnrepresentable
		}
		if len(dst)-nDst < len(e.repl) {
			return nDst, nSrc, transform.ErrShortDst
		}
		nDst += copy(dst[nDst:], e.repl)
		nSrc += size
	}
}

// encodeString encodes s into e, failing with errUnrepresentable on a
// character e lacks.
func encodeString(e encoding.Encoding, s string) ([]byte, error) {
	if isUTF8(e) {
		return []byte(s), nil
	}
	out, _, err := transform.Bytes(&encodeOrReplace{enc: e.NewEncoder()}, []byte(s))
	if err != nil {
		return nil, errUnrepresentable
	}
	return out, nil
}
