package syncstate

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

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

// A state file written before the store saved the base, the largest UID
// and the expunges' times (the oldest encoding statestore.Bolt reads:
// 12 bytes of meta, 4-byte expunge values) restores into the new layout
// as it did into the old: the base is the oldest entry's mod-sequence less
// one, the expunges' age counts from the restore. The encoding is the
// same as before the layout changed; this pins that files of every age
// still load.
func TestRestoreOldestFile(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("k"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte("meta"), append(u32(9), u64(40)...)); err != nil {
			return err
		}
		fb, _ := b.CreateBucket([]byte("f"))
		mb, _ := b.CreateBucket([]byte("m"))
		xb, _ := b.CreateBucket([]byte("x"))
		fb.Put(binary.AppendUvarint(nil, 0), []byte(`\Seen`))
		fb.Put(binary.AppendUvarint(nil, 1), []byte(""))
		for uid, ms := range map[uint32]uint64{2: 12, 3: 30, 7: 25} {
			id := uint64(uid % 2) // 2: \Seen; 3, 7: none
			if err := mb.Put(u32(uid), binary.AppendUvarint(binary.AppendUvarint(nil, ms), id)); err != nil {
				return err
			}
		}
		return xb.Put(u64(38), u32(5))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	store, err := statestore.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	sv, err := store.Load("k")
	if err != nil || sv == nil {
		t.Fatalf("Load: %v, %v", sv, err)
	}
	m := Restore(sv)
	if m.UIDValidity() != 9 || m.HighestModSeq() != 40 || m.Base() != 11 || m.MaxUID() != 7 || !slices.Equal(m.Snapshot().UIDs, []uint32{2, 3, 7}) {
		t.Fatalf("restored: UIDVALIDITY %d, HIGHESTMODSEQ %d, base %d, MaxUID %d, UIDs %v; want 9, 40, 11, 7, [2 3 7]",
			m.UIDValidity(), m.HighestModSeq(), m.Base(), m.MaxUID(), m.Snapshot().UIDs)
	}
	want := []Change{
		{UID: 7, ModSeq: 25, Flags: []string{}},
		{UID: 3, ModSeq: 30, Flags: []string{}},
		{UID: 5, ModSeq: 38, Expunged: true},
	}
	if got := changes(m, 12); !slices.EqualFunc(got, want, func(a, b Change) bool {
		return a.UID == b.UID && a.ModSeq == b.ModSeq && a.Expunged == b.Expunged && slices.Equal(a.Flags, b.Flags)
	}) {
		t.Fatalf("ChangesSince(12) = %+v\nwant %+v", got, want)
	}
	if f, ms, ok := m.Flags(2); !ok || ms != 12 || !slices.Equal(f, []string{`\Seen`}) {
		t.Fatalf("UID 2: %v at %d", f, ms)
	}
	// And it goes on from there: the next change is saved in the file.
	m.SetPersister(func(b statestore.Batch) error { return store.Save("k", b) })
	applied(m.Apply(Changes{Upsert: []Message{{UID: 8, Flags: []string{`\Flagged`}}}}))
	sv, err = store.Load("k")
	if err != nil || len(sv.Messages) != 4 || sv.Highest != 41 || sv.Base != 11 || sv.MaxUID != 8 {
		t.Fatalf("saved after a change: %+v, %v", sv, err)
	}
}
