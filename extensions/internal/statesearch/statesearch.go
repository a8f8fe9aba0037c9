// Package statesearch decides search criteria from the hub's state of the
// selected mailbox, without asking the upstream: the criteria of which
// every key is about what the state holds of a message (its UID, its
// place in the client's message sequence, its flags, its mod-sequence).
// extensions/esearch answers SEARCH, UID SEARCH and their ESEARCH forms
// with it; extensions/contextsearch re-evaluates the flag searches of its
// updating contexts with it.
//
// What is decided here: ALL; sequence sets; UID sets; ANSWERED, DELETED,
// DRAFT, FLAGGED, SEEN and their UN- forms; KEYWORD and UNKEYWORD; MODSEQ
// (RFC 7162 3.1.5, the one-argument form); NOT, OR and parenthesised
// lists of these. RECENT, NEW and OLD never reach here as such: the core
// rewrites them to UID sets of the session's own \Recent messages
// (proxy/recent.go), and "$" (RFC 5182) is a UID set by the time a
// handler sees it (extensions/esearch's CommandRewriter), so both are
// decided here too. Anything else (dates, sizes, headers, text, a
// CHARSET other than US-ASCII and UTF-8, which every server has and which
// flag keys do not use) is ErrUndecidable: the caller asks the upstream.
//
// Why the state's answer is the right one. The client's picture of the
// mailbox is the hub's state: the messages it has been told of (its view,
// which the core keeps per session), their flags as the hub delivers
// them (FETCH FLAGS), their mod-sequences, which are the proxy's own.
// Before a command runs, the core delivers what changed since the
// client was last told (the whole batch, or nothing while expunges must
// wait); a search decided from the same state therefore agrees with what
// the client has just been told, as Dovecot's search over its session's
// mailbox view agrees with what that session was told. In detail:
//
//   - Messages are those of the client's view: a message the client has
//     not been told of (no EXISTS yet) matches nothing, even in a UID
//     SEARCH, and "*" is the last message of the view (its last UID in a
//     UID set), as in a direct session. A message expunged from the state
//     whose EXPUNGE the client has not had yet (held during SEARCH, RFC
//     3501 7.4.1) keeps its number but matches nothing, as it would
//     upstream, where it is gone.
//   - Flags are the state's. The session's own STORE (and a FETCH that
//     set \Seen) is in the state before its tagged OK (the hub's claims,
//     hub/claim.go), so a search right after it sees it; so is a STORE of
//     another session of the proxy. A change made by a client connected
//     to the upstream directly is in the state once the hub's watcher has
//     read it (IDLE, typically within a second, or the next poll); until
//     then the search answers the flags the client was told, and the
//     change reaches it as an unsolicited FETCH, as the same change
//     reaches a direct Dovecot session at its next synchronisation point.
//     NOOP (and EXPUNGE, APPEND, COPY into the mailbox) makes the hub
//     check the upstream first, so after it the state is the upstream's.
//     While an EXPUNGE is held (during SEARCH) the flag changes wait with
//     it, and the search sees the state's newer flags, as the upstream
//     would. If a claim cannot be recorded (the watcher busy past its
//     timeout, the state store failing), the state has the change only
//     when the watcher reports it, and until then a search lags the
//     session's own STORE, as every answer from the state does (MODSEQ
//     items included).
//   - A batch of changes is read whole or not at all (syncstate.Each).
//
// Sequence numbers and "*" mean the view of the moment the search runs:
// Options.Numbers allows them for a one-time search; an updating context,
// re-evaluated later when they would mean other messages, leaves it off.
// "n:*" is every number from n to the last and, when n is beyond the last
// message, the last message itself (RFC 3501 9, seq-range), as the core
// translates the sequence sets of SEARCH (proxy/seqview.go).
//
// Where this differs from what Dovecot 2.3 itself answers (found by
// extensions/esearch's differential test): Dovecot matches nothing for
// "n:*" with n beyond the last message (for UID sets it follows the RFC);
// it loses matches of ORed sequence sets with "*" under an AND ("5:1 OR
// 13:*,2:5 9:*" is empty in a mailbox of 20); it answers NOT over a list
// wrongly ("OR NOT (UID 19:20 UNSEEN) UNSEEN" matches the unseen messages
// only, where every message matches; the core sends NEW upstream as such
// a list); and a search for a keyword the mailbox lacks adds it to the
// mailbox's FLAGS, which the client is then told. The answers here are
// the RFC's, and a search changes nothing.
//
// Keywords match case-insensitively, as Dovecot's do (and RFC 9051 2.3.2
// says flag names are). Every compiled search is bounded: at most MaxKeys
// keys, the parser's nesting limit, sets no larger than the command line
// that carried them.
package statesearch

import (
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// MaxKeys bounds the keys of a search decided here; a larger one goes
// upstream (no client's search has as many keys of these kinds).
const MaxKeys = 64

// ErrUndecidable says the criteria need the upstream.
var ErrUndecidable = errors.New("statesearch: criteria need the upstream")

// Options say what a Program may depend on besides flags and UIDs.
type Options struct {
	// Numbers allows what means different messages as the mailbox
	// changes: sequence sets, and "*" in UID sets. For a search answered
	// once, against the client's view of the moment.
	Numbers bool
	// ModSeq allows MODSEQ keys, decided on the state's mod-sequences
	// (the proxy's own, extensions/condstore). The caller must have
	// CONDSTORE enabled for the session (RFC 7162 3.1: a MODSEQ search
	// enables it, which is extensions/condstore's to do).
	ModSeq bool
}

// A Message is what a key is decided on.
type Message struct {
	UID uint32
	// Seq is the client's sequence number; 0 where there is no view
	// (Match).
	Seq    uint32
	Flags  []string // normalised (syncstate.NormalizeFlags)
	ModSeq uint64
}

// A Program is compiled search criteria. It is immutable: one may be
// evaluated many times, from several goroutines.
type Program struct {
	root   term
	modseq bool
	// flags says a key reads flags or mod-sequences; without one, which
	// messages the state has is all Eval needs to know.
	flags bool
}

// HasModSeq reports whether the criteria have a MODSEQ key, whose answer
// carries a MODSEQ (RFC 7162 3.1.5, RFC 4731 3.2).
func (p *Program) HasModSeq() bool { return p.modseq }

// Eval decides the criteria for every message of view (the client's
// message sequence: UIDs ascending, message n at index n-1) from st, all
// read at one moment, and calls match for each message that matches, in
// sequence order. Messages of the view st no longer has match nothing.
// The Message handed to match has Flags and ModSeq only when a key of the
// criteria reads them.
func (p *Program) Eval(st *syncstate.Mailbox, view []uint32, match func(Message)) {
	e := env{count: uint32(len(view))}
	if len(view) > 0 {
		e.last = view[len(view)-1]
	}
	pr := p.root(e)
	if !p.flags {
		// ALL, sets: the view's messages that the state's message list
		// (one snapshot) has, found by walking the two ascending lists
		// together, without a lookup per message (BenchmarkEval: ALL
		// over 100,000 messages in a fraction of the time of UNSEEN).
		uids, j := st.Snapshot().UIDs, 0
		m := new(Message) // one for all: the preds take a pointer
		for i, uid := range view {
			for j < len(uids) && uids[j] < uid {
				j++
			}
			if j == len(uids) {
				return
			}
			if *m = (Message{UID: uid, Seq: uint32(i + 1)}); uids[j] == uid && pr(m) {
				match(*m)
			}
		}
		return
	}
	m := new(Message)
	st.Each(view, func(i int, flags []string, modseq uint64) {
		*m = Message{UID: view[i], Seq: uint32(i + 1), Flags: flags, ModSeq: modseq}
		if pr(m) {
			match(*m)
		}
	})
}

// Match returns the UIDs among uids whose messages st has and the
// criteria match, in the order of uids. For a Program compiled without
// Options.Numbers (sequence numbers mean nothing here).
func (p *Program) Match(st *syncstate.Mailbox, uids []uint32) []uint32 {
	pr := p.root(env{})
	var out []uint32
	m := new(Message)
	st.Each(uids, func(i int, flags []string, modseq uint64) {
		*m = Message{UID: uids[i], Flags: flags, ModSeq: modseq}
		if pr(m) {
			out = append(out, uids[i])
		}
	})
	return out
}

// env is what the numbers of a search mean at evaluation: how many
// messages the view has and its last UID ("*").
type env struct{ count, last uint32 }

// A pred decides one message; a term is a compiled key, which gives its
// pred once bound to the view it is evaluated over.
type (
	pred func(m *Message) bool
	term func(e env) pred
)

// constant is a term whose pred does not depend on the view.
func constant(p pred) term { return func(env) pred { return p } }

// CompileCommand compiles the criteria of "tag [UID] SEARCH [RETURN
// (...)] [CHARSET c] criteria", the command as it goes upstream. It
// returns ErrUndecidable for anything it does not decide, a command of
// another shape included.
func CompileCommand(segs []imapcodec.Segment, o Options) (*Program, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil || p.SP() != nil { // tag
		return nil, ErrUndecidable
	}
	name, err := p.Atom()
	if err == nil && strings.EqualFold(name, "UID") {
		if p.SP() != nil {
			return nil, ErrUndecidable
		}
		name, err = p.Atom()
	}
	if err != nil || !strings.EqualFold(name, "SEARCH") {
		return nil, ErrUndecidable
	}
	vals, err := p.Values() // from the space after SEARCH on
	if err != nil || !p.AtEnd() {
		return nil, ErrUndecidable
	}
	if len(vals) >= 2 && isAtom(vals[0], "RETURN") {
		vals = vals[2:]
	}
	if len(vals) >= 2 && isAtom(vals[0], "CHARSET") {
		cs, ok := imapcodec.AsString(vals[1])
		if !ok || !strings.EqualFold(cs, "UTF-8") && !strings.EqualFold(cs, "US-ASCII") {
			// Another charset may be unknown upstream (NO
			// [BADCHARSET]), whatever the keys.
			return nil, ErrUndecidable
		}
		vals = vals[2:]
	}
	return Compile(vals, o)
}

// Compile compiles search criteria: the values after "SEARCH" and its
// RETURN and CHARSET.
func Compile(vals []imapcodec.Value, o Options) (*Program, error) {
	c := compiler{opts: o}
	root, err := c.keys(vals)
	if err != nil {
		return nil, err
	}
	return &Program{root: root, modseq: c.modseq, flags: c.flags}, nil
}

type compiler struct {
	opts   Options
	n      int  // keys so far, against MaxKeys
	modseq bool // a MODSEQ key was seen
	flags  bool // a key reads flags or mod-sequences
}

// keys compiles the keys of vals, ANDed.
func (c *compiler) keys(vals []imapcodec.Value) (term, error) {
	var ts []term
	for len(vals) > 0 {
		t, rest, err := c.key(vals)
		if err != nil {
			return nil, err
		}
		ts, vals = append(ts, t), rest
	}
	switch len(ts) {
	case 0:
		return nil, ErrUndecidable
	case 1:
		return ts[0], nil
	}
	return func(e env) pred {
		ps := make([]pred, len(ts))
		for i, t := range ts {
			ps[i] = t(e)
		}
		return func(m *Message) bool {
			for _, p := range ps {
				if !p(m) {
					return false
				}
			}
			return true
		}
	}, nil
}

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

// key compiles the key at the head of vals and returns the rest.
func (c *compiler) key(vals []imapcodec.Value) (term, []imapcodec.Value, error) {
	if c.n++; c.n > MaxKeys || len(vals) == 0 {
		return nil, nil, ErrUndecidable
	}
	switch v := vals[0].(type) {
	case imapcodec.List:
		t, err := c.keys(v)
		return t, vals[1:], err
	case imapcodec.Atom:
		name := strings.ToUpper(string(v))
		if k, ok := systemKeys[name]; ok {
			c.flags = true
			return flagTerm(k.flag, k.set), vals[1:], nil
		}
		switch name {
		case "ALL":
			return constant(func(*Message) bool { return true }), vals[1:], nil
		case "NOT":
			t, rest, err := c.key(vals[1:])
			if err != nil {
				return nil, nil, err
			}
			return func(e env) pred {
				p := t(e)
				return func(m *Message) bool { return !p(m) }
			}, rest, nil
		case "OR":
			a, rest, err := c.key(vals[1:])
			if err != nil {
				return nil, nil, err
			}
			b, rest, err := c.key(rest)
			if err != nil {
				return nil, nil, err
			}
			return func(e env) pred {
				pa, pb := a(e), b(e)
				return func(m *Message) bool { return pa(m) || pb(m) }
			}, rest, nil
		case "KEYWORD", "UNKEYWORD":
			if len(vals) < 2 {
				return nil, nil, ErrUndecidable
			}
			kw, ok := vals[1].(imapcodec.Atom)
			if !ok || kw == "" || strings.HasPrefix(string(kw), `\`) {
				return nil, nil, ErrUndecidable
			}
			c.flags = true
			return flagTerm(string(kw), name == "KEYWORD"), vals[2:], nil
		case "UID":
			if len(vals) < 2 {
				return nil, nil, ErrUndecidable
			}
			a, ok := vals[1].(imapcodec.Atom)
			if !ok {
				return nil, nil, ErrUndecidable
			}
			t, err := c.set(string(a), true)
			return t, vals[2:], err
		case "MODSEQ":
			if !c.opts.ModSeq || len(vals) < 2 {
				return nil, nil, ErrUndecidable
			}
			n, ok := modSeq(vals[1])
			if !ok {
				// The entry-name form and bad numbers are
				// extensions/condstore's to answer.
				return nil, nil, ErrUndecidable
			}
			c.modseq, c.flags = true, true
			return constant(func(m *Message) bool { return m.ModSeq >= n }), vals[2:], nil
		}
		if imapcodec.IsSequenceSet(string(v)) {
			t, err := c.set(string(v), false)
			return t, vals[1:], err
		}
	}
	return nil, nil, ErrUndecidable
}

// flagTerm matches the messages with flag (set) or without it.
func flagTerm(flag string, set bool) term {
	return constant(func(m *Message) bool { return hasFlag(m.Flags, flag) == set })
}

// hasFlag reports whether flags has flag, in any case: flag names are
// case-insensitive (RFC 3501 2.3.2's system flags; Dovecot matches
// keywords so too, TestAgreesWithDovecot).
func hasFlag(flags []string, flag string) bool {
	for _, f := range flags {
		if strings.EqualFold(f, flag) {
			return true
		}
	}
	return false
}

// maxModSeq is the largest mod-sequence (RFC 7162 7: mod-sequence-valzer
// is below 2^63).
const maxModSeq = 1<<63 - 1

// modSeq reads MODSEQ's one argument, a number without leading zeros as
// extensions/condstore reads it.
func modSeq(v imapcodec.Value) (uint64, bool) {
	a, ok := v.(imapcodec.Atom)
	if !ok || len(a) > 1 && a[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(a), 10, 64)
	return n, err == nil && n <= maxModSeq
}

// set compiles a sequence set (uid false) or a UID set.
func (c *compiler) set(a string, uid bool) (term, error) {
	set, err := imapcodec.ParseNumSet(a)
	if err != nil {
		return nil, ErrUndecidable
	}
	dynamic := !uid || slices.ContainsFunc(set, func(r imap.SeqRange) bool { return r.Start == 0 || r.Stop == 0 })
	if dynamic && !c.opts.Numbers {
		return nil, ErrUndecidable
	}
	num := func(m *Message) uint32 { return m.UID }
	if !uid {
		num = func(m *Message) uint32 { return m.Seq }
	}
	if !dynamic {
		return constant(func(m *Message) bool { return set.Contains(num(m)) }), nil
	}
	return func(e env) pred {
		star := e.last
		if !uid {
			star = e.count
		}
		b := bind(set, star)
		return func(m *Message) bool { return b.Contains(num(m)) }
	}, nil
}

// bind resolves "*" in set to star, the view's last number: "5:*" is
// every number from 5 up to the last, and the last itself when it is below
// 5 (RFC 3501 6.4.8, 9: "*" is the largest number in use). With no
// message at all a set with "*" matches nothing.
func bind(set imap.SeqSet, star uint32) imap.SeqSet {
	var out imap.SeqSet
	for _, r := range set {
		a, z := r.Start, r.Stop
		if a == 0 {
			a = star
		}
		if z == 0 {
			z = star
		}
		if a > z {
			a, z = z, a
		}
		if a == 0 {
			if z == 0 {
				continue
			}
			a = 1
		}
		out.AddRange(a, z)
	}
	return out
}

func isAtom(v imapcodec.Value, s string) bool {
	a, ok := v.(imapcodec.Atom)
	return ok && strings.EqualFold(string(a), s)
}
