// Package condstore gives every client CONDSTORE and QRESYNC (RFC 7162),
// whatever the upstream supports.
//
// The mod-sequences clients see are the proxy's own, kept by the hub's
// shared state of each mailbox (package syncstate, persisted by package
// statestore): every change the hub's watcher sees, or a session makes
// through the proxy, gets a new, strictly larger mod-sequence, and every
// expunge is logged with one. So the same code answers in front of an
// upstream with QRESYNC, with CONDSTORE only, or with neither, and the
// numbers stay monotonic across upstream reconnects, proxy restarts and a
// change of upstream server. The upstream's own mod-sequences are never
// relayed: its HIGHESTMODSEQ and NOMODSEQ codes are dropped, and the
// MODSEQ items, CHANGEDSINCE, UNCHANGEDSINCE and MODSEQ search keys a
// client sends are answered here and stripped before the command goes
// upstream. docs/condstore.md records the design and its trade-offs.
package condstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension implements RFC 7162 for every session. It has no state of its
// own: what it needs per session lives in the session's enabled set and in
// the command being relayed.
type Extension struct {
	mailboxes *proxy.MailboxService
	// OnResync, if set, is told the size in bytes of each QRESYNC
	// SELECT's answer (HIGHESTMODSEQ, VANISHED and FETCH), for metrics.
	OnResync func(bytes int)
}

// New returns the CONDSTORE/QRESYNC extension.
func New() *Extension { return &Extension{} }

func (*Extension) Name() string { return "condstore" }

// Provision takes the mailbox service STATUS HIGHESTMODSEQ is answered from.
func (e *Extension) Provision(svc proxy.Services) error {
	e.mailboxes = svc.Mailboxes
	return nil
}

// Capabilities advertises both words once the client is authenticated:
// they describe mailboxes, which exist only then.
func (*Extension) Capabilities(st proxy.State, _ upstream.Caps) []string {
	if st >= proxy.StateAuthenticated {
		return []string{"CONDSTORE", "QRESYNC"}
	}
	return nil
}

// Enable accepts ENABLE CONDSTORE and ENABLE QRESYNC; QRESYNC implies
// CONDSTORE (RFC 7162 3.2.3).
func (*Extension) Enable(s *proxy.Session, name string) bool {
	switch name {
	case "CONDSTORE":
		return true
	case "QRESYNC":
		s.SetEnabled("CONDSTORE")
		return true
	}
	return false
}

// enableCondStore handles a CONDSTORE-enabling command (RFC 7162 3.1).
// When it enables CONDSTORE while a mailbox is selected, the client has not
// been told the mailbox's HIGHESTMODSEQ yet: it is sent now.
func enableCondStore(s *proxy.Session) {
	if s.Enabled("CONDSTORE") {
		return
	}
	s.SetEnabled("CONDSTORE")
	if m := s.Mailbox(); m != nil {
		s.Write(fmt.Appendf(nil, "* OK [HIGHESTMODSEQ %d] Highest\r\n", m.ModSeq()))
	}
}

// FilterResponse drops the upstream's own mod-sequence codes, and its
// VANISHED responses: those concern the leased connection's mailbox view,
// and the client hears of expunges from the proxy's state.
func (*Extension) FilterResponse(s *proxy.Session, resp *proxy.Response) *proxy.Response {
	h := resp.Head
	if h.Name == "OK" && (h.Code == "HIGHESTMODSEQ" || h.Code == "NOMODSEQ") {
		return nil // the upstream's mod-sequences, not ours
	}
	if h.Name == "VANISHED" {
		return nil
	}
	return resp
}

// FetchItems adds MODSEQ to every FETCH response once CONDSTORE is enabled
// (RFC 7162 3.1.4: UID and MODSEQ in all of them, solicited or not).
func (*Extension) FetchItems(s *proxy.Session, uid uint32, _ bool) []byte {
	if !s.Enabled("CONDSTORE") {
		return nil
	}
	m := s.Mailbox()
	if m == nil {
		return nil
	}
	_, modseq, ok := m.State().Flags(uid)
	if !ok {
		modseq = expungedModSeq(m.State(), m.ModSeq(), uid)
	}
	return fmt.Appendf(nil, "MODSEQ (%d)", modseq)
}

// expungedModSeq is the MODSEQ to report for a message the state has
// expunged and the client has not been told of yet (its FETCH answered on a
// connection that still has it). It must not be lower than any MODSEQ some
// session was already told for the message (a MODSEQ only grows, RFC 7162
// 3.1; the client's own position can be lower than what another, more up to
// date session heard), nor reach the expunge's own mod-sequence, which the
// client has not been told of: the one just below the expunge is both. pos
// is the mod-sequence up to which the client was told everything.
func expungedModSeq(st *syncstate.Mailbox, pos uint64, uid uint32) uint64 {
	modseq := pos
	st.ChangesSince(pos, func(c syncstate.Change) {
		if c.UID == uid && c.Expunged {
			modseq = max(modseq, c.ModSeq-1)
		}
	})
	return modseq
}

// ReportExpunged sends VANISHED instead of EXPUNGE once QRESYNC is enabled
// (RFC 7162 3.2.10).
func (*Extension) ReportExpunged(s *proxy.Session, b []byte, uids, seqs []uint32) ([]byte, bool) {
	if !s.Enabled("QRESYNC") {
		return b, false
	}
	b = append(b, "* VANISHED "...)
	b = imapcodec.AppendNumSet(b, slices.Sorted(slices.Values(uids)))
	return append(b, "\r\n"...), true
}

// ExpungesHeld is called when expunges wait for the end of a FETCH, STORE or
// SEARCH while the command's FETCH responses may have carried higher
// mod-sequences: the HIGHESTMODSEQ sent here, below the held expunges, keeps
// a client that loses the connection now from skipping them on its next
// resync (RFC 7162 3.2, errata 3509).
func (*Extension) ExpungesHeld(s *proxy.Session) []byte {
	m := s.Mailbox()
	if m == nil || !s.Enabled("CONDSTORE") {
		return nil
	}
	return fmt.Appendf(nil, "* OK [HIGHESTMODSEQ %d] Highest\r\n", m.ModSeq())
}

// BatchDone closes a batch of changes whose VANISHED no FETCH MODSEQ of
// the batch covers with the mailbox's HIGHESTMODSEQ (RFC 7162 3.2.10 with
// 6): each expunge has a mod-sequence of its own, and a QRESYNC client that
// keeps the highest mod-sequence it was told as its HIGHESTMODSEQ would
// otherwise resync from below it and be told of the expunge again
// (#16.15). The answer to EXPUNGE carries it in its tagged OK instead.
func (*Extension) BatchDone(s *proxy.Session, x *proxy.Exchange, b []byte, uncovered bool) []byte {
	m := s.Mailbox()
	if !uncovered || m == nil || !s.Enabled("QRESYNC") || x != nil && x.Value(taggedHighest{}) != nil {
		return b
	}
	return fmt.Appendf(b, "* OK [HIGHESTMODSEQ %d] Highest\r\n", m.ModSeq())
}

// SelectParams names the SELECT/EXAMINE parameters of RFC 7162.
func (*Extension) SelectParams() []string { return []string{"CONDSTORE", "QRESYNC"} }

// qresyncParams are the client's QRESYNC SELECT parameters (RFC 7162 3.2.5).
type qresyncParams struct {
	uidValidity uint32
	modseq      uint64
	knownUIDs   imap.UIDSet // nil: every UID
}

// SelectParam checks CONDSTORE and QRESYNC.
func (*Extension) SelectParam(s *proxy.Session, name string, arg imapcodec.List) (any, error) {
	if name == "CONDSTORE" {
		if arg != nil {
			return nil, errors.New("CONDSTORE takes no value")
		}
		return true, nil
	}
	if !s.Enabled("QRESYNC") {
		return nil, errors.New("QRESYNC must be enabled first (ENABLE QRESYNC)")
	}
	return parseQResync(arg)
}

func parseQResync(arg imapcodec.List) (*qresyncParams, error) {
	if len(arg) < 2 || len(arg) > 4 {
		return nil, errors.New("QRESYNC needs (uidvalidity modseq [known-uids [(seq-match-data)]])")
	}
	var q qresyncParams
	uv, err := number(arg[0], 1, 1<<32-1)
	if err != nil {
		return nil, fmt.Errorf("bad QRESYNC UIDVALIDITY: %w", err)
	}
	q.uidValidity = uint32(uv)
	if q.modseq, err = number(arg[1], 1, 1<<63-1); err != nil {
		return nil, fmt.Errorf("bad QRESYNC mod-sequence: %w", err)
	}
	if len(arg) >= 3 {
		a, ok := arg[2].(imapcodec.Atom)
		if !ok {
			return nil, errors.New("bad QRESYNC known UIDs")
		}
		if q.knownUIDs, err = staticUIDSet(string(a)); err != nil {
			return nil, fmt.Errorf("bad QRESYNC known UIDs: %w", err)
		}
	}
	if len(arg) == 4 {
		// The sequence match data lets a server without a complete
		// expunge log narrow its answer; ours is complete, so it is
		// only checked.
		l, ok := arg[3].(imapcodec.List)
		if !ok || len(l) != 2 {
			return nil, errors.New("bad QRESYNC sequence match data")
		}
		var sizes [2]uint64
		for i, v := range l {
			a, ok := v.(imapcodec.Atom)
			if !ok {
				return nil, errors.New("bad QRESYNC sequence match data")
			}
			set, err := staticUIDSet(string(a))
			if err != nil {
				return nil, fmt.Errorf("bad QRESYNC sequence match data: %w", err)
			}
			for _, r := range set {
				sizes[i] += uint64(r.Stop) - uint64(r.Start) + 1
			}
		}
		// Each known sequence number pairs with a known UID (RFC 7162
		// 3.2.5.2); Dovecot refuses sets of different sizes too.
		if sizes[0] != sizes[1] {
			return nil, errors.New("QRESYNC sequence match data: the sequence set and the UID set differ in size")
		}
	}
	return &q, nil
}

// SelectClosing sends [CLOSED] when SELECT or EXAMINE closes a selected
// mailbox (RFC 7162 3.2.11): it tells the client where the old mailbox's
// responses end.
func (*Extension) SelectClosing(s *proxy.Session) {
	s.Write([]byte("* OK [CLOSED] Previous mailbox closed.\r\n"))
}

// SelectOpened reports HIGHESTMODSEQ, and for a
// QRESYNC SELECT what changed since the client's mod-sequence: VANISHED
// (EARLIER) first, then the FETCH of each changed message in
// mod-sequence order, so a client cut off midway resyncs from a point that
// loses nothing.
func (e *Extension) SelectOpened(s *proxy.Session, params map[string]any) error {
	if params["CONDSTORE"] != nil || params["QRESYNC"] != nil {
		s.SetEnabled("CONDSTORE")
	}
	// Every SELECT gets HIGHESTMODSEQ, not only a CONDSTORE-enabling one:
	// every mailbox has persistent mod-sequences here (RFC 7162 3.1.2.1).
	m := s.Mailbox()
	highest := m.ModSeq()
	b := fmt.Appendf(nil, "* OK [HIGHESTMODSEQ %d] Highest\r\n", highest)
	if q, _ := params["QRESYNC"].(*qresyncParams); q != nil {
		if q.uidValidity == m.State().UIDValidity() {
			b = resync(b, m, q)
		}
		if e.OnResync != nil {
			e.OnResync(len(b))
		}
	}
	return s.Write(b)
}

// resync appends the QRESYNC answer for a client that knew the mailbox at
// q.modseq.
func resync(b []byte, m *proxy.Mailbox, q *qresyncParams) []byte {
	st := m.State()
	highest := m.ModSeq()
	type changed struct {
		seq    uint32
		uid    uint32
		modseq uint64
		flags  []string
	}
	var vanished []uint32
	var fetches []changed
	if q.modseq > highest || q.modseq < st.Base() {
		// Not a mod-sequence the state can answer from: one from the
		// future (another server's) or from before the state's log
		// began (a state that was lost and rebuilt). Resync everything
		// the client may hold: the flags of every message, and as
		// vanished every UID up to the largest the client knows or the
		// mailbox has that does not exist now (RFC 7162 allows
		// reporting UIDs the client never had).
		for i, uid := range m.UIDs() {
			flags, modseq, ok := st.Flags(uid)
			if ok {
				fetches = append(fetches, changed{uint32(i + 1), uid, min(modseq, highest), flags})
			}
		}
		known := q.knownUIDs
		if known == nil {
			// Every UID up to the largest the mailbox ever had, as
			// far as the state knows (expunged ones included).
			// (MaxUID: pruned expunges are not in the log.)
			last := st.MaxUID()
			if uids := m.UIDs(); len(uids) > 0 {
				last = max(last, uids[len(uids)-1])
			}
			if last > 0 {
				known = imap.UIDSetNum()
				known.AddRange(1, imap.UID(last))
			}
		}
		vanished = absentUIDs(m.UIDs(), known)
	} else {
		st.ChangesSince(q.modseq, func(c syncstate.Change) {
			if c.ModSeq > highest {
				return // the client hears of it as a change after SELECT
			}
			if c.Expunged {
				if q.knownUIDs == nil || q.knownUIDs.Contains(imap.UID(c.UID)) {
					vanished = append(vanished, c.UID)
				}
				return
			}
			if q.knownUIDs != nil && !q.knownUIDs.Contains(imap.UID(c.UID)) {
				// Only the messages the client knows (RFC 7162
				// 3.2.5.1); new ones it learns of from EXISTS.
				return
			}
			if seq := m.SeqOf(c.UID); seq != 0 {
				fetches = append(fetches, changed{seq, c.UID, c.ModSeq, c.Flags})
			}
		})
	}
	if len(vanished) > 0 {
		slices.Sort(vanished)
		b = append(b, "* VANISHED (EARLIER) "...)
		b = imapcodec.AppendNumSet(b, vanished)
		b = append(b, "\r\n"...)
	}
	for _, f := range fetches {
		b = append(b, m.AnnounceFlags(f.flags)...)
		b = fmt.Appendf(b, "* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))\r\n", f.seq, f.uid, strings.Join(f.flags, " "), f.modseq)
	}
	return b
}

// staticUIDSet parses a UID set without "*" (QRESYNC's known UIDs and
// sequence match data).
func staticUIDSet(s string) (imap.UIDSet, error) {
	set, err := imapcodec.ParseUIDSet(s)
	if err != nil {
		return nil, err
	}
	if set.Dynamic() {
		return nil, errors.New("\"*\" is not allowed here")
	}
	return set, nil
}

// maxAbsentScan bounds the UIDs absentUIDs looks at, so that a client's
// "1:4294967295" costs no more than a large mailbox.
const maxAbsentScan = 1 << 22

// absentUIDs returns the UIDs in known that are not in view, sorted.
func absentUIDs(view []uint32, known imap.UIDSet) []uint32 {
	var out []uint32
	scanned := 0
	for _, r := range known {
		i, _ := slices.BinarySearch(view, uint32(r.Start))
		for u := uint64(r.Start); u <= uint64(r.Stop) && scanned < maxAbsentScan; u++ {
			scanned++
			for i < len(view) && uint64(view[i]) < u {
				i++
			}
			if i < len(view) && uint64(view[i]) == u {
				continue
			}
			out = append(out, uint32(u))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Commands names the commands whose RFC 7162 parts are answered here.
func (*Extension) Commands() []string {
	return []string{"FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH",
		"SORT", "UID SORT", "THREAD", "UID THREAD", "STATUS", "EXPUNGE", "UID EXPUNGE"}
}

// ServeCommand answers the command's RFC 7162 parts and passes the rest on.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	var answered bool
	var err error
	switch strings.TrimPrefix(x.Name, "UID ") {
	case "FETCH":
		answered, err = rewriteFetch(x)
	case "STORE":
		answered, err = rewriteStore(x)
	case "SEARCH", "SORT", "THREAD":
		err = rewriteSearch(x)
	case "STATUS":
		err = e.rewriteStatus(x)
	case "EXPUNGE":
		// With QRESYNC the tagged OK of EXPUNGE carries the new
		// HIGHESTMODSEQ (RFC 7162 3.2.7), once the client has been told
		// of the expunges.
		if s.Enabled("QRESYNC") {
			x.SetValue(taggedHighest{}, true)
			x.OnTagged(func(h *imapcodec.ResponseHead) {
				if m := s.Mailbox(); m != nil && h.Name == "OK" {
					h.Code, h.CodeArg = "HIGHESTMODSEQ", strconv.FormatUint(m.ModSeq(), 10)
				}
			})
		}
	}
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+sentence(err.Error())+".")
	}
	if answered {
		return nil
	}
	return next(ctx, x)
}

// PipelineSafe lets a FETCH that asks for no mod-sequence (no MODSEQ item,
// no CHANGEDSINCE) and a STORE with no modifier go upstream before the
// previous command's answers are relayed (proxy.PipelineSafe): condstore
// passes those on as they are, and an EXPUNGE, whose tagged OK it
// completes from a hook. A FETCH with MODSEQ enables CONDSTORE for
// the session, one with CHANGEDSINCE may be answered here, and a STORE
// with UNCHANGEDSINCE waits for the watcher first and may be answered
// here (rewriteStore), so those keep their turn.
func (e *Extension) PipelineSafe(x *proxy.Exchange) bool {
	switch strings.TrimPrefix(x.Name, "UID ") {
	case "FETCH":
		var text []byte
		for _, seg := range x.Segments {
			text = append(text, seg.Text...)
		}
		u := strings.ToUpper(string(text))
		return !strings.Contains(u, "MODSEQ") && !strings.Contains(u, "CHANGEDSINCE")
	case "STORE":
		_, sa, ok := storeArgs(x)
		return ok && sa.Modifiers == nil
	case "EXPUNGE":
		return x.Name == "EXPUNGE" // its HIGHESTMODSEQ is set on the tagged OK
	}
	return false
}

// taggedHighest marks an exchange whose tagged OK carries HIGHESTMODSEQ.
type taggedHighest struct{}

// sentence capitalises the first letter of an error message for a client.
func sentence(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// number parses a number atom within [lo, hi].
func number(v imapcodec.Value, lo, hi uint64) (uint64, error) {
	a, ok := v.(imapcodec.Atom)
	if !ok {
		return 0, errors.New("not a number")
	}
	n, err := strconv.ParseUint(string(a), 10, 64)
	if err != nil || n < lo || n > hi || len(a) > 1 && a[0] == '0' {
		return 0, fmt.Errorf("%q is not a number from %d to %d", string(a), lo, hi)
	}
	return n, nil
}
