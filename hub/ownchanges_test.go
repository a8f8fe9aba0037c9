package hub

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/syncstate"
)

func added(t *testing.T, sub *Subscription, msgs ...syncstate.Message) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok, err := sub.Added(ctx, msgs)
	if err != nil {
		t.Fatalf("Added: %v", err)
	}
	return ok
}

// watchIdle watches INBOX on a fake upstream holding uids, with a hub of
// the default settings, and returns once the watcher is in IDLE.
func watchIdle(t *testing.T, uids ...uint32) (*fakeUpstream, *Subscription) {
	t.Helper()
	u := startFake(t, true, uids...)
	sub, _ := watchLogged(t, testHub(t, Config{}), u.dial(), uids[0])
	u.expect("IDLE")
	return u, sub
}

func msg(uid uint32, flags ...string) syncstate.Message {
	return syncstate.Message{UID: uid, Flags: flags}
}

func flagsOf(st *syncstate.Mailbox, uid uint32) (string, bool) {
	f, _, ok := st.Flags(uid)
	return strings.Join(f, " "), ok
}

// TestAddedAtOnce: new messages a session tells the box of are in the
// state when Added returns, before the watcher has sent anything, and
// every subscriber is notified; the watcher's own round trip, which the
// box asks for, then confirms them without a second change.
func TestAddedAtOnce(t *testing.T) {
	u := startFake(t, true, 10, 11)
	h := testHub(t, Config{})
	sub, _ := watchLogged(t, h, u.dial(), 10)
	n := newNotifier()
	other, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, u.dial(), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	u.expect("IDLE")
	st := sub.State()
	before := st.HighestModSeq()
	// The upstream has them before the session tells of them (APPENDUID
	// comes with its answer); the watcher has not looked yet.
	u.mu.Lock()
	u.uids = append(u.uids, 12, 13)
	u.flags[12], u.flags[13] = `\Seen`, ""
	u.mu.Unlock()
	// The answer to the round trip that confirms them (the box asks for
	// it at once): the upstream reports the two messages.
	u.answerNextNoop("* 4 EXISTS")
	if !added(t, sub, msg(12, `\Seen`), msg(13)) {
		t.Fatal("Added(12, 13) refused")
	}
	if f, ok := flagsOf(st, 12); !ok || f != `\Seen` {
		t.Fatalf("UID 12 after Added: %q, %v", f, ok)
	}
	if _, ok := flagsOf(st, 13); !ok {
		t.Fatal("UID 13 not in the state after Added")
	}
	if got := st.HighestModSeq(); got != before+2 {
		t.Errorf("HIGHESTMODSEQ %d after two new messages, want %d", got, before+2)
	}
	waitFor(t, n, "the other subscriber's notification", func() bool { _, ok := flagsOf(other.State(), 13); return ok })
	u.expect("DONE")
	u.expect("NOOP")
	u.expect("IDLE")
	after := st.HighestModSeq()
	if after != before+2 {
		t.Errorf("HIGHESTMODSEQ %d after the watcher confirmed, want %d: the same messages reported again", after, before+2)
	}
	// Nothing stands any more: a later round trip changes nothing.
	if err := sub.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := flagsOf(st, 13); !ok || st.HighestModSeq() != after {
		t.Errorf("after one more round trip: UID 13 present %v, HIGHESTMODSEQ %d, want %d", ok, st.HighestModSeq(), after)
	}
}

// TestAddedOnlyNext: the box takes new messages only where nothing it does
// not know can lie before them: UIDs right after the largest it knew,
// without a gap. Anything else is refused and leaves the state as it was;
// UIDs it knew already (present, or expunged since) are taken as they are,
// changing nothing.
func TestAddedOnlyNext(t *testing.T) {
	u, sub := watchIdle(t, 10, 11)
	st := sub.State()
	before := st.HighestModSeq()
	for _, c := range []struct {
		name string
		msgs []syncstate.Message
	}{
		{"a gap before it (UID 12 unknown)", []syncstate.Message{msg(13)}},
		{"a gap between them", []syncstate.Message{msg(12), msg(14)}},
		{"out of order", []syncstate.Message{msg(13), msg(12)}},
		{"a known UID, then a gap", []syncstate.Message{msg(11), msg(13)}},
	} {
		if added(t, sub, c.msgs...) {
			t.Errorf("%s: taken", c.name)
		}
	}
	if !added(t, sub, msg(11, `\Seen`)) {
		t.Error("a UID the state has refused")
	}
	if f, _ := flagsOf(st, 11); f != "" {
		t.Errorf("UID 11 told of again: flags %q, want the state's own", f)
	}
	if st.HighestModSeq() != before || st.MaxUID() != 11 {
		t.Fatalf("the state changed: HIGHESTMODSEQ %d (was %d), MaxUID %d", st.HighestModSeq(), before, st.MaxUID())
	}
	u.quiet(200 * time.Millisecond) // and asked for no round trip
	// An expunged UID still counts as known: the next one is 12.
	u.answerNextNoop("* 2 EXPUNGE")
	u.mu.Lock()
	u.uids = u.uids[:1]
	u.mu.Unlock()
	if err := sub.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	before = st.HighestModSeq()
	if !added(t, sub, msg(11)) || st.HighestModSeq() != before {
		t.Error("an expunged UID refused, or taken as new")
	}
	if _, ok := flagsOf(st, 11); ok {
		t.Error("an expunged UID came back")
	}
	u.mu.Lock()
	u.uids = append(u.uids, 12)
	u.mu.Unlock()
	u.answerNextNoop("* 2 EXISTS") // for the confirming round trip
	if !added(t, sub, msg(11), msg(12)) {
		t.Error("UIDs 11 (expunged) and 12 refused")
	}
	if _, ok := flagsOf(st, 12); !ok {
		t.Error("UID 12 not in the state")
	}
}

// TestAddedGoneBeforeSeen: a new message that was expunged before the
// watcher could see it is removed from the state by the round trip the
// box asks for, and subscribers hear of it.
func TestAddedGoneBeforeSeen(t *testing.T) {
	u, sub := watchIdle(t, 10)
	st := sub.State()
	release := u.holdNextNoop()
	if !added(t, sub, msg(11, `\Flagged`)) {
		t.Fatal("Added(11) refused")
	}
	pos := st.HighestModSeq()
	// The upstream does not have it any more: its NOOP, held until the
	// mod-sequence is read, reports nothing.
	u.expect("DONE")
	u.expect("NOOP held")
	release()
	u.expect("NOOP")
	u.expect("IDLE")
	if f, ok := flagsOf(st, 11); ok {
		t.Fatalf("UID 11 still in the state (%q) after a round trip that did not see it", f)
	}
	c := changeOf(t, st, pos)
	if !c.Expunged || c.UID != 11 {
		t.Errorf("change after the round trip: %+v, want UID 11 expunged", c)
	}
}

// TestAddedFlagsCorrected: when the upstream stored the new message with
// other flags than the session said, the watcher's report of it is the
// truth.
func TestAddedFlagsCorrected(t *testing.T) {
	u, sub := watchIdle(t, 10)
	st := sub.State()
	u.mu.Lock()
	u.uids = append(u.uids, 11)
	u.flags[11] = `$Forwarded`
	u.mu.Unlock()
	u.answerNextNoop("* 2 EXISTS")
	if !added(t, sub, msg(11, `$forwarded`)) {
		t.Fatal("Added(11) refused")
	}
	u.expect("DONE")
	u.expect("NOOP")
	u.expect("IDLE")
	if f, _ := flagsOf(st, 11); f != `$Forwarded` {
		t.Errorf("UID 11's flags after the watcher reported it: %q, want $Forwarded", f)
	}
}

// TestAddedOtherValidity: a session that follows a state the box has
// replaced (the UIDVALIDITY changed) is told so.
func TestAddedOtherValidity(t *testing.T) {
	_, sub := watchIdle(t, 10)
	stale := &Subscription{box: sub.box, state: syncstate.New(99)}
	_, err := stale.Added(context.Background(), []syncstate.Message{msg(11)})
	if !errors.Is(err, ErrUIDValidity) {
		t.Fatalf("Added on a replaced state: %v, want ErrUIDValidity", err)
	}
}
