package sort

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseSort: any command parses or fails without panic, and what
// parses rebuilds into a UID SEARCH.
func FuzzParseSort(f *testing.F) {
	for _, s := range []string{
		"a UID SORT (REVERSE DATE) UTF-8 ALL",
		"a UID SORT RETURN (MIN MAX) (ARRIVAL) US-ASCII FROM x",
		"a UID SORT RETURN () (SUBJECT) \"UTF-8\" (OR 1 2)",
		"a UID SORT (REVERSE) UTF-8 ALL", "a SORT", "a UID SORT ((", "a UID SORT RETURN",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		segs := []imapcodec.Segment{{Text: []byte(s)}}
		c, err := parseSort(segs)
		if err != nil {
			return
		}
		if len(c.crit) == 0 {
			t.Fatalf("%q parsed with no criteria", s)
		}
		_ = c.search(segs)
	})
}

// FuzzKeys: FETCH responses and stored records of any shape decode or
// fail without panic; what encodes decodes to the same keys.
func FuzzKeys(f *testing.F) {
	f.Add(`* 1 FETCH (UID 7 INTERNALDATE " 5-Jan-2024 10:00:00 +0000" RFC822.SIZE 44 ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "Re: x" (("Z" NIL "z" "x")) NIL NIL ((NIL NIL "b" "x")) NIL NIL NIL NIL))`, []byte{1, 2, 2, 3, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, resp string, rec []byte) {
		if _, k, err := keysOf([]imapcodec.Segment{{Text: []byte(resp)}}); err == nil {
			back, err := decodeKeys(k.encode())
			if err != nil || back != k {
				t.Fatalf("%+v encoded and decoded as %+v, %v", k, back, err)
			}
		}
		if k, err := decodeKeys(rec); err == nil {
			if back, err := decodeKeys(k.encode()); err != nil || back != k {
				t.Fatalf("record %x: round trip %+v, %v", rec, back, err)
			}
		}
	})
}

// FuzzNumbers: a SEARCH or SORT line of any shape gives numbers without
// panic, never more than one per two bytes, none zero.
func FuzzNumbers(f *testing.F) {
	f.Add([]byte("* SEARCH 1 2 3 (MODSEQ 4)"))
	f.Add([]byte("* SORT 99999999999 0 7"))
	f.Fuzz(func(t *testing.T, b []byte) {
		nums := numbers(b)
		if len(nums) > len(b)/2+1 {
			t.Fatalf("%d numbers from %d bytes", len(nums), len(b))
		}
		for _, n := range nums {
			if n == 0 {
				t.Fatalf("0 from %q", b)
			}
		}
	})
}
