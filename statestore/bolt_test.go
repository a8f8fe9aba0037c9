package statestore

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestSaveLoadReopen: a state saved is there after the file is closed and
// opened again (the behaviour itself is tested by storetest, TestBolt).
func TestSaveLoadReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Save("alice\x00INBOX", Batch{Reset: true, UIDValidity: 7, Highest: 4, Upsert: []Message{
		{UID: 1, ModSeq: 2, Flags: []string{`\Seen`}},
		{UID: 2, ModSeq: 3, Flags: nil},
		{UID: 3, ModSeq: 4, Flags: []string{`\Flagged`, `\Seen`}},
	}}))
	must(s.Save("alice\x00INBOX", Batch{UIDValidity: 7, Highest: 6,
		Upsert:   []Message{{UID: 2, ModSeq: 5, Flags: []string{`\Seen`}}},
		Expunged: []Expunge{{UID: 3, ModSeq: 6}},
	}))
	must(s.Save("bob\x00INBOX", Batch{Reset: true, UIDValidity: 9, Highest: 2, Upsert: []Message{{UID: 10, ModSeq: 2, Flags: []string{"$Junk"}}}}))
	must(s.Close())

	s, err = OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load("alice\x00INBOX")
	if err != nil {
		t.Fatal(err)
	}
	want := &Saved{UIDValidity: 7, Highest: 6,
		Messages: []Message{{UID: 1, ModSeq: 2, Flags: []string{`\Seen`}}, {UID: 2, ModSeq: 5, Flags: []string{`\Seen`}}},
		Expunged: []Expunge{{UID: 3, ModSeq: 6}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen: got %+v\nwant %+v", got, want)
	}
	bob, _ := s.Load("bob\x00INBOX")
	if bob == nil || bob.UIDValidity != 9 || len(bob.Messages) != 1 || bob.Messages[0].Flags[0] != "$Junk" {
		t.Fatalf("bob's state mixed up: %+v", bob)
	}
}

func TestCorruptRecord(t *testing.T) {
	s, err := OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Save("k", Batch{Reset: true, UIDValidity: 1, Highest: 2, Upsert: []Message{{UID: 1, ModSeq: 2}}}); err != nil {
		t.Fatal(err)
	}
	s.do(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("k")).Bucket(bktMsgs).Put(u32(1), []byte{0xff})
		})
	})
	if _, err := s.Load("k"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load of a corrupt record: %v, want ErrCorrupt", err)
	}
}

// BenchmarkBytesPerMessage reports the store's size per message for a
// 100,000-message mailbox (issue 4's target: at most 64 bytes).
func BenchmarkBytesPerMessage(b *testing.B) {
	const n = 100_000
	for i := 0; i < b.N; i++ {
		s, err := OpenBolt(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		batch := Batch{Reset: true, UIDValidity: 1, Highest: n + 1}
		flags := [][]string{{`\Seen`}, nil, {`\Answered`, `\Seen`}, {`\Flagged`, `\Seen`}}
		for u := 1; u <= n; u++ {
			batch.Upsert = append(batch.Upsert, Message{UID: uint32(u), ModSeq: uint64(u + 1), Flags: flags[u%len(flags)]})
		}
		if err := s.Save("k", batch); err != nil {
			b.Fatal(err)
		}
		size, _ := s.Size()
		b.ReportMetric(float64(size)/n, "bytes/msg")
		s.Close()
	}
}

// TestFlagSetIDsAcrossSaves: flag sets are interned per mailbox, their ids
// remembered between saves (Bolt.flagIDs); whatever sequence of new and
// known sets, resets and drops, and a reopened file, every message loads
// with the flags it was saved with, and one mailbox's ids never leak into
// another's.
func TestFlagSetIDsAcrossSaves(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	keys := []string{"alice\x00INBOX", "alice\x00Sent"}
	want := map[string]map[uint32][]string{}
	highest := uint64(1)
	save := func(key string, reset bool, msgs map[uint32][]string) {
		t.Helper()
		b := Batch{Reset: reset, UIDValidity: 1}
		if reset {
			want[key] = map[uint32][]string{}
		}
		for uid := uint32(1); uid <= 20; uid++ {
			f, ok := msgs[uid]
			if !ok {
				continue
			}
			highest++
			b.Upsert = append(b.Upsert, Message{UID: uid, ModSeq: highest, Flags: f})
			want[key][uid] = f
		}
		b.Highest = highest
		if err := s.Save(key, b); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) {
		t.Helper()
		for _, key := range keys {
			sv, err := s.Load(key)
			if err != nil {
				t.Fatal(err)
			}
			got := map[uint32][]string{}
			if sv != nil {
				for _, m := range sv.Messages {
					got[m.UID] = m.Flags
				}
			}
			for uid, f := range want[key] {
				if !reflect.DeepEqual(got[uid], f) && !(len(f) == 0 && len(got[uid]) == 0) {
					t.Fatalf("%s: %q UID %d has %q, want %q", when, key, uid, got[uid], f)
				}
			}
			if len(got) != len(want[key]) {
				t.Fatalf("%s: %q has %d messages, want %d", when, key, len(got), len(want[key]))
			}
		}
	}
	set := func(i int) []string { return []string{fmt.Sprintf("$k%d", i%7), `\Seen`}[:1+i%2] }
	save(keys[0], true, map[uint32][]string{1: nil, 2: set(1), 3: set(2)})
	save(keys[1], true, map[uint32][]string{1: set(3)})
	for round := range 30 {
		key := keys[round%2]
		msgs := map[uint32][]string{}
		for j := range 3 {
			msgs[uint32(1+(round*3+j)%20)] = set(round + j)
		}
		save(key, round%11 == 10, msgs)
		check(fmt.Sprintf("round %d", round))
	}
	if err := s.Drop(keys[1]); err != nil {
		t.Fatal(err)
	}
	delete(want, keys[1])
	save(keys[1], true, map[uint32][]string{5: set(5), 6: set(6)})
	check("after a drop")
	s.Close()
	if s, err = OpenBolt(dir); err != nil {
		t.Fatal(err)
	}
	check("reopened")
	save(keys[0], false, map[uint32][]string{7: set(100), 8: []string{"$new"}})
	check("a save after reopening")
}
