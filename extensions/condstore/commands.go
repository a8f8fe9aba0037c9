package condstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// In the selected state the core has already turned FETCH, STORE, SEARCH,
// SORT and THREAD into their UID forms ("tag UID FETCH uids ..."), so the
// rewriters below work on UIDs only; c.Name still says what the client sent,
// for answers that must be in its numbering ([MODIFIED] of STORE).

// maxModSeq is the largest mod-sequence RFC 7162 allows (63 bits).
const maxModSeq = math.MaxInt64

// syncWait bounds the wait for the hub's watcher before a conditional STORE.
const syncWait = 5 * time.Second

// uidHead parses "tag UID NAME set" and returns the tag, the set and the
// parser after it.
func uidHead(x *proxy.Exchange) (tag, set string, p *imapcodec.Parser, err error) {
	p = imapcodec.NewParser(x.Segments, imapcodec.Limits{})
	if tag, err = p.Atom(); err != nil {
		return
	}
	for range 2 { // UID, NAME
		if err = p.SP(); err != nil {
			return
		}
		if _, err = p.Atom(); err != nil {
			return
		}
	}
	if err = p.SP(); err != nil {
		return
	}
	set, err = p.Atom()
	return
}

// rewriteFetch answers the MODSEQ item and the CHANGEDSINCE and VANISHED
// modifiers of FETCH (RFC 7162 3.1.4, 3.2.6) from the proxy's state and
// asks the upstream for the rest. It reports whether it answered the
// command itself.
func rewriteFetch(x *proxy.Exchange) (bool, error) {
	s := x.Session()
	m := s.Mailbox()
	if m == nil || !mentions(x.Segments, "MODSEQ", "CHANGEDSINCE") {
		return false, nil
	}
	if len(x.Segments) > 1 {
		// A literal in the items (HEADER.FIELDS names): the command is
		// read and rebuilt on one line, for the upstream must not see
		// MODSEQ or CHANGEDSINCE, which would enable its CONDSTORE on
		// the pooled connection and answer with its own mod-sequences.
		flat, ok := oneLine(x.Segments)
		if !ok {
			return false, errors.New("a literal that cannot be a quoted string is not supported beside MODSEQ or CHANGEDSINCE")
		}
		x.Segments = flat
	}
	tag, set, p, err := uidHead(x)
	if err != nil {
		return false, nil // the upstream will say what is wrong
	}
	if p.SP() != nil {
		return false, nil
	}
	items, err := p.Value()
	if err != nil {
		return false, nil
	}
	var mods imapcodec.List
	if p.MaybeSP() {
		v, err := p.Value()
		l, ok := v.(imapcodec.List)
		if err != nil || !ok {
			return false, errors.New("FETCH modifiers must be a parenthesised list")
		}
		mods = l
	}
	if !p.AtEnd() {
		return false, errors.New("unexpected text after the FETCH modifiers")
	}
	wantModSeq := false
	switch v := items.(type) {
	case imapcodec.Atom:
		if strings.EqualFold(string(v), "MODSEQ") {
			wantModSeq = true
			items = imapcodec.Atom("UID")
		}
	case imapcodec.List:
		kept := imapcodec.List{}
		for _, e := range v {
			if a, ok := e.(imapcodec.Atom); ok && strings.EqualFold(string(a), "MODSEQ") {
				wantModSeq = true
				continue
			}
			kept = append(kept, e)
		}
		if len(kept) == 0 {
			kept = imapcodec.List{imapcodec.Atom("UID")}
		}
		items = kept
	}
	var changedSince uint64
	hasChangedSince, vanished := false, false
	for i := 0; i < len(mods); i++ {
		a, _ := mods[i].(imapcodec.Atom)
		switch strings.ToUpper(string(a)) {
		case "CHANGEDSINCE":
			if hasChangedSince || i+1 >= len(mods) {
				return false, errors.New("CHANGEDSINCE needs one mod-sequence")
			}
			i++
			if changedSince, err = number(mods[i], 1, maxModSeq); err != nil {
				return false, fmt.Errorf("bad CHANGEDSINCE mod-sequence: %w", err)
			}
			hasChangedSince = true
		case "VANISHED":
			if vanished {
				return false, errors.New("VANISHED given twice")
			}
			vanished = true
		default:
			return false, fmt.Errorf("unknown FETCH modifier %s", imapcodec.AppendValue(nil, mods[i]))
		}
	}
	if vanished {
		switch {
		case x.Name != "UID FETCH":
			return false, errors.New("the VANISHED modifier is only allowed with UID FETCH")
		case !s.Enabled("QRESYNC"):
			return false, errors.New("the VANISHED modifier needs QRESYNC enabled (ENABLE QRESYNC)")
		case !hasChangedSince:
			return false, errors.New("the VANISHED modifier needs CHANGEDSINCE")
		}
	}
	if !wantModSeq && !hasChangedSince {
		return false, nil
	}
	enableCondStore(s)
	uids := set
	if hasChangedSince {
		ranges, err := imapcodec.ParseUIDSet(set)
		if err != nil {
			return false, err
		}
		// "*" is the last message of the client's view, as for
		// rewriteStore: the state may know a newer one the client has
		// not been told of (it came after the delivery before this
		// command), which this FETCH could not answer for; "n:*" with
		// n above it still covers it (RFC 3501 6.4.8, 9). An open
		// "n:*" also covers the UIDs expunged above it
		// (ranges.Contains), which VANISHED reports.
		bound := bindStar(ranges, lastUID(m.UIDs()))
		var changed, gone []uint32
		m.State().ChangesSince(changedSince, func(ch syncstate.Change) {
			if !ranges.Contains(imap.UID(ch.UID)) && !bound.Contains(imap.UID(ch.UID)) {
				return
			}
			if ch.Expunged {
				// A message still in the client's view is one whose
				// expunge it has not been told of yet (it came after
				// the delivery before this command): the VANISHED
				// after the command tells it, as Dovecot's does, not
				// VANISHED (EARLIER) too, while it still counts
				// among the client's messages.
				if m.SeqOf(ch.UID) == 0 {
					gone = append(gone, ch.UID)
				}
			} else if m.SeqOf(ch.UID) != 0 {
				changed = append(changed, ch.UID)
			}
		})
		if vanished && changedSince < m.State().Base() {
			// The expunge log was pruned past changedSince
			// (syncstate.LogLimits): the expunges come from the UIDs
			// asked for that the client's view does not have, as a
			// QRESYNC SELECT from there gets them (resync).
			known := clipUIDs(ranges, m)
			// A message the state has and the client's view not yet
			// (it arrived after the delivery before this command) is
			// not gone: its EXISTS follows. Read after MaxUID (in
			// clipUIDs), so that every UID it let in is there.
			now := m.State().Snapshot().UIDs
			gone = slices.DeleteFunc(absentUIDs(m.UIDs(), known), func(uid uint32) bool {
				_, found := slices.BinarySearch(now, uid)
				return found
			})
		}
		if vanished && len(gone) > 0 {
			slices.Sort(gone)
			b := imapcodec.AppendNumSet([]byte("* VANISHED (EARLIER) "), gone)
			if err := s.Write(append(b, "\r\n"...)); err != nil {
				return true, err
			}
		}
		if len(changed) == 0 {
			return true, x.Reply("OK", "", "Fetch completed.")
		}
		slices.Sort(changed)
		uids = string(imapcodec.AppendNumSet(nil, changed))
		if len(uids) > uidset.MaxSetText {
			// Scattered over a mailbox with gaps: ranges over the
			// expunged UIDs between them.
			uids = string(uidset.AppendSpans(nil, uidset.RunsOf(m.State().Snapshot().UIDs, changed)))
		}
	}
	line := fmt.Appendf(nil, "%s UID FETCH %s ", tag, uids)
	x.Segments = []imapcodec.Segment{{Text: imapcodec.AppendValue(line, items)}}
	return false, nil
}

// rewriteStore implements STORE (UNCHANGEDSINCE m) (RFC 7162 3.1.3): the
// messages changed after m are left alone and reported in [MODIFIED]; the
// others are stored upstream. The check and the store are not atomic
// against a change by another client in between; docs/condstore.md says
// why that is accepted.
// storeArgs decodes "tag UID STORE set [(mods)] item flags", a STORE in
// the form it goes upstream in, into its parts; ok is false for one that
// does not parse (the upstream says what is wrong).
func storeArgs(x *proxy.Exchange) (tag string, sa *imapcodec.StoreArgs, ok bool) {
	if len(x.Segments) != 1 {
		return "", nil, false
	}
	p := imapcodec.NewParser(x.Segments, imapcodec.Limits{})
	tag, err := p.Atom()
	for range 2 { // UID STORE
		if err == nil {
			if err = p.SP(); err == nil {
				_, err = p.Atom()
			}
		}
	}
	if err != nil {
		return "", nil, false
	}
	sa, err = imapcodec.ParseStoreArgs(p)
	return tag, sa, err == nil
}

func rewriteStore(x *proxy.Exchange) (bool, error) {
	s := x.Session()
	m := s.Mailbox()
	if m == nil {
		return false, nil
	}
	tag, sa, ok := storeArgs(x)
	if !ok || sa.Modifiers == nil {
		return false, nil // no modifiers, or the upstream says what is wrong
	}
	mods := sa.Modifiers
	var unchangedSince uint64
	has := false
	var err error
	for i := 0; i < len(mods); i++ {
		a, _ := mods[i].(imapcodec.Atom)
		switch strings.ToUpper(string(a)) {
		case "UNCHANGEDSINCE":
			if has || i+1 >= len(mods) {
				return false, errors.New("UNCHANGEDSINCE needs one mod-sequence")
			}
			i++
			if unchangedSince, err = number(mods[i], 0, maxModSeq); err != nil {
				return false, fmt.Errorf("bad UNCHANGEDSINCE mod-sequence: %w", err)
			}
			has = true
		default:
			return false, fmt.Errorf("unknown STORE modifier %s", imapcodec.AppendValue(nil, mods[i]))
		}
	}
	if !has {
		return false, errors.New("empty STORE modifier list")
	}
	enableCondStore(s)
	ranges, err := imapcodec.ParseUIDSet(sa.Set)
	if err != nil {
		return false, err
	}
	// The state must know of every change the upstream has made so far
	// (the watcher's IDLE may lag): one round trip of the watcher first.
	// A change landing between this and the STORE is still overwritten;
	// docs/condstore.md says why that window is accepted.
	if err := m.Sync(context.Background(), syncWait); err != nil {
		s.Logger().Debug("mailbox sync before a conditional STORE failed", "err", err)
	}
	st := m.State()
	snap := st.Snapshot()
	// The messages are those of the client's view, the ones it has been
	// told of: "*" is its last (RFC 3501 6.4.8, 9: the largest UID in
	// use, and "n:*" with n above it still covers it), and a message
	// delivered since, which the state may know after the Sync, is left
	// alone, as Dovecot binds "*" to its session's view and stores only
	// there; the client hears of the new message after the command.
	view := m.UIDs()
	ranges = bindStar(ranges, lastUID(view))
	var keep, modified []uint32
	for _, uid := range view {
		if !ranges.Contains(imap.UID(uid)) {
			continue
		}
		_, modseq, ok := st.Flags(uid)
		if !ok {
			continue
		}
		if modseq > unchangedSince {
			modified = append(modified, uid)
		} else {
			keep = append(keep, uid)
		}
	}
	code := ""
	if len(modified) > 0 {
		if x.Name == "STORE" {
			seqs := make([]uint32, 0, len(modified))
			for _, uid := range modified {
				if seq := m.SeqOf(uid); seq != 0 {
					seqs = append(seqs, seq)
				}
			}
			slices.Sort(seqs)
			modified = seqs
		}
		if len(modified) > 0 {
			code = "MODIFIED " + string(imapcodec.AppendNumSet(nil, modified))
		}
	}
	if len(keep) == 0 {
		text := "Store completed."
		if code != "" {
			text = "Conditional STORE failed."
		}
		return true, x.Reply("OK", code, text)
	}
	if code != "" {
		x.OnTagged(func(h *imapcodec.ResponseHead) {
			if h.Name == "OK" {
				h.Code, h.CodeArg = code, ""
			}
		})
	}
	// The upstream gets the STORE without the modifiers, for the
	// messages left.
	// keep is all of the set's messages but those modified, so it is
	// written as runs over the UIDs expunged between them: as short as
	// the client's set when nothing was modified.
	sa.Set, sa.Modifiers = string(uidset.AppendSpans(nil, uidset.RunsOf(snap.UIDs, keep))), nil
	line := fmt.Appendf(nil, "%s UID STORE ", tag)
	x.Segments = []imapcodec.Segment{{Text: imapcodec.AppendStoreArgs(line, sa)}}
	return false, nil
}

// searchData says how the results of a search with MODSEQ are completed.
type searchData struct {
	uids bool // results are UIDs, not sequence numbers
	// addedAll: returnAll added ALL to the RETURN options, to be taken
	// out of the ESEARCH answer once its MODSEQ is known.
	addedAll bool
}

// returnOptions finds a search's RETURN options (RFC 4731) in a
// command's first line: "tag [UID] SEARCH|SORT RETURN (options)".
var returnOptions = regexp.MustCompile(`(?i)^\S+ (?:UID )?(?:SEARCH|SORT) RETURN \(([^()]*)\)`)

// returnAll makes a search with MODSEQ whose RETURN options ask for COUNT
// but not ALL ask for ALL too: the answer's MODSEQ is then the highest of
// every match (RFC 4731 3.2: only MIN and MAX alone narrow it), which only
// ALL tells. Options beside MIN, MAX and COUNT (SAVE, PARTIAL, UPDATE,
// CONTEXT: an extension's, for ALL would change what they do) leave the
// command as it is. It reports whether it added ALL.
func returnAll(segs []imapcodec.Segment) bool {
	if len(segs) == 0 {
		return false
	}
	m := returnOptions.FindSubmatchIndex(segs[0].Text)
	if m == nil {
		return false
	}
	count := false
	for _, o := range strings.Fields(string(segs[0].Text[m[2]:m[3]])) {
		switch strings.ToUpper(o) {
		case "COUNT":
			count = true
		case "MIN", "MAX":
		default:
			return false // ALL among them, or another extension's
		}
	}
	if !count {
		return false
	}
	segs[0].Text = slices.Concat(segs[0].Text[:m[2]], []byte("ALL "), segs[0].Text[m[2]:])
	return true
}

// esearchAll is the ALL item of an ESEARCH answer.
var esearchAll = regexp.MustCompile(`(?i) ALL [0-9:,]+`)

// rewriteSearch replaces each MODSEQ search key (RFC 7162 3.1.5) with the
// UIDs of the messages whose mod-sequence is at least the one given, from
// the proxy's state, and completes the command's results with their
// (MODSEQ n).
func rewriteSearch(x *proxy.Exchange) error {
	s := x.Session()
	m := s.Mailbox()
	if m == nil {
		return nil
	}
	n, err := imapcodec.ReplaceSearchKeys(x.Segments, func(k imapcodec.SearchKey) (string, bool, error) {
		if k.Name != "MODSEQ" {
			return "", false, nil
		}
		args := k.Args
		if len(args) == 3 {
			name, ok := imapcodec.AsString(args[0])
			if !ok || !strings.HasPrefix(name, "/flags/") && !strings.HasPrefix(name, "/shared/") && !strings.HasPrefix(name, "/priv/") {
				return "", false, errors.New("bad MODSEQ entry name")
			}
			typ, _ := imapcodec.AsString(args[1])
			switch strings.ToLower(typ) {
			case "priv", "shared", "all":
			default:
				return "", false, errors.New("bad MODSEQ entry type")
			}
		}
		n, err := number(args[len(args)-1], 0, maxModSeq)
		if err != nil {
			return "", false, fmt.Errorf("bad MODSEQ search key: %w", err)
		}
		return modSeqCriterion(m, n), true, nil
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	enableCondStore(s)
	d := &searchData{uids: strings.HasPrefix(x.Name, "UID "), addedAll: returnAll(x.Segments)}
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Streamed || len(resp.Segments) != 1 {
			return resp
		}
		switch resp.Head.Name {
		case "SEARCH", "SORT":
			resp.Segments[0].Text = d.completeSearch(s, resp.Segments[0].Text)
		case "ESEARCH":
			text := d.completeESearch(s, resp.Segments[0].Text)
			if d.addedAll {
				if i := esearchAll.FindIndex(text); i != nil {
					text = slices.Concat(text[:i[0]], text[i[1]:])
				}
			}
			resp.Segments[0].Text = text
		}
		return resp
	})
	return nil
}

// modSeqCriterion returns search criteria matching exactly the messages
// whose mod-sequence is n or more: "UID set", or "NOT UID set" when that is
// shorter, "ALL" or "NOT ALL". Flag changes are found through the state's
// index by mod-sequence; only a criterion matching most of a large mailbox
// costs a walk over it. A message the state does not know yet (delivered
// since the watcher's last report) has no mod-sequence the proxy could
// vouch for and does not match: the client has not been told of it
// either, and it is found by the next search once the watcher has
// reported it.
func modSeqCriterion(m *proxy.Mailbox, n uint64) string {
	if n <= 1 {
		return "ALL" // every message has a mod-sequence of at least 1
	}
	st := m.State()
	var match []uint32
	st.ChangesSince(n-1, func(ch syncstate.Change) {
		if !ch.Expunged {
			match = append(match, ch.UID)
		}
	})
	all := st.Snapshot().UIDs
	switch {
	case len(match) == 0:
		return "NOT ALL"
	case len(match) == len(all):
		return "ALL"
	}
	// As runs over the UIDs expunged between the messages: as many
	// ranges as the matches alternate with the others, whatever the
	// mailbox's gaps (the same for the matches and the rest, give or
	// take one).
	slices.Sort(match)
	return "UID " + string(uidset.AppendSpans(nil, uidset.RunsOf(all, match)))
}

// maxModSeqOf returns the highest mod-sequence among messages given by the
// client's numbers (UIDs or sequence numbers), and whether there was any.
func (d *searchData) maxModSeqOf(m *proxy.Mailbox, nums []uint32) (uint64, bool) {
	var highest uint64
	found := false
	for _, n := range nums {
		uid := n
		if !d.uids {
			if uid = m.UIDOf(n); uid == 0 {
				continue
			}
		}
		if _, modseq, ok := m.State().Flags(uid); ok {
			highest = max(highest, modseq)
			found = true
		}
	}
	return highest, found
}

// completeSearch appends "(MODSEQ n)" to a non-empty SEARCH or SORT result.
func (d *searchData) completeSearch(s *proxy.Session, text []byte) []byte {
	m := s.Mailbox()
	if m == nil || strings.Contains(string(text), "(MODSEQ") {
		return text
	}
	var nums []uint32
	for _, f := range strings.Fields(string(text))[2:] {
		if n, err := strconv.ParseUint(f, 10, 32); err == nil {
			nums = append(nums, uint32(n))
		}
	}
	if highest, ok := d.maxModSeqOf(m, nums); ok {
		text = fmt.Appendf(text, " (MODSEQ %d)", highest)
	}
	return text
}

// completeESearch appends "MODSEQ n" to an ESEARCH result with matches
// (RFC 7162 3.1.5 with RFC 4731).
func (d *searchData) completeESearch(s *proxy.Session, text []byte) []byte {
	m := s.Mailbox()
	if m == nil || strings.Contains(strings.ToUpper(string(text)), " MODSEQ ") {
		return text
	}
	fields := strings.Fields(string(text))
	var nums []uint32
	for i := 0; i+1 < len(fields); i++ {
		switch strings.ToUpper(fields[i]) {
		case "MIN", "MAX":
			if n, err := strconv.ParseUint(fields[i+1], 10, 32); err == nil {
				nums = append(nums, uint32(n))
			}
		case "ALL":
			set, err := imapcodec.ParseNumSet(fields[i+1])
			if err != nil || set.Dynamic() {
				continue
			}
			if all, ok := set.Nums(); ok {
				nums = append(nums, all...)
			}
		}
	}
	if highest, ok := d.maxModSeqOf(m, nums); ok {
		text = fmt.Appendf(text, " MODSEQ %d", highest)
	}
	return text
}

// statusData is what the STATUS rewriter tells the response filter.
type statusData struct {
	highest      uint64
	uidValidity  uint32 // of the state highest is from
	known        bool   // highest is known
	dropMessages bool   // MESSAGES was asked only because the list was empty
	// dropUIDValidity: UIDVALIDITY was asked only to tell the mailbox
	// the state is of from one created again under its name.
	dropUIDValidity bool
}

// rewriteStatus answers the HIGHESTMODSEQ item of STATUS (RFC 7162 3.1.6)
// from the hub's state of the mailbox and asks the upstream for the rest.
func (e *Extension) rewriteStatus(x *proxy.Exchange) error {
	s := x.Session()
	// A name sent as a literal is read like any other: the command goes
	// upstream as one line without HIGHESTMODSEQ either way.
	p := imapcodec.NewParser(x.Segments, imapcodec.Limits{})
	tag, err := p.Atom()
	if err != nil || p.SP() != nil {
		return nil
	}
	if _, err := p.Atom(); err != nil || p.SP() != nil {
		return nil
	}
	mailbox, err := p.AString()
	if err != nil || p.SP() != nil {
		return nil
	}
	v, err := p.Value()
	items, ok := v.(imapcodec.List)
	if err != nil || !ok || !p.AtEnd() {
		return nil
	}
	kept := imapcodec.List{}
	asked, withUIDValidity := false, false
	for _, it := range items {
		a, ok := it.(imapcodec.Atom)
		if ok && strings.EqualFold(string(a), "HIGHESTMODSEQ") {
			asked = true
			continue
		}
		withUIDValidity = withUIDValidity || ok && strings.EqualFold(string(a), "UIDVALIDITY")
		kept = append(kept, it)
	}
	if !asked {
		return nil
	}
	if !imapcodec.Quotable(mailbox) {
		return errors.New("HIGHESTMODSEQ is not available for this mailbox name")
	}
	enableCondStore(s)
	d := &statusData{}
	if len(kept) == 0 {
		kept = imapcodec.List{imapcodec.Atom("MESSAGES")}
		d.dropMessages = true
	}
	if !withUIDValidity {
		// The hub's state may be of a mailbox deleted and created
		// again under the name outside the proxy, which its watcher
		// has not seen (Dovecot tells a connection that keeps the old
		// one selected nothing): the upstream's UIDVALIDITY tells.
		kept = append(kept, imapcodec.Atom("UIDVALIDITY"))
		d.dropUIDValidity = true
	}
	account := s.UpstreamAccount()
	if st, release, err := e.mailboxes.State(context.Background(), account, mailbox); err == nil {
		d.highest, d.uidValidity, d.known = st.HighestModSeq(), st.UIDValidity(), true
		release()
	} else {
		s.Logger().Debug("no state for STATUS HIGHESTMODSEQ", "mailbox", mailbox, "err", err)
	}
	line := imapcodec.AppendQuoted([]byte(tag+" STATUS "), mailbox)
	line = append(line, ' ')
	x.Segments = []imapcodec.Segment{{Text: imapcodec.AppendValue(line, kept)}}
	failed := false
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Head.Name != "STATUS" || resp.Streamed || len(resp.Segments) == 0 ||
			!e.sameMailbox(x.Context(), account, resp.Segments, mailbox) {
			return resp
		}
		// The item list follows the name, which Dovecot writes as a
		// literal when it holds many quoted-specials: the list is in
		// the last segment either way.
		last := &resp.Segments[len(resp.Segments)-1]
		if v := statusUIDValidity(last.Text); d.known && v != 0 && v != d.uidValidity {
			// The wait for the hub's resync runs once the
			// upstream's answer is in and the command's connection
			// is back in the pool: under a full connection budget
			// the resync needs it (as SELECT's wait does).
			x.HoldResponse(func(resp *proxy.Response) *proxy.Response {
				if err := e.resyncStatus(x.Context(), account, mailbox, v, d); err != nil {
					// Not the old mailbox's mod-sequence,
					// and not an answer without the item
					// the client asked for: NO
					// [UNAVAILABLE], as a SELECT that meets
					// the same gets.
					s.Logger().Warn("STATUS HIGHESTMODSEQ of a mailbox created again", "mailbox", mailbox, "err", err)
					failed = true
					return nil
				}
				last := &resp.Segments[len(resp.Segments)-1]
				last.Text = d.complete(last.Text)
				return resp
			})
			return resp
		}
		last.Text = d.complete(last.Text)
		return resp
	})
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		if failed && h.Name == "OK" {
			h.Name, h.Code, h.CodeArg = "NO", "UNAVAILABLE", ""
			h.Text = "The mailbox changed while its status was asked; try again."
		}
	})
	return nil
}

// sameMailbox reports whether the STATUS response segs is of mailbox:
// only that one's answer gets its HIGHESTMODSEQ, and only its UIDVALIDITY
// tells whether the state is of another mailbox of the name.
func (e *Extension) sameMailbox(ctx context.Context, a proxy.Account, segs []imapcodec.Segment, mailbox string) bool {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil || p.SP() != nil { // *
		return false
	}
	if _, err := p.Atom(); err != nil || p.SP() != nil { // STATUS
		return false
	}
	name, err := p.AString()
	return err == nil && (name == mailbox ||
		e.mailboxes.Canonical(ctx, a.Name, nil, name) == e.mailboxes.Canonical(ctx, a.Name, nil, mailbox))
}

// resyncStatus takes d's HIGHESTMODSEQ from the hub's state of the
// mailbox at uidValidity, the upstream's, after the state d had was found
// to be of another UIDVALIDITY: the mailbox was deleted and created again
// under the name, and RFC 7162's HIGHESTMODSEQ is of one UIDVALIDITY (a
// client caching by both would take the new mailbox for the old one).
// The hub starts the state over (a new one continues above the old one's
// mod-sequences, see hub.Resync).
func (e *Extension) resyncStatus(ctx context.Context, a proxy.Account, mailbox string, uidValidity uint32, d *statusData) error {
	ctx, cancel := context.WithTimeout(ctx, syncWait)
	defer cancel()
	st, release, err := e.mailboxes.StateAt(ctx, a, mailbox, uidValidity)
	if err != nil {
		return err
	}
	d.highest, d.uidValidity = st.HighestModSeq(), st.UIDValidity()
	release()
	return nil
}

// statusUIDValidity returns the UIDVALIDITY of the item list that ends a
// STATUS response ("... (MESSAGES 2 UIDVALIDITY 7)"), or 0.
func statusUIDValidity(text []byte) uint32 {
	_, attrs, ok := imapcodec.StatusItems(text)
	if !ok {
		return 0
	}
	for i := 0; i+1 < len(attrs); i += 2 {
		if strings.EqualFold(attrs[i], "UIDVALIDITY") {
			return upstream.ParseUIDValidity(attrs[i+1])
		}
	}
	return 0
}

// complete adds HIGHESTMODSEQ to "* STATUS name (...)" (or to the segment
// after a literal name, " (...)") and takes out the items asked for the
// proxy's sake.
func (d *statusData) complete(text []byte) []byte {
	open, attrs, ok := imapcodec.StatusItems(text)
	if !ok {
		return text
	}
	var out []string
	for i := 0; i+1 < len(attrs); i += 2 {
		if d.dropMessages && strings.EqualFold(attrs[i], "MESSAGES") ||
			d.dropUIDValidity && strings.EqualFold(attrs[i], "UIDVALIDITY") {
			continue
		}
		out = append(out, attrs[i], attrs[i+1])
	}
	if d.known {
		out = append(out, "HIGHESTMODSEQ", strconv.FormatUint(d.highest, 10))
	}
	return fmt.Appendf(text[:open:open], "(%s)", strings.Join(out, " "))
}

// bindStar resolves "*" in a UID set to last, the largest UID in use:
// "n:*" is "n:last", and "last:n" when n is above it (RFC 3501 6.4.8, 9:
// "*" is the largest number in use, and a range covers the numbers
// between its ends in either order). With no message at all (last 0) a
// range with "*" covers nothing.
func bindStar(ranges imap.UIDSet, last uint32) imap.UIDSet {
	var out imap.UIDSet
	for _, r := range ranges {
		lo, hi := uint32(r.Start), uint32(r.Stop)
		if lo == 0 {
			lo = last
		}
		if hi == 0 {
			hi = last
		}
		lo, hi = min(lo, hi), max(lo, hi)
		if lo >= 1 {
			out.AddRange(imap.UID(lo), imap.UID(hi))
		}
	}
	return out
}

// lastUID is the last of sorted UIDs, 0 if there is none.
func lastUID(uids []uint32) uint32 {
	if len(uids) == 0 {
		return 0
	}
	return uids[len(uids)-1]
}

// mentions reports whether a command's text (its literals aside) holds
// one of words, in any case.
func mentions(segs []imapcodec.Segment, words ...string) bool {
	for _, seg := range segs {
		for _, w := range words {
			if bytes.Contains(bytes.ToUpper(seg.Text), []byte(w)) {
				return true
			}
		}
	}
	return false
}

// oneLine writes a command read with literals on one line, each literal
// as a quoted string whatever its length; false if one cannot be (CR, LF,
// NUL, 8-bit data, a literal8).
func oneLine(segs []imapcodec.Segment) ([]imapcodec.Segment, bool) {
	var line []byte
	for _, seg := range segs {
		line = append(line, seg.Text...)
		if seg.Literal == nil {
			continue
		}
		if seg.Literal.Binary || !imapcodec.Quotable(string(seg.Data)) {
			return nil, false
		}
		line = imapcodec.AppendQuoted(line, string(seg.Data))
	}
	return []imapcodec.Segment{{Text: line}}, true
}

// clipUIDs bounds ranges, a UID set that may hold "*", by the largest UID
// the mailbox has or ever had as far as the state knows (MaxUID counts
// expunged ones, whose log may be pruned) and the client's view.
func clipUIDs(ranges imap.UIDSet, m *proxy.Mailbox) imap.UIDSet {
	last := max(m.State().MaxUID(), lastUID(m.UIDs()))
	var out imap.UIDSet
	for _, r := range bindStar(ranges, last) {
		if lo, hi := uint32(r.Start), min(uint32(r.Stop), last); lo <= hi {
			out.AddRange(imap.UID(lo), imap.UID(hi))
		}
	}
	return out
}
