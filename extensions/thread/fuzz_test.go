package thread

import (
	"strings"
	"testing"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseThread: any command parses or fails without panic; what
// parses names a known algorithm and rebuilds into a UID SEARCH.
func FuzzParseThread(f *testing.F) {
	for _, s := range []string{
		"a UID THREAD REFERENCES UTF-8 ALL", "a UID THREAD orderedsubject \"US-ASCII\" (OR 1 2)",
		"a UID THREAD REFS UTF-8 ALL", "a UID THREAD", "a UID THREAD REFERENCES", "a THREAD REFERENCES UTF-8 ",
		"a UID THREAD REFERENCES {5}\r\nUTF-8 ALL",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		segs := []imapcodec.Segment{{Text: []byte(s)}}
		c, err := parseThread(segs)
		if err == errAlgorithm && (c == nil || c.algorithm == "") {
			t.Fatalf("%q: unknown algorithm without the command", s)
		}
		if err != nil {
			return
		}
		if c.algorithm != "REFERENCES" && c.algorithm != "ORDEREDSUBJECT" {
			t.Fatalf("%q parsed with algorithm %q", s, c.algorithm)
		}
		if out := c.search(segs); !strings.HasPrefix(string(out[0].Text), c.tag+" UID SEARCH CHARSET ") {
			t.Fatalf("%q became %q", s, out[0].Text)
		}
	})
}

// FuzzThreads: any messages thread without panic, every message once,
// into a well-formed answer: balanced parentheses, no empty list.
func FuzzThreads(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, "<a@b> <c@b>")
	f.Add([]byte{0, 0, 0, 1, 1, 1}, "<a@b>")
	f.Fuzz(func(t *testing.T, b []byte, refs string) {
		if len(b) > 300 {
			return
		}
		ids := []string{"", "<a@b>", "<b@b>", "<c@b>"}
		subjects := []string{"", "x", "y"}
		var msgs []sortext.ThreadKeys
		for i := 0; i+2 < len(b); i += 3 {
			m := sortext.ThreadKeys{
				UID: uint32(len(msgs) + 1), Date: int64(b[i] % 4), Subject: subjects[int(b[i+1])%3],
				Reply: b[i+1]&4 != 0, MessageID: ids[int(b[i+2])%4], InReplyTo: ids[int(b[i+2]>>2)%4],
			}
			if b[i+2]&16 != 0 {
				m.References = strings.Fields(refs)
			}
			msgs = append(msgs, m)
		}
		ordered := func(msgs []sortext.ThreadKeys) ([]*node, error) { return orderedSubject(msgs), nil }
		for _, alg := range []func([]sortext.ThreadKeys) ([]*node, error){references, ordered} {
			roots, err := alg(msgs)
			if err != nil {
				t.Fatal(err) // 100 messages cannot spend the step bound
			}
			out := threads(roots)
			seen := map[string]int{}
			depth := 0
			for _, w := range strings.FieldsFunc(out, func(r rune) bool { return r == ' ' || r == '(' || r == ')' }) {
				seen[w]++
			}
			for i, c := range out {
				switch c {
				case '(':
					depth++
					if i+1 < len(out) && out[i+1] == ')' {
						t.Fatalf("empty list in %s", out)
					}
				case ')':
					depth--
				}
				if depth < 0 {
					t.Fatalf("unbalanced %s", out)
				}
			}
			if depth != 0 || len(seen) != len(msgs) {
				t.Fatalf("%d messages threaded as %s", len(msgs), out)
			}
			for w, n := range seen {
				if n != 1 {
					t.Fatalf("%s %d times in %s", w, n, out)
				}
			}
		}
	})
}
