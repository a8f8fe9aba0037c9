package esearch

import (
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseReturn: any command text parses without panic, and what it
// cuts out of the first segment leaves the tag and the criteria.
func FuzzParseReturn(f *testing.F) {
	for _, s := range []string{
		"a UID SEARCH RETURN (MIN MAX) 1:5000", "a UID SEARCH RETURN () ALL",
		"a UID SEARCH RETURN (SAVE COUNT) CHARSET UTF-8 FROM x", "a UID SEARCH RETURN (",
		"a UID SEARCH RETURN (X (Y)) ALL", "a SEARCH RETURN", "a UID SEARCH ALL",
		"a SEARCH RETURN (UPDATE CONTEXT PARTIAL 500:400) ALL", "a SEARCH RETURN (PARTIAL 1:2 ALL) ALL",
		"a SEARCH RETURN (PARTIAL 0:4294967296) ALL", "a SEARCH RETURN (PARTIAL -1:-5) ALL", "a SEARCH RETURN (CONTEXT) ALL",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		segs := []imapcodec.Segment{{Text: []byte(s)}}
		r, err := parseReturn(segs)
		if err != nil || r == nil {
			return
		}
		if r.start < 0 || r.start > r.end || r.end > len(s) {
			t.Fatalf("%q: bad cut %d:%d", s, r.start, r.end)
		}
		if p := r.opts.partial; p != nil && (p.Lo == 0 || p.Lo > p.Hi || r.opts.all) {
			t.Fatalf("%q: PARTIAL %v with ALL %v", s, *p, r.opts.all)
		}
		if !r.opts.respond() && !r.opts.save {
			t.Fatalf("%q: neither an answer nor SAVE", s)
		}
	})
}

// FuzzSeqSpans: the saved UIDs' sequence numbers are exactly those of the
// view's messages among them.
func FuzzSeqSpans(f *testing.F) {
	f.Add([]byte{1, 2, 3, 7, 9}, []byte{2, 3, 8, 9})
	f.Fuzz(func(t *testing.T, view, saved []byte) {
		v := distinct(view)
		u := distinct(saved)
		var want []uint32
		for i, uid := range v {
			if _, ok := slices.BinarySearch(u, uid); ok {
				want = append(want, uint32(i+1))
			}
		}
		var got []uint32
		for _, r := range seqSpans(v, uidset.SpansOf(u)) {
			for n := uint64(r.Lo); n <= uint64(r.Hi); n++ {
				got = append(got, uint32(n))
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("view %v saved %v: got %v want %v", v, u, got, want)
		}
	})
}

func distinct(b []byte) []uint32 {
	var out []uint32
	for _, c := range b {
		if c != 0 {
			out = append(out, uint32(c))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
