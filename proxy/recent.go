package proxy

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// \Recent (RFC 3501 2.3.2) is the proxy's own: a message is recent in
// exactly one of the proxy's sessions, the first one with the mailbox
// selected read-write to be told of it (EXAMINE takes none, as in
// Dovecot). The upstream's \Recent belongs to whichever pooled connection
// looked first, so it is dropped everywhere (EXISTS/RECENT of the leased
// connection, FETCH FLAGS, STATUS where the proxy knows better). The hub's
// state says which messages nobody was told of yet (syncstate.Recency);
// a session keeps the UIDs it took, as ranges (recentSet): SELECT takes
// the unclaimed ones of the mailbox, each delivery of new messages the
// unclaimed new ones. From them come "* n RECENT" at SELECT and with every
// EXISTS, \Recent in FETCH FLAGS, and the search keys RECENT, NEW and OLD.
// See docs/hardening.md (#16.17).

// uidRange is the UIDs first to last.
type uidRange struct{ first, last uint32 }

// recentSet is the UIDs a session took as recent, as ascending, disjoint
// ranges. Expunged messages stay in it (UIDs are never reused) and are
// left out by the count, which reads the session's view.
type recentSet []uidRange

// maxRecentRanges bounds a session's recent set: a range is added when
// the session takes messages no other session took in between, so a
// long session in a busy mailbox could collect many. Beyond it the
// oldest range is forgotten (its messages stop being recent for the
// session, as they would at its next SELECT).
const maxRecentRanges = 256

// add adds the UIDs first to last (none when first > last).
func (r *recentSet) add(first, last uint32) {
	if first > last || first == 0 {
		return
	}
	if n := len(*r); n > 0 && (*r)[n-1].last+1 >= first {
		(*r)[n-1].last = max((*r)[n-1].last, last)
		return
	}
	*r = append(*r, uidRange{first, last})
	if len(*r) > maxRecentRanges {
		*r = slices.Delete(*r, 0, 1)
	}
}

// has reports whether uid is in the set.
func (r recentSet) has(uid uint32) bool {
	_, found := slices.BinarySearchFunc(r, uid, func(g uidRange, u uint32) int {
		switch {
		case g.last < u:
			return -1
		case g.first > u:
			return 1
		}
		return 0
	})
	return found
}

// count returns how many messages of view are in the set.
func (r recentSet) count(view seqView) int {
	n := 0
	for _, g := range r {
		lo, _ := slices.BinarySearch(view, g.first)
		hi, found := slices.BinarySearch(view, g.last)
		if found {
			hi++
		}
		n += hi - lo
	}
	return n
}

// uidSet returns the set as a UID set ("3:5,9"), "" when empty.
func (r recentSet) uidSet() string {
	var set imap.UIDSet
	for _, g := range r {
		set.AddRange(imap.UID(g.first), imap.UID(g.last))
	}
	if len(set) == 0 {
		return ""
	}
	return set.String()
}

// takeRecent takes the recent messages among those the session is now
// told of, the ones after UID after up to last: claimed (nobody else gets
// them) when the mailbox is read-write, only looked at when read-only.
func (m *selectedMailbox) takeRecent(after, last uint32) {
	if last <= after {
		return
	}
	first := m.state.Recency().Take(last, !m.readOnly)
	m.recent.add(max(first, after+1), last)
}

// recentLine is the RECENT response for the session's view, which the
// client is then told.
func (m *selectedMailbox) recentLine() []byte {
	m.toldRecent = m.recent.count(m.view)
	return fmt.Appendf(nil, "* %d RECENT\r\n", m.toldRecent)
}

// recentChanged returns the RECENT response when the number of recent
// messages in the session's view is not what the client was last told
// (new messages it took, recent ones expunged), nil otherwise: as
// Dovecot, which sends RECENT only then.
func (m *selectedMailbox) recentChanged() []byte {
	if m.recent.count(m.view) == m.toldRecent {
		return nil
	}
	return m.recentLine()
}

// withRecent returns a flag list (no \Recent in it) with \Recent added
// when the message is recent in the session.
func (m *selectedMailbox) withRecent(uid uint32, flags string) string {
	if !m.recent.has(uid) {
		return flags
	}
	return addRecent(flags)
}

// addRecent adds \Recent to a flag list without it, after the system
// flags and before the keywords, where Dovecot writes it.
func addRecent(flags string) string {
	l := strings.Fields(flags)
	i := len(l)
	for i > 0 && !strings.HasPrefix(l[i-1], `\`) {
		i--
	}
	return strings.Join(slices.Insert(l, i, `\Recent`), " ")
}

// recentKey rewrites the search keys RECENT, NEW and OLD to the session's
// recent messages; ok is false for any other key.
func (m *selectedMailbox) recentKey(name string) (text string, ok bool) {
	set := m.recent.uidSet()
	switch name {
	case "RECENT":
		if set == "" {
			return "NOT ALL", true
		}
		return "UID " + set, true
	case "NEW":
		if set == "" {
			return "NOT ALL", true
		}
		return "(UID " + set + " UNSEEN)", true
	case "OLD":
		if set == "" {
			return "ALL", true
		}
		return "NOT UID " + set, true
	}
	return "", false
}

// statusRecent replaces the value of the RECENT item of "* STATUS name
// (items)" with n.
func statusRecent(text []byte, n int) []byte {
	open, items, ok := imapcodec.StatusItems(text)
	if !ok {
		return text
	}
	changed := false
	want := fmt.Sprint(n)
	for i := 0; i+1 < len(items); i += 2 {
		if strings.EqualFold(items[i], "RECENT") && items[i+1] != want {
			items[i+1], changed = want, true
		}
	}
	if !changed {
		return text
	}
	return fmt.Appendf(text[:open:open], "(%s)", strings.Join(items, " "))
}

// statusUIDValidity returns the value of the UIDVALIDITY item of "* STATUS
// name (items)" (0 when there is none), and the text without that item
// when drop is set.
func statusUIDValidity(text []byte, drop bool) (uint32, []byte) {
	open, items, ok := imapcodec.StatusItems(text)
	if !ok {
		return 0, text
	}
	var v uint32
	kept := items[:0:0]
	for i := 0; i+1 < len(items); i += 2 {
		if strings.EqualFold(items[i], "UIDVALIDITY") {
			v = upstream.ParseUIDValidity(items[i+1])
			if drop {
				continue
			}
		}
		kept = append(kept, items[i], items[i+1])
	}
	if !drop || len(kept) == len(items) {
		return v, text
	}
	return v, fmt.Appendf(text[:open:open], "(%s)", strings.Join(kept, " "))
}

// statusMailbox returns the mailbox name of "* STATUS name (items)", or of
// the command "tag STATUS name (items)".
func statusMailbox(segs []imapcodec.Segment) (string, bool) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	p.Atom() // *
	p.SP()
	p.Atom() // STATUS
	if p.SP() != nil {
		return "", false
	}
	name, err := p.AString()
	return name, err == nil
}

// statusRecent answers the RECENT item of a relayed "* STATUS name
// (items)" from the proxy's own count where the hub watches the mailbox:
// its unclaimed recent messages, plus the session's own when it is the
// selected one (as a server counts the selecting session's). Where the
// hub does not watch it, the upstream's count stands: no pooled
// connection has looked at the mailbox lately either, so it is what the
// hub's watcher would find recent when it starts.
func (s *Session) statusRecent(x *Exchange, text []byte) []byte {
	var uidValidity uint32
	if x != nil && x.statusSync != nil {
		// Read, not taken out yet: extensions' filters read it too
		// (filterResponse takes it out after them).
		uidValidity, _ = statusUIDValidity(text, false)
	}
	if indexFold(text, "RECENT") < 0 || s.srv.hub == nil {
		return text
	}
	name, ok := statusMailbox([]imapcodec.Segment{{Text: text}})
	if !ok {
		return text
	}
	key := s.hubKey(name)
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	var early *hub.PendingSync
	if x != nil && x.statusSync != nil && x.statusSync.key == key {
		early = x.statusSync.p
	} else {
		uidValidity = 0 // not asked for this mailbox's sake
	}
	n, ok := s.srv.hub.Unclaimed(ctx, key, early, uidValidity)
	cancel()
	if !ok {
		return text
	}
	if m := s.mbox; m != nil && m.name == key.Mailbox {
		n += m.recent.count(m.view)
	}
	return statusRecent(text, n)
}

// earlySync is a round trip asked of a mailbox's watcher when a command
// that will want one arrived (Hub.SyncSoon).
type earlySync struct {
	key hub.Key
	p   *hub.PendingSync
	// addedUIDValidity: the client did not ask for UIDVALIDITY, the proxy
	// did (statusSyncSoon), and it is taken out of the answer.
	addedUIDValidity bool
}

// statusSyncSoon asks the watcher of the mailbox a STATUS command names
// for the round trip its RECENT count needs (statusRecent) as soon as the
// command arrives, so that it overlaps the upstream's STATUS instead of
// following its answer. Only for a STATUS asking for RECENT of a watched
// mailbox named without a literal; otherwise nil, and statusRecent asks
// when the answer comes.
//
// It also makes the STATUS ask for UIDVALIDITY: a mailbox deleted and
// created again outside the proxy with as many messages may look the same
// to the watcher's round trip (Dovecot tells a connection that keeps the
// old one selected nothing), and the count of the old mailbox's state
// would be given for the new one. The answer's UIDVALIDITY tells them
// apart; the item is taken out again if the client did not ask for it.
func (s *Session) statusSyncSoon(x *Exchange) *earlySync {
	if s.srv.hub == nil || len(x.Segments) != 1 || indexFold(x.Segments[0].Text, "RECENT") < 0 {
		return nil
	}
	name, ok := statusMailbox(x.Segments)
	if !ok {
		return nil
	}
	key := s.hubKey(name)
	pending := s.srv.hub.SyncSoon(key)
	if pending == nil {
		return nil
	}
	e := &earlySync{key: key, p: pending}
	if items, ok := statusCommandItems(x.Segments); ok && imapcodec.CanQuote(name) &&
		!slices.ContainsFunc(items, func(v imapcodec.Value) bool {
			a, ok := v.(imapcodec.Atom)
			return ok && strings.EqualFold(string(a), "UIDVALIDITY")
		}) {
		line := imapcodec.AppendQuoted([]byte(x.Tag+" STATUS "), name)
		line = append(line, ' ')
		line = imapcodec.AppendValue(line, append(items, imapcodec.Atom("UIDVALIDITY")))
		x.Segments = []imapcodec.Segment{{Text: line}}
		e.addedUIDValidity = true
	}
	return e
}

// statusCommandItems returns the item list of "tag STATUS name (items)".
func statusCommandItems(segs []imapcodec.Segment) (imapcodec.List, bool) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil || p.SP() != nil {
		return nil, false
	}
	if _, err := p.Atom(); err != nil || p.SP() != nil {
		return nil, false
	}
	if _, err := p.AString(); err != nil || p.SP() != nil {
		return nil, false
	}
	v, err := p.Value()
	items, ok := v.(imapcodec.List)
	if err != nil || !ok || !p.AtEnd() {
		return nil, false
	}
	return items, true
}

// hubKey is the hub's key of a mailbox of the session's account named as
// the upstream names it.
func (s *Session) hubKey(name string) hub.Key {
	delim := ""
	if h, ok := s.srv.delims.Load(s.account); ok && needsDelim(name) {
		delim = h.(Hierarchy).Delim
	}
	return hub.Key{Account: s.account, Mailbox: canonicalName(name, delim)}
}

// noteSelectRecent tells the mailbox's recency what the upstream's answer
// to the session's SELECT or EXAMINE said: "* n RECENT" are the last n
// messages the connection was told of, those below its UIDNEXT. The
// relayed SELECT runs before the hub's watcher looks at a mailbox nobody
// watched, and takes the upstream's \Recent from the watcher's EXAMINE:
// without this, messages delivered while nobody watched would be recent
// for nobody (syncstate.Recency.NoteUpstream never lowers the floor below
// what sessions were told). view is the hub's message list, which may
// have lost some of them since (then a few older ones count instead) or
// gained newer ones (above UIDNEXT, left out).
func noteSelectRecent(st *syncstate.Mailbox, collected []*Response, view seqView) {
	n, uidNext := 0, uint32(0)
	for _, r := range collected {
		switch {
		case r.Head.Name == "RECENT" && r.Head.HasNum:
			n = int(r.Head.Num)
		case r.Head.Name == "OK" && r.Head.Code == "UIDNEXT":
			if u, err := strconv.ParseUint(r.Head.CodeArg, 10, 32); err == nil {
				uidNext = uint32(u)
			}
		}
	}
	if n <= 0 {
		return
	}
	seen := []uint32(view)
	if uidNext > 0 {
		i, _ := slices.BinarySearch(seen, uidNext)
		seen = seen[:i]
	}
	if len(seen) == 0 {
		return
	}
	st.Recency().NoteUpstream(seen[max(len(seen)-n, 0)])
}

// noteAppended tells the hub of the messages an APPEND through the proxy
// added (its APPENDUID: "uidvalidity uid-set"): they are recent for the
// first session that selects the mailbox, even where the upstream reports
// no \Recent or a pooled connection took it (hub.Hub.NoteAppended).
func (s *Session) noteAppended(x *Exchange, appendUID string) {
	v, set, ok := strings.Cut(appendUID, " ")
	if !ok || s.srv.hub == nil {
		return
	}
	uidValidity, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return
	}
	uids, err := imapcodec.ParseUIDSet(set)
	if err != nil || len(uids) == 0 {
		return
	}
	first := uint32(uids[0].Start)
	for _, r := range uids {
		first = min(first, uint32(r.Start))
	}
	_, name, ok := appendMailbox(x.cmd)
	if !ok {
		return
	}
	s.srv.hub.NoteAppended(s.hubKey(name), uint32(uidValidity), first)
}
