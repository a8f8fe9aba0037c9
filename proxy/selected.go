package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
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
	view     []uint32
	pos      uint64
	news     atomic.Bool // set by the hub when the state changed
}

// seqOf returns the client's sequence number of uid, or 0.
func (m *selectedMailbox) seqOf(uid uint32) uint32 {
	i, ok := slices.BinarySearch(m.view, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// notify is the hub's callback: note the news and wake the session if it
// is waiting in IDLE.
func (s *Session) notify(m *selectedMailbox) func() {
	return func() {
		m.news.Store(true)
		if s.idling.Load() {
			s.Interrupt()
		} else if s.pushSelected.Load() != PushSelectedOff {
			s.Wake()
		}
	}
}

// watcherDial returns the function the hub uses to open the watcher's
// connection. It captures the credentials, not the session.
func (s *Session) watcherDial() hub.DialFunc {
	cfg := &s.srv.cfg.Upstream
	user, pass := s.user, s.pass
	return func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, cfg, user, pass)
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
// so sequence numbers stay consistent), FETCH FLAGS, EXISTS.
func (s *Session) deliver(allowExpunge bool) error {
	m := s.mbox
	if m == nil || !m.news.Load() {
		return nil
	}
	if err := m.sub.Err(); err != nil {
		return err
	}
	// Cleared before the snapshot is taken: the hub notifies after it
	// changed the state, so a change the snapshot misses sets it again.
	m.news.Store(false)
	snap := m.state.Snapshot()
	if snap.Highest == m.pos {
		return nil
	}
	var expunged []uint32
	type flagChange struct {
		uid   uint32
		flags []string
	}
	var flagged []flagChange
	last := uint32(0)
	if len(m.view) > 0 {
		last = m.view[len(m.view)-1]
	}
	m.state.ChangesSince(m.pos, func(c syncstate.Change) {
		if c.ModSeq > snap.Highest {
			// Recorded after the snapshot, whose message list becomes
			// the client's view below: reported next time, against it.
			return
		}
		if c.UID > last {
			return // new: reported by EXISTS below
		}
		if m.seqOf(c.UID) == 0 {
			return
		}
		if c.Expunged {
			expunged = append(expunged, c.UID)
		} else {
			flagged = append(flagged, flagChange{c.UID, c.Flags})
		}
	})
	if len(expunged) > 0 && !allowExpunge {
		m.news.Store(true) // delivered at the next chance
		if r := s.srv.reporter; r != nil {
			if b := r.ExpungesHeld(s); b != nil {
				return s.Write(b)
			}
		}
		return nil
	}
	var b []byte
	// Expunges in descending sequence order, so each number is valid
	// against the client's view at the time it reads it.
	if len(expunged) > 0 {
		slices.SortFunc(expunged, func(a, b uint32) int { return cmp.Compare(b, a) })
		seqs := make([]uint32, 0, len(expunged))
		for _, uid := range expunged {
			seqs = append(seqs, m.seqOf(uid))
		}
		reported := false
		if r := s.srv.reporter; r != nil {
			b, reported = r.ReportExpunged(s, b, expunged, seqs)
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
	for _, f := range flagged {
		seq := m.seqOf(f.uid)
		if seq == 0 {
			continue
		}
		if s.sentFlags != nil && s.sentFlags[f.uid] == strings.Join(f.flags, " ") {
			continue // the client just saw these in its own STORE's answer
		}
		b = fmt.Appendf(b, "* %d FETCH (", seq)
		var items []byte
		if r := s.srv.reporter; r != nil {
			items = r.FetchItems(s, f.uid)
		}
		switch {
		case items != nil:
			b = fmt.Appendf(b, "UID %d %s ", f.uid, items)
		case s.fetchUID:
			b = fmt.Appendf(b, "UID %d ", f.uid)
		}
		b = fmt.Appendf(b, "FLAGS (%s))\r\n", strings.Join(f.flags, " "))
	}
	newCount := len(m.view)
	if newCount > 0 && m.view[newCount-1] > last {
		b = fmt.Appendf(b, "* %d EXISTS\r\n", newCount)
	}
	if len(b) == 0 {
		return nil
	}
	return s.Write(b)
}

// DeliverChanges is deliver for IDLE: it writes the changes, and whatever
// the extensions' pushers have queued, and flushes them at once.
func (s *Session) DeliverChanges() error {
	if !s.HasNews() {
		return nil
	}
	if err := s.deliver(true); err != nil {
		return err
	}
	if err := s.push(); err != nil {
		return err
	}
	if err := s.Flush(); err != nil {
		return err
	}
	if cb := s.srv.cfg.PushLatency; cb != nil && s.mbox != nil {
		cb(time.Since(s.mbox.sub.LastChangeRead()), s.mbox.sub.LastChangeWait())
	}
	return nil
}

// HasNews reports whether the selected mailbox changed since the client was
// last told.
func (s *Session) HasNews() bool { return s.wake.Load() || s.mbox != nil && s.mbox.news.Load() }

// ErrIdleTimeout ends a session that idled past its autologout timer.
var ErrIdleTimeout = errors.New("client idle for too long")

// WaitLine is ReadLine for IDLE: it returns os.ErrDeadlineExceeded at once
// if the mailbox has news, and otherwise when the hub reports news while it
// waits (see SetIdling) or the timeout expires.
func (s *Session) WaitLine(timeout time.Duration) ([]byte, *imapcodec.LiteralHeader, error) {
	if err := s.Flush(); err != nil {
		return nil, nil, err
	}
	s.nc.SetReadDeadline(time.Now().Add(timeout))
	// Checked after the deadline is set: news that arrives later
	// interrupts the read instead.
	if s.HasNews() {
		return nil, nil, os.ErrDeadlineExceeded
	}
	s.r.Release() // an idling client may send nothing for half an hour
	return s.r.ReadLine()
}

// SetIdling marks the session as waiting in IDLE: the hub's notifications
// then interrupt its read of the client so that changes go out at once.
func (s *Session) SetIdling(on bool) { s.idling.Store(on) }

// SyncMailbox asks the hub's watcher to check the upstream now, waiting at
// most timeout, so the client's next delivery includes what the upstream
// knows (NOOP; after EXPUNGE, MOVE, APPEND).
func (s *Session) SyncMailbox(ctx context.Context, timeout time.Duration) {
	if s.mbox == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.mbox.sub.Sync(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Debug("mailbox sync failed", "err", err)
	}
}

// translateSeqSet turns a sequence set in the client's numbering into the
// equivalent UID set. A range maps to the range of its end points' UIDs:
// every UID between two UIDs of the view belongs to the view or to a message
// already expunged, since new messages always get higher UIDs. "*" is the
// client's last message, not the upstream's.
func (m *selectedMailbox) translateSeqSet(s string) (string, error) {
	n := uint32(len(m.view))
	if s == "$" {
		return "", errors.New("the search result variable $ is not supported")
	}
	var b strings.Builder
	for i, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err := parseSeq(lo, n)
		if err != nil {
			return "", err
		}
		z := a
		if isRange {
			if z, err = parseSeq(hi, n); err != nil {
				return "", err
			}
		}
		if a > z {
			a, z = z, a
		}
		if n == 0 || z > n {
			return "", errInvalidSeq
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(m.view[a-1]), 10))
		if z != a {
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(m.view[z-1]), 10))
		}
	}
	return b.String(), nil
}

var errInvalidSeq = errors.New("invalid messageset") // Dovecot's words, which admins know

func parseSeq(s string, n uint32) (uint32, error) {
	if s == "*" {
		if n == 0 {
			return 0, errInvalidSeq
		}
		return n, nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("bad message sequence number %q", s)
	}
	return uint32(v), nil
}

// isSeqSet reports whether an atom looks like a sequence set.
func isSeqSet(a string) bool {
	if a == "" {
		return false
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if !(c >= '0' && c <= '9' || c == ':' || c == ',' || c == '*') {
			return false
		}
	}
	return true
}

// uidsToSeqs maps UIDs (in a SEARCH or SORT result) to the client's
// sequence numbers, dropping messages the client does not know.
func (m *selectedMailbox) uidsToSeqs(fields []string) []string {
	out := fields[:0]
	for _, f := range fields {
		u, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			out = append(out, f)
			continue
		}
		if seq := m.seqOf(uint32(u)); seq != 0 {
			out = append(out, strconv.FormatUint(uint64(seq), 10))
		}
	}
	return out
}

// syncTimeout bounds how long a command waits for the hub's watcher to
// confirm a change the session made itself.
const syncTimeout = 5 * time.Second

// beforeTagged runs just before the tagged response of a relayed command in
// the selected state: it waits for the hub to see the command's own changes
// (EXPUNGE, MOVE, APPEND or COPY into the mailbox), then reports every
// change the protocol allows at this point.
func (s *Session) beforeTagged() error {
	t := s.xlate
	s.xlate = nil
	defer func() { s.sentFlags = nil }()
	if s.mbox == nil {
		return nil
	}
	allowExpunge := true
	if t != nil {
		if t.syncAfter {
			s.SyncMailbox(context.Background(), syncTimeout)
		}
		allowExpunge = t.allowExpunge
	}
	return s.deliver(allowExpunge)
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
