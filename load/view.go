package load

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// flagBits is a message's flags as the tool tracks them.
type flagBits uint8

const (
	fSeen flagBits = 1 << iota
	fAnswered
	fFlagged
	fDeleted
	fDraft
	// fOther stands for any keyword or flag the tool does not set itself.
	fOther
)

var flagNames = []struct {
	bit  flagBits
	name string
}{{fSeen, `\Seen`}, {fAnswered, `\Answered`}, {fFlagged, `\Flagged`}, {fDeleted, `\Deleted`}, {fDraft, `\Draft`}}

// String is the flags' IMAP form, "(\Seen \Flagged)".
func (f flagBits) String() string {
	var parts []string
	for _, n := range flagNames {
		if f&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	if f&fOther != 0 {
		parts = append(parts, "$other")
	}
	return "(" + strings.Join(parts, " ") + ")"
}

func parseFlags(v imapcodec.Value) (flagBits, error) {
	l, ok := v.(imapcodec.List)
	if !ok {
		return 0, fmt.Errorf("FLAGS is not a list")
	}
	var f flagBits
	for _, item := range l {
		a, ok := item.(imapcodec.Atom)
		if !ok {
			return 0, fmt.Errorf("flag is not an atom")
		}
		name := strings.ToLower(string(a))
		known := false
		for _, n := range flagNames {
			if name == strings.ToLower(n.name) {
				f |= n.bit
				known = true
			}
		}
		if !known && name != `\recent` {
			f |= fOther
		}
	}
	return f, nil
}

// fetchData is what the tool reads from a FETCH response.
type fetchData struct {
	seq      uint32
	uid      uint32
	flags    flagBits
	hasFlags bool
	modseq   uint64
	body     []byte
	hasBody  bool
	nilBody  bool // BODY[] NIL: a message expunged meanwhile (RFC 2180 4.1.3)
}

// parseFetch parses "* n FETCH (...)".
func parseFetch(r *resp) (fetchData, error) {
	var d fetchData
	p := imapcodec.NewParser(r.segs, limits)
	vals, err := p.Values()
	if err != nil {
		return d, err
	}
	if len(vals) != 4 {
		return d, fmt.Errorf("FETCH response with %d parts", len(vals))
	}
	n, _ := vals[1].(imapcodec.Atom)
	seq, err := strconv.ParseUint(string(n), 10, 32)
	if err != nil || seq == 0 {
		return d, fmt.Errorf("FETCH with bad number %q", n)
	}
	d.seq = uint32(seq)
	items, ok := vals[3].(imapcodec.List)
	if !ok || len(items)%2 != 0 {
		return d, fmt.Errorf("FETCH items are not a list of pairs")
	}
	for i := 0; i < len(items); i += 2 {
		name, _ := items[i].(imapcodec.Atom)
		switch strings.ToUpper(string(name)) {
		case "UID":
			a, _ := items[i+1].(imapcodec.Atom)
			u, err := strconv.ParseUint(string(a), 10, 32)
			if err != nil || u == 0 {
				return d, fmt.Errorf("bad UID %q", a)
			}
			d.uid = uint32(u)
		case "FLAGS":
			if d.flags, err = parseFlags(items[i+1]); err != nil {
				return d, err
			}
			d.hasFlags = true
		case "MODSEQ":
			l, _ := items[i+1].(imapcodec.List)
			if len(l) == 1 {
				a, _ := l[0].(imapcodec.Atom)
				d.modseq, _ = strconv.ParseUint(string(a), 10, 64)
			}
		case "BODY[]":
			d.hasBody = true
			if imapcodec.IsNil(items[i+1]) {
				d.nilBody = true
				break
			}
			s, ok := items[i+1].(imapcodec.String)
			if !ok {
				return d, fmt.Errorf("BODY[] is not a string")
			}
			d.body = s.Data
		}
	}
	return d, nil
}

// parseUIDSet parses "1:3,7" (no "*").
func parseUIDSet(s string) ([]uint32, error) {
	var out []uint32
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad UID set %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 32); err != nil {
				return nil, fmt.Errorf("bad UID set %q", s)
			}
		}
		if b < a {
			a, b = b, a
		}
		if b-a > MaxMessages {
			return nil, fmt.Errorf("UID set %q too large", s)
		}
		for u := a; u <= b; u++ {
			out = append(out, uint32(u))
		}
	}
	return out, nil
}

// formatUIDSet renders sorted UIDs as a compact set.
func formatUIDSet(uids []uint32) string {
	var b strings.Builder
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(uids[i]), 10))
		if j > i {
			b.WriteString(":" + strconv.FormatUint(uint64(uids[j]), 10))
		}
		i = j + 1
	}
	return b.String()
}

// vmsg is a message as a client sees it; uid 0 is a message announced by
// EXISTS whose UID the client has not fetched yet.
type vmsg struct {
	uid   uint32
	flags flagBits
}

// view is a client's picture of a selected mailbox, by sequence number.
type view struct {
	uidValidity uint32
	uidNext     uint32 // UIDNEXT of the last SELECT
	modseq      uint64 // HIGHESTMODSEQ of the last SELECT (0: none)
	msgs        []vmsg
}

// placeholders counts the messages whose UID is not known yet.
func (v *view) placeholders() int {
	n := 0
	for _, m := range v.msgs {
		if m.uid == 0 {
			n++
		}
	}
	return n
}

// apply applies an untagged response received while the mailbox is
// selected. It reports protocol errors: numbers out of range, a UID that
// contradicts the one known for a sequence number.
func (v *view) apply(r *resp) error {
	h := r.head
	switch {
	case h.Name == "EXISTS" && h.HasNum:
		if int(h.Num) < len(v.msgs) {
			return fmt.Errorf("* %d EXISTS with %d messages known and no EXPUNGE", h.Num, len(v.msgs))
		}
		for len(v.msgs) < int(h.Num) {
			v.msgs = append(v.msgs, vmsg{})
		}
	case h.Name == "EXPUNGE" && h.HasNum:
		if h.Num == 0 || int(h.Num) > len(v.msgs) {
			return fmt.Errorf("* %d EXPUNGE with %d messages", h.Num, len(v.msgs))
		}
		v.msgs = slices.Delete(v.msgs, int(h.Num)-1, int(h.Num))
	case h.Name == "VANISHED" && !h.HasNum:
		set := h.Text
		if strings.HasPrefix(strings.ToUpper(set), "(EARLIER) ") {
			set = set[len("(EARLIER) "):]
		}
		uids, err := parseUIDSet(set)
		if err != nil {
			return err
		}
		v.vanish(uids)
	case h.Name == "FETCH" && h.HasNum:
		d, err := parseFetch(r)
		if err != nil {
			return err
		}
		return v.applyFetch(d)
	}
	return nil
}

// vanish removes UIDs. A UID the view does not know may be one of the
// messages whose UID it has not learnt yet: if there are such messages
// between the known UIDs around it, one of them goes (they are alike until
// their UIDs are known).
func (v *view) vanish(uids []uint32) {
	for _, u := range uids {
		i := slices.IndexFunc(v.msgs, func(m vmsg) bool { return m.uid == u })
		if i < 0 {
			i = v.unknownSlot(u)
		}
		if i >= 0 {
			v.msgs = slices.Delete(v.msgs, i, i+1)
		}
	}
}

// unknownSlot returns the index of a message without a known UID that
// could have UID u (between the known UIDs below and above u), or -1.
func (v *view) unknownSlot(u uint32) int {
	for i, m := range v.msgs {
		if m.uid != 0 {
			if m.uid > u {
				return -1
			}
			continue
		}
		// The known UIDs around the run of unknown ones this is in.
		below := uint32(0)
		for j := i - 1; j >= 0; j-- {
			if v.msgs[j].uid != 0 {
				below = v.msgs[j].uid
				break
			}
		}
		above := ^uint32(0)
		for j := i + 1; j < len(v.msgs); j++ {
			if v.msgs[j].uid != 0 {
				above = v.msgs[j].uid
				break
			}
		}
		if below < u && u < above {
			return i
		}
	}
	return -1
}

func (v *view) applyFetch(d fetchData) error {
	if int(d.seq) > len(v.msgs) {
		return fmt.Errorf("* %d FETCH with %d messages", d.seq, len(v.msgs))
	}
	m := &v.msgs[d.seq-1]
	if d.uid != 0 {
		switch {
		case m.uid == 0:
			if d.seq > 1 && v.msgs[d.seq-2].uid >= d.uid || int(d.seq) < len(v.msgs) && v.msgs[d.seq].uid != 0 && v.msgs[d.seq].uid <= d.uid {
				return fmt.Errorf("* %d FETCH (UID %d) out of UID order", d.seq, d.uid)
			}
			m.uid = d.uid
		case m.uid != d.uid:
			return fmt.Errorf("* %d FETCH (UID %d), but message %d has UID %d", d.seq, d.uid, d.seq, m.uid)
		}
	}
	if d.hasFlags {
		m.flags = d.flags
	}
	return nil
}

// state returns the view as UID → flags; it fails if a UID is unknown.
func (v *view) state() (map[uint32]flagBits, error) {
	out := make(map[uint32]flagBits, len(v.msgs))
	for i, m := range v.msgs {
		if m.uid == 0 {
			return nil, fmt.Errorf("message %d has no known UID", i+1)
		}
		out[m.uid] = m.flags
	}
	return out, nil
}

// hash is an order-independent digest of a mailbox state, updated in O(1)
// per change by the model.
func msgHash(uid uint32, f flagBits) uint64 {
	x := uint64(uid)<<8 | uint64(f)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (v *view) hash() uint64 {
	var h uint64
	for _, m := range v.msgs {
		h += msgHash(m.uid, m.flags)
	}
	return h
}

// qresyncSelect is what a SELECT with QRESYNC returned.
type qresyncSelect struct {
	exists      int64
	uidValidity uint32
	uidNext     uint32
	modseq      uint64
	vanished    []uint32
	fetches     []fetchData
}

// collectSelect gathers a SELECT's untagged responses.
func (q *qresyncSelect) collect(r *resp) error {
	h := r.head
	switch {
	case h.Name == "EXISTS" && h.HasNum:
		q.exists = int64(h.Num)
	case h.Name == "OK" && h.Code == "UIDVALIDITY":
		u, _ := strconv.ParseUint(h.CodeArg, 10, 32)
		q.uidValidity = uint32(u)
	case h.Name == "OK" && h.Code == "UIDNEXT":
		u, _ := strconv.ParseUint(h.CodeArg, 10, 32)
		q.uidNext = uint32(u)
	case h.Name == "OK" && h.Code == "HIGHESTMODSEQ":
		q.modseq, _ = strconv.ParseUint(h.CodeArg, 10, 64)
	case h.Name == "OK" && h.Code == "NOMODSEQ":
		q.modseq = 0
	case h.Name == "VANISHED" && !h.HasNum:
		set := h.Text
		if !strings.HasPrefix(strings.ToUpper(set), "(EARLIER) ") {
			return fmt.Errorf("VANISHED without (EARLIER) in SELECT")
		}
		uids, err := parseUIDSet(set[len("(EARLIER) "):])
		if err != nil {
			return err
		}
		q.vanished = append(q.vanished, uids...)
	case h.Name == "FETCH" && h.HasNum:
		d, err := parseFetch(r)
		if err != nil {
			return err
		}
		if d.uid == 0 {
			return fmt.Errorf("* %d FETCH without UID in a QRESYNC SELECT", d.seq)
		}
		q.fetches = append(q.fetches, d)
	}
	return nil
}

// resynced returns the view after a QRESYNC SELECT: the old view's known
// messages minus the vanished plus the fetched, checked against EXISTS
// and the FETCHes' sequence numbers.
func (q *qresyncSelect) resynced(old view) (view, error) {
	flags := map[uint32]flagBits{}
	for _, m := range old.msgs {
		if m.uid != 0 {
			flags[m.uid] = m.flags
		}
	}
	for _, u := range q.vanished {
		delete(flags, u)
	}
	for _, d := range q.fetches {
		f, ok := flags[d.uid]
		if d.hasFlags {
			f = d.flags
		} else if !ok {
			return view{}, fmt.Errorf("* %d FETCH (UID %d) of a new message without FLAGS", d.seq, d.uid)
		}
		flags[d.uid] = f
	}
	uids := slices.Sorted(maps.Keys(flags))
	if int64(len(uids)) != q.exists {
		return view{}, fmt.Errorf("QRESYNC: %d EXISTS, but the client's %d messages minus %d vanished plus %d fetched make %d",
			q.exists, countKnown(old), len(q.vanished), len(q.fetches), len(uids))
	}
	for _, d := range q.fetches {
		if i, _ := slices.BinarySearch(uids, d.uid); uint32(i+1) != d.seq {
			return view{}, fmt.Errorf("QRESYNC: * %d FETCH (UID %d), but that UID is message %d", d.seq, d.uid, i+1)
		}
	}
	v := view{uidValidity: q.uidValidity, uidNext: q.uidNext, modseq: q.modseq, msgs: make([]vmsg, len(uids))}
	for i, u := range uids {
		v.msgs[i] = vmsg{u, flags[u]}
	}
	return v, nil
}

func countKnown(v view) int {
	n := 0
	for _, m := range v.msgs {
		if m.uid != 0 {
			n++
		}
	}
	return n
}

// fullSync selects mailbox and fetches every message's UID and flags (a
// client without QRESYNC), returning the view.
func fullSync(c *conn, mailbox string, each func(*resp) error) (view, error) {
	var q qresyncSelect
	q.exists = -1
	if _, err := c.do("SELECT "+astring(mailbox), func(r *resp) error {
		if err := q.collect(r); err != nil {
			return err
		}
		if each != nil {
			return each(r)
		}
		return nil
	}); err != nil {
		return view{}, err
	}
	if q.exists < 0 {
		return view{}, fmt.Errorf("SELECT %s: no EXISTS", mailbox)
	}
	v := view{uidValidity: q.uidValidity, uidNext: q.uidNext, modseq: q.modseq, msgs: make([]vmsg, q.exists)}
	if q.exists > 0 {
		if _, err := c.do("UID FETCH 1:* (FLAGS)", func(r *resp) error {
			if each != nil {
				if err := each(r); err != nil {
					return err
				}
			}
			return v.apply(r)
		}); err != nil {
			return v, err
		}
	}
	if v.placeholders() == 0 {
		return v, nil
	}
	return v, v.settle(c, func(r *resp) error {
		if each != nil {
			if err := each(r); err != nil {
				return err
			}
		}
		return v.apply(r)
	})
}

// fill asks for the UIDs and flags of the messages announced by EXISTS
// (apply must apply untagged responses to v). Some may stay unknown: a
// message expunged meanwhile may be left out of the answer (RFC 2180
// 4.1.3), the expunge being announced only at a later command; settle
// deals with that.
func (v *view) fill(c *conn, apply func(*resp) error) error {
	if v.placeholders() == 0 {
		return nil
	}
	first := slices.IndexFunc(v.msgs, func(m vmsg) bool { return m.uid == 0 }) + 1
	_, err := c.do(fmt.Sprintf("FETCH %d:* (UID FLAGS)", first), apply)
	return err
}

// settle brings the view to a point where it must equal the mailbox as it
// was at some moment: NOOP (the server sends the expunges it held back
// during FETCH, which may not send them), then the UIDs of newly announced
// messages, until none is missing.
func (v *view) settle(c *conn, apply func(*resp) error) error {
	for range 5 {
		if _, err := c.do("NOOP", apply); err != nil {
			return err
		}
		if v.placeholders() == 0 {
			return nil
		}
		if err := v.fill(c, apply); err != nil {
			return err
		}
	}
	return fmt.Errorf("%d announced messages still without a UID after 5 rounds of NOOP and FETCH n:* (UID FLAGS)", v.placeholders())
}
