package contextsearch

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/statesearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// searchMatcher re-runs a search's criteria upstream, restricted to the
// changed messages: "UID SEARCH <criteria> UID <changed>" (search keys are
// ANDed, so the restriction can simply follow them, after any CHARSET).
type searchMatcher struct {
	// command is "UID SEARCH [CHARSET x] criteria", literals inlined.
	command string
}

// maxSpansPerSearch bounds the UID set of one re-evaluation command, so
// that its line stays short whatever changed; more spans take more
// commands.
const maxSpansPerSearch = 500

// NewSearchMatcher returns the Matcher that re-evaluates a searching
// command's criteria: from the proxy's own state for a search of flags
// alone (local.go), otherwise by re-running them upstream. segs is the command as it goes upstream, tag first,
// in its UID form with the RETURN options taken out: "tag UID SEARCH
// criteria" (a SORT extension passes its criteria in a UID SEARCH of its
// own making). Literals in the criteria are sent as LITERAL+ literals
// where the upstream has LITERAL+ (or LITERAL- and they are small), as
// quoted strings where they can be, and otherwise the search cannot be
// re-run: an error, for NOUPDATE. So is a MODSEQ criterion, which speaks
// of the proxy's mod-sequences (extensions/condstore rewrites it).
func NewSearchMatcher(s *proxy.Session, segs []imapcodec.Segment) (Matcher, error) {
	if len(segs) == 0 {
		return nil, errNoRecheck
	}
	modseq := false
	if _, err := imapcodec.ReplaceSearchKeys(cloneSegments(segs), func(k imapcodec.SearchKey) (string, bool, error) {
		modseq = modseq || k.Name == "MODSEQ"
		return "", false, nil
	}); err != nil || modseq {
		return nil, errNoRecheck
	}
	// Drop the tag and the command name: what follows is the criteria.
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil || p.SP() != nil {
		return nil, errNoRecheck
	}
	name, err := p.Atom()
	if err != nil {
		return nil, errNoRecheck
	}
	if strings.EqualFold(name, "UID") {
		if p.SP() != nil {
			return nil, errNoRecheck
		}
		if name, err = p.Atom(); err != nil {
			return nil, errNoRecheck
		}
	}
	start := p.Pos()
	if !strings.EqualFold(name, "SEARCH") || p.SP() != nil || start.Seg != 0 {
		return nil, errNoRecheck
	}
	if prog, err := statesearch.CompileCommand(segs, statesearch.Options{}); err == nil {
		return &flagMatcher{prog: prog}, nil
	}
	caps := s.UpstreamCaps()
	b := []byte("UID SEARCH")
	for i, sg := range segs {
		t := sg.Text
		if i == 0 {
			t = t[start.Off:]
		}
		b = append(b, t...)
		if sg.Literal == nil {
			continue
		}
		switch n := len(sg.Data); {
		case caps.Has("LITERAL+") || caps.Has("LITERAL-") && n <= 4096:
			b = fmt.Appendf(b, "{%d+}\r\n", n)
			b = append(b, sg.Data...)
		case imapcodec.CanQuote(string(sg.Data)):
			b = imapcodec.AppendQuoted(b, string(sg.Data))
		default:
			return nil, errNoRecheck
		}
	}
	return &searchMatcher{command: string(b)}, nil
}

// matcherKey is the exchange value SetMatcher sets.
type matcherKey struct{}

// setMatcher is what SetMatcher was given.
type setMatcher struct {
	m   Matcher
	err error
}

// SetMatcher makes m the Matcher of the updating context that x opens, if
// it opens one (an updating SEARCH or SORT, whose context esearch or sort
// opens further down the chain), in place of the one MatcherFor would make
// from the criteria they see; a non-nil err refuses the context updates
// (NOUPDATE) instead. It is for an extension before them in the chain that
// replaced search keys by the result of its own evaluation
// (extensions/casesearch): left to NewSearchMatcher, that result would stay
// frozen, where m evaluates the original keys anew for each change.
func SetMatcher(x *proxy.Exchange, m Matcher, err error) {
	x.SetValue(matcherKey{}, setMatcher{m, err})
}

// MatcherFor returns the Matcher of a context x opens with criteria segs
// (as for NewSearchMatcher): the one an extension earlier in the chain set
// with SetMatcher, or else NewSearchMatcher's.
func MatcherFor(x *proxy.Exchange, segs []imapcodec.Segment) (Matcher, error) {
	if v, ok := x.Value(matcherKey{}).(setMatcher); ok {
		return v.m, v.err
	}
	return NewSearchMatcher(x.Session(), segs)
}

func cloneSegments(segs []imapcodec.Segment) []imapcodec.Segment {
	out := make([]imapcodec.Segment, len(segs))
	for i, sg := range segs {
		out[i] = sg
		out[i].Text = bytes.Clone(sg.Text)
	}
	return out
}

// Match runs the search upstream on uids, a few hundred ranges at a time.
func (m *searchMatcher) Match(ctx context.Context, s *proxy.Session, uids []uint32) ([]uint32, error) {
	var matched []uint32
	for len(uids) > 0 {
		n, spans := 0, 0
		for n < len(uids) && spans < maxSpansPerSearch {
			j := n
			for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
				j++
			}
			n, spans = j+1, spans+1
		}
		cmd := imapcodec.AppendNumSet([]byte(m.command+" UID "), uids[:n])
		_, err := s.Exec(ctx, string(cmd), func(r *upstream.Response) {
			if r.Head.Name == "SEARCH" && len(r.Segments) == 1 {
				nums, _ := imapcodec.SearchNumbers(r.Segments[0].Text)
				matched = append(matched, nums...)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("re-running an updating search: %w", err)
		}
		uids = uids[n:]
	}
	return matched, nil
}
