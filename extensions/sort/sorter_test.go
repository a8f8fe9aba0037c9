package sort

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// TestSortFoldedFastPath: the pair sort of one numeric key orders exactly
// as the general comparison, ties and negative instants included.
func TestSortFoldedFastPath(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		n := r.IntN(50)
		msgs := make([]folded, n)
		for i := range msgs {
			msgs[i] = folded{uid: uint32(i*3 + 1), arrival: r.Int64N(10) - 5, date: r.Int64N(4) - 2, size: r.Uint64N(5)}
		}
		for _, crit := range [][]Criterion{{{Key: Arrival}}, {{Key: Arrival, Reverse: true}}, {{Key: Date}}, {{Key: Date, Reverse: true}}, {{Key: Size}}, {{Key: Size, Reverse: true}}} {
			ptrs := func() []*folded {
				var p []*folded
				for i := range msgs {
					p = append(p, &msgs[i])
				}
				return p
			}
			got := sortFolded(ptrs(), crit)
			// The general comparison, through a second criterion that
			// never decides (every CC is ""), so the fast path is not
			// taken.
			want := sortFolded(ptrs(), append(slices.Clone(crit), Criterion{Key: Cc}))
			if !slices.Equal(got, want) {
				t.Fatalf("round %d %v: fast %v, general %v", round, crit, got, want)
			}
		}
	}
}

func TestNumbers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint32
	}{
		{"* SEARCH", []uint32{}},
		{"* SEARCH 1 5 3", []uint32{1, 5, 3}},
		{"* SORT 7 2 (MODSEQ 9)", []uint32{7, 2}},
		{"* SEARCH 4294967295 4294967296 0 x 12", []uint32{4294967295, 12}},
	} {
		if got := ResultNumbers([]byte(tc.in)); !slices.Equal(got, tc.want) {
			t.Errorf("ResultNumbers(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseCriteria(t *testing.T) {
	l := imapcodec.List{imapcodec.Atom("reverse"), imapcodec.Atom("Date"), imapcodec.Atom("SUBJECT"), imapcodec.Atom("DISPLAYFROM")}
	got, err := ParseCriteria(l)
	want := []Criterion{{Date, true}, {Subject, false}, {DisplayFrom, false}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseCriteria = %v, %v", got, err)
	}
}

// BenchmarkSortKeys measures the proxy's own work in a later SORT of
// 100,000 cached messages: finding the keys, sorting, writing the answer.
func BenchmarkSortKeys(b *testing.B) {
	const n = 100_000
	r := rand.New(rand.NewPCG(3, 4))
	bx := &box{}
	uids := make([]uint32, n)
	for i := range n {
		k := Keys{Arrival: r.Int64N(1 << 31), Date: r.Int64N(1 << 31), Size: r.Uint64N(1 << 20),
			Subject: "Re: topic " + strconv.Itoa(r.IntN(5000)), From: "user" + strconv.Itoa(r.IntN(1000))}
		bx.msgs = append(bx.msgs, fold(uint32(i+1), &k))
		uids[i] = uint32(i + 1)
	}
	for _, crit := range [][]Criterion{{{Key: Arrival, Reverse: true}}, {{Key: Subject}, {Key: Date}}} {
		b.Run(fmt.Sprint(crit), func(b *testing.B) {
			for b.Loop() {
				msgs, _ := bx.lookup(uids)
				sorted := sortFolded(msgs, crit)
				var out []byte
				for _, u := range sorted {
					out = strconv.AppendUint(append(out, ' '), uint64(u), 10)
				}
			}
		})
	}
}
