// Package listext gives every session LIST-EXTENDED (RFC 5258): the
// selection options SUBSCRIBED, REMOTE and RECURSIVEMATCH, the return
// options SUBSCRIBED and CHILDREN, several mailbox patterns in one
// command, the \NonExistent, \Subscribed, \HasChildren and \HasNoChildren
// attributes, and CHILDINFO.
//
// Where the upstream advertises LIST-EXTENDED the command is relayed as
// the client sent it (the core passes the capability on). Elsewhere an
// extended LIST is answered by the proxy from plain LIST and LSUB:
//
//   - without the SUBSCRIBED selection option, each pattern is one plain
//     LIST of the upstream (so its own matching, its \Noselect parents of
//     "%" and its other namespaces stay as they are), merged without
//     duplicates; RETURN (SUBSCRIBED) marks the names LSUB "" "*" holds;
//     RETURN (CHILDREN) adds \HasChildren or \HasNoChildren, computed from
//     LIST "" "*" where the upstream's own answer does not say;
//   - with it, the subscriptions (LSUB "" "*") are matched against the
//     patterns here, each looked up in LIST "" "*" for its attributes or
//     \NonExistent, and RECURSIVEMATCH adds each matching ancestor of a
//     subscription the patterns miss, with CHILDINFO ("SUBSCRIBED"), as
//     RFC 5258 3's table says.
//
// The reference is joined to the pattern as a prefix (RFC 3501 6.3.8's
// personal-namespace case) when the proxy matches names itself.
//
// RETURN (STATUS ...) (LIST-STATUS, RFC 5819) is refused with BAD on every
// upstream: the proxy does not advertise LIST-STATUS, because the
// upstream's HIGHESTMODSEQ is not the proxy's (see proxy/commands.go's
// relayable), and a relayed LIST-STATUS would leak it. The other options
// of extensions the proxy does not synthesize (SPECIAL-USE, MYRIGHTS) are
// relayed where the upstream has LIST-EXTENDED and refused with BAD
// elsewhere.
//
// Mailbox names go up and come back in the upstream's own spelling
// (modified UTF-7, the upstream's delimiter), as for any relayed LIST.
//
// The package keeps nothing between commands and stores no account data.
package listext

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// maxMailboxes bounds the mailboxes one synthesized LIST holds in memory
// (of LIST "" "*" and LSUB "" "*" each); an account with more gets NO.
const maxMailboxes = 100_000

// Extension implements LIST-EXTENDED; see the package comment.
type Extension struct{}

// New returns the extension.
func New() *Extension { return &Extension{} }

// Name identifies the extension.
func (*Extension) Name() string { return "listext" }

// Capabilities advertises LIST-EXTENDED after login where the upstream
// lacks it (the core relays the upstream's own).
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	if up.Has("LIST-EXTENDED") {
		return nil
	}
	return []string{"LIST-EXTENDED"}
}

// Commands names LIST.
func (*Extension) Commands() []string { return []string{"LIST"} }

// ServeCommand relays plain LIST, and extended LIST where the upstream has
// LIST-EXTENDED; it answers extended LIST itself elsewhere.
func (*Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if x.Streamed() || len(x.Segments) == 0 {
		return next(ctx, x)
	}
	relay := s.UpstreamCaps().Has("LIST-EXTENDED")
	r, err := parseRequest(x.Segments)
	switch {
	case r != nil && r.retStatus:
		return x.Reply("BAD", "", "Error in IMAP command LIST: LIST-STATUS is not offered; use STATUS.")
	case relay:
		return next(ctx, x)
	case err != nil:
		return x.Reply("BAD", "", "Error in IMAP command LIST: "+sentence(err.Error())+".")
	case !r.extended:
		return next(ctx, x)
	}
	out, err := answer(ctx, s, r)
	var st *upstream.StatusError
	switch {
	case errors.As(err, &st):
		return x.Reply("NO", "", "LIST failed: the server refused it.")
	case errors.Is(err, errNeedsLiteral):
		return x.Reply("NO", "", "LIST failed: the pattern cannot be sent to the server.")
	case errors.Is(err, errTooMany):
		return x.Reply("NO", "LIMIT", fmt.Sprintf("LIST failed: more than %d mailboxes.", maxMailboxes))
	case err != nil:
		return fmt.Errorf("listext: %w", err)
	}
	if err := s.Write(out); err != nil {
		return errors.Join(proxy.ErrClientGone, err)
	}
	return x.Reply("OK", "", "List completed.")
}

var (
	errTooMany = errors.New("too many mailboxes")
	// errNeedsLiteral: a pattern with 8-bit characters, CR or LF cannot
	// go up in a command of the proxy's own (Session.Exec takes no
	// synchronising literal) to an upstream without LITERAL+.
	errNeedsLiteral = errors.New("a pattern that needs a literal, and no LITERAL+ upstream")
)

// answer computes the untagged responses of an extended LIST the upstream
// cannot answer.
func answer(ctx context.Context, s *proxy.Session, r *request) ([]byte, error) {
	h, err := s.Hierarchy(ctx)
	if err != nil {
		return nil, err
	}
	delim := h.Delim
	up := s.UpstreamCaps()
	var entries []entry
	var t *tree
	needTree := r.subscribed || r.retChildren && !up.Has("CHILDREN")
	needSubs := r.subscribed || r.retSubscribed
	var all, subs []entry
	if needTree {
		if all, err = run(ctx, s, `LIST "" "*"`, "LIST"); err != nil {
			return nil, err
		}
	}
	if needSubs {
		if subs, err = run(ctx, s, `LSUB "" "*"`, "LSUB"); err != nil {
			return nil, err
		}
	}
	t = newTree(delim, all, subs)
	if r.subscribed {
		pats := make([]string, len(r.patterns))
		for i, p := range r.patterns {
			pats[i] = canonicalPattern(r.ref, p, delim)
		}
		entries = t.subscribedSelection(pats, r.recursive)
	} else {
		seen := map[string]bool{}
		for _, p := range r.patterns {
			cmd, err := listCommand(up, r.ref, p)
			if err != nil {
				return nil, err
			}
			got, err := run(ctx, s, cmd, "LIST")
			if err != nil {
				return nil, err
			}
			for _, e := range got {
				if p != "" && seen[e.name] {
					continue
				}
				seen[e.name] = true
				entries = append(entries, e)
			}
			if len(entries) > maxMailboxes {
				return nil, errTooMany
			}
		}
	}
	var b []byte
	for _, e := range entries {
		if e.name == "" { // LIST ref "": the delimiter, not a mailbox
			b = appendEntry(b, e)
			continue
		}
		if r.retChildren {
			if needTree {
				t.addChildren(&e)
			} // else the upstream's CHILDREN said
		} else {
			// A plain upstream adds them to every LIST; RFC 5258 4
			// makes them the CHILDREN return option's, and Dovecot's
			// LIST-EXTENDED answers without them unless asked.
			e.attrs = slices.DeleteFunc(e.attrs, func(a string) bool {
				return strings.EqualFold(a, `\HasChildren`) || strings.EqualFold(a, `\HasNoChildren`)
			})
		}
		switch {
		case r.retSubscribed && t.isSub[e.name] && !hasAttr(e.attrs, `\Subscribed`):
			e.attrs = append(e.attrs, `\Subscribed`)
		case !r.retSubscribed && !r.subscribed:
			// An IMAP4rev2 upstream marks subscriptions in every LIST;
			// RFC 5258 3 makes \Subscribed the SUBSCRIBED options'.
			e.attrs = slices.DeleteFunc(e.attrs, func(a string) bool { return strings.EqualFold(a, `\Subscribed`) })
		}
		b = appendEntry(b, e)
	}
	return b, nil
}

// listCommand spells a plain LIST of ref and pattern for the upstream
// (non-synchronising literals where a name cannot be quoted, which needs
// LITERAL+).
func listCommand(up upstream.Caps, ref, pat string) (string, error) {
	if !(imapcodec.CanQuote(ref) && imapcodec.CanQuote(pat)) && !up.Has("LITERAL+") {
		return "", errNeedsLiteral
	}
	b := []byte("LIST ")
	b = appendArg(b, ref)
	b = append(b, ' ')
	b = appendArg(b, pat)
	return string(b), nil
}

func appendArg(b []byte, s string) []byte {
	if imapcodec.CanQuote(s) {
		return imapcodec.AppendQuoted(b, s)
	}
	return imapcodec.AppendString(b, s, true)
}

// run executes a LIST or LSUB of the proxy's own and collects the answers
// named resp.
func run(ctx context.Context, s *proxy.Session, cmd, resp string) ([]entry, error) {
	var out []entry
	var perr error
	_, err := s.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != resp || perr != nil {
			return
		}
		if len(out) >= maxMailboxes {
			perr = errTooMany
			return
		}
		e, err := parseEntry(r.Segments)
		if err != nil {
			perr = fmt.Errorf("%s: %w", cmd, err)
			return
		}
		out = append(out, e)
	})
	if err != nil {
		return nil, err
	}
	return out, perr
}

// sentence capitalises an error message's first letter.
func sentence(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
