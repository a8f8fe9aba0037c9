package condstore

import (
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzQResyncParams: any QRESYNC parameter list parses or is refused,
// never panics, and accepted values are in range (RFC 7162 3.2.5).
func FuzzQResyncParams(f *testing.F) {
	for _, s := range []string{"(1 2)", "(67890007 20050715194045000 41,43:211,214:541)",
		"(67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997))",
		"(1 0)", "(0 1)", "(1 1 *)", "(1 1 1:2 (1 2 3))", "()", "(4294967296 1)", "(1 9223372036854775808)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		p := imapcodec.NewParser([]imapcodec.Segment{{Text: []byte(arg)}}, imapcodec.Limits{MaxDepth: 8})
		v, err := p.Value()
		l, ok := v.(imapcodec.List)
		if err != nil || !ok {
			return
		}
		q, err := parseQResync(l)
		if err != nil {
			return
		}
		if q.uidValidity == 0 || q.modseq == 0 || q.modseq > maxModSeq {
			t.Fatalf("out of range accepted: %q -> %+v", arg, q)
		}
		for _, r := range q.knownUIDs {
			if r.Start == 0 || r.Stop == 0 || r.Start > r.Stop {
				t.Fatalf("bad range accepted: %q -> %+v", arg, r)
			}
		}
	})
}

// FuzzUIDSet: set parsing and formatting agree.
func FuzzUIDSet(f *testing.F) {
	for _, s := range []string{"1", "1:3,7", "5:2", "1:*", "*", "0", "4294967295", "1,,2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, set string) {
		ranges, err := imapcodec.ParseUIDSet(set)
		if err != nil || ranges.Dynamic() {
			return
		}
		var nums []uint32
		for _, r := range ranges {
			if r.Stop-r.Start > 1000 {
				return
			}
			for n := uint32(r.Start); n <= uint32(r.Stop); n++ {
				nums = append(nums, n)
				if n == uint32(r.Stop) {
					break
				}
			}
		}
		if len(nums) == 0 {
			return
		}
		sorted := append([]uint32(nil), nums...)
		for i := 1; i < len(sorted); i++ {
			for j := i; j > 0 && sorted[j-1] > sorted[j]; j-- {
				sorted[j-1], sorted[j] = sorted[j], sorted[j-1]
			}
		}
		back, err := imapcodec.ParseUIDSet(string(imapcodec.AppendNumSet(nil, sorted)))
		if err != nil {
			t.Fatalf("%q formatted unparsable: %v", set, err)
		}
		for _, n := range nums {
			if !back.Contains(imap.UID(n)) {
				t.Fatalf("%q lost %d", set, n)
			}
		}
	})
}
