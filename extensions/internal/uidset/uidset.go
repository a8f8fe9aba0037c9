// Package uidset holds the UID spans and lists that extensions keep and
// rewrite (within's OLDER/YOUNGER, casesearch's substring keys, SEARCHRES's
// saved result, condstore's sets): spans of consecutive UIDs or of the
// UIDs of a mailbox, their IMAP form, batches of lines that servers
// accept, and the union of two ascending lists. A plain list of numbers
// is written with imapcodec.AppendNumSet.
package uidset

import (
	"slices"
	"strconv"
)

// MaxSetText bounds a UID set an extension writes on a command line of its
// own. A set built from data (the UIDs a search found, or that changed)
// can be far longer than the client's line, and servers refuse long
// lines: Dovecot's limit is 64 KiB (imap_max_line_length; it answers "BAD
// Too long argument"), and RFC 7162 4 asks clients to keep theirs under
// 8,192 octets. Past it, the caller sends batches (Batches) or its
// client's own set.
const MaxSetText = 4096

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

// Runs returns the fewest spans that name the UIDs of known (ascending)
// for which in is true and no other UID of known. A span runs over the
// UIDs between two of known: the caller's known lists every UID of the
// mailbox up to its last (the hub's state), so those below the last that
// it lacks were expunged, UIDs only growing. The set is then as long as
// the alternation between the UIDs named and the others makes it, not as
// the mailbox's gaps do (1:* of a mailbox of 12,000 messages with a gap
// between each two is "1:23999", not 67 KB of single UIDs). in is called
// once per UID of known, in order.
func Runs(known []uint32, in func(uid uint32) bool) []Span {
	var spans []Span
	open := false
	for _, u := range known {
		switch {
		case !in(u):
			open = false
		case open:
			spans[len(spans)-1].Hi = u
		default:
			spans = append(spans, Span{u, u})
			open = true
		}
	}
	return spans
}

// RunsOf is Runs for the UIDs of named (ascending), which need not all be
// in known: those that are not are left out.
func RunsOf(known, named []uint32) []Span {
	j := 0
	return Runs(known, func(u uint32) bool {
		for j < len(named) && named[j] < u {
			j++
		}
		return j < len(named) && named[j] == u
	})
}

// Compact is SpansOf for the UIDs uids (ascending) of a mailbox whose
// UIDs up to the last of known (ascending) are all in known: those at or
// below it are written as Runs over known, and those of uids that are
// not in known are left out (they no longer exist); those above it, which
// known cannot tell about, as spans of consecutive ones.
func Compact(known, uids []uint32) []Span {
	if len(known) == 0 {
		return SpansOf(uids)
	}
	top := known[len(known)-1]
	i, _ := slices.BinarySearch(uids, top+1)
	return append(RunsOf(known, uids[:i]), SpansOf(uids[i:])...)
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

// Batches writes spans (ascending) as sets of at most MaxSetText bytes
// each, in order, cutting only between spans.
func Batches(spans []Span) []string {
	var out []string
	var b []byte
	for _, r := range spans {
		n := len(b)
		if n > 0 {
			b = append(b, ',')
		}
		b = AppendSpans(b, []Span{r})
		if n > 0 && len(b) > MaxSetText {
			out = append(out, string(b[:n]))
			b = AppendSpans(b[:0], []Span{r})
		}
	}
	if len(b) > 0 {
		out = append(out, string(b))
	}
	return out
}
