package contextsearch

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// A flag search is decided from the proxy's own state, without an upstream
// round trip: criteria made of nothing but flag keys (ANSWERED, DELETED,
// DRAFT, FLAGGED, SEEN, their UN- forms, KEYWORD, UNKEYWORD), ALL, UID sets
// without "*", NOT, OR and parentheses. These are the common updating
// searches (RFC 5267's own examples: DELETED KEYWORD $Junk, UNSEEN,
// FLAGGED), and the hub's flags are the ones the client is told, so the
// updates agree with its FETCH responses. NEW, RECENT and OLD reach here
// as NOT ALL and ALL (the core's translation: the proxy has no \Recent).

// predicate tells whether a message with flags (the hub's, normalised)
// and uid matches.
type predicate func(uid uint32, flags []string) bool

// maxLocalKeys bounds the keys of a search decided locally; larger ones go
// upstream (they are no client's updating search).
const maxLocalKeys = 64

var errNotLocal = errors.New("not a flag search")

// systemKeys maps the flag keys to their flag and whether they match its
// presence (ANSWERED) or absence (UNANSWERED).
var systemKeys = map[string]struct {
	flag string
	set  bool
}{
	"ANSWERED": {`\Answered`, true}, "UNANSWERED": {`\Answered`, false},
	"DELETED": {`\Deleted`, true}, "UNDELETED": {`\Deleted`, false},
	"DRAFT": {`\Draft`, true}, "UNDRAFT": {`\Draft`, false},
	"FLAGGED": {`\Flagged`, true}, "UNFLAGGED": {`\Flagged`, false},
	"SEEN": {`\Seen`, true}, "UNSEEN": {`\Seen`, false},
}

// parseFlagSearch compiles search criteria (the values after "UID SEARCH
// [CHARSET x]") into a predicate, or errNotLocal.
func parseFlagSearch(vals []imapcodec.Value) (predicate, error) {
	n := 0
	return parseFlagKeys(vals, &n)
}

// parseFlagKeys compiles the keys of vals, ANDed; n counts the keys of
// the whole search.
func parseFlagKeys(vals []imapcodec.Value, n *int) (predicate, error) {
	var keys []predicate
	for len(vals) > 0 {
		p, rest, err := parseFlagKey(vals, n)
		if err != nil {
			return nil, err
		}
		keys, vals = append(keys, p), rest
	}
	if len(keys) == 0 {
		return nil, errNotLocal
	}
	return and(keys), nil
}

func and(keys []predicate) predicate {
	if len(keys) == 1 {
		return keys[0]
	}
	return func(uid uint32, flags []string) bool {
		for _, k := range keys {
			if !k(uid, flags) {
				return false
			}
		}
		return true
	}
}

// parseFlagKey compiles the key at the head of vals and returns the rest.
func parseFlagKey(vals []imapcodec.Value, n *int) (predicate, []imapcodec.Value, error) {
	if *n++; *n > maxLocalKeys || len(vals) == 0 {
		return nil, nil, errNotLocal
	}
	switch v := vals[0].(type) {
	case imapcodec.List:
		p, err := parseFlagKeys(v, n)
		return p, vals[1:], err
	case imapcodec.Atom:
		name := strings.ToUpper(string(v))
		if k, ok := systemKeys[name]; ok {
			return func(_ uint32, flags []string) bool { return hasFlag(flags, k.flag) == k.set }, vals[1:], nil
		}
		switch name {
		case "ALL":
			return func(uint32, []string) bool { return true }, vals[1:], nil
		case "NOT":
			p, rest, err := parseFlagKey(vals[1:], n)
			if err != nil {
				return nil, nil, err
			}
			return func(uid uint32, flags []string) bool { return !p(uid, flags) }, rest, nil
		case "OR":
			a, rest, err := parseFlagKey(vals[1:], n)
			if err != nil {
				return nil, nil, err
			}
			b, rest, err := parseFlagKey(rest, n)
			if err != nil {
				return nil, nil, err
			}
			return func(uid uint32, flags []string) bool { return a(uid, flags) || b(uid, flags) }, rest, nil
		case "KEYWORD", "UNKEYWORD":
			if len(vals) < 2 {
				return nil, nil, errNotLocal
			}
			kw, ok := vals[1].(imapcodec.Atom)
			if !ok || strings.HasPrefix(string(kw), `\`) {
				return nil, nil, errNotLocal
			}
			set := name == "KEYWORD"
			return func(_ uint32, flags []string) bool { return hasFlag(flags, string(kw)) == set }, vals[2:], nil
		case "UID":
			if len(vals) < 2 {
				return nil, nil, errNotLocal
			}
			a, ok := vals[1].(imapcodec.Atom)
			if !ok || strings.Contains(string(a), "*") {
				return nil, nil, errNotLocal
			}
			set, err := imapcodec.ParseUIDSet(string(a))
			if err != nil {
				return nil, nil, errNotLocal
			}
			return func(uid uint32, _ []string) bool { return set.Contains(imap.UID(uid)) }, vals[2:], nil
		}
	}
	return nil, nil, errNotLocal
}

// hasFlag reports whether flags has flag, in any case: flag names are
// case-insensitive (RFC 3501 2.3.2's system flags; Dovecot matches
// keywords so too, TestLocalAgreesWithDovecot).
func hasFlag(flags []string, flag string) bool {
	return slices.ContainsFunc(flags, func(f string) bool { return strings.EqualFold(f, flag) })
}

// flagMatcher is the Matcher of a flag search.
type flagMatcher struct{ match predicate }

// Match decides from the hub's state; a message it no longer has matches
// nothing.
func (f *flagMatcher) Match(_ context.Context, s *proxy.Session, uids []uint32) ([]uint32, error) {
	m := s.Mailbox()
	if m == nil {
		return nil, errors.New("no mailbox selected")
	}
	return matchLocal(f.match, uids, func(uid uint32) ([]string, bool) {
		flags, _, ok := m.State().Flags(uid)
		return flags, ok
	}), nil
}

func matchLocal(p predicate, uids []uint32, flagsOf func(uint32) ([]string, bool)) []uint32 {
	var out []uint32
	for _, uid := range uids {
		if flags, ok := flagsOf(uid); ok && p(uid, flags) {
			out = append(out, uid)
		}
	}
	return out
}
