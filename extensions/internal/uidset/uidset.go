// Package uidset holds the UID spans and lists that extensions keep and
// rewrite (within's OLDER/YOUNGER, casesearch's substring keys, SEARCHRES's
// saved result): spans of consecutive UIDs, their IMAP form, and the union
// of two ascending lists. A plain list of numbers is written with
// imapcodec.AppendNumSet.
package uidset

import "strconv"

// Span is a range of UIDs, Lo <= Hi.
type Span struct{ Lo, Hi uint32 }

// Merge returns the union of two ascending lists, ascending.
func Merge(a, b []uint32) []uint32 {
	out := make([]uint32, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

// SpansOf turns ascending UIDs into spans of consecutive ones.
func SpansOf(uids []uint32) []Span {
	var spans []Span
	for _, u := range uids {
		if k := len(spans); k > 0 && spans[k-1].Hi+1 == u {
			spans[k-1].Hi = u
			continue
		}
		spans = append(spans, Span{u, u})
	}
	return spans
}

// AppendSpans writes spans as a set ("1:3,7").
func AppendSpans(b []byte, spans []Span) []byte {
	for i, r := range spans {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(r.Lo), 10)
		if r.Hi != r.Lo {
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(r.Hi), 10)
		}
	}
	return b
}
