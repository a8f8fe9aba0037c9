package sort

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseSort: any command parses or fails without panic, what parses
// rebuilds into a UID SEARCH, and a PARTIAL that parses is a valid range.
func FuzzParseSort(f *testing.F) {
	for _, s := range []string{
		"a UID SORT (REVERSE DATE) UTF-8 ALL",
		"a UID SORT RETURN (MIN MAX) (ARRIVAL) US-ASCII FROM x",
		"a UID SORT RETURN () (SUBJECT) \"UTF-8\" (OR 1 2)",
		"a UID SORT (REVERSE) UTF-8 ALL", "a SORT", "a UID SORT ((", "a UID SORT RETURN",
		"a UID SORT RETURN (UPDATE PARTIAL 23500:24000) (DATE) UTF-8 UNDELETED UNKEYWORD $Junk",
		"a UID SORT RETURN (CONTEXT PARTIAL 4:2) (ARRIVAL) US-ASCII ALL",
		"a UID SORT RETURN (PARTIAL 1:2 ALL) (ARRIVAL) US-ASCII ALL", "a UID SORT RETURN (PARTIAL 0:*) (ARRIVAL) US-ASCII ALL",
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
		// RFC 5267 4.4: a range of non-zero positions, low first, and
		// not with ALL.
		if r := c.ret; r != nil && (r.PartialLo > r.PartialHi || r.PartialLo == 0 && r.PartialHi != 0 || r.PartialLo != 0 && r.All) {
			t.Fatalf("%q parsed with %+v", s, *r)
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
		nums := ResultNumbers(b)
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

// FuzzMsgIDs: any header value yields only msg-ids ("<" local "@" domain
// ">", no white space or "<" inside), and References keeps within its
// bound.
func FuzzMsgIDs(f *testing.F) {
	for _, s := range []string{"References: <a@b> <c@d>", "<a@b>", "junk <a@b> (x) <bad> <c@d", "<<a@b>>", "<@>", "<a@>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(id string) {
			if len(id) < 5 || id[0] != '<' || id[len(id)-1] != '>' || !strings.Contains(id, "@") ||
				strings.ContainsFunc(id[1:len(id)-1], func(r rune) bool { return r == '<' || r == '>' || r <= ' ' || r == 0x7f }) {
				t.Fatalf("%q yielded %q", s, id)
			}
		}
		msgIDs(s, func(id string) bool { check(id); return true })
		if id := firstMsgID(s); id != "" {
			check(id)
		}
		refs := referencesOf(s)
		if len(refs) > maxKeyString {
			t.Fatalf("References of %d bytes", len(refs))
		}
		if refs != "" {
			for _, id := range strings.Split(refs, " ") {
				check(id)
			}
		}
	})
}
