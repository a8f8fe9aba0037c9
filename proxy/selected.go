package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// selectedMailbox is what a session knows of its selected mailbox.
//
// The session holds no upstream connection of its own: changes come from the
// hub's watcher, through the shared syncstate, and the session's client
// learns of them only when the protocol allows (at the end of a command, or
// at once during IDLE). view is the message sequence as the client knows it;
// it usually aliases the state's immutable snapshot, so an idle session costs
// no memory per message. pos is the mod-sequence up to which the client has
// been told everything.
type selectedMailbox struct {
	name     string
	readOnly bool
	sub      *hub.Subscription
	state    *syncstate.Mailbox
	view     seqView
	pos      uint64
	news     atomic.Bool // set by the hub when the state changed
	// flagList is the mailbox's flags as the client was last told them
	// (SELECT's FLAGS response, and every FLAGS after it), by lower-case
	// name: a FETCH with a keyword not in it is preceded by a new FLAGS
	// response (RFC 3501 7.2.6).
	flagList map[string]string
	// recent is the messages recent in this session (recent.go), and
	// toldRecent how many of them the client was last told of.
	recent     recentSet
	toldRecent int
	// owed is messages whose flag changes a delivery held back because a
	// STORE sent ahead of its turn names them (storeAheadNames): its
	// answer, not read yet, tells the client of them, and a change the
	// watcher saw first is not told as someone else's (a silent STORE's
	// least of all). Each is told after that STORE's answers, unless they
	// told it.
	owed map[uint32]bool
}

// noteFlagList records a FLAGS response the client is sent.
func (m *selectedMailbox) noteFlagList(segs []imapcodec.Segment) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	p.Atom() // *
	p.SP()
	p.Atom() // FLAGS
	p.SP()
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return
	}
	m.flagList = map[string]string{}
	for _, f := range l {
		if a, ok := f.(imapcodec.Atom); ok {
			m.flagList[strings.ToLower(string(a))] = string(a)
		}
	}
}

// newKeywords returns the FLAGS response to send before a FETCH with
// these flags when one of them is a keyword the client was not told of,
// and records it; nil otherwise. System flags are always known.
func (m *selectedMailbox) newKeywords(flags []string) []byte {
	if m.flagList == nil {
		return nil // no FLAGS seen (yet): nothing to compare with
	}
	added := false
	for _, f := range flags {
		if strings.HasPrefix(f, `\`) {
			continue
		}
		if _, ok := m.flagList[strings.ToLower(f)]; !ok {
			m.flagList[strings.ToLower(f)] = f
			added = true
		}
	}
	if !added {
		return nil
	}
	list := slices.Sorted(maps.Values(m.flagList))
	return fmt.Appendf(nil, "* FLAGS (%s)\r\n", strings.Join(list, " "))
}

// notify is the hub's callback: note the news, and wake the session if
// its client may hear of them between commands (see Updates).
func (s *Session) notify(m *selectedMailbox) func() {
	return func() {
		m.news.Store(true)
		if s.currentUpdates() != UpdatesWithCommands {
			s.Wake()
		}
	}
}

// watcherDial returns the function the hub uses to open the watcher's
// connection. It captures the credentials, not the session.
func (s *Session) watcherDial() hub.DialFunc {
	srv := s.srv
	account, user, pass := s.account, s.user, s.pass
	return func(ctx context.Context) (*upstream.Conn, error) {
		c, _, err := srv.dialLogin(ctx, account, user, pass)
		return c, err
	}
}

// closeMailbox leaves the selected state's bookkeeping.
func (s *Session) closeMailbox() {
	if s.mbox != nil {
		s.mbox.sub.Close()
		s.mbox = nil
	}
}

// deliver tells the client what changed in the selected mailbox since it
// was last told: EXPUNGE (only when allowExpunge; otherwise everything waits,
// so sequence numbers stay consistent), FETCH FLAGS, EXISTS. x is the
// command in flight, if any: flags its own answers told the client are not
// repeated. It reports whether it wrote anything.
func (s *Session) deliver(x *Exchange, allowExpunge bool) (bool, error) {
	m := s.mbox
	if m == nil || !m.news.Load() && len(m.owed) == 0 {
		return false, nil
	}
	if err := m.sub.Err(); err != nil {
		return false, err
	}
	// Cleared before the snapshot is taken: the hub notifies after it
	// changed the state, so a change the snapshot misses sets it again.
	m.news.Store(false)
	snap := m.state.Snapshot()
	if snap.Highest == m.pos && len(m.owed) == 0 {
		return false, nil
	}
	var expunged []uint32
	var lastExpunge uint64 // the highest mod-sequence among them
	type flagChange struct {
		uid    uint32
		flags  []string
		modseq uint64
	}
	var flagged []flagChange
	last := m.view.last()
	m.state.ChangesSince(m.pos, func(c syncstate.Change) {
		if c.ModSeq > snap.Highest {
			// Recorded after the snapshot, whose message list becomes
			// the client's view below: reported next time, against it.
			return
		}
		if c.UID > last {
			return // new: reported by EXISTS below
		}
		if m.view.seqOf(c.UID) == 0 {
			return
		}
		if c.Expunged {
			expunged = append(expunged, c.UID)
			lastExpunge = max(lastExpunge, c.ModSeq)
		} else {
			flagged = append(flagged, flagChange{c.UID, c.Flags, c.ModSeq})
		}
	})
	if m.pos < m.state.Base() {
		// The expunge log was pruned past what this client was told
		// (syncstate.LogLimits): its expunges come from comparing the
		// client's view with the snapshot instead. Flag changes are
		// complete: the log keeps every message's latest.
		expunged = expunged[:0]
		for _, uid := range m.view {
			if _, found := slices.BinarySearch(snap.UIDs, uid); !found {
				expunged = append(expunged, uid)
			}
		}
	}
	if len(expunged) > 0 && !allowExpunge {
		m.news.Store(true) // delivered at the next chance
		var b []byte
		for _, r := range s.srv.reporters {
			b = append(b, r.ExpungesHeld(s)...)
		}
		if len(b) == 0 {
			return false, nil
		}
		return true, s.Write(b)
	}
	var b []byte
	// Expunges in descending sequence order, so each number is valid
	// against the client's view at the time it reads it.
	if len(expunged) > 0 {
		slices.SortFunc(expunged, func(a, b uint32) int { return cmp.Compare(b, a) })
		seqs := make([]uint32, 0, len(expunged))
		for _, uid := range expunged {
			seqs = append(seqs, m.view.seqOf(uid))
		}
		reported := false
		for _, r := range s.srv.reporters {
			if b, reported = r.ReportExpunged(s, b, expunged, seqs); reported {
				break
			}
		}
		if !reported {
			for _, seq := range seqs {
				b = fmt.Appendf(b, "* %d EXPUNGE\r\n", seq)
			}
		}
	}
	// From here on, sequence numbers are those of the new snapshot.
	m.view = snap.UIDs
	m.pos = snap.Highest
	var lastFlag uint64 // the highest mod-sequence of the flag changes reported
	if len(m.owed) > 0 {
		// Held back at an earlier turn, and their STORE answered since:
		// their flags now, unless a change above tells them (or a later
		// delivery does: a change above m.pos).
		changed := map[uint32]bool{}
		for _, f := range flagged {
			changed[f.uid] = true
		}
		for uid := range m.owed {
			if s.storeAheadNames(uid) {
				continue
			}
			delete(m.owed, uid)
			if flags, modseq, ok := m.state.Flags(uid); ok && modseq <= m.pos && !changed[uid] {
				flagged = append(flagged, flagChange{uid, flags, modseq})
			}
		}
	}
	for _, f := range flagged {
		seq := m.view.seqOf(f.uid)
		if seq == 0 {
			continue
		}
		if x.sawFlags(f.uid, strings.Join(f.flags, " ")) {
			continue // the client just saw these in its own command's answer
		}
		if s.storeAheadNames(f.uid) {
			if m.owed == nil {
				m.owed = map[uint32]bool{}
			}
			m.owed[f.uid] = true
			continue
		}
		items := s.fetchItems(f.uid, true)
		if _, now, ok := m.state.Flags(f.uid); !ok || now != f.modseq {
			// Changed again (or expunged) since ChangesSince read it:
			// the items (CONDSTORE's MODSEQ) are the newer change's, and
			// would go out beside the older flags. That change is above
			// the snapshot; the next delivery reports it whole.
			m.news.Store(true)
			continue
		}
		b = append(b, m.newKeywords(f.flags)...)
		b = fmt.Appendf(b, "* %d FETCH (", seq)
		if items != nil {
			b = fmt.Appendf(b, "UID %d ", f.uid)
			if len(items) > 0 {
				b = append(append(b, items...), ' ')
			}
		}
		b = fmt.Appendf(b, "FLAGS (%s))\r\n", m.withRecent(f.uid, strings.Join(f.flags, " ")))
		lastFlag = max(lastFlag, f.modseq)
	}
	if m.view.last() > last {
		// New messages: the session takes those nobody was told of
		// (recent.go).
		m.takeRecent(last, m.view.last())
		b = fmt.Appendf(b, "* %d EXISTS\r\n", len(m.view))
	}
	// RECENT when the count changed: new messages taken, recent ones
	// expunged (RFC 3501 7.3.2; Dovecot sends it only then).
	b = append(b, m.recentChanged()...)
	if len(b) == 0 {
		return false, nil
	}
	for _, r := range s.srv.reporters {
		b = r.BatchDone(s, x, b, lastExpunge > lastFlag)
	}
	return true, s.Write(b)
}

// hasNews reports whether an extension asked to push or the selected
// mailbox changed since the client was last told.
func (s *Session) hasNews() bool { return s.wake.Load() || s.mbox != nil && s.mbox.news.Load() }

// ErrIdleTimeout ends a session that waited for its client past the
// autologout timer.
var ErrIdleTimeout = errors.New("client idle for too long")

// syncMailbox asks the hub's watcher to check the upstream now, waiting at
// most timeout, so the client's next delivery includes what the upstream
// knows (NOOP; after EXPUNGE, MOVE, APPEND).
func (s *Session) syncMailbox(ctx context.Context, timeout time.Duration) {
	if s.mbox == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.mbox.sub.Sync(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Debug("mailbox sync failed", "err", err)
	}
}

// syncTimeout bounds how long a command waits for the hub's watcher to
// confirm a change the session made itself.
const syncTimeout = 5 * time.Second

// beforeTagged runs just before the tagged response of a command in the
// selected state: it waits for the hub to see the command's own changes
// (EXPUNGE, MOVE, APPEND or COPY into the mailbox, when the upstream's
// answer shows it made some: translation.needsSync) unless the answer
// itself names them (tellAdded), then reports every change the protocol
// allows at this point. head is the tagged response about to be written.
func (s *Session) beforeTagged(x *Exchange, head imapcodec.ResponseHead) error {
	if s.mbox == nil {
		return nil
	}
	allowExpunge := true
	if t := x.xlate; t != nil {
		if t.needsSync(x) {
			// The upstream has answered: the command's connection goes
			// back to the pool before the wait for the watcher, so
			// that other sessions' commands need not wait for it (an
			// OnTagged hook that needs one leases again).
			s.release()
			if !s.tellAdded(x, head) {
				s.syncMailbox(context.Background(), syncTimeout)
			}
		}
		if t.resync {
			// An answer of a STORE sent ahead was older than the
			// state (staleStoreAnswer): the watcher reports what the
			// message's flags are now, and the delivery tells them.
			s.syncMailbox(context.Background(), syncTimeout)
		}
		allowExpunge = t.allowExpunge
		if t.ownChanges > 0 {
			s.ownChangesSeen(t)
		}
	}
	_, err := s.deliver(x, allowExpunge)
	return err
}

// ownChangesSeen moves the leased connection's SyncedTo past the changes
// the command's own answers made (claims: a STORE's flags, a FETCH's
// \Seen) when they are all the mailbox's state went through since the
// connection was last brought up to date. Each change gets a mod-sequence
// of its own, so if the state's HIGHESTMODSEQ is SyncedTo plus the claims
// that got one above it, nobody else changed anything meanwhile: no
// message the connection has not seen, no flags it shows older. Without
// it the session's next command on the connection ran the catch-up NOOP
// (lease.go) for the session's own change: the STORE \Deleted before an
// EXPUNGE paid a round trip to the upstream on the EXPUNGE (issue 20).
func (s *Session) ownChangesSeen(t *translation) {
	c := s.up
	if c == nil || c.Broken() || c.Selected != s.mbox.name {
		return
	}
	if h := s.mbox.state.HighestModSeq(); h > c.SyncedTo && h-c.SyncedTo == t.ownChanges {
		c.SyncedTo = h
	}
}

// firstUnseen returns the sequence number of the first message without
// \Seen, or 0.
func (m *selectedMailbox) firstUnseen() uint32 {
	for i, uid := range m.view {
		flags, _, ok := m.state.Flags(uid)
		if ok && !slices.Contains(flags, `\Seen`) {
			return uint32(i + 1)
		}
	}
	return 0
}

// writeResponse writes a whole in-memory response to the client.
func (s *Session) writeResponse(r *Response) error {
	return s.Write(imapcodec.AppendSegments(nil, r.Segments))
}
