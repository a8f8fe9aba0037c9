// Package contextsearch keeps RFC 5267's updating searches (CONTEXT=SEARCH)
// alive for every session, whatever the upstream offers: the ADDTO and
// REMOVEFROM updates of a "SEARCH RETURN (UPDATE ...)", CANCELUPDATE, and
// the NOUPDATE refusal beyond the per-session limit.
//
// Never relayed. The proxy's sessions hold no upstream connection between
// commands; an upstream's own updating search would live on whichever
// pooled connection ran it and report to whichever session leased it next
// (the core leaves CONTEXT=SEARCH out of the relayed capabilities for that
// reason). So the updates are the proxy's own even over Dovecot, which has
// CONTEXT=SEARCH; the stateless parts of RFC 5267 (PARTIAL, the CONTEXT
// hint) are relayed there by extensions/esearch.
//
// Division of work. extensions/esearch owns the SEARCH command: it parses
// every RETURN option (UPDATE, CONTEXT and PARTIAL included), runs the
// search and writes the ESEARCH response, and for UPDATE hands the result
// to Open. This package owns what outlives the command: the live contexts
// of the session's selected mailbox (a session value, dropped with the
// mailbox), their re-evaluation when the mailbox changes, the updates,
// CANCELUPDATE and the limits. CONTEXT=SORT reuses it unchanged:
// extensions/sort opens a context with a Sorter (see Spec), and the updates
// then carry context positions instead of 0.
//
// How a context learns of changes. The core reports the selected
// mailbox's changes (from the hub's change stream) to the client in
// batches, only when the protocol allows: with a command's answers, at
// once during IDLE, as NOTIFY asks; never with expunges during FETCH,
// STORE or SEARCH (then the whole batch waits). The updates ride on the
// same batches, through the ChangeReporter stage:
//   - ReportExpunged, before the batch's EXPUNGE (or VANISHED) lines:
//     REMOVEFROM for the expunged messages a context held, in the
//     numbers the client still has (RFC 5267 4.3.4 wants it before the
//     expunge, so that sequence numbers stay valid). No upstream command:
//     the context's cached result tells.
//   - BatchDone, after the batch's FETCH and EXISTS lines (RFC 5267 4.3.3
//     wants ADDTO after the EXISTS that makes its numbers valid): every
//     message changed or added since the context last looked, up to what
//     the client has now been told, is evaluated again, and only those: a
//     search of flags alone from the hub's flags (local.go), any other by
//     the context's own search with "UID <changed>" added, one upstream
//     round trip per context and batch (matcher.go). A message whose
//     answer differs from the cached result is added or removed.
//
// The client's own STORE and FETCH answers tell it of flag changes the
// core then leaves out of the batch; when nothing else is in it, the core
// reports no batch, so the updates for those come with the command's
// tagged answer instead (an OnTagged hook), as Dovecot sends them.
//
// When updates are sent therefore follows the core's rules for unsolicited
// changes (RFC 3501 5.3, 7.4.1; RFC 7162 3.2.10 for VANISHED): RFC 5267
// 4.3.2 would allow an ESEARCH update at any time, but sequence-numbered
// updates are only meaningful against the numbering the client has, so
// they travel with the batch that establishes it.
//
// Search keys with sequence numbers were translated to UIDs when the
// search ran (RFC 5267 4.3: evaluated when the command is received), and
// "$" was replaced by the saved result; re-running the same UID form is
// exactly what the RFC asks. Keys the proxy itself rewrites from its own
// state cannot be re-run upstream: an updating search with MODSEQ is
// refused updates (NOUPDATE), and OLDER/YOUNGER over an upstream without
// WITHIN are frozen to the UID set they matched when the search ran.
//
// Limits: MaxPerSession updating contexts (10 by default, as Dovecot;
// RFC 5267 4.3.1 wants at least one), and the memory contexts hold: the
// bytes of one session's contexts (MaxSessionBytes) and of all sessions'
// together (MaxBytes, one budget for the process). A context costs a fixed
// overhead, 4 bytes a UID of its result and, when sorted, what its Sorter
// says it holds (CONTEXT=SORT keeps about 120 bytes of keys a message).
// Past any of them when a context opens, the search is still answered and
// the client told "* NO [NOUPDATE tag]". A context that grows past them
// later (new messages that match) is dropped with the same NOUPDATE after
// the update that made it grow: RFC 5267 4.3.1 lets the server stop the
// updates it can no longer afford. Everything a context holds is given back
// to the budget when it ends: CANCELUPDATE, the mailbox closed or another
// selected, the session's end.
//
// The package keeps no data in accountdata: contexts live and die with
// the selected mailbox of one session.
package contextsearch

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// DefaultMaxPerSession is the default number of updating contexts a
// session may have at once (Dovecot's own limit).
const DefaultMaxPerSession = 10

// DefaultMaxSessionBytes is the default bound on the bytes one session's
// contexts hold together: 16 MiB, 4 Mi UIDs of searches or about 130,000
// sorted messages (50 sessions of one account at the limit would pass the
// process-wide budget, which then refuses first).
const DefaultMaxSessionBytes = 16 << 20

// DefaultMaxBytes is the default budget of all sessions' contexts in the
// process: 64 MiB.
const DefaultMaxBytes = 64 << 20

// Config sets the limits.
type Config struct {
	// MaxPerSession bounds the updating contexts of a session; 0 means
	// DefaultMaxPerSession.
	MaxPerSession int
	// MaxSessionBytes bounds the bytes a session's contexts hold together
	// (see the package comment for what is counted); 0 means
	// DefaultMaxSessionBytes.
	MaxSessionBytes int64
	// MaxBytes bounds the bytes all sessions' contexts hold together; 0
	// means DefaultMaxBytes.
	MaxBytes int64
}

// Extension implements CONTEXT=SEARCH's updates; see the package comment.
type Extension struct {
	cfg Config
	// held is the bytes all sessions' contexts hold, against cfg.MaxBytes.
	held atomic.Int64
}

// New returns the extension with cfg's limits.
func New(cfg Config) *Extension {
	if cfg.MaxPerSession <= 0 {
		cfg.MaxPerSession = DefaultMaxPerSession
	}
	if cfg.MaxSessionBytes <= 0 {
		cfg.MaxSessionBytes = DefaultMaxSessionBytes
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	return &Extension{cfg: cfg}
}

// Held returns the bytes all sessions' contexts hold now, as counted
// against Config.MaxBytes (0 once every context has ended).
func (e *Extension) Held() int64 { return e.held.Load() }

// take charges n bytes (n > 0) to the process-wide budget, or nothing and
// false when that would pass it.
func (e *Extension) take(n int64) bool {
	if e.held.Add(n) > e.cfg.MaxBytes {
		e.held.Add(-n)
		return false
	}
	return true
}

// give returns n bytes to the budget.
func (e *Extension) give(n int64) { e.held.Add(-n) }

// Name identifies the extension.
func (*Extension) Name() string { return "contextsearch" }

// Capabilities advertises CONTEXT=SEARCH after login, whatever the
// upstream: the updates are always the proxy's, and extensions/esearch,
// which must be in the chain with this one, answers the RETURN options.
func (*Extension) Capabilities(state proxy.State, _ upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	return []string{"CONTEXT=SEARCH"}
}

// Commands names CANCELUPDATE, and the commands whose own answers may tell
// the client of flag changes the core then does not report in a batch.
func (*Extension) Commands() []string {
	return []string{"CANCELUPDATE", "STORE", "UID STORE", "FETCH", "UID FETCH"}
}

// PipelineSafe lets a FETCH or STORE go upstream before the previous
// command's answers are relayed (proxy.PipelineSafe): for those,
// contextsearch only adds the hook that refreshes the live searches after
// its tagged answer, and passes it on.
func (e *Extension) PipelineSafe(x *proxy.Exchange) bool {
	return x.Name != "CANCELUPDATE"
}

// ServeCommand answers CANCELUPDATE, and after a STORE or FETCH brings
// the contexts up to date with what its answers told the client.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	r := registryOf(s)
	if x.Name != "CANCELUPDATE" {
		if r != nil && len(r.live) > 0 {
			x.OnTagged(func(*imapcodec.ResponseHead) {
				b := r.refresh(ctx, s, nil)
				if len(b) > 0 {
					s.Write(b)
				}
			})
		}
		return next(ctx, x)
	}
	if r == nil {
		return x.Reply("BAD", "", "CANCELUPDATE needs a selected mailbox.")
	}
	tags, err := parseCancel(x.Segments)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command CANCELUPDATE: "+err.Error()+".")
	}
	// All or nothing: a tag that names no context cancels none.
	for _, t := range tags {
		if r.find(t) < 0 {
			return x.Reply("NO", "", "Unknown tag.")
		}
	}
	for _, t := range tags {
		r.cancel(t)
	}
	return x.Reply("OK", "", "Updates cancelled.")
}

// maxCancelTags bounds CANCELUPDATE's arguments: a session never has more
// contexts than the limit, and a few times that is no client's.
const maxCancelTags = 64

// parseCancel reads CANCELUPDATE's arguments: one or more quoted tags
// (RFC 5267 5: "CANCELUPDATE" 1*(SP quoted)).
func parseCancel(segs []imapcodec.Segment) ([]string, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return nil, errors.New("bad command")
	}
	if p.SP() != nil {
		return nil, errors.New("bad command")
	}
	if _, err := p.Atom(); err != nil { // CANCELUPDATE
		return nil, errors.New("bad command")
	}
	var tags []string
	for !p.AtEnd() {
		if p.SP() != nil {
			return nil, errors.New("invalid parameters")
		}
		if c, ok := p.Peek(); !ok || c != '"' {
			return nil, errors.New("tags must be quoted")
		}
		v, err := p.Value()
		if err != nil {
			return nil, errors.New("invalid parameters")
		}
		t, ok := v.(imapcodec.String)
		if !ok || t.Literal || len(t.Data) == 0 {
			return nil, errors.New("tags must be quoted")
		}
		if len(tags) == maxCancelTags {
			return nil, errors.New("too many tags")
		}
		tags = append(tags, string(t.Data))
	}
	if len(tags) == 0 {
		return nil, errors.New("invalid parameters")
	}
	return tags, nil
}

// StateChanged gives a session a fresh, empty set of contexts whenever it
// selects a mailbox, and drops them when it leaves it: updates cease when
// the mailbox is no longer selected (RFC 5267 4.3).
// The contexts a session leaves behind give their bytes back.
func (e *Extension) StateChanged(s *proxy.Session, state proxy.State) {
	if r := registryOf(s); r != nil {
		r.close()
	}
	if state == proxy.StateSelected {
		s.SetValue(registryKey{}, &registry{ext: e})
		return
	}
	s.SetValue(registryKey{}, nil)
}

// SessionClosed gives back the bytes of the session's contexts.
func (*Extension) SessionClosed(s *proxy.Session) {
	if r := registryOf(s); r != nil {
		r.close()
		s.SetValue(registryKey{}, nil)
	}
}

// Push has nothing queued: updates travel with the core's batches.
func (*Extension) Push(*proxy.Session) error { return nil }

// FetchItems adds nothing to FETCH responses.
func (*Extension) FetchItems(*proxy.Session, uint32, bool) []byte { return nil }

// ReportExpunged writes REMOVEFROM for the expunged messages the contexts
// held, before the expunges themselves, and leaves their report to the
// next reporter or the core.
func (*Extension) ReportExpunged(s *proxy.Session, b []byte, uids, seqs []uint32) ([]byte, bool) {
	if r := registryOf(s); r != nil {
		b = r.expunged(b, uids, seqs)
	}
	return b, false
}

// ExpungesHeld has nothing to say: held expunges hold the updates too.
func (*Extension) ExpungesHeld(*proxy.Session) []byte { return nil }

// BatchDone appends the updates that follow a batch of changes.
func (*Extension) BatchDone(s *proxy.Session, x *proxy.Exchange, b []byte, _ bool) []byte {
	r := registryOf(s)
	if r == nil || len(r.live) == 0 {
		return b
	}
	ctx := context.Background()
	if x != nil {
		ctx = x.Context()
	}
	return append(b, r.refresh(ctx, s, nil)...)
}
