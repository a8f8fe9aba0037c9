// Package casesearch gives every session I18NLEVEL=1 (RFC 5255 section
// 4): the substring search keys compare with i;unicode-casemap (RFC 5051),
// whatever the upstream's SEARCH does, so that "SUBJECT strasse" finds
// "STRASSE", "é" finds "É" and "e" + combining acute, and "full" finds
// fullwidth "ＦＵＬＬ". SORT's comparisons are extensions/sort's, which are
// i;unicode-casemap already (internal/casemap, the collation both use).
//
// Relayed or evaluated. Where the upstream advertises I18NLEVEL, the core
// relays it and this extension does nothing. Where the operator has
// stated that the upstream's SEARCH compares with i;unicode-casemap
// (Config.UpstreamCasemap: Dovecot's does, whatever it advertises),
// searches are relayed and I18NLEVEL=1 advertised. Where the upstream has
// SORT of its own (and no I18NLEVEL), nothing is advertised: its SORT
// compares its own way, and extensions/sort relays it. Everywhere else
// (Dovecot's legacy profile without the setting, go-imap's imapmemserver)
// I18NLEVEL=1 is advertised and the proxy evaluates the substring keys of
// SEARCH, SORT and THREAD (and their UID forms) itself, before the
// command goes on down the chain:
//
//  1. Candidates: the criteria with each substring key (SUBJECT, FROM, TO,
//     CC, BCC, HEADER, BODY, TEXT) made ALL where it stands plain and NOT
//     ALL where it stands negated (and MODSEQ likewise, which only
//     extensions/condstore, later in the chain, answers) match a superset
//     of what the criteria match, whatever the keys match: AND and OR
//     only grow with their operands, NOT turns that around. One UID
//     SEARCH of them upstream gives the candidates: "SUBJECT x UNSEEN"
//     looks at the unseen messages only, "NOT SUBJECT x" at all.
//  2. Evaluation: each distinct key over the candidates (match.go for the
//     semantics, which follow Dovecot's), reading only what it needs: the
//     named header fields (BODY.PEEK[HEADER.FIELDS (...)]) and the
//     ENVELOPE (FROM, TO, CC, BCC: the upstream's parse of the addresses)
//     when no key is BODY or TEXT, else the messages' sizes, then the
//     messages, decoded with go-message as they stream (BODY.PEEK[]: the
//     small ones on pooled connections, the others on a connection of
//     their own, never held whole).
//  3. Rewriting: each key is replaced by the UIDs it matches ("UID set",
//     "NOT UID set", "ALL" or "NOT ALL"), and the command goes on down
//     the chain as if the client had sent it: esearch, contextsearch,
//     sort, thread and condstore see only keys the upstream evaluates
//     exactly. The replacement is exact for the candidates; for every
//     other message it says "no match" where the key stands plain and
//     "match" where it stands negated, so the criteria cannot count in a
//     message the proxy did not evaluate (one that was no candidate, or
//     arrived since): such a message is counted in only when the rest of
//     the criteria alone count it in, which is then its true answer. The
//     sets are as short as the alternations between matching and other
//     messages in UID order allow, ranges running over UIDs that no
//     longer exist; beyond maxCriteria bytes the command is answered NO
//     [LIMIT].
//
// Updating contexts (CONTEXT=SEARCH, CONTEXT=SORT: RFC 5267's RETURN
// (UPDATE)) get a Matcher (contextsearch.SetMatcher) that evaluates the
// original keys anew for the messages that changed, the same three steps
// restricted to them, so that a new message whose subject matches is
// added: not the frozen sets of the rewritten command.
//
// CHARSET: strings in US-ASCII or UTF-8 (or no CHARSET) are evaluated; a
// command with substring keys in any other charset is answered NO
// [BADCHARSET (US-ASCII UTF-8)], as go-imap's server answers it. A
// command without substring keys goes on untouched, whatever its charset.
//
// Bounds: at most Config.MaxBytes read from the upstream per command
// (the FETCH responses and messages; the sizes of the messages are
// fetched first, so that a search past the limit reads none of them),
// answered NO [LIMIT] beyond; Config.Timeout for the whole evaluation, NO [LIMIT] beyond; 64
// distinct substring keys per command; at most messageChunk bytes of a
// message's named header fields for header keys; header blocks of
// messages and their parts at most maxHeaderBytes, the rest of such a
// message unsearched. Memory: a message is scanned as it streams, in
// chunks of textChunk (plus the longest string sought); the candidates'
// UIDs and one byte per key and candidate are held for the command.
// docs/i18nlevel.md has the measurements.
//
// The package keeps no data.
package casesearch

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Defaults of Config.
const (
	// DefaultMaxBytes is what one command may read by default: 256 MiB,
	// the text search of a few thousand typical messages.
	DefaultMaxBytes = 256 << 20
	// DefaultTimeout bounds one command's evaluation by default.
	DefaultTimeout = 2 * time.Minute
)

// maxCriteria bounds the replacement text of one command's keys, half
// of Dovecot's default command line limit (64 KiB), as extensions/within
// does.
const maxCriteria = 32 << 10

// Config sets where the proxy evaluates and its bounds.
type Config struct {
	// UpstreamCasemap states that the upstream's SEARCH compares with
	// i;unicode-casemap already (Dovecot's does, whatever capabilities it
	// advertises): searches are then relayed, none evaluated here.
	UpstreamCasemap bool
	// MaxBytes bounds what one command may read from the upstream to
	// evaluate its keys; 0: DefaultMaxBytes.
	MaxBytes int64
	// Timeout bounds one command's evaluation; 0: DefaultTimeout.
	Timeout time.Duration
}

// Extension implements I18NLEVEL=1; see the package comment.
type Extension struct {
	cfg Config
	// read is what evaluations have read from the upstream (BytesRead).
	read atomic.Int64
}

// BytesRead returns the bytes of headers and messages all evaluations
// have read from the upstream so far, for measurements.
func (e *Extension) BytesRead() int64 { return e.read.Load() }

// New returns the extension.
func New(cfg Config) *Extension {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return &Extension{cfg: cfg}
}

// Name identifies the extension.
func (*Extension) Name() string { return "casesearch" }

// offered reports whether I18NLEVEL=1 is the proxy's to offer over up:
// not where the upstream has an I18NLEVEL (the core relays it) nor where
// it sorts itself (its SORT's comparator is its own).
func offered(up upstream.Caps) bool {
	return len(up.WithPrefix("I18NLEVEL=")) == 0 && !up.Has("SORT")
}

// Capabilities advertises I18NLEVEL=1 after login where it is the
// proxy's (offered).
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected || !offered(up) {
		return nil
	}
	return []string{"I18NLEVEL=1"}
}

// Commands names the commands whose criteria may hold substring keys.
func (*Extension) Commands() []string {
	return []string{"SEARCH", "UID SEARCH", "SORT", "UID SORT", "THREAD", "UID THREAD"}
}

// ServeCommand evaluates the substring keys where the proxy offers
// I18NLEVEL=1 over an upstream whose SEARCH is not known to compare with
// i;unicode-casemap, and passes the rewritten command on.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if e.cfg.UpstreamCasemap || s.Mailbox() == nil || x.Streamed() || len(x.Segments) == 0 || !offered(s.UpstreamCaps()) {
		return next(ctx, x)
	}
	prog, err := parseProgram(x.Segments)
	switch {
	case errors.Is(err, errTooMany):
		return x.Reply("NO", "LIMIT", "Too many different substring search keys in one command.")
	case err != nil || len(prog.atoms) == 0:
		return next(ctx, x) // nothing to evaluate, or the upstream's to refuse
	case !prog.charsetOK():
		return x.Reply("NO", "BADCHARSET (US-ASCII UTF-8)", "Unsupported search charset; use UTF-8.")
	}
	segs, res, err := e.run(ctx, s, prog)
	if err != nil {
		return e.refuse(x, err)
	}
	s.Logger().Debug("casesearch: evaluated", "keys", len(prog.atoms), "candidates", len(res.cands), "bytes", res.read)
	// An updating context re-evaluates the original keys (matcher.go);
	// one the upstream could not re-run (MODSEQ, a literal it cannot
	// take) is refused updates, as it would be without this extension.
	if _, err := contextsearch.NewSearchMatcher(s, prog.searchForm(segs)); err != nil {
		contextsearch.SetMatcher(x, nil, err)
	} else {
		// The context outlives the command: its own copy of the criteria.
		kept := *prog
		kept.segs = cloneSegments(prog.segs)
		contextsearch.SetMatcher(x, &matcher{e: e, prog: &kept}, nil)
	}
	x.Segments = segs
	return next(ctx, x)
}

// run evaluates prog's atoms and returns the command rewritten.
func (e *Extension) run(parent context.Context, s *proxy.Session, prog *program) ([]imapcodec.Segment, *result, error) {
	ctx, cancel := context.WithTimeout(parent, e.cfg.Timeout)
	defer cancel()
	res, err := e.evaluate(ctx, s, prog, nil)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil {
			err = errTimeout
		}
		return nil, nil, err
	}
	segs, err := e.rewrite(s, prog, res)
	return segs, res, err
}

// errTimeout says the evaluation took longer than Config.Timeout;
// errTooLong that its result would make the command too long.
var (
	errTimeout = errors.New("casesearch: the search took too long")
	errTooLong = errors.New("casesearch: the matches are too scattered")
)

// rewrite returns prog's command with each substring key replaced by the
// set standing for it (encode).
func (e *Extension) rewrite(s *proxy.Session, prog *program, res *result) ([]imapcodec.Segment, error) {
	var known []uint32
	if m := s.Mailbox(); m != nil {
		known = m.State().Snapshot().UIDs
	}
	known = uidset.Merge(known, res.cands)
	keys := map[[2]int]string{} // (atom, negated): its replacement
	total := 0
	segs, err := prog.rewrite(func(i int, negated bool) string {
		k := [2]int{i, 0}
		if negated {
			k[1] = 1
		}
		if t, ok := keys[k]; ok {
			return t
		}
		t := encode(known, res.cands, res.match[i], negated)
		keys[k] = t
		total += len(t)
		return t
	})
	if err == nil && total > maxCriteria {
		err = errTooLong
	}
	return segs, err
}

// cloneSegments copies segments, their text and literals.
func cloneSegments(segs []imapcodec.Segment) []imapcodec.Segment {
	out := make([]imapcodec.Segment, len(segs))
	for i, sg := range segs {
		out[i] = imapcodec.Segment{Text: bytes.Clone(sg.Text), Literal: sg.Literal, Data: bytes.Clone(sg.Data)}
	}
	return out
}

// refuse answers a command whose evaluation failed.
func (e *Extension) refuse(x *proxy.Exchange, err error) error {
	s := x.Session()
	var se *upstream.StatusError
	switch {
	case errors.Is(err, errLimit):
		return x.Reply("NO", "LIMIT", "The search would read more of the mailbox than the server allows for one command; narrow it (dates, flags, a smaller mailbox).")
	case errors.Is(err, errTimeout):
		return x.Reply("NO", "LIMIT", "The search took too long; narrow it (dates, flags, a smaller mailbox).")
	case errors.Is(err, errTooLong):
		return x.Reply("NO", "LIMIT", "The search matches too scattered a set of messages here; narrow it.")
	case errors.Is(err, errLiteral):
		return x.Reply("NO", "", "The search criteria hold a string the server cannot pass on; send it as a quoted string.")
	case errors.As(err, &se):
		// The upstream refused the candidates' search: its own words
		// about the rest of the criteria.
		code := se.Head.Code
		if se.Head.CodeArg != "" {
			code += " " + se.Head.CodeArg
		}
		return x.Reply(se.Head.Name, code, strings.Replace(se.Head.Text, "UID SEARCH", x.Name, 1))
	case errors.Is(err, proxy.ErrClientGone) || x.Context().Err() != nil:
		return err
	}
	s.Logger().Warn("casesearch: evaluation failed", "err", err)
	return x.Reply("NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
}
