package esearch

import (
	"bytes"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// savedKey keys a session's saved search result (RFC 5182's search
// result variable): the UIDs of the messages as spans. UIDs, because a
// message keeps its UID while sequence numbers shift under expunges; an
// expunged message simply matches nothing any more, as RFC 5182 2.1
// wants.
type savedKey struct{}

// save replaces the session's saved result. Its spans run over the UIDs
// missing between two of the client's view (expunged), so that a result
// that is a few runs of the mailbox stays a few spans however many gaps
// the mailbox has: "$" becomes that set on an upstream command line,
// which must stay short (uidset.MaxSetText).
func save(s *proxy.Session, uids []uint32) {
	var view []uint32
	if m := s.Mailbox(); m != nil {
		view = m.UIDs()
	}
	uids = slices.Clone(uids)
	slices.Sort(uids)
	s.SetValue(savedKey{}, uidset.Compact(view, uids))
}

// savedSpans returns the session's saved result, empty when nothing was
// saved since the mailbox was selected.
func savedSpans(s *proxy.Session) []span {
	v, _ := s.Value(savedKey{}).([]span)
	return v
}

// StateChanged empties the saved result whenever the session's state
// changes: SELECT and EXAMINE (which close any mailbox first), CLOSE and
// UNSELECT (RFC 5182 2.1).
func (*Extension) StateChanged(s *proxy.Session, _ proxy.State) { s.SetValue(savedKey{}, nil) }

// SessionClosed has nothing to release: the result lives in the session.
func (*Extension) SessionClosed(*proxy.Session) {}

// Push has nothing to push.
func (*Extension) Push(*proxy.Session) error { return nil }

// setCommands take a message set as their first argument.
var setCommands = map[string]bool{
	"FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID FETCH": true,
	"UID STORE": true, "UID COPY": true, "UID MOVE": true, "UID EXPUNGE": true,
}

// searchCommands take search criteria, where "$" and "UID $" are keys.
var searchCommands = map[string]bool{"SEARCH": true, "SORT": true, "THREAD": true}

// RewriteCommand replaces "$" with the saved result before the core
// translates the command's numbers (proxy.CommandRewriter): as the
// client's current sequence numbers in a command that takes them, as UIDs
// in a UID command or as a UID search key. With nothing saved, a command
// whose set is "$" acts on nothing (proxy.ErrNoMessages) and the key "$"
// matches nothing.
func (*Extension) RewriteCommand(s *proxy.Session, cmd *imapcodec.Command) ([]imapcodec.Segment, error) {
	m := s.Mailbox()
	if m == nil || !mentionsDollar(cmd.Segments) {
		return nil, nil
	}
	switch {
	case setCommands[cmd.Name]:
		return rewriteFirstSet(m, cmd, savedSpans(s))
	case searchCommands[strings.TrimPrefix(cmd.Name, "UID ")]:
		return rewriteKeys(cmd, savedSpans(s))
	}
	return nil, nil
}

// mentionsDollar is a quick test that spares the parse of nearly every
// command; "$" also begins keywords ($Forwarded), so it is only a hint.
func mentionsDollar(segs []imapcodec.Segment) bool {
	for _, sg := range segs {
		if bytes.IndexByte(sg.Text, '$') >= 0 {
			return true
		}
	}
	return false
}

// rewriteFirstSet replaces a first argument "$" of FETCH, STORE, COPY,
// MOVE (both forms) or UID EXPUNGE.
func rewriteFirstSet(m *proxy.Mailbox, cmd *imapcodec.Command, saved []span) ([]imapcodec.Segment, error) {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	words := 2 // tag NAME
	if strings.HasPrefix(cmd.Name, "UID ") {
		words = 3
	}
	for i := range words {
		if i > 0 && p.SP() != nil {
			return nil, nil
		}
		if _, err := p.Atom(); err != nil {
			return nil, nil
		}
	}
	if p.SP() != nil {
		return nil, nil
	}
	start := p.Pos()
	if set, err := p.Atom(); err != nil || set != "$" || start.Seg != 0 {
		return nil, nil
	}
	set := saved
	if !strings.HasPrefix(cmd.Name, "UID ") {
		set = seqSpans(m.UIDs(), saved)
	}
	if len(set) == 0 {
		return nil, proxy.ErrNoMessages
	}
	segs := slices.Clone(cmd.Segments)
	t := segs[0].Text
	segs[0].Text = slices.Concat(t[:start.Off], uidset.AppendSpans(nil, set), t[start.Off+1:])
	return segs, nil
}

// rewriteKeys replaces the search keys "$" and "UID $" with a UID key of
// the saved result, or NOT ALL when it is empty.
func rewriteKeys(cmd *imapcodec.Command, saved []span) ([]imapcodec.Segment, error) {
	key := "NOT ALL"
	if len(saved) > 0 {
		key = string(uidset.AppendSpans([]byte("UID "), saved))
	}
	segs := make([]imapcodec.Segment, len(cmd.Segments))
	for i, sg := range cmd.Segments {
		segs[i] = sg
		segs[i].Text = bytes.Clone(sg.Text)
	}
	n, err := imapcodec.ReplaceSearchKeys(segs, func(k imapcodec.SearchKey) (string, bool, error) {
		if k.Name != "" && k.Name != "UID" || len(k.Args) != 1 {
			return "", false, nil
		}
		a, ok := k.Args[0].(imapcodec.Atom)
		return key, ok && a == "$", nil
	})
	if err != nil || n == 0 {
		// Criteria that do not parse go on as they are, for the core to
		// refuse or the upstream to judge.
		return nil, nil
	}
	return segs, nil
}

// seqSpans maps saved UIDs to the client's sequence numbers through its
// view (sorted UIDs): the messages of a span of UIDs are a run of
// consecutive sequence numbers, found by two binary searches, whatever
// the span's length. UIDs the client does not know are left out.
func seqSpans(view []uint32, uids []span) []span {
	var out []span
	for _, r := range uids {
		i, _ := slices.BinarySearch(view, r.Lo)
		j, found := slices.BinarySearch(view, r.Hi)
		if found {
			j++
		}
		if j <= i {
			continue
		}
		lo, hi := uint32(i+1), uint32(j)
		if k := len(out); k > 0 && out[k-1].Hi+1 == lo {
			out[k-1].Hi = hi
			continue
		}
		out = append(out, span{Lo: lo, Hi: hi})
	}
	return out
}
