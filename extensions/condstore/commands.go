package condstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
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
func uidHead(c *proxy.Relayed) (tag, set string, p *imapcodec.Parser, err error) {
	p = imapcodec.NewParser(c.Segments, imapcodec.Limits{})
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

// fetchData is what FETCH's rewriter tells the response filter.
func rewriteFetch(s *proxy.Session, c *proxy.Relayed) error {
	m := s.Mailbox()
	if m == nil || len(c.Segments) != 1 {
		return nil
	}
	tag, set, p, err := uidHead(c)
	if err != nil {
		return nil // the upstream will say what is wrong
	}
	if p.SP() != nil {
		return nil
	}
	items, err := p.Value()
	if err != nil {
		return nil
	}
	var mods imapcodec.List
	if p.MaybeSP() {
		v, err := p.Value()
		l, ok := v.(imapcodec.List)
		if err != nil || !ok {
			return errors.New("FETCH modifiers must be a parenthesised list")
		}
		mods = l
	}
	if !p.AtEnd() {
		return errors.New("unexpected text after the FETCH modifiers")
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
				return errors.New("CHANGEDSINCE needs one mod-sequence")
			}
			i++
			if changedSince, err = number(mods[i], 1, maxModSeq); err != nil {
				return fmt.Errorf("bad CHANGEDSINCE mod-sequence: %w", err)
			}
			hasChangedSince = true
		case "VANISHED":
			if vanished {
				return errors.New("VANISHED given twice")
			}
			vanished = true
		default:
			return fmt.Errorf("unknown FETCH modifier %s", imapcodec.AppendValue(nil, mods[i]))
		}
	}
	if vanished {
		switch {
		case c.Name != "UID FETCH":
			return errors.New("the VANISHED modifier is only allowed with UID FETCH")
		case !s.Enabled("QRESYNC"):
			return errors.New("the VANISHED modifier needs QRESYNC enabled (ENABLE QRESYNC)")
		case !hasChangedSince:
			return errors.New("the VANISHED modifier needs CHANGEDSINCE")
		}
	}
	if !wantModSeq && !hasChangedSince {
		return nil
	}
	enableCondStore(s)
	uids := set
	if hasChangedSince {
		// "*" stands for the largest UID there is, which may be below a
		// UID expunged since: VANISHED must still report that one.
		ranges, err := parseUIDRanges(set, true)
		if err != nil {
			return err
		}
		var changed, gone []uint32
		m.State().ChangesSince(changedSince, func(ch syncstate.Change) {
			if !inRanges(ranges, ch.UID) {
				return
			}
			if ch.Expunged {
				gone = append(gone, ch.UID)
			} else if m.SeqOf(ch.UID) != 0 {
				changed = append(changed, ch.UID)
			}
		})
		if vanished && len(gone) > 0 {
			slices.Sort(gone)
			b := appendUIDSet([]byte("* VANISHED (EARLIER) "), gone)
			s.Write(append(b, "\r\n"...))
		}
		if len(changed) == 0 {
			c.Answer = &imapcodec.ResponseHead{Name: "OK", Text: "Fetch completed."}
			return nil
		}
		slices.Sort(changed)
		uids = string(appendUIDSet(nil, changed))
	}
	line := fmt.Appendf(nil, "%s UID FETCH %s ", tag, uids)
	c.Segments = []imapcodec.Segment{{Text: imapcodec.AppendValue(line, items)}}
	return nil
}

// rewriteStore implements STORE (UNCHANGEDSINCE m) (RFC 7162 3.1.3): the
// messages changed after m are left alone and reported in [MODIFIED]; the
// others are stored upstream. The check and the store are not atomic
// against a change by another client in between; docs/condstore.md says
// why that is accepted.
func rewriteStore(s *proxy.Session, c *proxy.Relayed) error {
	m := s.Mailbox()
	if m == nil || len(c.Segments) != 1 {
		return nil
	}
	tag, set, p, err := uidHead(c)
	if err != nil || p.SP() != nil {
		return nil
	}
	if ch, ok := p.Peek(); !ok || ch != '(' {
		return nil // no modifiers
	}
	v, err := p.Value()
	mods, _ := v.(imapcodec.List)
	if err != nil || p.SP() != nil {
		return errors.New("bad STORE modifiers")
	}
	rest := p.Rest()
	var unchangedSince uint64
	has := false
	for i := 0; i < len(mods); i++ {
		a, _ := mods[i].(imapcodec.Atom)
		switch strings.ToUpper(string(a)) {
		case "UNCHANGEDSINCE":
			if has || i+1 >= len(mods) {
				return errors.New("UNCHANGEDSINCE needs one mod-sequence")
			}
			i++
			if unchangedSince, err = number(mods[i], 0, maxModSeq); err != nil {
				return fmt.Errorf("bad UNCHANGEDSINCE mod-sequence: %w", err)
			}
			has = true
		default:
			return fmt.Errorf("unknown STORE modifier %s", imapcodec.AppendValue(nil, mods[i]))
		}
	}
	if !has {
		return errors.New("empty STORE modifier list")
	}
	enableCondStore(s)
	ranges, err := parseUIDRanges(set, true)
	if err != nil {
		return err
	}
	// The state must know of every change the upstream has made so far
	// (the watcher's IDLE may lag): one round trip of the watcher first.
	// A change landing between this and the STORE is still overwritten;
	// docs/condstore.md says why that window is accepted.
	s.SyncMailbox(context.Background(), syncWait)
	st := m.State()
	var keep, modified []uint32
	for _, uid := range st.Snapshot().UIDs {
		if !inRanges(ranges, uid) {
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
	if len(modified) > 0 {
		if c.Name == "STORE" {
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
			c.OKCode = "MODIFIED " + string(appendUIDSet(nil, modified))
		}
	}
	if len(keep) == 0 {
		text := "Store completed."
		if c.OKCode != "" {
			text = "Conditional STORE failed."
		}
		c.Answer = &imapcodec.ResponseHead{Name: "OK", Text: text}
		return nil
	}
	line := fmt.Appendf(nil, "%s UID STORE %s %s", tag, appendUIDSet(nil, keep), rest)
	c.Segments = []imapcodec.Segment{{Text: line}}
	return nil
}

// searchData is what the search rewriter tells the response filter.
type searchData struct {
	uids bool // results are UIDs, not sequence numbers
}

// rewriteSearch replaces each MODSEQ search key (RFC 7162 3.1.5) with the
// UIDs of the messages whose mod-sequence is at least the one given, from
// the proxy's state, and marks the command so that its results get their
// (MODSEQ n).
func rewriteSearch(s *proxy.Session, c *proxy.Relayed) error {
	m := s.Mailbox()
	if m == nil {
		return nil
	}
	found, err := proxy.ReplaceModSeqKeys(c.Segments, func(args []imapcodec.Value) (string, error) {
		if len(args) == 3 {
			name, ok := imapcodec.AsString(args[0])
			if !ok || !strings.HasPrefix(name, "/flags/") && !strings.HasPrefix(name, "/shared/") && !strings.HasPrefix(name, "/priv/") {
				return "", errors.New("bad MODSEQ entry name")
			}
			typ, _ := imapcodec.AsString(args[1])
			switch strings.ToLower(typ) {
			case "priv", "shared", "all":
			default:
				return "", errors.New("bad MODSEQ entry type")
			}
		}
		n, err := number(args[len(args)-1], 0, maxModSeq)
		if err != nil {
			return "", fmt.Errorf("bad MODSEQ search key: %w", err)
		}
		return modSeqCriterion(m, n), nil
	})
	if err != nil {
		return err
	}
	if !found {
		return nil
	}
	enableCondStore(s)
	c.Data = &searchData{uids: strings.HasPrefix(c.Name, "UID ")}
	return nil
}

// modSeqCriterion returns search criteria matching exactly the messages
// whose mod-sequence is n or more: "UID set", or "NOT UID set" when that is
// shorter, "ALL" or "NOT ALL". Flag changes are found through the state's
// index by mod-sequence; only a criterion matching most of a large mailbox
// costs a walk over it.
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
	case len(match) <= len(all)/2:
		slices.Sort(match)
		return "UID " + string(appendUIDSet(nil, match))
	}
	slices.Sort(match)
	var rest []uint32
	for _, uid := range all {
		if _, ok := slices.BinarySearch(match, uid); !ok {
			rest = append(rest, uid)
		}
	}
	return "NOT UID " + string(appendUIDSet(nil, rest))
}

// maxModSeqOf returns the highest mod-sequence among messages given by the
// client's numbers (UIDs or sequence numbers), and whether there was any.
func (d *searchData) maxModSeqOf(m *proxy.Mailbox, nums []uint32) (uint64, bool) {
	var highest uint64
	found := false
	view := m.UIDs()
	for _, n := range nums {
		uid := n
		if !d.uids {
			if n == 0 || int(n) > len(view) {
				continue
			}
			uid = view[n-1]
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
			ranges, err := parseUIDRanges(fields[i+1], false)
			if err != nil {
				continue
			}
			for _, r := range ranges {
				for n := r.lo; n <= r.hi && n != 0; n++ {
					nums = append(nums, n)
					if n == r.hi {
						break
					}
				}
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
	known        bool // highest is known
	dropMessages bool // MESSAGES was asked only because the list was empty
}

// rewriteStatus answers the HIGHESTMODSEQ item of STATUS (RFC 7162 3.1.6)
// from the hub's state of the mailbox and asks the upstream for the rest.
func rewriteStatus(s *proxy.Session, c *proxy.Relayed) error {
	if len(c.Segments) != 1 {
		return nil
	}
	p := imapcodec.NewParser(c.Segments, imapcodec.Limits{})
	tag, err := p.Atom()
	if err != nil || p.SP() != nil {
		return nil
	}
	if _, err := p.Atom(); err != nil || p.SP() != nil {
		return nil
	}
	mv, err := p.Value()
	mailbox, ok := imapcodec.AsString(mv)
	if err != nil || !ok || p.SP() != nil {
		return nil
	}
	v, err := p.Value()
	items, ok := v.(imapcodec.List)
	if err != nil || !ok || !p.AtEnd() {
		return nil
	}
	kept := imapcodec.List{}
	asked := false
	for _, it := range items {
		if a, ok := it.(imapcodec.Atom); ok && strings.EqualFold(string(a), "HIGHESTMODSEQ") {
			asked = true
			continue
		}
		kept = append(kept, it)
	}
	if !asked {
		return nil
	}
	if !imapcodec.CanQuote(mailbox) {
		return errors.New("HIGHESTMODSEQ is not available for this mailbox name")
	}
	enableCondStore(s)
	d := &statusData{}
	if len(kept) == 0 {
		kept = imapcodec.List{imapcodec.Atom("MESSAGES")}
		d.dropMessages = true
	}
	if st, release, err := s.MailboxState(bg, mailbox); err == nil {
		d.highest, d.known = st.HighestModSeq(), true
		release()
	} else {
		s.Logger().Debug("no state for STATUS HIGHESTMODSEQ", "mailbox", mailbox, "err", err)
	}
	line := imapcodec.AppendQuoted([]byte(tag+" STATUS "), mailbox)
	line = append(line, ' ')
	c.Segments = []imapcodec.Segment{{Text: imapcodec.AppendValue(line, kept)}}
	c.Data = d
	return nil
}

// complete adds HIGHESTMODSEQ to "* STATUS name (...)".
func (d *statusData) complete(text []byte) []byte {
	open := strings.LastIndexByte(string(text), '(')
	if open < 0 || !strings.HasSuffix(string(text), ")") {
		return text
	}
	attrs := strings.Fields(string(text[open+1 : len(text)-1]))
	var out []string
	for i := 0; i+1 < len(attrs); i += 2 {
		if d.dropMessages && strings.EqualFold(attrs[i], "MESSAGES") {
			continue
		}
		out = append(out, attrs[i], attrs[i+1])
	}
	if d.known {
		out = append(out, "HIGHESTMODSEQ", strconv.FormatUint(d.highest, 10))
	}
	return fmt.Appendf(text[:open:open], "(%s)", strings.Join(out, " "))
}

// uidRange is an inclusive range of UIDs (or sequence numbers).
type uidRange struct{ lo, hi uint32 }

// parseUIDRanges parses a set of numbers. "*" is accepted only when
// allowStar, and stands for the largest possible number: a UID set with
// "n:*" then covers every UID from n on, including UIDs expunged above the
// largest one left.
func parseUIDRanges(s string, allowStar bool) ([]uidRange, error) {
	if s == "" {
		return nil, errors.New("empty set")
	}
	var out []uidRange
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err := setNumber(lo, allowStar)
		if err != nil {
			return nil, err
		}
		z := a
		if isRange {
			if z, err = setNumber(hi, allowStar); err != nil {
				return nil, err
			}
		}
		if a > z {
			a, z = z, a
		}
		out = append(out, uidRange{a, z})
	}
	return out, nil
}

func setNumber(s string, allowStar bool) (uint32, error) {
	if s == "*" && allowStar {
		return math.MaxUint32, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad number %q in a set", s)
	}
	return uint32(n), nil
}

func inRanges(rs []uidRange, n uint32) bool {
	for _, r := range rs {
		if n >= r.lo && n <= r.hi {
			return true
		}
	}
	return false
}

// appendUIDSet appends sorted numbers as a compact set: "1:3,7,9:10".
func appendUIDSet(b []byte, nums []uint32) []byte {
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && nums[j+1] <= nums[j]+1 {
			j++
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(nums[i]), 10)
		if nums[j] != nums[i] {
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(nums[j]), 10)
		}
		i = j + 1
	}
	return b
}
