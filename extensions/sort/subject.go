package sort

import (
	"mime"
	"strings"

	"github.com/emersion/go-message/charset"
)

// wordDecoder decodes RFC 2047 encoded words in any charset go-message
// knows.
var wordDecoder = mime.WordDecoder{CharsetReader: charset.Reader}

// decodeHeader turns a header value as ENVELOPE gives it (encoded words
// undecoded) into UTF-8. A value whose encoded words do not decode is kept
// as it is: RFC 5256 gives no rule for broken ones, and the raw text still
// sorts somewhere stable.
func decodeHeader(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d, err := wordDecoder.DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}

// BaseSubject extracts the base subject of RFC 5256 section 2.1 from a
// Subject header value, steps (1) to (7), with the grammar of section 5:
// encoded words decoded, white space made single spaces, then trailers
// ("(fwd)", WSP) removed from the end, leaders ("Re:", "Fwd:", "[blob]
// Re:", WSP) and blobs ("[blob]", unless only the blob is left) from the
// start, and a "[fwd: ...]" wrapper taken off, until nothing changes. The
// words of the grammar match without regard to ASCII case.
func BaseSubject(subject string) string {
	s, _ := baseSubject(subject)
	return s
}

// baseSubject is BaseSubject, also reporting whether the subject is a
// reply or forward, which RFC 5256's REFERENCES threading (step 6) asks:
// whether the extraction removed a "(fwd)" trailer, a subj-refwd ("Re:",
// "Fwd:") or a "[fwd: ...]" wrapper.
func baseSubject(subject string) (base string, reply bool) {
	s := collapseSpace(decodeHeader(subject)) // (1)
	for {
		var fwd bool
		s, fwd = trimTrailers(s) // (2)
		reply = reply || fwd
		for { // (5): repeat (3) and (4)
			if rest, refwd, ok := cutLeader(s); ok { // (3)
				s = rest
				reply = reply || refwd
				continue
			}
			if rest, ok := cutBlob(s); ok && rest != "" { // (4)
				s = rest
				continue
			}
			break
		}
		// (6): "[fwd:" ... "]" around the whole text, then again from (2).
		if len(s) >= len("[fwd:]") && strings.EqualFold(s[:5], "[fwd:") && s[len(s)-1] == ']' {
			s = s[5 : len(s)-1]
			reply = true
			continue
		}
		return s, reply // (7)
	}
}

// collapseSpace turns tabs and folding line breaks into spaces and runs of
// spaces into one (step 1).
func collapseSpace(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\r', '\n':
			space = true
		default:
			if space {
				b.WriteByte(' ')
				space = false
			}
			b.WriteByte(c)
		}
	}
	if space {
		b.WriteByte(' ')
	}
	return b.String()
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// trimTrailers removes subj-trailer ("(fwd)" / WSP) from the end, as long
// as one is there; fwd reports whether a "(fwd)" was among them.
func trimTrailers(s string) (_ string, fwd bool) {
	for {
		switch {
		case s != "" && isWSP(s[len(s)-1]):
			s = s[:len(s)-1]
		case len(s) >= 5 && strings.EqualFold(s[len(s)-5:], "(fwd)"):
			s = s[:len(s)-5]
			fwd = true
		default:
			return s, fwd
		}
	}
}

// blobEnd returns the end of the subj-blob at the start of s ("[" *BLOBCHAR
// "]" *WSP), or -1.
func blobEnd(s string) int {
	if s == "" || s[0] != '[' {
		return -1
	}
	i := 1
	for i < len(s) && s[i] != '[' && s[i] != ']' {
		i++
	}
	if i == len(s) || s[i] != ']' {
		return -1
	}
	i++
	for i < len(s) && isWSP(s[i]) {
		i++
	}
	return i
}

// cutBlob removes one subj-blob from the start of s.
func cutBlob(s string) (string, bool) {
	if n := blobEnd(s); n >= 0 {
		return s[n:], true
	}
	return s, false
}

// cutLeader removes one subj-leader from the start of s: a WSP, or
// *subj-blob subj-refwd, where subj-refwd is ("re" / ("fw" ["d"])) *WSP
// [subj-blob] ":"; refwd reports the latter.
func cutLeader(s string) (_ string, refwd, ok bool) {
	if s != "" && isWSP(s[0]) {
		return s[1:], false, true
	}
	i := 0
	for {
		if n, ok := refwdEnd(s[i:]); ok {
			return s[i+n:], true, true
		}
		n := blobEnd(s[i:])
		if n < 0 {
			return s, false, false
		}
		i += n
	}
}

// refwdEnd returns the length of the subj-refwd at the start of s.
func refwdEnd(s string) (int, bool) {
	var i int
	switch {
	case hasPrefixFold(s, "re"):
		i = 2
	case hasPrefixFold(s, "fwd"):
		i = 3
	case hasPrefixFold(s, "fw"):
		i = 2
	default:
		return 0, false
	}
	if n, ok := refwdTail(s[i:]); ok {
		return i + n, true
	}
	if i == 3 { // "fwd" may be "fw" followed by what is not a "d" of the grammar
		if n, ok := refwdTail(s[2:]); ok {
			return 2 + n, true
		}
	}
	return 0, false
}

// refwdTail matches *WSP [subj-blob] ":".
func refwdTail(s string) (int, bool) {
	i := 0
	for i < len(s) && isWSP(s[i]) {
		i++
	}
	if n := blobEnd(s[i:]); n >= 0 && i+n < len(s) && s[i+n] == ':' {
		return i + n + 1, true
	}
	if i < len(s) && s[i] == ':' {
		return i + 1, true
	}
	return 0, false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
