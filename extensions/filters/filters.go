// Package filters gives every session FILTERS (RFC 5466): named searches,
// stored as METADATA server entries, used with the search key FILTER name.
//
// A filter is the entry /private/filters/values/<name> (the user's own)
// or /shared/filters/values/<name>; /private/filters/descriptions/<name>
// may describe it for people and has no meaning here. Clients write them
// with SETMETADATA; the entries live wherever the metadata extension keeps
// them: the upstream's METADATA where it has it (Dovecot's, say, which has
// no FILTERS), the proxy's account data store where it does not (package
// metadata, key prefix "metadata/": this package keeps no records of its
// own). Filter names are atoms without "/" (RFC 5466's filter-name), and
// case-insensitive, as entry names are.
//
// Where the upstream advertises FILTERS, the extension advertises it too
// (the core does not relay it) and passes every search on untouched.
// Elsewhere it advertises FILTERS wherever the session has METADATA
// (always: relayed or synthesized), and replaces each FILTER name key of
// a SEARCH, SORT or THREAD, before the core translates the command's
// sequence numbers (proxy.CommandRewriter), by the filter's value in
// parentheses: the private filter of that name if there is one, else the
// shared one (RFC 5466 3.1). The value is a search program in the
// client's terms, so sequence sets and "$" in it mean what they mean in
// the command; the rest of the chain (WITHIN's OLDER and YOUNGER,
// ESEARCH's RETURN, CONDSTORE's MODSEQ) then sees a search it knows.
//
// Errors. A filter that does not exist is answered NO [UNDEFINED-FILTER
// name] (RFC 5466). A filter whose value is not a search program the
// proxy can put into a command (search keys in 7-bit text without CR, LF,
// NUL or literals) is answered NO, and so is a search whose filters refer
// to filters more than maxNesting deep (a filter naming itself, say) or
// whose substituted text would exceed maxText bytes ([LIMIT]).
//
// Place in the chain: before within and esearch (their keys may come from
// a filter; esearch's "$" rewriting runs after this one's). It reads the
// entries through the metadata extension it is given, which must be in the
// chain too.
package filters

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

const (
	// maxNesting bounds how deep filters may refer to filters.
	maxNesting = 4
	// maxText bounds the text substituted into one command (half of
	// Dovecot's default command line limit, as within's).
	maxText = 32 << 10
	// lookupTimeout bounds the reading of one command's filters.
	lookupTimeout = 30 * time.Second
)

// Extension implements FILTERS; see the package documentation.
type Extension struct {
	meta *metadata.Extension
}

// New returns the extension, reading filters through meta.
func New(meta *metadata.Extension) *Extension { return &Extension{meta: meta} }

// Name identifies the extension.
func (*Extension) Name() string { return "filters" }

// Capabilities advertises FILTERS after login.
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	return []string{"FILTERS"}
}

// searchCommands take search keys.
var searchCommands = map[string]bool{"SEARCH": true, "SORT": true, "THREAD": true}

// Commands names the commands whose unresolved FILTER keys ServeCommand
// answers.
func (*Extension) Commands() []string {
	return []string{"SEARCH", "UID SEARCH", "SORT", "UID SORT", "THREAD", "UID THREAD"}
}

// ValuesEntry returns the entry of a filter's value, private or shared.
func ValuesEntry(shared bool, name string) string {
	if shared {
		return "/shared/filters/values/" + metadata.Canonical(name)
	}
	return "/private/filters/values/" + metadata.Canonical(name)
}

// CheckName reports whether name is a filter name: 1*<ATOM-CHAR except
// "/"> (RFC 5466).
func CheckName(name string) error {
	if !imapcodec.IsAtom(name) || strings.Contains(name, "/") || len(name) > 200 {
		return fmt.Errorf("%q is not a filter name", name)
	}
	return nil
}

// filterError is why a FILTER key could not be resolved, answered NO.
type filterError struct {
	code, text string
}

func (e *filterError) Error() string { return e.text }

// RewriteCommand replaces FILTER keys by their values, where the upstream
// lacks FILTERS. A key it cannot resolve is left in place, for
// ServeCommand to answer.
func (e *Extension) RewriteCommand(s *proxy.Session, cmd *imapcodec.Command) ([]imapcodec.Segment, error) {
	if !searchCommands[strings.TrimPrefix(cmd.Name, "UID ")] || s.UpstreamCaps().Has("FILTERS") || !mentionsFilter(cmd.Segments) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	segs, err := e.resolve(ctx, s, cmd.Segments)
	if err != nil {
		// Left in place: ServeCommand answers with the reason (BAD for
		// a client's syntax error, NO for a filter that cannot be used
		// or read; a rewriter could only answer BAD).
		return nil, nil
	}
	return segs, nil
}

// mentionsFilter is a quick test that spares the parse of most searches.
func mentionsFilter(segs []imapcodec.Segment) bool {
	for _, sg := range segs {
		if strings.Contains(strings.ToUpper(string(sg.Text)), "FILTER") {
			return true
		}
	}
	return false
}

// filterKeys returns the names of a search command's FILTER keys; an error
// is a client's syntax error.
func filterKeys(segs []imapcodec.Segment) ([]string, error) {
	var names []string
	_, err := imapcodec.ReplaceSearchKeys(slices.Clone(segs), func(k imapcodec.SearchKey) (string, bool, error) {
		if k.Name != "FILTER" {
			return "", false, nil
		}
		var name string
		if len(k.Args) == 1 {
			name, _ = imapcodec.AsString(k.Args[0])
		}
		if err := CheckName(name); err != nil {
			return "", false, err
		}
		names = append(names, name)
		return "", false, nil
	})
	return names, err
}

// resolve substitutes every FILTER key of segs, nested ones included.
func (e *Extension) resolve(ctx context.Context, s *proxy.Session, segs []imapcodec.Segment) ([]imapcodec.Segment, error) {
	values := map[string]string{} // canonical name -> value, for the command
	total := 0
	for depth := 0; ; depth++ {
		names, err := filterKeys(segs)
		if err != nil {
			return nil, err
		}
		if len(names) == 0 {
			return segs, nil
		}
		if depth == maxNesting {
			return nil, &filterError{"", fmt.Sprintf("Filters refer to filters more than %d deep.", maxNesting)}
		}
		for _, n := range names {
			c := metadata.Canonical(n)
			if _, ok := values[c]; ok {
				continue
			}
			v, err := e.value(ctx, s, n)
			if err != nil {
				return nil, err
			}
			values[c] = v
		}
		segs = slices.Clone(segs)
		if _, err := imapcodec.ReplaceSearchKeys(segs, func(k imapcodec.SearchKey) (string, bool, error) {
			if k.Name != "FILTER" {
				return "", false, nil
			}
			name, _ := imapcodec.AsString(k.Args[0])
			v := values[metadata.Canonical(name)]
			total += len(v) + 2
			return "(" + v + ")", true, nil
		}); err != nil {
			return nil, err
		}
		if total > maxText {
			return nil, &filterError{"LIMIT", "The filters make too long a search."}
		}
	}
}

// value reads a filter's value, private first, and checks that it can be
// put into a command.
func (e *Extension) value(ctx context.Context, s *proxy.Session, name string) (string, error) {
	priv, shared := ValuesEntry(false, name), ValuesEntry(true, name)
	vals, err := e.meta.Lookup(ctx, s, "", []string{priv, shared})
	if err != nil {
		return "", err
	}
	v, ok := vals[priv]
	if !ok {
		v, ok = vals[shared]
	}
	if !ok {
		return "", &filterError{"UNDEFINED-FILTER " + name, "Filter " + name + " is not defined."}
	}
	text := string(v)
	if err := checkValue(text); err != nil {
		return "", &filterError{"", "Filter " + name + " cannot be used: " + err.Error() + "."}
	}
	return text, nil
}

// checkValue reports whether a filter's value can go into a command as it
// is: 7-bit text without CR, LF or NUL, no literal, and one or more search
// keys that parse.
func checkValue(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("it is empty")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return errors.New("it holds 8-bit or control characters")
		}
	}
	if strings.Contains(v, "{") && strings.Contains(v, "}") {
		return errors.New("it holds a literal")
	}
	if !balanced(v) {
		return errors.New("its parentheses do not match")
	}
	if _, err := imapcodec.ReplaceSearchKeys([]imapcodec.Segment{{Text: []byte("t SEARCH (" + v + ")")}}, func(imapcodec.SearchKey) (string, bool, error) {
		return "", false, nil
	}); err != nil {
		return errors.New("it is not a search program")
	}
	return nil
}

// ServeCommand answers a search whose FILTER keys RewriteCommand could not
// resolve, with the reason.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if x.Streamed() || s.UpstreamCaps().Has("FILTERS") || !mentionsFilter(x.Segments) {
		return next(ctx, x)
	}
	names, err := filterKeys(x.Segments)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	if len(names) == 0 {
		return next(ctx, x)
	}
	_, err = e.resolve(ctx, s, x.Segments)
	var fe *filterError
	switch {
	case errors.As(err, &fe):
		return x.Reply("NO", fe.code, fe.text)
	case err != nil:
		s.Logger().Warn("FILTERS: reading a filter failed", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "The filter cannot be read now; try again later.")
	}
	// Resolved now but not before the translation (it failed then):
	// the sequence numbers are already UIDs, so it cannot go on.
	return x.Reply("NO", "UNAVAILABLE", "The filter cannot be read now; try again later.")
}

// balanced reports whether the parentheses of v, outside quoted strings,
// match: a value such as "ALL) (ALL" would otherwise break out of the
// parentheses it is put in and change the meaning of the search around
// it (an OR's operands).
func balanced(v string) bool {
	depth, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '(':
			depth++
		case c == ')':
			if depth--; depth < 0 {
				return false
			}
		}
	}
	return depth == 0 && !quoted
}
