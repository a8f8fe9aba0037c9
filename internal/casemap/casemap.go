// Package casemap implements the i;unicode-casemap collation of RFC 5051,
// the comparator RFC 5255 asks of a server that advertises I18NLEVEL=1:
// strings are compared by their canonical form, each character mapped to
// its simple titlecase and the result decomposed to NFKD, compared octet
// by octet (which, for UTF-8, is code point order).
//
// The canonical form is computed once per string (Fold) and kept, so that
// a sort compares plain byte strings; folding costs far more than
// comparing. Input that is not valid UTF-8 has each invalid byte replaced
// by U+FFFD first, so every input has a canonical form and the order is
// total (RFC 5051 leaves invalid input to the caller).
//
// Text too long to fold at once (a message body searched by
// extensions/casesearch) is folded as a stream by Transformer, to the
// same bytes.
package casemap

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// Fold returns the canonical form of s under i;unicode-casemap.
func Fold(s string) string {
	if ascii(s) {
		// The titlecase of an ASCII letter is its upper case, and NFKD
		// leaves ASCII alone: the common case needs no allocation when s
		// has no lower-case letter.
		return strings.ToUpper(s)
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		b.WriteRune(unicode.ToTitle(r)) // RuneError for invalid bytes
	}
	return norm.NFKD.String(b.String())
}

// Transformer returns a transformer of a stream into its canonical form:
// the output is Fold of the whole input, wherever the input is cut into
// pieces (runes.Map waits for a rune cut in two, norm for the end of a
// combining sequence). Each call returns a new one; it keeps state between
// pieces.
func Transformer() transform.Transformer {
	return transform.Chain(runes.Map(unicode.ToTitle), norm.NFKD)
}

// Compare compares a and b under i;unicode-casemap: -1, 0 or +1.
func Compare(a, b string) int { return strings.Compare(Fold(a), Fold(b)) }

// Contains reports whether substr is a substring of s under
// i;unicode-casemap (RFC 5051's substring operation, for searches).
func Contains(s, substr string) bool { return strings.Contains(Fold(s), Fold(substr)) }

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
