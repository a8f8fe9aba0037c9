package contextsearch

import (
	"context"
	"errors"

	"github.com/lemonproxy/lemonproxy/extensions/internal/statesearch"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// A flag search is decided from the proxy's own state, without an upstream
// round trip (extensions/internal/statesearch, which extensions/esearch
// answers one-time searches with): criteria made of nothing but flag keys
// (ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, their UN- forms, KEYWORD,
// UNKEYWORD), ALL, UID sets without "*", NOT, OR and parentheses. These
// are the common updating searches (RFC 5267's own examples: DELETED
// KEYWORD $Junk, UNSEEN, FLAGGED), and the hub's flags are the ones the
// client is told, so the updates agree with its FETCH responses. RECENT,
// NEW and OLD reach here as UID sets of the session's recent messages
// when the search ran (the core's translation), frozen as RFC 5267 4.3
// wants. Sequence sets and "*", whose messages change as the mailbox does,
// are not decided here (statesearch.Options.Numbers off): the search is
// re-run upstream in its UID form, as before.

// flagMatcher is the Matcher of a flag search.
type flagMatcher struct{ prog *statesearch.Program }

// Match decides from the hub's state; a message it no longer has matches
// nothing.
func (f *flagMatcher) Match(_ context.Context, s *proxy.Session, uids []uint32) ([]uint32, error) {
	m := s.Mailbox()
	if m == nil {
		return nil, errors.New("no mailbox selected")
	}
	return f.prog.Match(m.State(), uids), nil
}
