package contextsearch

import (
	"cmp"
	"context"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// order is a Sorter over UIDs alone, ascending or descending: enough to
// check the position arithmetic a SORT extension's sorter relies on.
type order struct{ desc bool }

func (order) Prepare(context.Context, *proxy.Session, []uint32) error { return nil }
func (order) Forget(uint32)                                           {}
func (order) Bytes() int64                                            { return 0 }

func (o order) Compare(a, b uint32) int {
	if o.desc {
		return cmp.Compare(b, a)
	}
	return cmp.Compare(a, b)
}

func identity(uid uint32) uint32 { return uid }

// TestSortedAddTo: RFC 5267 4.3.3's example. A context whose result list is
// 2734:2735 gains 2731:2733, which the preferred representation writes as
// one position and one range.
func TestSortedAddTo(t *testing.T) {
	l := &live{tag: "C01", uid: true, sorter: order{}, results: []uint32{2734, 2735}}
	got := string(l.appendUpdate(nil, nil, []uint32{2733, 2731, 2732}, identity))
	if want := "* ESEARCH (TAG \"C01\") UID ADDTO (1 2731:2733)\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if want := []uint32{2731, 2732, 2733, 2734, 2735}; !slices.Equal(l.results, want) {
		t.Errorf("result %v, want %v", l.results, want)
	}
}

// TestSortedPositions: positions in a descending order, where no range
// can be written (RFC 5267 3.2: ranges expand in increasing order).
func TestSortedPositions(t *testing.T) {
	l := &live{tag: "s", sorter: order{desc: true}, results: []uint32{10, 8, 5}}
	got := string(l.appendUpdate(nil, []uint32{8}, []uint32{6, 9}, identity))
	if want := "* ESEARCH (TAG \"s\") REMOVEFROM (2 8) ADDTO (2 9 3 6)\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestSearchSets: a SEARCH context's updates use position 0 and sets in
// mailbox order.
func TestSearchSets(t *testing.T) {
	l := &live{tag: "B01", uid: true, results: []uint32{3, 9}}
	got := string(l.appendUpdate(nil, []uint32{9}, []uint32{5, 4, 7}, identity))
	if want := "* ESEARCH (TAG \"B01\") UID REMOVEFROM (0 9) ADDTO (0 4:5,7)\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if want := []uint32{3, 4, 5, 7}; !slices.Equal(l.results, want) {
		t.Errorf("result %v, want %v", l.results, want)
	}
}

var itemRE = regexp.MustCompile(`(REMOVEFROM|ADDTO) \(([^)]*)\)`)

// applyUpdate is a client's reading of an update (RFC 5267 4.3.3, 4.3.4):
// each pair in order, a set expanded in increasing order, inserted at or
// removed from its position.
func applyUpdate(t *testing.T, list []uint32, resp string) []uint32 {
	for _, m := range itemRE.FindAllStringSubmatch(resp, -1) {
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			pos, _ := strconv.Atoi(f[i])
			var nums []uint32
			for _, r := range strings.Split(f[i+1], ",") {
				lo, hi, ok := strings.Cut(r, ":")
				if !ok {
					hi = lo
				}
				a, _ := strconv.Atoi(lo)
				b, _ := strconv.Atoi(hi)
				for n := a; n <= b; n++ {
					nums = append(nums, uint32(n))
				}
			}
			if pos < 1 || pos-1 > len(list) {
				t.Fatalf("%q: position %d in a list of %d", resp, pos, len(list))
			}
			if m[1] == "ADDTO" {
				list = slices.Insert(list, pos-1, nums...)
				continue
			}
			if pos-1+len(nums) > len(list) || !slices.Equal(list[pos-1:pos-1+len(nums)], nums) {
				t.Fatalf("%q: %v not at %d of %v", resp, nums, pos, list)
			}
			list = slices.Delete(list, pos-1, pos-1+len(nums))
		}
	}
	return list
}

// FuzzSortedUpdate: whatever is removed and added, a client that applies
// a sorted context's update to the old list gets the new one.
func FuzzSortedUpdate(f *testing.F) {
	f.Add([]byte{10, 8, 5}, []byte{8}, []byte{6, 9}, true)
	f.Add([]byte{1, 2, 3, 7}, []byte{2, 3}, []byte{4, 5, 6}, false)
	f.Fuzz(func(t *testing.T, initial, removed, added []byte, desc bool) {
		o := order{desc: desc}
		set := map[uint32]bool{}
		var results []uint32
		for _, c := range initial {
			if c != 0 && !set[uint32(c)] {
				set[uint32(c)] = true
				results = append(results, uint32(c))
			}
		}
		slices.SortFunc(results, o.Compare)
		var rm, add []uint32
		for _, c := range removed {
			if set[uint32(c)] && !slices.Contains(rm, uint32(c)) {
				rm = append(rm, uint32(c))
			}
		}
		for _, c := range added {
			if c != 0 && !set[uint32(c)] && !slices.Contains(add, uint32(c)) {
				add = append(add, uint32(c))
			}
		}
		l := &live{tag: "t", sorter: o, results: slices.Clone(results)}
		resp := string(l.appendUpdate(nil, rm, add, identity))
		if got := applyUpdate(t, results, resp); !slices.Equal(got, l.results) {
			t.Fatalf("%v -%v +%v: %q gives %v, want %v", results, rm, add, resp, got, l.results)
		}
		if !slices.IsSortedFunc(l.results, o.Compare) {
			t.Fatalf("result out of order: %v", l.results)
		}
	})
}

// FuzzParseCancel: any CANCELUPDATE line parses without panic into at
// most maxCancelTags non-empty tags.
func FuzzParseCancel(f *testing.F) {
	for _, s := range []string{`a CANCELUPDATE "B01"`, `a CANCELUPDATE "a" "b"`, `a CANCELUPDATE`, `a CANCELUPDATE b`, `a CANCELUPDATE ""`, `a CANCELUPDATE "a\"b"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := parseCancel(segments(s))
		if err != nil {
			return
		}
		if len(tags) == 0 || len(tags) > maxCancelTags || slices.Contains(tags, "") {
			t.Fatalf("%q: %q", s, tags)
		}
	})
}

func segments(s string) []imapcodec.Segment { return []imapcodec.Segment{{Text: []byte(s)}} }
