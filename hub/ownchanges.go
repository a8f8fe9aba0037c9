package hub

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/lemonproxy/lemonproxy/syncstate"
)

// New messages a session's own command added (APPEND, COPY into the
// mailbox), told to the box by the session instead of found by a round
// trip of the watcher.
//
// A client hears of its own change before the command's tagged answer, as
// on a direct connection. The session used to ask for a round trip
// (Subscription.Sync) after every APPEND and wait for it: the watcher's
// NOOP, then its fetch of the new message, each behind the upstream's
// locks that other sessions' commands held (docs/per-command.md, "Fourth
// pass"). The upstream's answer to the command already names the new
// messages for certain: APPENDUID and COPYUID (RFC 4315) give their UIDs,
// and their flags are the APPEND's flag list or the copied messages'.
//
// They are placed only where nothing the state does not know can lie
// before them: their UIDs must follow, without a gap, the largest UID the
// state ever knew (Mailbox.MaxUID, which counts expunged messages too).
// The watcher's fetches of new messages go in UID order, so every message
// up to that is known: one of those the session tells of is in the state
// already (the watcher was quicker) or was expunged since, and needs
// nothing. Anything else (another client appended meanwhile, unseen by
// the watcher) is refused and the session asks for the round trip as
// before.
//
// The watcher's connection reports the same messages later, in its own
// sequence view (watch.view), which is kept apart from the state. Until
// it does, its reports are ordered against them, as against a claim:
//
//   - a new message the watcher reports is confirmed: the report (UID
//     and flags) is the truth, and applied if the flags differ (a keyword
//     the upstream spells otherwise, say);
//   - a new message the watcher has not reported once a round trip that
//     started after it was told has completed was expunged before the
//     watcher could see it: that trip's NOOP and fetch of new messages
//     would have found it. It is removed from the state then. The box
//     asks for that round trip itself, so no such message stays for long,
//     but no session waits for it.
//
// A full resync forgets them all: its listing started after them. At
// most maxClaims are remembered; beyond, the session falls back to a
// round trip.
//
// Two assumptions, both the claims' too: the watcher's connection and
// the session's reach the same store (a replicated backend that lags
// would have a told message removed and later added back), and the
// upstream tells the watcher of new messages' UIDs in order (an
// unsolicited FETCH with the UID of a later message before an earlier
// one's would put MaxUID past a message the state never saw; the watcher
// enables nothing, CONDSTORE included, that makes Dovecot send those).
//
// The same was tried for EXPUNGE and dropped: see docs/per-command.md.

// Added hands the box the messages the session's own command (APPEND,
// COPY) added, as the upstream's answer named them, in ascending UID
// order. They become part of the state at once, with mod-sequences of
// their own, and every watching session hears of them; those the state
// knew already are left as they are. ok is false when the box cannot be
// sure where they go (see the comment above), and nothing is applied: the
// caller then asks for a round trip (Sync).
func (s *Subscription) Added(ctx context.Context, msgs []syncstate.Message) (ok bool, err error) {
	if len(msgs) == 0 {
		return true, nil
	}
	r := s.box.own(ctx, &claimReq{state: s.state, added: msgs, reply: make(chan claimReply, 1)})
	return r.ok, r.err
}

// applyAdded applies one Added request. Only the box's goroutine calls
// it.
func (b *box) applyAdded(req *claimReq) {
	st := b.state()
	if st == nil || st != req.state {
		req.reply <- claimReply{err: ErrUIDValidity}
		return
	}
	// Those the state knew already (the watcher was quicker) are there,
	// or were expunged since: nothing to add.
	known := st.MaxUID()
	msgs := req.added
	for len(msgs) > 0 && msgs[0].UID <= known {
		msgs = msgs[1:]
	}
	if len(msgs) == 0 {
		req.reply <- claimReply{ok: true}
		return
	}
	for i, m := range msgs {
		if m.UID != known+1+uint32(i) {
			req.reply <- claimReply{} // not the next UIDs: a round trip decides
			return
		}
	}
	if len(b.added)+len(msgs) > maxClaims {
		req.reply <- claimReply{}
		return
	}
	changed, err := st.Apply(syncstate.Changes{Upsert: msgs})
	if err != nil {
		// Not stored, so not applied: the watcher's round trip reports
		// the messages later.
		req.reply <- claimReply{err: fmt.Errorf("hub: %s in %q: %w", req, b.key.Mailbox, err)}
		return
	}
	if b.added == nil {
		b.added = map[uint32]uint64{}
	}
	for _, m := range msgs {
		b.added[m.UID] = b.trips
	}
	// The round trip that confirms them (or finds them gone).
	b.needTrip = true
	if changed {
		b.lastWait.Store(0)
		b.lastRead.Store(time.Now().UnixNano())
		b.notifyAll()
	}
	req.reply <- claimReply{ok: true}
}

// resolveAdded is called with resolveClaims when round trip k has
// completed and its answers are committed: a new message a session told
// of before k began that the watcher has not reported by now is gone (see
// the comment at the top).
func (b *box) resolveAdded(k uint64) error {
	var gone []uint32
	for uid, mark := range b.added {
		if mark < k {
			delete(b.added, uid)
			gone = append(gone, uid)
		}
	}
	st := b.state()
	if len(gone) == 0 || st == nil {
		return nil
	}
	slices.Sort(gone)
	changed, err := st.Apply(syncstate.Changes{Expunged: gone})
	if err != nil {
		return fmt.Errorf("hub: removing %d new messages the upstream no longer has in %q: %w", len(gone), b.key.Mailbox, err)
	}
	if changed {
		b.notifyAll()
	}
	return nil
}
