package within

import (
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzKeys: any command text is walked without panic; where its OLDER and
// YOUNGER keys are valid, replacing them leaves none.
func FuzzKeys(f *testing.F) {
	for _, s := range []string{
		"a UID SEARCH YOUNGER 10", "a SEARCH OR OLDER 1 NOT (YOUNGER 4294967295 SEEN)",
		"a SEARCH RETURN (MIN) CHARSET UTF-8 OLDER 5 SUBJECT x", "a UID SORT (DATE) UTF-8 YOUNGER 7",
		"a SEARCH YOUNGER 0", "a SEARCH OLDER", "a SEARCH (OLDER 3", "a SEARCH OLDER 99999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		segs := []imapcodec.Segment{{Text: []byte(s)}}
		keys, err := withinKeys(segs)
		if err != nil || len(keys) == 0 {
			return
		}
		n, err := imapcodec.ReplaceSearchKeys(segs, func(sk imapcodec.SearchKey) (string, bool, error) {
			_, ok, err := keyOf(sk)
			return "UID 1:3", ok, err
		})
		if err != nil || n != len(keys) {
			t.Fatalf("%q: replaced %d of %d keys: %v", s, n, len(keys), err)
		}
		if again, err := withinKeys(segs); err != nil || len(again) != 0 {
			t.Fatalf("%q became %q: keys %v, %v", s, segs[0].Text, again, err)
		}
	})
}

// FuzzParseFetch: any FETCH response parses without panic, into a
// non-zero UID and an instant.
func FuzzParseFetch(f *testing.F) {
	for _, s := range []string{
		`* 1 FETCH (UID 7 INTERNALDATE "17-Jul-1996 02:44:25 -0700")`,
		`* 1 FETCH (INTERNALDATE " 7-Jul-1996 02:44:25 +0000" UID 7)`,
		`* 1 FETCH (UID 7)`, `* 1 FETCH (UID 0 INTERNALDATE "x")`, `* 1 FETCH`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		uid, d, err := parseFetch([]imapcodec.Segment{{Text: []byte(s)}})
		if err == nil && (uid == 0 || d.IsZero()) {
			t.Fatalf("%q: UID %d at %v", s, uid, d)
		}
	})
}

// FuzzEncode: the encoded set names exactly the matches among the UIDs
// that exist (the hub's and the candidates), and nothing above the hub's
// highest UID that is not a match.
func FuzzEncode(f *testing.F) {
	f.Add([]byte{1, 3, 5, 7, 9}, []byte{2, 3, 9, 12}, []byte{3, 9, 12})
	f.Fuzz(func(t *testing.T, k, c, m []byte) {
		known, cands := sortedOf(k), sortedOf(c)
		match := map[uint32]bool{}
		for _, u := range sortedOf(m) {
			if _, ok := slices.BinarySearch(cands, u); ok {
				match[u] = true
			}
		}
		got := encode(match, known, cands)
		if len(match) == 0 {
			if got != "NOT ALL" {
				t.Fatalf("no match: %q", got)
			}
			return
		}
		set, err := imapcodec.ParseNumSet(got[len("UID "):])
		if err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		in := func(u uint32) bool {
			for _, r := range set {
				if r.Start <= u && u <= r.Stop {
					return true
				}
			}
			return false
		}
		var top uint32
		if len(known) > 0 {
			top = known[len(known)-1]
		}
		for u := uint32(1); u <= 300; u++ {
			_, isKnown := slices.BinarySearch(known, u)
			_, isCand := slices.BinarySearch(cands, u)
			exists := isKnown || isCand || u > top
			if exists && in(u) != match[u] {
				t.Fatalf("known %v cands %v match %v: %q has %d: %v", known, cands, match, got, u, in(u))
			}
		}
	})
}

// sortedOf makes sorted, distinct, non-zero UIDs of bytes.
func sortedOf(b []byte) []uint32 {
	var out []uint32
	for _, x := range b {
		if x != 0 {
			out = append(out, uint32(x))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
