package syncstate

// Memory and speed of a state in a realistic shape (issue 20: "memory per
// watched message"). The benchmarks build states through the public API
// only, so that the same code measures any layout:
//
//	go test -run '^$' -bench StateMemory -benchtime 3x ./syncstate/
//	go test -run '^$' -bench 'ChangesSince|Lookups|ApplyOne' -count 5 ./syncstate/
//	LEMON_STATE_BOXES=2000 go test -run '^$' -bench 'StateMemory/.*/boxes' -benchtime 1x -timeout 60m ./syncstate/

import (
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// realFlagSets are the flag sets of a realistic mailbox, with how often
// each occurs (in 1/1000): most mail is read, some answered, a little
// flagged, unread, drafts or labelled.
var realFlagSets = []struct {
	flags []string
	per   int
}{
	{[]string{`\Seen`}, 700},
	{[]string{`\Answered`, `\Seen`}, 120},
	{nil, 80},
	{[]string{`\Flagged`, `\Seen`}, 40},
	{[]string{`$Junk`, `\Seen`}, 25},
	{[]string{`\Draft`}, 10},
	{[]string{`$Label1`, `\Seen`}, 10},
	{[]string{`\Deleted`, `\Seen`}, 5},
	{[]string{`$Forwarded`, `\Seen`}, 10},
}

func realFlags(rng *rand.Rand) []string {
	r := rng.IntN(1000)
	for _, s := range realFlagSets {
		if r < s.per {
			return s.flags
		}
		r -= s.per
	}
	return realFlagSets[0].flags
}

// realisticState builds the state of a mailbox of about n messages as a
// watcher leaves it after some use: the first full sync of n messages
// whose UIDs are dense with gaps (expunged before the proxy knew the
// mailbox), then history the proxy saw, in batches as a watcher applies
// them: 2 % of the messages change flags, 1 % are expunged (the expunge
// log keeps them), 1 % arrive.
func realisticState(tb testing.TB, n int, seed uint64) *Mailbox {
	rng := rand.New(rand.NewPCG(seed, 20))
	m := NewAt(uint32(seed), 1_765_000_000_000_000) // a clock-like base, as the hub's
	all := make([]Message, 0, n)
	uid := uint32(0)
	for range n {
		uid++
		if rng.IntN(100) < 3 {
			uid += uint32(1 + rng.IntN(20))
		}
		all = append(all, Message{UID: uid, Flags: realFlags(rng)})
	}
	if _, err := m.Reconcile(all); err != nil {
		tb.Fatal(err)
	}
	next := uid + 1
	for step := range n / 50 {
		var c Changes
		switch step % 4 {
		case 0, 1: // flag changes of a few messages anywhere
			for range 2 {
				u := all[rng.IntN(len(all))].UID
				c.Upsert = append(c.Upsert, Message{UID: u, Flags: realFlags(rng)})
			}
		case 2: // expunges
			for range 2 {
				c.Expunged = append(c.Expunged, all[rng.IntN(len(all))].UID)
			}
		case 3: // new mail
			for range 2 {
				c.Upsert = append(c.Upsert, Message{UID: next, Flags: nil})
				next++
			}
		}
		if _, err := m.Apply(c); err != nil {
			tb.Fatal(err)
		}
	}
	return m
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// agedState is realisticState after a long life: 70,000 more flag
// changes (of a few messages read and unread again), so that its
// mod-sequences span more than 65,536 changes.
func agedState(tb testing.TB, n int, seed uint64) *Mailbox {
	m := realisticState(tb, n, seed)
	uids := m.Snapshot().UIDs
	for i := range 70_000 {
		f := []string{`\Seen`}
		if (i/16)%2 == 0 {
			f = nil
		}
		if _, err := m.Apply(Changes{Upsert: []Message{{UID: uids[len(uids)-1-i%16], Flags: f}}}); err != nil {
			tb.Fatal(err)
		}
	}
	return m
}

// BenchmarkStateMemory reports the live heap per message of watched
// states: one of 20,000 messages, and LEMON_STATE_BOXES of them (20 by
// default; 2000 for issue 20's figure: 40 million messages); "fresh" as
// realisticState leaves them, "aged" as agedState does.
func BenchmarkStateMemory(b *testing.B) {
	const n = 20_000
	measure := func(b *testing.B, boxes int, build func(testing.TB, int, uint64) *Mailbox) {
		for range b.N {
			before := heapInUse()
			states := make([]*Mailbox, boxes)
			msgs := 0
			for i := range states {
				states[i] = build(b, n, uint64(i+1))
				msgs += len(states[i].Snapshot().UIDs)
			}
			after := heapInUse()
			runtime.KeepAlive(states)
			b.ReportMetric(float64(after-before)/float64(msgs), "B/msg")
			b.ReportMetric(float64(after-before)/(1<<20), "MiB")
			b.ReportMetric(float64(msgs), "msgs")
		}
	}
	boxes := 20
	if v := os.Getenv("LEMON_STATE_BOXES"); v != "" {
		var err error
		if boxes, err = strconv.Atoi(v); err != nil || boxes < 1 {
			b.Fatalf("LEMON_STATE_BOXES=%q: want a positive number", v)
		}
	}
	for _, shape := range []struct {
		name  string
		build func(testing.TB, int, uint64) *Mailbox
	}{{"fresh", realisticState}, {"aged", agedState}} {
		b.Run(shape.name+"/one", func(b *testing.B) { measure(b, 1, shape.build) })
		b.Run(shape.name+"/boxes="+strconv.Itoa(boxes), func(b *testing.B) { measure(b, boxes, shape.build) })
	}
}

// resyncState is a realistic state of 20,000 messages and the mod-sequence
// of a client that last saw it before 10 flag changes and 5 expunges,
// spread over the mailbox (as extensions/condstore's BenchmarkResync).
func resyncState(b *testing.B) (*Mailbox, uint64) {
	m := realisticState(b, 20_000, 7)
	since := m.HighestModSeq()
	uids := m.Snapshot().UIDs
	for i := range 10 {
		u := uids[(i*len(uids))/10+7]
		if _, err := m.Apply(Changes{Upsert: []Message{{UID: u, Flags: []string{`\Flagged`, `\Seen`}}}}); err != nil {
			b.Fatal(err)
		}
	}
	var gone []uint32
	for i := range 5 {
		gone = append(gone, uids[(i*len(uids))/5+len(uids)/10])
	}
	if _, err := m.Apply(Changes{Expunged: gone}); err != nil {
		b.Fatal(err)
	}
	return m, since
}

// BenchmarkChangesSince is the state's part of a QRESYNC resync: the
// changes and expunges since a client's mod-sequence, each message's
// flags looked up as condstore does. "recent": 15 changes since the
// client's; "hour": the last 1,000 changes' worth; "all": since 0 (every
// message).
func BenchmarkChangesSince(b *testing.B) {
	m, since := resyncState(b)
	h := m.HighestModSeq()
	for _, c := range []struct {
		name  string
		since uint64
		want  int
	}{
		{"recent", since, 15},
		{"last1000", h - 1000, 0},
		{"all", 0, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			k := 0
			for range b.N {
				k = 0
				m.ChangesSince(c.since, func(ch Change) {
					if !ch.Expunged {
						k += len(ch.Flags)
					}
					k++
				})
			}
			if c.want > 0 && k < c.want {
				b.Fatalf("%d changes, want at least %d", k, c.want)
			}
		})
	}
}

// BenchmarkLookups: Flags of one message, and Each over the whole mailbox
// (statesearch's way of answering a search from the state).
func BenchmarkLookups(b *testing.B) {
	m, _ := resyncState(b)
	uids := m.Snapshot().UIDs
	b.Run("Flags", func(b *testing.B) {
		for i := range b.N {
			if _, _, ok := m.Flags(uids[(i*7919)%len(uids)]); !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("Each", func(b *testing.B) {
		for range b.N {
			k := 0
			m.Each(uids, func(int, []string, uint64) { k++ })
			if k != len(uids) {
				b.Fatal(k)
			}
		}
	})
}

// BenchmarkApplyOne: the watcher's most common batches on a mailbox of
// 20,000 messages: one new message, one flag change.
func BenchmarkApplyOne(b *testing.B) {
	m, _ := resyncState(b)
	uids := m.Snapshot().UIDs
	next := uids[len(uids)-1] + 1
	b.Run("new", func(b *testing.B) {
		for range b.N {
			if _, err := m.Apply(Changes{Upsert: []Message{{UID: next}}}); err != nil {
				b.Fatal(err)
			}
			next++
		}
	})
	b.Run("flags", func(b *testing.B) {
		for i := range b.N {
			f := []string{`\Seen`}
			if i%2 == 0 {
				f = nil
			}
			if _, err := m.Apply(Changes{Upsert: []Message{{UID: uids[(i*7919)%len(uids)], Flags: f}}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
