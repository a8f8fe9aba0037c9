package syncstate

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// search finds what a binary search finds, in dense UIDs, sparse ones and
// ones with a few large gaps (where the guess from the first and last UID
// is far off), for UIDs present, absent, and out of range.
func TestSearch(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 300 {
		n := rng.IntN(300)
		uids := make([]uint32, 0, n)
		u := uint32(rng.IntN(5))
		for range n {
			switch r := rng.IntN(100); {
			case round%3 == 0 && r < 2:
				u += uint32(1 + rng.IntN(1_000_000))
			case round%3 == 1:
				u += uint32(1 + rng.IntN(50))
			default:
				u += uint32(1 + rng.IntN(2))
			}
			uids = append(uids, u)
		}
		hi := u + 3
		if n > 0 && rng.IntN(10) == 0 {
			hi = ^uint32(0) // the top of the range
			uids[n-1] = hi - 1
		}
		probe := func(uid uint32) {
			gi, gok := search(uids, uid)
			wi, wok := slices.BinarySearch(uids, uid)
			if gi != wi || gok != wok {
				t.Fatalf("round %d: search(%v, %d) = %d, %v; want %d, %v", round, uids, uid, gi, gok, wi, wok)
			}
		}
		for _, uid := range uids {
			probe(uid)
			probe(uid - 1)
			probe(uid + 1)
		}
		for range 50 {
			probe(rng.Uint32N(hi))
		}
		probe(0)
		probe(hi)
	}
}

// packed keeps every value through widening, and appendAbove reports the
// values above a bound in each width.
func TestPacked(t *testing.T) {
	p := makePacked(0, 0)
	var want []uint64
	for i, v := range []uint64{3, 200, 7, 300, 70_000, 1, 5_000_000_000, 9} {
		p.append(v)
		want = append(want, v)
		if i%2 == 1 {
			p.set(i/2, v+1)
			want[i/2] = v + 1
		}
		for k, w := range want {
			if got := p.get(k); got != w {
				t.Fatalf("after %d appends (width %d): value %d is %d, want %d", i+1, p.w, k, got, w)
			}
		}
	}
	if p.w != 8 {
		t.Fatalf("width %d, want 8", p.w)
	}
	for _, w := range []int{1, 2, 4, 8} {
		q := makePacked(0, 0)
		q.widen(w)
		for _, v := range []uint64{1, 5, 2, 9, 5} {
			q.append(v)
		}
		var got []int
		for _, h := range q.appendAbove(nil, 1, 5, 4) {
			got = append(got, h.i)
		}
		if !slices.Equal(got, []int{1, 3, 4}) {
			t.Fatalf("width %d: positions above 4 in [1,5): %v, want [1 3 4]", w, got)
		}
	}
}

// A state whose mod-sequences span more than 32 bits (restored from a
// store holding such, or after four billion changes) keeps them exact.
func TestWideModSeqs(t *testing.T) {
	sv := &statestore.Saved{UIDValidity: 1, Highest: 1 << 40, Base: 1,
		Messages: []statestore.Message{{UID: 1, ModSeq: 2}, {UID: 5, ModSeq: 1 << 39, Flags: []string{`\Seen`}}, {UID: 9, ModSeq: 1 << 40}},
	}
	m := Restore(sv)
	if m.mods.w != 8 {
		t.Fatalf("width %d, want 8", m.mods.w)
	}
	for _, s := range sv.Messages {
		if _, ms, ok := m.Flags(s.UID); !ok || ms != s.ModSeq {
			t.Fatalf("UID %d: mod-sequence %d, want %d", s.UID, ms, s.ModSeq)
		}
	}
	applied(m.Apply(Changes{Upsert: []Message{{UID: 1, Flags: []string{`\Flagged`}}}, Expunged: []uint32{9}}))
	want := []Change{
		{UID: 5, ModSeq: 1 << 39, Flags: []string{`\Seen`}},
		{UID: 1, ModSeq: 1<<40 + 1, Flags: []string{`\Flagged`}},
		{UID: 9, ModSeq: 1<<40 + 2, Expunged: true},
	}
	if got := changes(m, 2); !slices.EqualFunc(got, want, func(a, b Change) bool {
		return a.UID == b.UID && a.ModSeq == b.ModSeq && a.Expunged == b.Expunged && slices.Equal(a.Flags, b.Flags)
	}) {
		t.Fatalf("ChangesSince(2) = %+v\nwant %+v", got, want)
	}
}

// The rank finds what a binary search finds, built whole or grown by
// appends, and gives up where UIDs get too sparse.
func TestRank(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for round := range 200 {
		var uids []uint32
		u := uint32(1 + rng.IntN(1000))
		for range 1 + rng.IntN(500) {
			uids = append(uids, u)
			u += uint32(1 + rng.IntN(1+round%9))
		}
		check := func(r *uidRank, uids []uint32) {
			t.Helper()
			for probe := uids[0] - min(uids[0], 3); probe <= uids[len(uids)-1]+70; probe++ {
				gi, gok := r.find(probe, len(uids))
				wi, wok := slices.BinarySearch(uids, probe)
				if gi != wi || gok != wok {
					t.Fatalf("round %d: find(%d) = %d, %v; want %d, %v", round, probe, gi, gok, wi, wok)
				}
			}
		}
		whole := buildRank(uids)
		if whole == nil {
			if uint64(uids[len(uids)-1]-uids[0]) < rankSparse*uint64(len(uids)) {
				t.Fatalf("round %d: no rank for %d UIDs over %d", round, len(uids), uids[len(uids)-1]-uids[0])
			}
			continue
		}
		check(whole, uids)
		grown := buildRank(uids[:1])
		for i := 1; i < len(uids); i++ {
			if !grown.append(uids[i], i) {
				t.Fatalf("round %d: append of UID %d gave up, the whole list has a rank", round, uids[i])
			}
		}
		check(grown, uids)
		if grown.append(uids[len(uids)-1]+rankSparse*uint32(len(uids)+1), len(uids)) {
			t.Fatalf("round %d: a UID far above the others kept the rank", round)
		}
	}
}

// A realistic state saved through statestore.Bolt (whose encoding this
// layout did not change: files written before it load as they did) and
// restored answers exactly as the original: the same messages, flags,
// mod-sequences, changes from any point after the base, expunges, base
// and largest UID.
func TestRestoreRoundTrip(t *testing.T) {
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewAt(3, 1_765_000_000_000_000)
	m.SetPersister(func(b statestore.Batch) error { return store.Save("k", b) })
	orig := realisticState(t, 3000, 11)
	// Replay the realistic state's messages into the persisted one, then
	// some history of its own.
	var all []Message
	for _, uid := range orig.Snapshot().UIDs {
		f, _, _ := orig.Flags(uid)
		all = append(all, Message{UID: uid, Flags: f})
	}
	applied(m.Reconcile(all))
	uids := m.Snapshot().UIDs
	for i := range 200 {
		c := Changes{Upsert: []Message{{UID: uids[(i*37)%len(uids)], Flags: []string{`\Flagged`, fmt.Sprint("$k", i%5)}}}}
		if i%7 == 0 {
			c.Expunged = []uint32{uids[(i*101+5)%len(uids)]}
		}
		if i%11 == 0 {
			c.Upsert = append(c.Upsert, Message{UID: uids[len(uids)-1] + uint32(i) + 1})
		}
		applied(m.Apply(c))
	}
	sv, err := store.Load("k")
	if err != nil || sv == nil {
		t.Fatalf("Load: %v, %v", sv, err)
	}
	r := Restore(sv)
	if !slices.Equal(r.Snapshot().UIDs, m.Snapshot().UIDs) || r.HighestModSeq() != m.HighestModSeq() || r.MaxUID() != m.MaxUID() || r.Base() != m.Base() {
		t.Fatalf("restored: %d UIDs at %d, MaxUID %d, base %d; want %d at %d, %d, %d", len(r.Snapshot().UIDs), r.HighestModSeq(), r.MaxUID(), r.Base(),
			len(m.Snapshot().UIDs), m.HighestModSeq(), m.MaxUID(), m.Base())
	}
	for _, uid := range m.Snapshot().UIDs {
		f1, ms1, _ := m.Flags(uid)
		f2, ms2, ok := r.Flags(uid)
		if !ok || ms1 != ms2 || !slices.Equal(f1, f2) {
			t.Fatalf("UID %d restored as %v at %d, want %v at %d", uid, f2, ms2, f1, ms1)
		}
	}
	for since := m.Base(); since <= m.HighestModSeq(); since += 1 + (m.HighestModSeq()-since)/7 {
		if got, want := changes(r, since), changes(m, since); !slices.EqualFunc(got, want, func(a, b Change) bool {
			return a.UID == b.UID && a.ModSeq == b.ModSeq && a.Expunged == b.Expunged && slices.Equal(a.Flags, b.Flags)
		}) {
			t.Fatalf("ChangesSince(%d) restored: %d changes, want %d", since, len(got), len(want))
		}
	}
}
