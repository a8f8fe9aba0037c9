package hub

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
)

// failingStore is the real Bolt store behind a switch that makes Save fail
// as a full disk does.
type failingStore struct {
	*statestore.Bolt
	fail  atomic.Bool
	fails atomic.Int32
}

func (s *failingStore) Save(key string, b statestore.Batch) error {
	if s.fail.Load() {
		s.fails.Add(1)
		return &pathError{syscall.ENOSPC}
	}
	return s.Bolt.Save(key, b)
}

type pathError struct{ err error }

func (e *pathError) Error() string { return "write state.db: " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// TestSaveFailureTellsNobody: a change the store cannot save is not applied
// to the state, so no session hears of it and no mod-sequence is handed out
// that is not on disk; the watcher retries (reconnects, resyncs) and the
// change arrives once the store works again, saved with the mod-sequence
// clients are told. Before, the failure was logged and the change told.
func TestSaveFailureTellsNobody(t *testing.T) {
	e := newEnv(t, "alice")
	e.appendMsg("alice", "INBOX", "one")
	bolt, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	st := &failingStore{Bolt: bolt}
	h := testHub(t, Config{Store: st, PollInterval: time.Hour, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	n := newNotifier()
	key := Key{"alice", "INBOX"}
	sub, err := h.Watch(context.Background(), key, e.dial("alice", true), n.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	state := sub.State()
	told := state.HighestModSeq()
	notified := n.n.Load()

	st.fail.Store(true)
	e.appendMsg("alice", "INBOX", "two")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sub.Sync(ctx); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Sync while the store fails: %v, want the save's error", err)
	}
	// The watcher keeps retrying (reconnect, full resync), and fails.
	for st.fails.Load() < 3 {
		if ctx.Err() != nil {
			t.Fatalf("only %d failed saves", st.fails.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if got := state.HighestModSeq(); got != told {
		t.Fatalf("HIGHESTMODSEQ %d while the store fails, want %d (nothing saved)", got, told)
	}
	if got := len(state.Snapshot().UIDs); got != 1 {
		t.Fatalf("%d messages while the store fails, want 1", got)
	}
	if c := since(state, told); len(c) != 0 {
		t.Fatalf("changes told while the store fails: %v", c)
	}
	if got := n.n.Load(); got != notified {
		t.Fatalf("sessions notified %d times while the store fails", got-notified)
	}
	if err := sub.Err(); err != nil {
		t.Fatalf("the subscription failed: %v", err)
	}

	st.fail.Store(false)
	waitFor(t, n, "the change after the store works again", func() bool { return len(state.Snapshot().UIDs) == 2 })
	if c := since(state, told); len(c) != 1 || c[0] != "2:" {
		t.Fatalf("changes since %d: %v, want [2:]", told, c)
	}
	saved, err := bolt.Load((&box{key: key}).storeKey())
	if err != nil {
		t.Fatal(err)
	}
	if snap := state.Snapshot(); saved == nil || saved.Highest != snap.Highest || len(saved.Messages) != 2 {
		t.Fatalf("saved %+v, the sessions are told HIGHESTMODSEQ %d and 2 messages", saved, snap.Highest)
	}
}
