package condstore

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/syncstate"
)

// TestExpungedModSeqNeverGoesBack: a message expunged in the state and not
// yet for a lagging client (a FETCH of it answered by a connection that
// still has it) is reported with the MODSEQ just below its expunge: not
// below what an up-to-date session was told (the flag change at 3), not at
// or above the expunge the client has not heard of (5). Before the fix the
// lagging client's own position (1) was reported: MODSEQ went from 3 back
// to 1, as imaptest's stress mode saw ("MODSEQ dropped").
func TestExpungedModSeqNeverGoesBack(t *testing.T) {
	st := syncstate.New(7)
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 10}, {UID: 11}}})                   // modseqs 2, 3
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 10, Flags: []string{`\Flagged`}}}}) // 4
	_, told, _ := st.Flags(10)
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 11, Flags: []string{`\Seen`}}}}) // 5
	st.Apply(syncstate.Changes{Expunged: []uint32{10}})                                           // 6
	lagging := uint64(3)                                                                          // the client knows the mailbox as of modseq 3
	got := expungedModSeq(st, lagging, 10)
	if got < told || got >= 6 {
		t.Errorf("expunged UID 10, told MODSEQ %d before, expunged at 6: reported %d", told, got)
	}
	if got != 5 {
		t.Errorf("reported %d, want 5 (just below the expunge)", got)
	}
	// A UID the log does not show expunged after pos: the client's own
	// position, as before.
	if got := expungedModSeq(st, 6, 99); got != 6 {
		t.Errorf("unknown UID: %d, want 6", got)
	}
}
