// Package within gives every session WITHIN (RFC 5032): the search keys
// OLDER n and YOUNGER n, which match the messages whose INTERNALDATE is at
// least, or at most, n seconds before now.
//
// Where the upstream advertises WITHIN the keys are relayed untouched (the
// core relays the capability too) and the upstream's clock decides. Where
// it does not, each key is replaced, before the command goes on down the
// chain, by the exact set of UIDs it matches, as "UID set" (or "NOT ALL"
// when nothing matches), computed with the proxy's own commands on the
// session's mailbox (Session.Exec):
//
//  1. one UID SEARCH SINCE d (YOUNGER) or UID SEARCH BEFORE d (OLDER)
//     finds the candidates. SINCE and BEFORE compare only the date part of
//     INTERNALDATE, in a time zone of the server's choosing (RFC 3501
//     6.4.4), so d is widened by a day beyond the instant's UTC date on the
//     open side: no time zone is a day or more away from UTC, so every
//     message of the interval is a candidate;
//  2. a second UID SEARCH, narrowed by two days on the same side, finds
//     the candidates that surely match, whatever the zone;
//  3. UID FETCH (INTERNALDATE) of the others, those of the three days
//     around the boundary, in chunks of chunkSize UIDs, gives their exact
//     instants, and the key keeps those at or after (YOUNGER) or at or
//     before (OLDER) the instant now − n.
//
// The replacement is an ordinary search key, so it composes with any OR,
// NOT and parenthesised structure, with RETURN (esearch, after this
// extension in the chain, answers from the plain search) and with MODSEQ
// (condstore, after it too, replaces its own key). SEARCH, UID SEARCH,
// SORT and THREAD are rewritten alike, since RFC 5032's keys are search
// keys wherever search keys appear.
//
// Boundary and clock. "Now" is the proxy's clock, read once per command
// (every key of one command uses the same instant) and truncated to the
// second, INTERNALDATE's precision. A message exactly n seconds old
// matches both OLDER n and YOUNGER n, as in Dovecot's implementation:
// OLDER 10 OR YOUNGER 10 is then every message, which RFC 5032's "older
// than / within the interval" needs at the boundary second. INTERNALDATE
// carries its zone, so the comparison is of instants and the upstream's
// zone does not matter; only a skew between the proxy's and the
// upstream's clocks moves the boundary (by the skew, as a client's own
// clock would for SINCE). Both are expected to run NTP; over an upstream
// with WITHIN the upstream's clock decides.
//
// Bounds. A key costs two searches and the FETCH of three days of
// messages; the candidates can still be the whole mailbox (OLDER 1 in a
// mailbox of today's mail): they are fetched in chunks, and the proxy
// holds one UID and one instant per candidate for the length of the
// command. The substituted set is made as
// short as it can be exactly: consecutive matches in the mailbox's UID
// order become one range even across UIDs that no longer exist (the hub's
// message list says which exist; a UID below its highest that it does not
// list was expunged, UIDs never being reused). Its length is therefore
// proportional to the number of alternations between matching and
// non-matching messages in UID order, whatever the size of the mailbox —
// one range in the usual mailbox, whose INTERNALDATEs rise with its UIDs.
// A complement (NOT UID set) would alternate exactly as often, so it is
// never shorter by more than one range, and it would wrongly include (for
// OLDER) a message that arrives between the proxy's search and the
// upstream's. When the replacements of one command exceed maxCriteria
// bytes, the command is answered NO [LIMIT] (RFC 5530) and not run.
package within

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

const (
	// chunkSize is how many candidate UIDs one UID FETCH asks for.
	chunkSize = 1000
	// maxCriteria bounds the replacement text of one command, a half of
	// Dovecot's default command line limit (64 KiB) so the rest of the
	// command still fits.
	maxCriteria = 32 << 10
)

// Extension implements WITHIN; see the package comment.
type Extension struct {
	now      func() time.Time
	chunk    int // chunkSize
	maxBytes int // maxCriteria
}

// New returns the extension, on the proxy's clock.
func New() *Extension { return &Extension{now: time.Now, chunk: chunkSize, maxBytes: maxCriteria} }

// WithClock returns the extension with now as its clock (for tests that
// need to place messages exactly at the boundary).
func (e *Extension) WithClock(now func() time.Time) *Extension {
	c := *e
	c.now = now
	return &c
}

// Name identifies the extension.
func (*Extension) Name() string { return "within" }

// Capabilities advertises WITHIN after login where the upstream lacks it
// (the core relays the upstream's own).
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	if up.Has("WITHIN") {
		return nil
	}
	return []string{"WITHIN"}
}

// Commands names the commands whose search keys may hold OLDER and YOUNGER.
func (*Extension) Commands() []string {
	return []string{"SEARCH", "UID SEARCH", "SORT", "UID SORT", "THREAD", "UID THREAD"}
}

// key is one OLDER or YOUNGER key.
type key struct {
	older bool
	n     uint32
}

func (k key) String() string {
	if k.older {
		return "OLDER " + strconv.FormatUint(uint64(k.n), 10)
	}
	return "YOUNGER " + strconv.FormatUint(uint64(k.n), 10)
}

// badKey is a client's error in an OLDER or YOUNGER key (answered BAD);
// other errors of the criteria's walk are left to the rest of the chain.
type badKey struct{ msg string }

func (e *badKey) Error() string { return e.msg }

// errTooLong says the replacement would make the command too long.
var errTooLong = errors.New("within: criteria too long")

// ServeCommand replaces OLDER and YOUNGER by the UIDs they match where the
// upstream lacks WITHIN, and passes the command on.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.Mailbox() == nil || x.Streamed() || len(x.Segments) == 0 || s.UpstreamCaps().Has("WITHIN") {
		return next(ctx, x)
	}
	keys, err := withinKeys(x.Segments)
	var bad *badKey
	if errors.As(err, &bad) {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+bad.msg+".")
	}
	if err != nil || len(keys) == 0 {
		return next(ctx, x) // not ours to judge
	}
	now := e.now().Truncate(time.Second)
	crit := map[key]string{}
	total := 0
	for _, k := range keys {
		if _, done := crit[k]; done {
			continue
		}
		c, err := e.criterion(ctx, s, k, now)
		var se *upstream.StatusError
		switch {
		case errors.Is(err, errTooLong):
		case errors.As(err, &se):
			s.Logger().Warn("WITHIN: the upstream refused a search", "err", err)
			return x.Reply("NO", "", "The server could not evaluate "+k.String()+".")
		case err != nil:
			s.Logger().Warn("WITHIN: evaluation failed", "err", err)
			return x.Reply("NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
		}
		total += len(c)
		if errors.Is(err, errTooLong) || total > e.maxBytes {
			return x.Reply("NO", "LIMIT", "OLDER and YOUNGER match too scattered a set of messages here; narrow the search.")
		}
		crit[k] = c
	}
	segs := slices.Clone(x.Segments)
	if _, err := imapcodec.ReplaceSearchKeys(segs, func(sk imapcodec.SearchKey) (string, bool, error) {
		k, ok, err := keyOf(sk)
		if err != nil || !ok {
			return "", false, err
		}
		return crit[k], true, nil
	}); err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	x.Segments = segs
	return next(ctx, x)
}

// withinKeys returns the OLDER and YOUNGER keys of a search command.
func withinKeys(segs []imapcodec.Segment) ([]key, error) {
	var keys []key
	_, err := imapcodec.ReplaceSearchKeys(slices.Clone(segs), func(sk imapcodec.SearchKey) (string, bool, error) {
		k, ok, err := keyOf(sk)
		if ok {
			keys = append(keys, k)
		}
		return "", false, err
	})
	return keys, err
}

// keyOf reads an OLDER or YOUNGER key; ok is false for any other key.
func keyOf(sk imapcodec.SearchKey) (k key, ok bool, err error) {
	if sk.Name != "OLDER" && sk.Name != "YOUNGER" {
		return key{}, false, nil
	}
	n, err := interval(sk.Args)
	if err != nil {
		return key{}, false, &badKey{fmt.Sprintf("%s needs an interval in seconds from 1 to 4294967295", sk.Name)}
	}
	return key{older: sk.Name == "OLDER", n: n}, true, nil
}

// interval parses RFC 5032's nz-number.
func interval(args []imapcodec.Value) (uint32, error) {
	if len(args) != 1 {
		return 0, errors.New("no interval")
	}
	a, ok := args[0].(imapcodec.Atom)
	if !ok || len(a) == 0 || a[0] == '0' {
		return 0, errors.New("not a non-zero number")
	}
	n, err := strconv.ParseUint(string(a), 10, 32)
	if err != nil {
		return 0, err
	}
	return uint32(n), nil
}

// criterion returns the search key matching exactly the messages k
// matches at now, in the session's mailbox.
func (e *Extension) criterion(ctx context.Context, s *proxy.Session, k key, now time.Time) (string, error) {
	t := now.Add(-time.Duration(k.n) * time.Second)
	wide, sure := candidateSearch(k, t)
	cands, err := searchUIDs(ctx, s, wide)
	if err != nil || len(cands) == 0 {
		return "NOT ALL", err
	}
	certain, err := searchUIDs(ctx, s, sure)
	if err != nil {
		return "", err
	}
	match := map[uint32]bool{}
	var doubt []uint32
	for _, u := range cands {
		if _, ok := slices.BinarySearch(certain, u); ok {
			match[u] = true
		} else {
			doubt = append(doubt, u)
		}
	}
	dates, err := e.internalDates(ctx, s, doubt)
	if err != nil {
		return "", err
	}
	for uid, d := range dates {
		if k.older && !d.After(t) || !k.older && !d.Before(t) {
			match[uid] = true
		}
	}
	var known []uint32
	if m := s.Mailbox(); m != nil {
		known = m.State().Snapshot().UIDs
	}
	c := encode(match, known, cands)
	if len(c) > e.maxBytes {
		return "", errTooLong
	}
	return c, nil
}

// candidateSearch returns two UID SEARCHes by date: wide finds every
// message k may match at t, sure only messages it matches (see the
// package comment). No time zone is a day or more from UTC, so a message's
// date in the server's zone is its UTC date, give or take one day: wide
// widens t's UTC date by a day, sure narrows it by two, which leaves
// three days of messages whose INTERNALDATE must be fetched.
func candidateSearch(k key, t time.Time) (wide, sure string) {
	u := t.UTC()
	day := time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC)
	if k.older {
		// BEFORE d matches local dates up to d-1: an instant at or
		// before t has a local date at most t's UTC date + 1; a local
		// date at most t's UTC date - 2 is an instant before t.
		return "UID SEARCH BEFORE " + imapDate(day.AddDate(0, 0, 2)),
			"UID SEARCH BEFORE " + imapDate(day.AddDate(0, 0, -1))
	}
	// An instant at or after t has a local date at least t's UTC date -
	// 1; a local date at least t's UTC date + 2 is an instant after t.
	return "UID SEARCH SINCE " + imapDate(day.AddDate(0, 0, -1)),
		"UID SEARCH SINCE " + imapDate(day.AddDate(0, 0, 2))
}

// imapDate formats RFC 3501's date.
func imapDate(d time.Time) string { return d.Format("2-Jan-2006") }

// searchUIDs runs a UID SEARCH and returns its UIDs, ascending.
func searchUIDs(ctx context.Context, s *proxy.Session, cmd string) ([]uint32, error) {
	var uids []uint32
	var bad error
	_, err := s.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != "SEARCH" || len(r.Segments) != 1 {
			return
		}
		nums, err := imapcodec.SearchNumbers(r.Segments[0].Text)
		if err != nil {
			bad = fmt.Errorf("within: the upstream's SEARCH answer: %w", err)
			return
		}
		uids = append(uids, nums...)
	})
	if err == nil {
		err = bad
	}
	slices.Sort(uids)
	return slices.Compact(uids), err
}

// internalDates fetches the INTERNALDATE of uids (ascending), in chunks.
// A UID without an answer (expunged meanwhile) is left out.
func (e *Extension) internalDates(ctx context.Context, s *proxy.Session, uids []uint32) (map[uint32]time.Time, error) {
	out := make(map[uint32]time.Time, len(uids))
	var bad error
	handle := func(r *upstream.Response) {
		if r.Head.Name != "FETCH" {
			return
		}
		uid, d, err := parseFetch(r.Segments)
		if err != nil {
			bad = err
			return
		}
		out[uid] = d
	}
	for len(uids) > 0 {
		n := min(len(uids), e.chunk)
		cmd := "UID FETCH " + string(imapcodec.AppendNumSet(nil, uids[:n])) + " (UID INTERNALDATE)"
		uids = uids[n:]
		if _, err := s.Exec(ctx, cmd, handle); err != nil {
			return nil, err
		}
		if bad != nil {
			return nil, bad
		}
	}
	return out, nil
}

// parseFetch reads "* n FETCH (UID u INTERNALDATE "...")" in either order.
func parseFetch(segs []imapcodec.Segment) (uint32, time.Time, error) {
	vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return 0, time.Time{}, fmt.Errorf("within: unparsable FETCH response")
	}
	l, ok := vals[3].(imapcodec.List)
	if !ok {
		return 0, time.Time{}, fmt.Errorf("within: unparsable FETCH response")
	}
	var uid uint32
	var date time.Time
	for i := 0; i+1 < len(l); i += 2 {
		name, _ := l[i].(imapcodec.Atom)
		v, _ := imapcodec.AsString(l[i+1])
		switch strings.ToUpper(string(name)) {
		case "UID":
			u, err := strconv.ParseUint(v, 10, 32)
			if err != nil || u == 0 {
				return 0, time.Time{}, fmt.Errorf("within: bad UID %q in FETCH response", v)
			}
			uid = uint32(u)
		case "INTERNALDATE":
			d, err := ParseInternalDate(v)
			if err != nil {
				return 0, time.Time{}, err
			}
			date = d
		}
	}
	if uid == 0 || date.IsZero() {
		return 0, time.Time{}, fmt.Errorf("within: FETCH response without UID or INTERNALDATE")
	}
	return uid, date, nil
}

// ParseInternalDate parses RFC 3501's date-time ("17-Jul-1996 02:44:25
// -0700", the day possibly space-padded).
func ParseInternalDate(s string) (time.Time, error) {
	if len(s) > 40 {
		return time.Time{}, fmt.Errorf("within: bad INTERNALDATE %.40q", s)
	}
	d, err := time.Parse("_2-Jan-2006 15:04:05 -0700", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("within: bad INTERNALDATE %q", s)
	}
	return d, nil
}

// encode writes the matching UIDs as one search key: "UID set", or "NOT
// ALL" for none. known are the UIDs the hub lists for the mailbox and
// cands those of the candidate search, both ascending; a range may span
// UIDs neither lists as long as every one of them is below the hub's
// highest (then they were expunged).
func encode(match map[uint32]bool, known, cands []uint32) string {
	if len(match) == 0 {
		return "NOT ALL"
	}
	var top uint32
	if len(known) > 0 {
		top = known[len(known)-1]
	}
	all := uidset.Merge(known, cands)
	var spans []uidset.Span
	open := false
	for _, u := range all {
		if !match[u] {
			open = false
			continue
		}
		if k := len(spans); open && (spans[k-1].Hi+1 == u || u <= top) {
			spans[k-1].Hi = u
			continue
		}
		spans = append(spans, uidset.Span{Lo: u, Hi: u})
		open = true
	}
	return string(uidset.AppendSpans([]byte("UID "), spans))
}
