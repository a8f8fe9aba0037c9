package filters

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzFilterKeys: any search command is walked without panic, and every
// name found is a filter name.
func FuzzFilterKeys(f *testing.F) {
	for _, s := range []string{"a SEARCH FILTER x", "a UID SEARCH OR FILTER a NOT FILTER b", "a SEARCH FILTER a/b", "a SEARCH FILTER", "a SORT (DATE) UTF-8 FILTER x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := filterKeys([]imapcodec.Segment{{Text: []byte(s)}})
		if err != nil {
			return
		}
		for _, n := range names {
			if CheckName(n) != nil {
				t.Fatalf("%q: name %q", s, n)
			}
		}
	})
}

// FuzzCheckValue: a value accepted goes into any search as one
// parenthesised group, which still parses.
func FuzzCheckValue(f *testing.F) {
	for _, s := range []string{"SMALLER 5000", `FROM "boss\"s" SEEN`, "ALL) (ALL", "OR (SEEN) DELETED", `SUBJECT "(`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if checkValue(v) != nil {
			return
		}
		_, err := imapcodec.ReplaceSearchKeys([]imapcodec.Segment{{Text: []byte("t SEARCH OR (" + v + ") SEEN")}}, func(imapcodec.SearchKey) (string, bool, error) {
			return "", false, nil
		})
		if err != nil || !balanced(v) {
			t.Fatalf("%q accepted but the search does not parse: %v", v, err)
		}
	})
}
