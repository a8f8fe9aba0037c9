package convert

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"regexp"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
)

// encodedWordRE finds RFC 2047 encoded-words (with an RFC 2231 language
// suffix, "=?utf-8*fr?Q?...?="). The text may hold spaces, which RFC 2047
// forbids but mail software writes (RFC 5259's own example does); it never
// crosses a line end.
var encodedWordRE = regexp.MustCompile(`=\?([^?\s*]+)(\*[^?\s]*)?\?([bBqQ])\?([^?\r\n]*)\?=`)

// wordDecoder decodes encoded-words in any charset lookupCharset knows.
var wordDecoder = &mime.WordDecoder{CharsetReader: func(name string, r io.Reader) (io.Reader, error) {
	e, ok := lookupCharset(name)
	if !ok {
		return nil, fmt.Errorf("unknown charset %q", name)
	}
	return e.NewDecoder().Reader(r), nil
}}

// maxWordIn bounds the encoded-words converted: encodeWords is quadratic
// in a word's length, and RFC 2047 words are at most 75 characters.
const maxWordIn = 1024

// maxWord is the longest encoded-word written (RFC 2047 2: 75).
const maxWord = 75

// convertHeader re-encodes every encoded-word of a header in the charset
// dst (RFC 5259 6, BODY[...HEADER] and BODY[...MIME]): each word is
// decoded and written again as encoded-words in dst, so structured fields
// keep their structure. A word that cannot be decoded (unknown charset,
// damaged) or whose text dst cannot represent is left as it is, as the
// RFC asks. Everything else is kept byte for byte; RFC 2231 parameters are
// not touched.
func convertHeader(raw []byte, dst encoding.Encoding, dstName string) []byte {
	name := strings.ToUpper(dstName)
	return encodedWordRE.ReplaceAllFunc(raw, func(word []byte) []byte {
		if len(word) > maxWordIn {
			return word // no mail software writes such a word
		}
		// mime.WordDecoder wants no language suffix.
		w := string(word)
		if m := encodedWordRE.FindSubmatch(word); m != nil && len(m[2]) > 0 {
			w = "=?" + string(m[1]) + "?" + string(m[3]) + "?" + string(m[4]) + "?="
		}
		text, err := wordDecoder.Decode(w)
		if err != nil {
			return word
		}
		out, err := encodeWords(text, dst, name)
		if err != nil {
			return word
		}
		return out
	})
}

// encodeWords writes text as Q encoded-words in dst, each at most maxWord
// long, split between characters; each word's bytes are encoded on their
// own, so a stateful charset (ISO-2022-JP) starts and ends every word in
// its initial state.
func encodeWords(text string, dst encoding.Encoding, name string) ([]byte, error) {
	prefix := "=?" + name + "?Q?"
	room := maxWord - len(prefix) - 2
	var out bytes.Buffer
	for first := true; first || text != ""; first = false {
		// Take as many characters as fit, at least one.
		var chunk []byte
		n := 0
		for n < len(text) {
			_, size := utf8.DecodeRuneInString(text[n:])
			enc, err := encodeString(dst, text[:n+size])
			if err != nil {
				return nil, err
			}
			if qLen(enc) > room && n > 0 {
				break
			}
			chunk, n = enc, n+size
		}
		if !first {
			out.WriteByte(' ')
		}
		out.WriteString(prefix)
		qEncode(&out, chunk)
		out.WriteString("?=")
		text = text[n:]
	}
	return out.Bytes(), nil
}

// qSafe tells the bytes a Q encoded-word carries as they are (RFC 2047
// 4.2 and 5(3): printable ASCII but "=", "?", "_", and the specials that
// would end a phrase word).
func qSafe(c byte) bool {
	return c > ' ' && c < 0x7f && !strings.ContainsRune(`=?_"(),.:;<>@[\]`, rune(c))
}

func qLen(b []byte) int {
	n := 0
	for _, c := range b {
		if qSafe(c) || c == ' ' {
			n++
		} else {
			n += 3
		}
	}
	return n
}

func qEncode(w *bytes.Buffer, b []byte) {
	const hex = "0123456789ABCDEF"
	for _, c := range b {
		switch {
		case c == ' ':
			w.WriteByte('_')
		case qSafe(c):
			w.WriteByte(c)
		default:
			w.Write([]byte{'=', hex[c>>4], hex[c&15]})
		}
	}
}
