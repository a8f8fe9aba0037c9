package proxy

import (
	"context"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Catching a leased connection up with the selected mailbox.
//
// A server shows a connection the changes to its selected mailbox only when
// the connection syncs: Dovecot runs a command on the view the connection
// had after its previous one. A pooled connection may have sat in the pool
// while other clients added messages and changed flags that the session's
// client has since heard of from the hub: a FETCH of such a message on it
// finds nothing, and the FLAGS it answers would undo what the client was
// told. So a connection that may lag behind what the client knows runs NOOP
// before the command (its answers are dropped: the client hears of changes
// from the hub).
//
// Each connection carries two marks (upstream.Conn.SyncedTo, SyncedUID):
// the state's HIGHESTMODSEQ and largest UID read before the SELECT,
// EXAMINE or NOOP that last brought the connection up to date (markOf).
// Everything the state knew then had happened upstream before that
// command, so the connection has seen it: every message up to SyncedUID
// that still exists, every change up to SyncedTo. Only those commands set
// the marks: a lease's SELECT and catch-up here, a client's SELECT
// (cmdSelect), the hub's refresh on a lent connection (hub/budget.go), and
// a command whose only changes are the session's own (ownChangesSeen).
// upstream.Conn.Select and Unselect clear them (mod-sequences of one
// mailbox mean nothing for another). The answers of other commands need
// not show everything that happened before them (a server may sync only
// cheaply after a FETCH), so they move no mark.
//
// A command needs the NOOP only when the state changed since the marks and
// what the command relies on is not covered by them (viewNeed):
//
//   - a UID FETCH of items that never change (envelope, structure, sizes,
//     dates, headers and bodies with .PEEK) relies on the messages it names
//     being in the view: the largest of them the client knows must be at
//     most SyncedUID (UIDs are assigned in ascending order, RFC 3501
//     2.3.1.1, so every message below it is there too, unless expunged);
//   - a UID FETCH whose answer shows flags (FLAGS, FAST, ALL, FULL, a body
//     without .PEEK, which sets \Seen), a UID STORE (its answers become the
//     state's flags: claims) and a UID COPY (the copies get the flags the
//     connection shows) rely also on the flags of those messages: none of
//     them may have changed in the state since SyncedTo (each message's
//     mod-sequence is that of its last change), checked for at most
//     maxNeedUIDs messages;
//   - an APPEND names no message, unless the upstream has CATENATE, whose
//     URLs may name any;
//   - everything else (EXPUNGE and SEARCH depend on every message's flags,
//     STATUS on the view's count; commands with modifiers, items the proxy
//     does not know, anything an extension made) relies on all of it.
//
// Under imaptest's stress (ten clients on one mailbox) the state changes
// between almost any two commands of a session, and this catch-up was a
// NOOP before half of the FETCHes (issue 20, docs/per-command.md "Sixth
// pass").
//
// A connection leased for a command that needed less than everything is
// partial (Session.upPartial): a command is sent ahead on it (ahead.go)
// only if what it needs is covered likewise, and it catches up in full
// before anything else runs on it while the session holds it.

// A viewNeed is what a command relies on in the leased connection's view
// of the selected mailbox, when that is less than everything; nil is
// everything.
type viewNeed struct {
	// upTo is the largest UID of the messages the command names that the
	// client knows (0: none).
	upTo uint32
	// flagsOf: the command relies on the flags of these, the messages it
	// names that the client knows, in ascending order.
	flagsOf []uint32
}

// maxNeedUIDs bounds how many messages' mod-sequences are compared instead
// of a NOOP: a command that names more flags catches up whenever the
// mailbox changed.
const maxNeedUIDs = 1000

// A syncMark is the selected mailbox's state as a connection is brought up
// to date: the marks the connection gets once it has synced.
type syncMark struct {
	modseq uint64
	uid    uint32
}

// markOf reads st's marks (syncstate.Mailbox.Marks).
func markOf(st *syncstate.Mailbox) syncMark {
	uid, modseq := st.Marks()
	return syncMark{modseq: modseq, uid: uid}
}

// syncMark reads the selected mailbox's marks, before the command that
// brings a connection up to date is sent.
func (s *Session) syncMark() syncMark {
	if s.mbox == nil {
		return syncMark{}
	}
	return markOf(s.mbox.state)
}

// catchUp brings c, which has the session's mailbox selected, up to date
// as far as x requires (see above; nil: everything). fresh says it was
// selected by this lease, after mark was read.
func (s *Session) catchUp(ctx context.Context, c *upstream.Conn, mark syncMark, fresh bool, x *Exchange) error {
	s.upPartial = false
	if s.mbox == nil || c.Selected != s.mbox.name {
		return nil
	}
	switch {
	case fresh:
	case c.SyncedTo >= mark.modseq:
		// Nothing happened since the marks: the messages the state
		// knows arrived at or below SyncedTo.
	default:
		if need := s.needFor(x); need != nil && s.viewHas(c, need) {
			s.upPartial = true
			s.srv.counters.catchUpsSkipped.Add(1)
			return nil
		}
		s.srv.counters.catchUps.Add(1)
		if _, err := c.Exec(ctx, "NOOP", nil); err != nil {
			return err
		}
	}
	c.SyncedTo, c.SyncedUID = mark.modseq, mark.uid
	return nil
}

// viewHas reports whether c's marks cover what need relies on.
func (s *Session) viewHas(c *upstream.Conn, need *viewNeed) bool {
	if need.upTo > c.SyncedUID {
		return false
	}
	if len(need.flagsOf) == 0 {
		return true
	}
	found, unchanged := 0, true
	s.mbox.state.Each(need.flagsOf, func(_ int, _ []string, modseq uint64) {
		found++
		unchanged = unchanged && modseq <= c.SyncedTo
	})
	// A message the state no longer has was expunged after the client
	// was told of it: the connection may show it with older flags.
	return unchanged && found == len(need.flagsOf)
}

// upstreamForm reads x in the form it goes upstream, after its chain, once:
// it records what x relies on in the connection's view of the selected
// mailbox (translation.need), and narrows the UIDs a FETCH or STORE names
// (translation.named) to those it names in that form (CONDSTORE's
// conditional STORE leaves out the messages it refuses), whose answers
// are relayed (reportsOnly). The relay calls it before the lease for a
// STORE, whose answers become claims, and for a command its chain
// restated; for anything else it runs only when the catch-up is
// considered (needFor).
func (s *Session) upstreamForm(x *Exchange) {
	t := x.xlate
	if t == nil || t.formRead {
		return
	}
	need, set := s.needOf(x)
	t.need, t.formRead = need, true
	if t.named != nil && set != "" {
		if n := named(set); n != nil {
			t.named = n
		}
	}
}

// needFor returns what x relies on (upstreamForm, read only now: for most
// commands nothing changed since the connection's marks, and a bulk
// download's FETCHes are not parsed again); nil for everything, and for a
// command of the proxy's own (x nil).
func (s *Session) needFor(x *Exchange) *viewNeed {
	if x == nil || x.xlate == nil {
		return nil
	}
	s.upstreamForm(x)
	return x.xlate.need
}

// needOf returns what x, in the form it goes upstream, relies on in the
// connection's view of the selected mailbox (nil for everything), and the
// UID set of a UID FETCH, STORE or COPY in that form.
func (s *Session) needOf(x *Exchange) (need *viewNeed, set string) {
	m := s.mbox
	if s.state != StateSelected || m == nil {
		return nil, ""
	}
	if x.Name == "APPEND" {
		if s.UpstreamCaps().Has("CATENATE") {
			return nil, ""
		}
		return &viewNeed{}, ""
	}
	if len(x.Segments) != 1 || x.Segments[0].Literal != nil {
		return nil, ""
	}
	vals, err := imapcodec.NewParser(x.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) < 5 {
		return nil, ""
	}
	uid, _ := vals[1].(imapcodec.Atom)
	name, _ := vals[2].(imapcodec.Atom)
	a, _ := vals[3].(imapcodec.Atom)
	if set = string(a); !strings.EqualFold(string(uid), "UID") || set == "" {
		return nil, ""
	}
	flags := true
	switch strings.ToUpper(string(name)) {
	case "FETCH":
		var ok bool
		if flags, ok = fetchShowsFlags(vals[4]); !ok || len(vals) != 5 {
			return nil, set
		}
	case "STORE":
		if len(vals) != 6 { // a modifier: UNCHANGEDSINCE
			return nil, set
		}
	case "COPY":
		if len(vals) != 5 {
			return nil, set
		}
	default:
		return nil, ""
	}
	return m.view.need(set, flags), set
}

// staticFetchItems are the FETCH items whose values never change and that
// set no flag.
var staticFetchItems = map[string]bool{
	"UID": true, "ENVELOPE": true, "INTERNALDATE": true, "RFC822.SIZE": true,
	"RFC822.HEADER": true, "BODY": true, "BODYSTRUCTURE": true,
	"EMAILID": true, "THREADID": true, // RFC 8474
}

// fetchShowsFlags classifies a FETCH command's items: flags is true when
// the answer shows flags (FLAGS and the macros that include it, or a body
// item that sets \Seen); ok is false for an item it does not know.
func fetchShowsFlags(v imapcodec.Value) (flags, ok bool) {
	items := []imapcodec.Value{v}
	if l, isList := v.(imapcodec.List); isList {
		items = l
	}
	for _, it := range items {
		a, isAtom := it.(imapcodec.Atom)
		if !isAtom {
			return false, false
		}
		u := strings.ToUpper(string(a))
		switch {
		case staticFetchItems[u], strings.HasPrefix(u, "BODY.PEEK["), strings.HasPrefix(u, "BINARY.PEEK["), strings.HasPrefix(u, "BINARY.SIZE["):
		case u == "FLAGS", u == "FAST", u == "ALL", u == "FULL", u == "RFC822", u == "RFC822.TEXT",
			strings.HasPrefix(u, "BODY["), strings.HasPrefix(u, "BINARY["):
			flags = true
		default:
			return false, false
		}
	}
	return flags, true
}

// need returns what a command naming the UID set set relies on (see
// viewNeed), for the messages of the view in it; "*" is the view's last.
// Nil when the set does not parse or flags are asked of more than
// maxNeedUIDs messages.
func (v seqView) need(set string, flags bool) *viewNeed {
	ranges, err := imapcodec.ParseNumSet(set)
	if err != nil {
		return nil
	}
	n := &viewNeed{}
	for _, r := range ranges {
		lo, hi := bounds(r, v.last())
		i, _ := slices.BinarySearch(v, lo)
		j, found := slices.BinarySearch(v, hi)
		if found {
			j++
		}
		if i >= j {
			continue
		}
		n.upTo = max(n.upTo, v[j-1])
		if flags {
			if len(n.flagsOf)+j-i > maxNeedUIDs {
				return nil
			}
			n.flagsOf = append(n.flagsOf, v[i:j]...)
		}
	}
	if len(ranges) > 1 && len(n.flagsOf) > 1 {
		slices.Sort(n.flagsOf)
		n.flagsOf = slices.Compact(n.flagsOf)
	}
	return n
}
