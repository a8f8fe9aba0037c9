package proxy

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzRecentSet: a session's recent set, built from any ranges, answers
// has and count as the set of UIDs it holds does, and stays bounded.
func FuzzRecentSet(f *testing.F) {
	f.Add([]byte{1, 3, 5, 9, 2, 2})
	f.Add([]byte{10, 12, 4, 6, 13, 20})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r recentSet
		held := map[uint32]bool{}
		last := uint32(0)
		for i := 0; i+1 < len(b); i += 2 {
			// Sessions take ranges in ascending order, as the floor moves.
			first, n := last+1+uint32(b[i]%4), uint32(b[i+1]%8)
			r.add(first, first+n)
			for u := first; u <= first+n; u++ {
				held[u] = true
			}
			last = first + n
		}
		if len(r) > maxRecentRanges {
			t.Fatalf("%d ranges", len(r))
		}
		if len(b)/2 <= maxRecentRanges { // nothing forgotten
			var view seqView
			for u := uint32(1); u <= last+2; u += 2 {
				view = append(view, u)
			}
			want := 0
			for _, u := range view {
				if held[u] {
					want++
				}
			}
			if got := r.count(view); got != want {
				t.Fatalf("count %d, want %d (%v)", got, want, r)
			}
			for u := uint32(0); u <= last+1; u++ {
				if r.has(u) != held[u] {
					t.Fatalf("has(%d) = %v (%v)", u, !held[u], r)
				}
			}
		}
		if !slices.IsSortedFunc(r, func(x, y uidRange) int { return int(x.first) - int(y.first) }) {
			t.Fatalf("unsorted %v", r)
		}
	})
}

// FuzzRecentResponses: the rewriting of relayed STATUS and FETCH responses
// takes any text without panicking; a FLAGS list (flags separated by SP)
// ends up with one \Recent when the message is recent, none otherwise; a
// STATUS's RECENT item says the proxy's count.
func FuzzRecentResponses(f *testing.F) {
	f.Add([]byte(`* STATUS "a (b" (MESSAGES 2 RECENT 2)`), []byte(`* 1 FETCH (UID 3 FLAGS (\seen \Recent $x))`), true)
	f.Add([]byte(`* STATUS x (RECENT`), []byte(`* 1 FETCH (FLAGS (`), false)
	f.Fuzz(func(t *testing.T, status, fetch []byte, recent bool) {
		out := statusRecent(bytes.Clone(status), 7)
		if bytes.HasSuffix(status, []byte(")")) && bytes.LastIndexByte(status, '(') >= 0 {
			items := strings.Fields(string(out[bytes.LastIndexByte(out, '(')+1 : len(out)-1]))
			for i := 0; i+1 < len(items); i += 2 {
				if strings.EqualFold(items[i], "RECENT") && items[i+1] != "7" {
					t.Fatalf("%q -> %q", status, out)
				}
			}
		}
		statusMailbox([]imapcodec.Segment{{Text: status}})
		got := tidyFlags(bytes.Clone(fetch), recent)
		i := indexFold(got, "FLAGS (")
		if i < 0 {
			return
		}
		open := i + len("FLAGS (")
		end := bytes.IndexByte(got[open:], ')')
		if end < 0 {
			return
		}
		n := 0
		for _, fl := range strings.Split(string(got[open:open+end]), " ") {
			if strings.EqualFold(fl, `\Recent`) {
				n++
			}
		}
		if want := map[bool]int{true: 1, false: 0}[recent]; n != want {
			t.Fatalf("%q recent %v -> %q", fetch, recent, got)
		}
	})
}
