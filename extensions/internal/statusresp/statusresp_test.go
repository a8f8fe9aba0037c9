package statusresp

import (
	"maps"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line  string
		name  string
		items map[string]uint64
		bad   bool
	}{
		// RFC 3501 6.3.10's example.
		{line: `* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)`, name: "blurdybloop", items: map[string]uint64{"MESSAGES": 231, "UIDNEXT": 44292}},
		{line: `* STATUS inbox (messages 2 uidvalidity 7 HIGHESTMODSEQ 18446744073709551615)`, name: "INBOX", items: map[string]uint64{"MESSAGES": 2, "UIDVALIDITY": 7, "HIGHESTMODSEQ": 18446744073709551615}},
		{line: `* STATUS "a b" ()`, name: "a b", items: map[string]uint64{}},
		{line: `* STATUS "x" (MESSAGES x UNSEEN 1)`, name: "x", items: map[string]uint64{"UNSEEN": 1}},
		{line: `* LIST () "/" x`, bad: true},
		{line: `* STATUS x`, bad: true},
		{line: `* STATUS x MESSAGES 1`, bad: true},
		{line: `a STATUS x ()`, bad: true},
	} {
		name, items, err := Parse([]imapcodec.Segment{{Text: []byte(tc.line)}})
		if tc.bad {
			if err == nil {
				t.Errorf("%q: no error", tc.line)
			}
			continue
		}
		if err != nil || name != tc.name || !maps.Equal(items, tc.items) {
			t.Errorf("%q: %q %v %v; want %q %v", tc.line, name, items, err, tc.name, tc.items)
		}
	}
	// A mailbox name in a literal.
	name, items, err := Parse([]imapcodec.Segment{{Text: []byte("* STATUS "), Literal: &imapcodec.LiteralHeader{Size: 3}, Data: []byte("a\"b")}, {Text: []byte(" (MESSAGES 1)")}})
	if err != nil || name != `a"b` || items["MESSAGES"] != 1 {
		t.Errorf("literal: %q %v %v", name, items, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)`))
	f.Add([]byte(`* STATUS "a b" ()`))
	f.Fuzz(func(t *testing.T, line []byte) {
		name, items, err := Parse([]imapcodec.Segment{{Text: line}})
		if err == nil && items == nil {
			t.Fatalf("no items and no error for %q (name %q)", line, name)
		}
	})
}
