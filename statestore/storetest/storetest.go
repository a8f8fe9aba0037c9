// Package storetest holds the behavioural tests every statestore.Store must
// pass, so that the embedded store (statestore.Bolt) and the shared ones
// (cluster/pgstate) are held to the same semantics by the same code.
//
// An implementation's test calls Run with a function that opens a new,
// empty store for one subtest:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) statestore.Store { ... })
//	}
//
// A store that also implements statestore.Continuer gets its Continue
// tested as well.
package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// Run runs the behavioural tests, each as a subtest on a store of its own
// from open. Run closes the stores it opened.
func Run(t *testing.T, open func(t *testing.T) statestore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s statestore.Store)
	}{
		{"UnknownKey", testUnknownKey},
		{"SaveLoad", testSaveLoad},
		{"FlagsExact", testFlagsExact},
		{"Incremental", testIncremental},
		{"NoState", testNoState},
		{"Reset", testReset},
		{"NewUIDValidity", testNewUIDValidity},
		{"PruneByBase", testPruneByBase},
		{"Drop", testDrop},
		{"Keys", testKeys},
		{"KeysNeverMixed", testKeysNeverMixed},
		{"SameUIDTwice", testSameUIDTwice},
		{"LargeValues", testLargeValues},
		{"Implausible", testImplausible},
		{"Concurrent", testConcurrent},
		{"Continue", testContinue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			defer func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			tc.fn(t, s)
		})
	}
}

const (
	alice = "alice\x00INBOX"
	bob   = "bob\x00INBOX"
)

func save(t *testing.T, s statestore.Store, key string, b statestore.Batch) {
	t.Helper()
	if err := s.Save(key, b); err != nil {
		t.Fatalf("Save(%q): %v", key, err)
	}
}

func load(t *testing.T, s statestore.Store, key string) *statestore.Saved {
	t.Helper()
	sv, err := s.Load(key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return sv
}

// check loads key and compares it with want (nil: no state). Empty and nil
// slices are the same state.
func check(t *testing.T, s statestore.Store, key string, want *statestore.Saved) {
	t.Helper()
	got := load(t, s, key)
	if !reflect.DeepEqual(normal(got), normal(want)) {
		t.Fatalf("Load(%q):\n got %s\nwant %s", key, show(got), show(want))
	}
}

func normal(sv *statestore.Saved) *statestore.Saved {
	if sv == nil {
		return nil
	}
	out := *sv
	out.Messages = nil
	for _, m := range sv.Messages {
		if len(m.Flags) == 0 {
			m.Flags = nil
		}
		out.Messages = append(out.Messages, m)
	}
	out.Expunged = nil
	for _, x := range sv.Expunged {
		if !x.At.IsZero() {
			x.At = time.Unix(x.At.Unix(), 0)
		}
		out.Expunged = append(out.Expunged, x)
	}
	return &out
}

func show(sv *statestore.Saved) string {
	if sv == nil {
		return "<nil>"
	}
	s := fmt.Sprintf("UIDVALIDITY %d HIGHEST %d BASE %d MAXUID %d messages[", sv.UIDValidity, sv.Highest, sv.Base, sv.MaxUID)
	for _, m := range sv.Messages {
		s += fmt.Sprintf(" %d@%d%q", m.UID, m.ModSeq, m.Flags)
	}
	s += " ] expunged["
	for _, x := range sv.Expunged {
		s += fmt.Sprintf(" %d@%d", x.UID, x.ModSeq)
		if !x.At.IsZero() {
			s += fmt.Sprintf("(%d)", x.At.Unix())
		}
	}
	return s + " ]"
}

func msg(uid uint32, modseq uint64, flags ...string) statestore.Message {
	return statestore.Message{UID: uid, ModSeq: modseq, Flags: flags}
}

func testUnknownKey(t *testing.T, s statestore.Store) {
	if sv, err := s.Load(alice); err != nil || sv != nil {
		t.Fatalf("Load of an unknown key = %v, %v; want nil, nil", sv, err)
	}
	if err := s.Drop(alice); err != nil {
		t.Fatalf("Drop of an unknown key: %v", err)
	}
	if sv := load(t, s, alice); sv != nil {
		t.Fatalf("after Drop of an unknown key: %s", show(sv))
	}
}

func testSaveLoad(t *testing.T, s statestore.Store) {
	at := time.Unix(1_700_000_000, 0)
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 9, Base: 3, MaxUID: 12,
		Upsert: []statestore.Message{
			msg(1, 2, `\Seen`),
			msg(2, 3),
			msg(3, 4, `\Flagged`, `\Seen`),
			msg(5, 8, `$Junk`, `\Answered`, `\Seen`),
		},
		Expunged: []statestore.Expunge{
			{UID: 4, ModSeq: 5, At: at},
			{UID: 6, ModSeq: 7},                                      // no time
			{UID: 7, ModSeq: 9, At: at.Add(1500 * time.Millisecond)}, // saved to the second
		},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 9, Base: 3, MaxUID: 12,
		Messages: []statestore.Message{
			msg(1, 2, `\Seen`),
			msg(2, 3),
			msg(3, 4, `\Flagged`, `\Seen`),
			msg(5, 8, `$Junk`, `\Answered`, `\Seen`),
		},
		Expunged: []statestore.Expunge{
			{UID: 4, ModSeq: 5, At: at},
			{UID: 6, ModSeq: 7},
			{UID: 7, ModSeq: 9, At: at.Add(time.Second)},
		},
	})
	// Loading twice gives the same.
	check(t, s, alice, normal(load(t, s, alice)))
}

// testFlagsExact: flags come back as saved, order, case and all, whatever
// order the messages were given in.
func testFlagsExact(t *testing.T, s statestore.Store) {
	sets := [][]string{
		nil,
		{},
		{`\Seen`},
		{`\seen`},
		{`\Seen`, `\Answered`},
		{`\Answered`, `\Seen`},
		{`$Forwarded`, `\Flagged`, `NonJunk`, `\Deleted`, `\Draft`, `\Answered`, `\Seen`},
		{`keyword-with-ümlaut`},
		{`\Recent`},
		{`\Seen`, `\Seen`},
	}
	b := statestore.Batch{Reset: true, UIDValidity: 1, Highest: 100}
	want := &statestore.Saved{UIDValidity: 1, Highest: 100}
	for i := len(sets) - 1; i >= 0; i-- {
		b.Upsert = append(b.Upsert, msg(uint32(i+1), uint64(i+1), sets[i]...))
	}
	for i := range sets {
		want.Messages = append(want.Messages, msg(uint32(i+1), uint64(i+1), sets[i]...))
	}
	save(t, s, alice, b)
	check(t, s, alice, want)
	// An incremental batch interns sets against those saved.
	save(t, s, alice, statestore.Batch{UIDValidity: 1, Highest: 102, Upsert: []statestore.Message{
		msg(1, 101, `\Answered`, `\Seen`),
		msg(20, 102, `\Draft`),
	}})
	want.Highest = 102
	want.Messages[0] = msg(1, 101, `\Answered`, `\Seen`)
	want.Messages = append(want.Messages, msg(20, 102, `\Draft`))
	check(t, s, alice, want)
}

func testIncremental(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 4, MaxUID: 3, Upsert: []statestore.Message{
		msg(1, 2, `\Seen`),
		msg(2, 3),
		msg(3, 4, `\Flagged`, `\Seen`),
	}})
	save(t, s, alice, statestore.Batch{UIDValidity: 7, Highest: 6, MaxUID: 3,
		Upsert:   []statestore.Message{msg(2, 5, `\Seen`)},
		Expunged: []statestore.Expunge{{UID: 3, ModSeq: 6}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 6, MaxUID: 3,
		Messages: []statestore.Message{msg(1, 2, `\Seen`), msg(2, 5, `\Seen`)},
		Expunged: []statestore.Expunge{{UID: 3, ModSeq: 6}},
	})
	// New messages, a flag change, an expunge of a UID the state never
	// had, and a batch of nothing but a new HIGHESTMODSEQ.
	save(t, s, alice, statestore.Batch{UIDValidity: 7, Highest: 9, MaxUID: 10,
		Upsert:   []statestore.Message{msg(10, 7), msg(4, 8, `$Label1`), msg(1, 9)},
		Expunged: []statestore.Expunge{{UID: 99, ModSeq: 3}},
	})
	save(t, s, alice, statestore.Batch{UIDValidity: 7, Highest: 11, MaxUID: 10})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 11, MaxUID: 10,
		Messages: []statestore.Message{msg(1, 9), msg(2, 5, `\Seen`), msg(4, 8, `$Label1`), msg(10, 7)},
		Expunged: []statestore.Expunge{{UID: 99, ModSeq: 3}, {UID: 3, ModSeq: 6}},
	})
}

func testNoState(t *testing.T, s statestore.Store) {
	err := s.Save(alice, statestore.Batch{UIDValidity: 1, Highest: 2, Upsert: []statestore.Message{msg(1, 2)}})
	if !errors.Is(err, statestore.ErrNoState) {
		t.Fatalf("Save without Reset on no state: %v, want ErrNoState", err)
	}
	if sv := load(t, s, alice); sv != nil {
		t.Fatalf("the failed batch left %s", show(sv))
	}
	// Another key's state is no state for this one.
	save(t, s, bob, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 1})
	err = s.Save(alice, statestore.Batch{UIDValidity: 1, Highest: 2})
	if !errors.Is(err, statestore.ErrNoState) {
		t.Fatalf("Save without Reset beside another key's state: %v, want ErrNoState", err)
	}
}

func testReset(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 6, MaxUID: 4,
		Upsert:   []statestore.Message{msg(1, 2, `\Seen`), msg(2, 3, `\Flagged`), msg(4, 5, `$X`)},
		Expunged: []statestore.Expunge{{UID: 3, ModSeq: 6}},
	})
	// Saved whole again: what the batch does not name is gone.
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 8, Base: 1, MaxUID: 5,
		Upsert:   []statestore.Message{msg(1, 2, `\Seen`), msg(5, 7, `\Answered`), msg(4, 8, `\Seen`)},
		Expunged: []statestore.Expunge{{UID: 2, ModSeq: 4}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 8, Base: 1, MaxUID: 5,
		Messages: []statestore.Message{msg(1, 2, `\Seen`), msg(4, 8, `\Seen`), msg(5, 7, `\Answered`)},
		Expunged: []statestore.Expunge{{UID: 2, ModSeq: 4}},
	})
	// A Reset that names a message as both kept and expunged keeps the
	// expunge (upserts first, then expunges).
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 9, MaxUID: 5,
		Upsert:   []statestore.Message{msg(1, 2, `\Seen`), msg(5, 7, `\Answered`)},
		Expunged: []statestore.Expunge{{UID: 5, ModSeq: 9}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 9, MaxUID: 5,
		Messages: []statestore.Message{msg(1, 2, `\Seen`)},
		Expunged: []statestore.Expunge{{UID: 5, ModSeq: 9}},
	})
	// An empty Reset empties the state but keeps it.
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 9, MaxUID: 5})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 9, MaxUID: 5})
	save(t, s, alice, statestore.Batch{UIDValidity: 7, Highest: 10, MaxUID: 6, Upsert: []statestore.Message{msg(6, 10)}})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 10, MaxUID: 6, Messages: []statestore.Message{msg(6, 10)}})
}

func testNewUIDValidity(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 6, Base: 2, MaxUID: 9,
		Upsert:   []statestore.Message{msg(1, 4, `\Seen`), msg(2, 5)},
		Expunged: []statestore.Expunge{{UID: 3, ModSeq: 6}},
	})
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 8, Highest: 1})
	check(t, s, alice, &statestore.Saved{UIDValidity: 8, Highest: 1})
	save(t, s, alice, statestore.Batch{UIDValidity: 8, Highest: 3, MaxUID: 1, Upsert: []statestore.Message{msg(1, 3, `\Draft`)}})
	check(t, s, alice, &statestore.Saved{UIDValidity: 8, Highest: 3, MaxUID: 1, Messages: []statestore.Message{msg(1, 3, `\Draft`)}})
}

func testPruneByBase(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 10, MaxUID: 20,
		Upsert: []statestore.Message{msg(20, 1)},
		Expunged: []statestore.Expunge{
			{UID: 1, ModSeq: 2}, {UID: 2, ModSeq: 4}, {UID: 3, ModSeq: 6}, {UID: 4, ModSeq: 8}, {UID: 5, ModSeq: 10},
		},
	})
	// Base prunes the log up to and including it.
	save(t, s, alice, statestore.Batch{UIDValidity: 1, Highest: 11, Base: 6, MaxUID: 20,
		Expunged: []statestore.Expunge{{UID: 20, ModSeq: 11}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 11, Base: 6, MaxUID: 20,
		Expunged: []statestore.Expunge{{UID: 4, ModSeq: 8}, {UID: 5, ModSeq: 10}, {UID: 20, ModSeq: 11}},
	})
	// A batch of nothing but a new base prunes too.
	save(t, s, alice, statestore.Batch{UIDValidity: 1, Highest: 11, Base: 10, MaxUID: 20})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 11, Base: 10, MaxUID: 20,
		Expunged: []statestore.Expunge{{UID: 20, ModSeq: 11}},
	})
	// A Reset drops the expunges it carries up to its base.
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 14, Base: 12, MaxUID: 22,
		Expunged: []statestore.Expunge{{UID: 20, ModSeq: 11}, {UID: 21, ModSeq: 12}, {UID: 22, ModSeq: 13}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 14, Base: 12, MaxUID: 22,
		Expunged: []statestore.Expunge{{UID: 22, ModSeq: 13}},
	})
}

func testDrop(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 5, MaxUID: 3,
		Upsert:   []statestore.Message{msg(1, 2, `\Seen`), msg(2, 4)},
		Expunged: []statestore.Expunge{{UID: 3, ModSeq: 5}},
	})
	save(t, s, bob, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 5, Upsert: []statestore.Message{msg(1, 2, `\Seen`)}})
	if err := s.Drop(alice); err != nil {
		t.Fatalf("Drop: %v", err)
	}
	check(t, s, alice, nil)
	if err := s.Save(alice, statestore.Batch{UIDValidity: 7, Highest: 6}); !errors.Is(err, statestore.ErrNoState) {
		t.Fatalf("Save without Reset after Drop: %v, want ErrNoState", err)
	}
	check(t, s, bob, &statestore.Saved{UIDValidity: 7, Highest: 5, Messages: []statestore.Message{msg(1, 2, `\Seen`)}})
	// Dropping twice is fine; a Reset brings the key back, with nothing
	// of the dropped state.
	if err := s.Drop(alice); err != nil {
		t.Fatalf("second Drop: %v", err)
	}
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 7, Highest: 7, Upsert: []statestore.Message{msg(9, 7)}})
	check(t, s, alice, &statestore.Saved{UIDValidity: 7, Highest: 7, Messages: []statestore.Message{msg(9, 7)}})
}

func testKeys(t *testing.T, s statestore.Store) {
	for _, k := range []string{"alice\x00A", "alice\x00A/b", "alice\x00A/b/c", "alice\x00AB", "alice\x00B", "alicex\x00A", "bob\x00A/b", "alice\x00A\xff", "alice\x00A\xff\xff"} {
		save(t, s, k, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 1, Upsert: []statestore.Message{msg(1, 1)}})
	}
	if err := s.Drop("alice\x00A/b"); err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string][]string{
		"alice\x00A/":    {"alice\x00A/b/c"},
		"alice\x00A":     {"alice\x00A", "alice\x00A/b/c", "alice\x00AB", "alice\x00A\xff", "alice\x00A\xff\xff"},
		"alice\x00A\xff": {"alice\x00A\xff", "alice\x00A\xff\xff"},
		"alice\x00C":     nil,
		"bob\x00":        {"bob\x00A/b"},
	} {
		got, err := s.Keys(prefix)
		if err != nil {
			t.Fatalf("Keys(%q): %v", prefix, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Keys(%q) = %q, want %q", prefix, got, want)
		}
	}
}

func testKeysNeverMixed(t *testing.T, s statestore.Store) {
	keys := []string{
		alice, bob, "alice\x00Sent", "alice\x00INBOX/Sub", "alic\x00eINBOX", "bob\x00inbox",
		"alice\x00INBOX\x00x", "alice", "k", "ünïcode\x00Entwürfe",
	}
	for i, k := range keys {
		save(t, s, k, statestore.Batch{Reset: true, UIDValidity: uint32(100 + i), Highest: uint64(10 + i), MaxUID: uint32(i + 1),
			Upsert:   []statestore.Message{msg(uint32(i+1), uint64(10+i), fmt.Sprintf("$K%d", i))},
			Expunged: []statestore.Expunge{{UID: uint32(50 + i), ModSeq: uint64(1 + i)}},
		})
	}
	want := func(i int) *statestore.Saved {
		return &statestore.Saved{UIDValidity: uint32(100 + i), Highest: uint64(10 + i), MaxUID: uint32(i + 1),
			Messages: []statestore.Message{msg(uint32(i+1), uint64(10+i), fmt.Sprintf("$K%d", i))},
			Expunged: []statestore.Expunge{{UID: uint32(50 + i), ModSeq: uint64(1 + i)}},
		}
	}
	for i, k := range keys {
		check(t, s, k, want(i))
	}
	// Changing, resetting or dropping one key leaves every other alone.
	save(t, s, keys[0], statestore.Batch{UIDValidity: 100, Highest: 20, Base: 5, MaxUID: 1, Upsert: []statestore.Message{msg(1, 20)}})
	save(t, s, keys[1], statestore.Batch{Reset: true, UIDValidity: 1, Highest: 1})
	if err := s.Drop(keys[2]); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys[3:] {
		check(t, s, k, want(i+3))
	}
	for _, k := range []string{"carol\x00INBOX", "alice\x00", "\x00INBOX", "alice\x00inbox"} {
		check(t, s, k, nil)
	}
}

// testSameUIDTwice: within a batch, the last upsert of a UID wins, and an
// expunge beats an upsert of the same UID.
func testSameUIDTwice(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 3, MaxUID: 1,
		Upsert: []statestore.Message{msg(1, 2, `\Seen`), msg(1, 3, `\Flagged`)},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 3, MaxUID: 1, Messages: []statestore.Message{msg(1, 3, `\Flagged`)}})
	save(t, s, alice, statestore.Batch{UIDValidity: 1, Highest: 6, MaxUID: 2,
		Upsert:   []statestore.Message{msg(2, 4), msg(1, 5, `\Seen`), msg(2, 6, `\Deleted`)},
		Expunged: []statestore.Expunge{{UID: 1, ModSeq: 6}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 6, MaxUID: 2,
		Messages: []statestore.Message{msg(2, 6, `\Deleted`)},
		Expunged: []statestore.Expunge{{UID: 1, ModSeq: 6}},
	})
}

// testLargeValues: UIDs and mod-sequences at the top of their ranges
// (UIDs are unsigned 32-bit, mod-sequences at most 2^63-1) keep their
// values and their order.
func testLargeValues(t *testing.T, s statestore.Store) {
	const top = 1<<63 - 1
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1<<32 - 1, Highest: top, Base: top - 10, MaxUID: 1<<32 - 1,
		Upsert: []statestore.Message{
			msg(1<<32-1, top, `\Seen`), msg(1<<31, top-1), msg(1<<31-1, top-2), msg(1, 1),
		},
		Expunged: []statestore.Expunge{{UID: 1<<32 - 2, ModSeq: top - 3}, {UID: 2, ModSeq: top - 5}},
	})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1<<32 - 1, Highest: top, Base: top - 10, MaxUID: 1<<32 - 1,
		Messages: []statestore.Message{msg(1, 1), msg(1<<31-1, top-2), msg(1<<31, top-1), msg(1<<32-1, top, `\Seen`)},
		Expunged: []statestore.Expunge{{UID: 2, ModSeq: top - 5}, {UID: 1<<32 - 2, ModSeq: top - 3}},
	})
}

// testImplausible: a state whose values do not fit together loads as
// ErrCorrupt rather than as a wrong resync.
func testImplausible(t *testing.T, s statestore.Store) {
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 2, Upsert: []statestore.Message{msg(1, 5)}})
	if sv, err := s.Load(alice); !errors.Is(err, statestore.ErrCorrupt) {
		t.Fatalf("Load of a message above HIGHESTMODSEQ = %s, %v; want ErrCorrupt", show(sv), err)
	}
	// Saving it whole repairs it.
	save(t, s, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 5, Upsert: []statestore.Message{msg(1, 5)}})
	check(t, s, alice, &statestore.Saved{UIDValidity: 1, Highest: 5, Messages: []statestore.Message{msg(1, 5)}})
}

// testConcurrent saves and loads several keys from several goroutines.
func testConcurrent(t *testing.T, s statestore.Store) {
	const keys, rounds = 4, 20
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for k := range keys {
		key := fmt.Sprintf("user%d\x00INBOX", k)
		wg.Go(func() {
			if err := s.Save(key, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 1}); err != nil {
				errs <- err
				return
			}
			for r := 1; r <= rounds; r++ {
				b := statestore.Batch{UIDValidity: 1, Highest: uint64(r + 1), MaxUID: uint32(r),
					Upsert: []statestore.Message{msg(uint32(r), uint64(r+1), fmt.Sprintf("$U%d", k))}}
				if err := s.Save(key, b); err != nil {
					errs <- err
					return
				}
				sv, err := s.Load(key)
				if err != nil {
					errs <- err
					return
				}
				if sv == nil || sv.Highest != uint64(r+1) || len(sv.Messages) != r {
					errs <- fmt.Errorf("%q after round %d: %s", key, r, show(sv))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for k := range keys {
		sv := load(t, s, fmt.Sprintf("user%d\x00INBOX", k))
		for _, m := range sv.Messages {
			if len(m.Flags) != 1 || m.Flags[0] != fmt.Sprintf("$U%d", k) {
				t.Fatalf("user%d has %s", k, show(sv))
			}
		}
	}
}

// testContinue: a Continuer remembers the highest mod-sequence ever saved
// under a key, through Resets and Drops.
func testContinue(t *testing.T, st statestore.Store) {
	s, ok := st.(statestore.Continuer)
	if !ok {
		t.Skip("not a statestore.Continuer")
	}
	cont := func(key string, want uint64, wantOK bool) {
		t.Helper()
		got, ok, err := s.Continue(key)
		if err != nil || got != want || ok != wantOK {
			t.Fatalf("Continue(%q) = %d, %v, %v; want %d, %v", key, got, ok, err, want, wantOK)
		}
	}
	cont(alice, 0, false)
	if err := st.Save(alice, statestore.Batch{UIDValidity: 1, Highest: 5}); !errors.Is(err, statestore.ErrNoState) {
		t.Fatalf("Save without Reset on no state: %v", err)
	}
	cont(alice, 0, false) // a failed save saved nothing
	if err := st.Drop(alice); err != nil {
		t.Fatal(err)
	}
	cont(alice, 0, false) // nor does dropping nothing
	save(t, st, alice, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 10, Upsert: []statestore.Message{msg(1, 10)}})
	cont(alice, 10, true)
	save(t, st, alice, statestore.Batch{UIDValidity: 1, Highest: 15, Upsert: []statestore.Message{msg(1, 15)}})
	cont(alice, 15, true)
	// A new UIDVALIDITY starting lower does not lower the mark.
	save(t, st, alice, statestore.Batch{Reset: true, UIDValidity: 2, Highest: 3})
	cont(alice, 15, true)
	if err := st.Drop(alice); err != nil {
		t.Fatal(err)
	}
	check(t, st, alice, nil)
	cont(alice, 15, true)
	save(t, st, alice, statestore.Batch{Reset: true, UIDValidity: 3, Highest: 20})
	cont(alice, 20, true)
	cont(bob, 0, false)
	cont("alice\x00Sent", 0, false)
}
