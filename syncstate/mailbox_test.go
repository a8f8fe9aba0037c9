package syncstate

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// changes collects ChangesSince's output.
func changes(m *Mailbox, since uint64) []Change {
	var out []Change
	m.ChangesSince(since, func(c Change) { out = append(out, c) })
	return out
}

func msgs(flags []string, uids ...uint32) []Message {
	out := make([]Message, len(uids))
	for i, u := range uids {
		out[i] = Message{UID: u, Flags: flags}
	}
	return out
}

func TestStateNewStartsAtOne(t *testing.T) {
	m := New(42)
	if got := m.UIDValidity(); got != 42 {
		t.Fatalf("UIDValidity = %d, want 42", got)
	}
	if got := m.HighestModSeq(); got != 1 {
		t.Fatalf("HIGHESTMODSEQ of a new state = %d, want 1 (never 0, RFC 7162 3.1.1)", got)
	}
	snap := m.Snapshot()
	if len(snap.UIDs) != 0 || snap.Highest != 1 {
		t.Fatalf("Snapshot = %+v, want empty at 1", snap)
	}
	if c := changes(m, 0); len(c) != 0 {
		t.Fatalf("ChangesSince(0) of a new state = %+v", c)
	}
	// An empty batch, and one of unknown expunges, change nothing.
	if applied(m.Apply(Changes{})) || applied(m.Apply(Changes{Expunged: []uint32{7}})) {
		t.Fatal("empty batch reported a change")
	}
	if got := m.HighestModSeq(); got != 1 {
		t.Fatalf("HIGHESTMODSEQ after no-op batches = %d, want 1", got)
	}
}

// Every actual change gets its own mod-sequence, one more than the last,
// in batch order: upserts first, then expunges.
func TestStateModSeqPerChange(t *testing.T) {
	m := New(1)
	if !applied(m.Apply(Changes{Upsert: msgs(nil, 10, 11, 12)})) {
		t.Fatal("adding messages reported no change")
	}
	for i, uid := range []uint32{10, 11, 12} {
		_, ms, ok := m.Flags(uid)
		if !ok || ms != uint64(2+i) {
			t.Fatalf("message %d: modseq %d ok=%v, want %d", uid, ms, ok, 2+i)
		}
	}
	if h := m.HighestModSeq(); h != 4 {
		t.Fatalf("HIGHESTMODSEQ = %d, want 4", h)
	}
	m.Apply(Changes{Upsert: []Message{{UID: 11, Flags: []string{`\Seen`}}}, Expunged: []uint32{10, 12}})
	if h := m.HighestModSeq(); h != 7 {
		t.Fatalf("HIGHESTMODSEQ after 1 flag change and 2 expunges = %d, want 7", h)
	}
	want := []Change{
		{UID: 11, ModSeq: 5, Flags: []string{`\Seen`}},
		{UID: 10, ModSeq: 6, Expunged: true},
		{UID: 12, ModSeq: 7, Expunged: true},
	}
	if got := changes(m, 4); !reflect.DeepEqual(got, want) {
		t.Fatalf("ChangesSince(4) = %+v\nwant %+v", got, want)
	}
	if got := m.Snapshot(); !reflect.DeepEqual(got.UIDs, []uint32{11}) || got.Highest != 7 {
		t.Fatalf("Snapshot = %+v", got)
	}
	// Expunging again, or an unknown UID, is no change.
	if applied(m.Apply(Changes{Expunged: []uint32{10, 99}})) {
		t.Fatal("expunging an expunged message reported a change")
	}
	if h := m.HighestModSeq(); h != 7 {
		t.Fatalf("HIGHESTMODSEQ moved to %d on a no-op", h)
	}
}

// Flags equal after normalisation cost nothing: no change, no modseq, no
// new flag set in the mailbox's table.
func TestStateUnchangedFlagsCostNothing(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: []Message{{UID: 1, Flags: []string{`\Seen`, `$Label1`}}}})
	h, sets := m.HighestModSeq(), len(m.flagSets.sets)
	same := [][]string{
		{`$Label1`, `\Seen`},
		{`\SEEN`, `$Label1`},
		{`\seen`, `$Label1`, `\Recent`},
		{`$Label1`, `\Seen`, `\Seen`},
	}
	for _, f := range same {
		if applied(m.Apply(Changes{Upsert: []Message{{UID: 1, Flags: f}}})) {
			t.Errorf("flags %q reported as a change of [$Label1 \\Seen]", f)
		}
	}
	if applied(m.Reconcile([]Message{{UID: 1, Flags: []string{`\Recent`, `\Seen`, `$Label1`}}})) {
		t.Error("Reconcile with the same message reported a change")
	}
	if m.HighestModSeq() != h || len(m.flagSets.sets) != sets {
		t.Fatalf("no-op upserts moved HIGHESTMODSEQ %d -> %d, flag sets %d -> %d", h, m.HighestModSeq(), sets, len(m.flagSets.sets))
	}
	// A keyword differing in case is a different flag as far as the state
	// goes (it is kept as the server spelled it).
	if !applied(m.Apply(Changes{Upsert: []Message{{UID: 1, Flags: []string{`\Seen`, `$Label2`}}}})) {
		t.Fatal("a real flag change was not reported")
	}
}

// ChangesSince reports each message once, with its latest flags, in
// mod-sequence order; expunges included; changes at or before since left out.
func TestStateChangesSinceLatestStateOnce(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, 1, 2, 3, 4)})         // 2..5
	m.Apply(Changes{Upsert: msgs([]string{`\Seen`}, 2)})    // 6
	m.Apply(Changes{Upsert: msgs([]string{`\Flagged`}, 1)}) // 7
	m.Apply(Changes{Upsert: msgs([]string{`\Seen`, `\Flagged`}, 2)})
	m.Apply(Changes{Expunged: []uint32{3}})                 // 9
	m.Apply(Changes{Upsert: msgs([]string{`\Deleted`}, 4)}) // 10
	m.Apply(Changes{Expunged: []uint32{4}})                 // 11
	m.Apply(Changes{Upsert: msgs(nil, 5)})                  // 12

	all := []Change{
		{UID: 1, ModSeq: 7, Flags: []string{`\Flagged`}},
		{UID: 2, ModSeq: 8, Flags: []string{`\Flagged`, `\Seen`}},
		{UID: 3, ModSeq: 9, Expunged: true},
		{UID: 4, ModSeq: 11, Expunged: true},
		{UID: 5, ModSeq: 12, Flags: []string{}},
	}
	for since := uint64(0); since <= 13; since++ {
		var want []Change
		for _, c := range all {
			if c.ModSeq > since {
				want = append(want, c)
			}
		}
		if got := changes(m, since); !reflect.DeepEqual(got, want) {
			t.Errorf("ChangesSince(%d) = %+v\nwant %+v", since, got, want)
		}
	}
}

// ChangesSince costs time in the number of changes after since, not in the
// size of the mailbox: with 100,000 messages, asking for the last 10 changes
// reads one number per 256 messages and then only the 10 blocks with a
// change, not the others. The structural check below is exact; the timing
// check compares against a full scan of the same state with a margin of
// two orders of magnitude below the expected ratio (10 vs 100,000).
func TestStateChangesSinceCostIndependentOfSize(t *testing.T) {
	const n = 100_000
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, seqUIDs(1, n)...)})
	base := m.HighestModSeq()
	for i := uint32(0); i < 10; i++ {
		m.Apply(Changes{Upsert: []Message{{UID: 1 + i*9973, Flags: []string{`\Seen`}}}})
	}
	got := changes(m, base)
	if len(got) != 10 {
		t.Fatalf("ChangesSince(base) reported %d changes, want 10", len(got))
	}
	// The runs and blocks ChangesSince reads further are those whose
	// bound is above base.
	runs, blocks := 0, 0
	for _, mx := range m.index.supers {
		if m.modBase+mx > base {
			runs++
		}
	}
	for b := range m.index.blocks.len() {
		if m.modBase+m.index.blocks.get(b) > base {
			blocks++
		}
	}
	if runs != 10 || blocks != 10 || len(m.index.supers) != (n+255)/256 {
		t.Fatalf("ChangesSince(base) reads %d of %d runs, %d blocks; want 10 of %d, 10", runs, len(m.index.supers), blocks, (n+255)/256)
	}

	timeIt := func(since uint64, runs int) time.Duration {
		var ds []time.Duration
		for r := 0; r < runs; r++ {
			start := time.Now()
			k := 0
			m.ChangesSince(since, func(Change) { k++ })
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	small := timeIt(base, 201)
	full := timeIt(0, 5)
	t.Logf("ChangesSince: last 10 of %d messages %v, full scan %v", n, small, full)
	if small*100 > full {
		t.Fatalf("ChangesSince for 10 changes took %v, a full scan %v: cost depends on the mailbox size", small, full)
	}
}

// checkSize fails unless m holds exactly msgs messages and expunges
// expunges: no entry per change.
func checkSize(t *testing.T, m *Mailbox, msgs, expunges int) {
	t.Helper()
	nb := (msgs + blockLen - 1) / blockLen
	if len(m.uids) != msgs || m.flags.len() != msgs || m.mods.len() != msgs || m.index.blocks.len() != nb || len(m.index.supers) != (nb+superLen-1)/superLen || len(m.expunged) != expunges {
		t.Fatalf("state holds %d UIDs, %d flags, %d mod-sequences, %d blocks, %d runs, %d expunges; want %d messages, %d expunges",
			len(m.uids), m.flags.len(), m.mods.len(), m.index.blocks.len(), len(m.index.supers), len(m.expunged), msgs, expunges)
	}
	for i := range msgs {
		if b := m.index.blocks.get(i / blockLen); b < m.mods.get(i) || m.index.supers[i/blockLen/superLen] < b {
			t.Fatalf("position %d: offset %d above its block's bound %d or the run's %d", i, m.mods.get(i), b, m.index.supers[i/blockLen/superLen])
		}
	}
}

func seqUIDs(lo, hi uint32) []uint32 {
	out := make([]uint32, 0, hi-lo+1)
	for u := lo; u <= hi; u++ {
		out = append(out, u)
	}
	return out
}

func TestStateReconcile(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: []Message{
		{UID: 1, Flags: []string{`\Seen`}},
		{UID: 2, Flags: nil},
		{UID: 3, Flags: nil},
		{UID: 4, Flags: []string{`\Flagged`}},
		{UID: 5, Flags: nil},
	}})
	h := m.HighestModSeq() // 6
	upstream := []Message{
		{UID: 1, Flags: []string{`\Seen`, `\Recent`}}, // unchanged
		{UID: 2, Flags: []string{`\Answered`}},        // changed
		// 3 expunged
		{UID: 4, Flags: []string{`\flagged`}}, // unchanged (case)
		{UID: 5, Flags: nil},                  // unchanged
		{UID: 6, Flags: []string{`\Seen`}},    // new
	}
	if !applied(m.Reconcile(upstream)) {
		t.Fatal("Reconcile reported no change")
	}
	want := []Change{
		{UID: 2, ModSeq: h + 1, Flags: []string{`\Answered`}},
		{UID: 6, ModSeq: h + 2, Flags: []string{`\Seen`}},
		{UID: 3, ModSeq: h + 3, Expunged: true},
	}
	if got := changes(m, h); !reflect.DeepEqual(got, want) {
		t.Fatalf("changes after Reconcile = %+v\nwant %+v", got, want)
	}
	if got := m.Snapshot().UIDs; !reflect.DeepEqual(got, []uint32{1, 2, 4, 5, 6}) {
		t.Fatalf("UIDs after Reconcile = %v", got)
	}
	if applied(m.Reconcile(upstream)) {
		t.Fatal("a second Reconcile with the same list reported a change")
	}
	if m.HighestModSeq() != h+3 {
		t.Fatalf("HIGHESTMODSEQ = %d, want %d", m.HighestModSeq(), h+3)
	}
	// An empty mailbox upstream expunges everything.
	if !applied(m.Reconcile(nil)) {
		t.Fatal("Reconcile(nil) reported no change")
	}
	if got := m.Snapshot().UIDs; len(got) != 0 {
		t.Fatalf("UIDs after Reconcile(nil) = %v", got)
	}
	var exp []uint32
	for _, c := range changes(m, h+3) {
		if !c.Expunged {
			t.Fatalf("unexpected change %+v", c)
		}
		exp = append(exp, c.UID)
	}
	if !reflect.DeepEqual(exp, []uint32{1, 2, 4, 5, 6}) {
		t.Fatalf("expunged %v", exp)
	}
}

func TestStateNormalizeFlags(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{nil, []string{}},
		{[]string{`\Recent`}, []string{}},
		{[]string{`\RECENT`, `\recent`}, []string{}},
		{[]string{`\seen`, `\ANSWERED`, `\fLaGgEd`, `\deleted`, `\DRAFT`}, []string{`\Answered`, `\Deleted`, `\Draft`, `\Flagged`, `\Seen`}},
		{[]string{`\Seen`, `\seen`, `\SEEN`}, []string{`\Seen`}},
		{[]string{`$Forwarded`, `\Seen`, `$Forwarded`}, []string{`$Forwarded`, `\Seen`}},
		{[]string{`$label`, `$Label`}, []string{`$Label`, `$label`}}, // keywords keep their spelling
		{[]string{`\Unknown`}, []string{`\Unknown`}},
	} {
		got := NormalizeFlags(tc.in)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("NormalizeFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// The input is not modified.
	in := []string{`\seen`, `\Recent`, `a`}
	NormalizeFlags(in)
	if !reflect.DeepEqual(in, []string{`\seen`, `\Recent`, `a`}) {
		t.Fatalf("NormalizeFlags modified its input: %q", in)
	}
}

// A snapshot is immutable: later changes do not show through it.
func TestStateSnapshotImmutable(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, 1, 2, 3)})
	snap := m.Snapshot()
	keep := slices.Clone(snap.UIDs)
	m.Apply(Changes{Upsert: msgs(nil, 4), Expunged: []uint32{2}})
	m.Reconcile(msgs(nil, 1, 5))
	if !reflect.DeepEqual(snap.UIDs, keep) || snap.Highest != 4 {
		t.Fatalf("snapshot changed to %+v, want %v at 4", snap, keep)
	}
}

// model is the obvious implementation of Mailbox: every message with its
// flags and modseq, every expunge with its modseq; ChangesSince is a scan.
type model struct {
	highest  uint64
	msgs     map[uint32]modelMsg
	expunged []Change
}

type modelMsg struct {
	flags  []string
	modseq uint64
}

func newModel() *model { return &model{highest: 1, msgs: map[uint32]modelMsg{}} }

func (d *model) apply(c Changes) bool {
	changed := false
	for _, u := range c.Upsert {
		f := NormalizeFlags(u.Flags)
		if e, ok := d.msgs[u.UID]; ok && slices.Equal(e.flags, f) {
			continue
		}
		d.highest++
		d.msgs[u.UID] = modelMsg{f, d.highest}
		changed = true
	}
	for _, uid := range c.Expunged {
		if _, ok := d.msgs[uid]; !ok {
			continue
		}
		delete(d.msgs, uid)
		d.highest++
		d.expunged = append(d.expunged, Change{UID: uid, ModSeq: d.highest, Expunged: true})
		changed = true
	}
	return changed
}

func (d *model) reconcile(all []Message) bool {
	seen := map[uint32]bool{}
	for _, u := range all {
		seen[u.UID] = true
	}
	var gone []uint32
	for _, uid := range d.uids() {
		if !seen[uid] {
			gone = append(gone, uid)
		}
	}
	return d.apply(Changes{Upsert: all, Expunged: gone})
}

func (d *model) uids() []uint32 {
	var out []uint32
	for u := range d.msgs {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

func (d *model) changesSince(since uint64) []Change {
	var out []Change
	for u, e := range d.msgs {
		if e.modseq > since {
			out = append(out, Change{UID: u, ModSeq: e.modseq, Flags: e.flags})
		}
	}
	for _, c := range d.expunged {
		if c.ModSeq > since {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Change) int { return int(int64(a.ModSeq) - int64(b.ModSeq)) })
	return out
}

// Random operations on a Mailbox and on the model agree, in every width
// of the packed arrays, and the state holds one entry per message and per
// expunge when most changes are flag changes of the same few messages.
func TestStateCompactionAgreesWithModel(t *testing.T) {
	flagSets := [][]string{
		nil, {`\Seen`}, {`\SEEN`, `\Recent`}, {`\Flagged`}, {`\Seen`, `\Flagged`},
		{`$Label1`}, {`\Deleted`, `\Seen`}, {`\answered`},
	}
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			m, d := New(1), newModel()
			// Seed 1 starts narrow and widens as it goes; the others
			// start with the arrays as wide as they get.
			switch seed {
			case 2:
				m.flags.widen(2)
				m.mods.widen(4)
			case 3:
				m.flags.widen(4)
				m.mods.widen(8)
			}
			next := uint32(1)
			check := func(step int) {
				t.Helper()
				probes := 1
				if step%50 == 0 {
					probes = 4
				}
				if m.HighestModSeq() != d.highest {
					t.Fatalf("step %d: HIGHESTMODSEQ %d, model %d", step, m.HighestModSeq(), d.highest)
				}
				if got, want := m.Snapshot().UIDs, d.uids(); !slices.Equal(got, want) {
					t.Fatalf("step %d: UIDs %v, model %v", step, got, want)
				}
				for k := 0; k < probes; k++ {
					since := d.highest - min(d.highest, rng.Uint64N(64))
					if k == 1 {
						since = 0
					} else if k > 1 {
						since = rng.Uint64N(d.highest + 2)
					}
					got, want := changes(m, since), d.changesSince(since)
					if len(got) == 0 && len(want) == 0 {
						continue
					}
					if !reflect.DeepEqual(got, want) {
						t.Fatalf("step %d: ChangesSince(%d):\n got %+v\nwant %+v", step, since, got, want)
					}
				}
			}
			for step := 0; step < 5000; step++ {
				var c Changes
				live := d.uids()
				switch op := rng.IntN(100); {
				case op < 2: // reconcile with a mutated full list
					var all []Message
					for _, u := range live {
						if rng.IntN(20) == 0 {
							continue // expunged upstream
						}
						f := d.msgs[u].flags
						if rng.IntN(5) == 0 {
							f = flagSets[rng.IntN(len(flagSets))]
						}
						all = append(all, Message{UID: u, Flags: f})
					}
					for k := rng.IntN(3); k > 0; k-- {
						all = append(all, Message{UID: next, Flags: flagSets[rng.IntN(len(flagSets))]})
						next++
					}
					if got, want := applied(m.Reconcile(all)), d.reconcile(all); got != want {
						t.Fatalf("step %d: Reconcile reported %v, model %v", step, got, want)
					}
					check(step)
					continue
				case op < 10 || len(live) < 5: // new messages
					for k := 1 + rng.IntN(3); k > 0; k-- {
						c.Upsert = append(c.Upsert, Message{UID: next, Flags: flagSets[rng.IntN(len(flagSets))]})
						next++
					}
				case op < 12: // expunges, some unknown
					for k := 1 + rng.IntN(2); k > 0; k-- {
						c.Expunged = append(c.Expunged, uint32(rng.IntN(int(next)+2)))
					}
				default: // flag changes of a few hot messages, some repeated in one batch
					for k := 1 + rng.IntN(4); k > 0; k-- {
						u := live[rng.IntN(min(len(live), 8))]
						c.Upsert = append(c.Upsert, Message{UID: u, Flags: flagSets[rng.IntN(len(flagSets))]})
					}
					if rng.IntN(30) == 0 {
						c.Expunged = append(c.Expunged, live[rng.IntN(len(live))])
					}
				}
				if got, want := applied(m.Apply(c)), d.apply(c); got != want {
					t.Fatalf("step %d: Apply(%+v) reported %v, model %v", step, c, got, want)
				}
				check(step)
			}
			checkSize(t, m, len(d.msgs), len(d.expunged))
			t.Logf("%d messages (flags %d, mod-sequences %d bytes each), %d expunges, HIGHESTMODSEQ %d",
				len(d.msgs), m.flags.w, m.mods.w, len(d.expunged), d.highest)
		})
	}
}

// Many flag changes of few messages keep the state's memory bounded: one
// entry per message, however many changes.
func TestStateLogBoundedUnderFlagChurn(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, seqUIDs(1, 300)...)})
	for i := 0; i < 100_000; i++ {
		f := []string{`\Flagged`}
		if (i/300)%2 == 1 {
			f = nil
		}
		m.Apply(Changes{Upsert: msgs(f, uint32(1+i%300))})
	}
	if m.HighestModSeq() != 1+300+100_000 {
		t.Fatalf("HIGHESTMODSEQ = %d", m.HighestModSeq())
	}
	checkSize(t, m, 300, 0)
	if n := len(changes(m, 0)); n != 300 {
		t.Fatalf("ChangesSince(0) = %d changes, want 300", n)
	}
}

// Concurrent writers and readers (run with -race): readers always see a
// consistent state, with modseqs strictly increasing within one
// ChangesSince.
func TestStateConcurrentUse(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, seqUIDs(1, 100)...)})
	var writers, readers sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 2; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; i < 2000; i++ {
				u := uint32(1 + (i*7+w)%100)
				m.Apply(Changes{Upsert: []Message{{UID: u, Flags: []string{fmt.Sprint("$k", i%3)}}}})
			}
		}()
	}
	errs := make(chan error, 1)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				snap := m.Snapshot()
				last := uint64(0)
				seen := map[uint32]bool{}
				m.ChangesSince(snap.Highest-min(snap.Highest, 300), func(c Change) {
					if c.ModSeq <= last || seen[c.UID] {
						report(fmt.Errorf("out of order or repeated: %+v after %d", c, last))
					}
					last = c.ModSeq
					seen[c.UID] = true
				})
				if len(snap.UIDs) != 100 {
					report(fmt.Errorf("snapshot of %d messages", len(snap.UIDs)))
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// TestStateBase: a state knows every change after its base, which NewAt
// sets and Restore derives from the oldest saved entry.
func TestStateBase(t *testing.T) {
	m := NewAt(7, 1000)
	if m.Base() != 1000 || m.HighestModSeq() != 1000 {
		t.Fatalf("NewAt: base %d highest %d", m.Base(), m.HighestModSeq())
	}
	m.Apply(Changes{Upsert: []Message{{UID: 1}, {UID: 2, Flags: []string{`\Seen`}}}})
	if got := m.HighestModSeq(); got != 1002 {
		t.Fatalf("highest %d, want 1002", got)
	}
	if New(7).Base() != 1 || NewAt(7, 0).Base() != 1 {
		t.Fatal("base below 1")
	}
	var saved []statestore.Batch
	m = NewAt(7, 500)
	m.SetPersister(func(b statestore.Batch) error { saved = append(saved, b); return nil })
	m.Apply(Changes{Upsert: []Message{{UID: 1}, {UID: 2}, {UID: 3}}}) // 501..503
	m.Apply(Changes{Expunged: []uint32{1}})                           // 504
	sv := &statestore.Saved{UIDValidity: 7, Highest: m.HighestModSeq()}
	for _, b := range saved {
		for _, u := range b.Upsert {
			if u.UID != 1 {
				sv.Messages = append(sv.Messages, u)
			}
		}
		sv.Expunged = append(sv.Expunged, b.Expunged...)
	}
	r := Restore(sv)
	// The oldest entry left is UID 2 at 502: the restored log is complete
	// after 501, one later than the original's 500 (conservative).
	if r.Base() != 501 || r.HighestModSeq() != 504 {
		t.Fatalf("restored: base %d highest %d", r.Base(), r.HighestModSeq())
	}
}

// applied is Apply's or Reconcile's change report for a state that must
// not fail to save.
func applied(changed bool, err error) bool {
	if err != nil {
		panic(err)
	}
	return changed
}

// TestSaveFailureTakesBatchBack: a batch the persister cannot save leaves
// the state exactly as it was (mod-sequences, messages, log); the next save
// after a failure is a full one (the store may have lost the mailbox), and
// the retried changes get the same mod-sequences, since none was told.
func TestSaveFailureTakesBatchBack(t *testing.T) {
	m := NewAt(7, 100)
	var saved []statestore.Batch
	failures := 0
	m.SetPersister(func(b statestore.Batch) error {
		if failures > 0 {
			failures--
			return statestore.ErrNoState
		}
		saved = append(saved, b)
		return nil
	})
	applied(m.Apply(Changes{Upsert: msgs(nil, 1, 2, 3)})) // 101..103
	if len(saved) != 1 || !saved[0].Reset || len(saved[0].Upsert) != 3 {
		t.Fatalf("first save %+v, want the whole state", saved)
	}
	snap := m.Snapshot()
	failures = 2 // the incremental save and the full one
	changed, err := m.Apply(Changes{Upsert: msgs([]string{`\Seen`}, 1, 4), Expunged: []uint32{2}})
	if !errors.Is(err, statestore.ErrNoState) || changed {
		t.Fatalf("Apply with a failing store = %v, %v; want false and the store's error", changed, err)
	}
	if got := m.Snapshot(); got.Highest != snap.Highest || !slices.Equal(got.UIDs, snap.UIDs) {
		t.Fatalf("after a failed save: %+v, want %+v", got, snap)
	}
	if f, ms, ok := m.Flags(1); len(f) != 0 || ms != 101 || !ok {
		t.Fatalf("UID 1 after a failed save: %v at %d", f, ms)
	}
	if _, _, ok := m.Flags(4); ok {
		t.Fatal("UID 4 added by a failed save")
	}
	if _, _, ok := m.Flags(2); !ok {
		t.Fatal("UID 2 expunged by a failed save")
	}
	if c := changes(m, 103); len(c) != 0 {
		t.Fatalf("changes after a failed save: %+v", c)
	}
	// After a failure the next save is a full one.
	saved = nil
	if !applied(m.Apply(Changes{Upsert: msgs([]string{`\Seen`}, 1, 4), Expunged: []uint32{2}})) {
		t.Fatal("no change")
	}
	want := statestore.Batch{Reset: true, UIDValidity: 7, Highest: 106, Base: 100, MaxUID: 4,
		Upsert: []statestore.Message{
			{UID: 1, ModSeq: 104, Flags: []string{`\Seen`}},
			{UID: 3, ModSeq: 103, Flags: []string{}},
			{UID: 4, ModSeq: 105, Flags: []string{`\Seen`}},
		}}
	if len(saved) != 1 || len(saved[0].Expunged) != 1 || saved[0].Expunged[0].UID != 2 || saved[0].Expunged[0].ModSeq != 106 {
		t.Fatalf("saved %+v, want one full batch with the expunge of UID 2 at 106", saved)
	}
	saved[0].Expunged = nil
	if !reflect.DeepEqual(saved[0], want) {
		t.Fatalf("full save\n got %+v\nwant %+v", saved[0], want)
	}
	if c := changes(m, 103); len(c) != 3 || !reflect.DeepEqual(c[2], Change{UID: 2, ModSeq: 106, Expunged: true}) {
		t.Fatalf("changes after the retry: %+v", c)
	}
	// An incremental save that fails (the store was rebuilt and lost the
	// mailbox) is retried at once as a full one.
	saved, failures = nil, 1
	applied(m.Apply(Changes{Upsert: msgs(nil, 5)}))
	if len(saved) != 1 || !saved[0].Reset || len(saved[0].Upsert) != 4 || saved[0].Highest != 107 {
		t.Fatalf("saved %+v, want the whole state at 107", saved)
	}
}

// TestExpungeLogPruned: the expunge log is bounded by count (pruned to 7/8
// of the bound when exceeded) and by age; the base rises past what was
// dropped, so clients that knew the mailbox before get a full resync, and
// what is saved drops the pruned expunges too. Before, the log grew for
// the life of the mailbox, in memory and on disk.
func TestExpungeLogPruned(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock = func() time.Time { return now }
	defer func() { clock = time.Now }()
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewAt(1, 100)
	m.SetPersister(func(b statestore.Batch) error { return store.Save("k", b) })
	m.SetLogLimits(LogLimits{MaxExpunges: 16, MaxAge: time.Hour})
	applied(m.Apply(Changes{Upsert: msgs(nil, seqUIDs(1, 40)...)})) // 101..140
	for u := uint32(1); u <= 16; u++ {
		applied(m.Apply(Changes{Expunged: []uint32{u}})) // 141..156
	}
	if m.Base() != 100 {
		t.Fatalf("base %d with 16 expunges (the bound), want 100", m.Base())
	}
	applied(m.Apply(Changes{Expunged: []uint32{17}})) // 157: 17 > 16, down to 14
	if got := m.Base(); got != 143 {
		t.Fatalf("base %d after the bound was passed, want 143 (expunges of UIDs 1-3 dropped)", got)
	}
	var x []uint32
	m.ChangesSince(m.Base(), func(c Change) {
		if c.Expunged {
			x = append(x, c.UID)
		}
	})
	if want := seqUIDs(4, 17); !slices.Equal(x, want) {
		t.Fatalf("expunges left %v, want %v", x, want)
	}
	if m.MaxUID() != 40 {
		t.Fatalf("MaxUID %d, want 40", m.MaxUID())
	}
	sv, err := store.Load("k")
	if err != nil {
		t.Fatal(err)
	}
	if sv.Base != 143 || len(sv.Expunged) != 14 || sv.Expunged[0].UID != 4 || sv.MaxUID != 40 {
		t.Fatalf("saved base %d, %d expunges from UID %d, MaxUID %d; want 143, 14 from 4, 40", sv.Base, len(sv.Expunged), sv.Expunged[0].UID, sv.MaxUID)
	}
	// Age: two hours on, the next change drops every older expunge.
	now = now.Add(2 * time.Hour)
	applied(m.Apply(Changes{Expunged: []uint32{40}})) // 158
	if got := m.Base(); got != 157 {
		t.Fatalf("base %d after the expunges aged, want 157", got)
	}
	r := Restore(mustLoad(t, store))
	if r.Base() != 157 || r.MaxUID() != 40 || len(changes(r, 157)) != 1 {
		t.Fatalf("restored: base %d, MaxUID %d, changes %+v", r.Base(), r.MaxUID(), changes(r, 157))
	}
	// A state restored with old expunges is pruned by SetLogLimits.
	now = now.Add(2 * time.Hour)
	r.SetLogLimits(LogLimits{MaxAge: time.Hour})
	if r.Base() != 158 {
		t.Fatalf("restored state's base %d after SetLogLimits, want 158", r.Base())
	}
}

func mustLoad(t *testing.T, s *statestore.Bolt) *statestore.Saved {
	t.Helper()
	sv, err := s.Load("k")
	if err != nil || sv == nil {
		t.Fatalf("Load: %v, %v", sv, err)
	}
	return sv
}

// TestStateEach: Each visits the messages it is given that the state has,
// in order, with their flags and mod-sequences, and sees a batch applied
// meanwhile whole or not at all.
func TestStateEach(t *testing.T) {
	m := New(1)
	m.Apply(Changes{Upsert: msgs(nil, 2, 4, 6)})
	m.Apply(Changes{Upsert: []Message{{UID: 4, Flags: []string{`\seen`}}}})
	var got []string
	m.Each([]uint32{1, 2, 4, 5, 6}, func(i int, flags []string, modseq uint64) {
		got = append(got, fmt.Sprint(i, flags, modseq))
	})
	if want := []string{"1 [] 2", "2 [\\Seen] 5", "4 [] 4"}; !slices.Equal(got, want) {
		t.Errorf("Each: %q, want %q", got, want)
	}

	// One batch flips two messages' flags together; Each never sees one
	// flipped without the other.
	uids := seqUIDs(1, 1000)
	m = New(1)
	m.Apply(Changes{Upsert: msgs(nil, uids...)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			var f []string
			if i%2 == 0 {
				f = []string{`\Seen`}
			}
			m.Apply(Changes{Upsert: msgs(f, 1, 1000)})
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		var first, last []string
		m.Each(uids, func(i int, flags []string, _ uint64) {
			switch i {
			case 0:
				first = flags
			case len(uids) - 1:
				last = flags
			}
		})
		if !slices.Equal(first, last) {
			t.Fatalf("Each saw half a batch: %v and %v", first, last)
		}
	}
}
