package proxy

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Commands sent upstream ahead of their turn (issue 20, bulk download).
//
// A client that downloads many messages sends a UID FETCH per message and
// does not wait for each answer before it sends the next (mbsync keeps
// about 25 in flight; RFC 3501 5.5 allows it). The core serves a client's
// commands one at a time: a command goes upstream once the previous one's
// answers have been relayed, so the upstream waited one round trip through
// the proxy between messages and woke up for each command on its own, and
// mbsync's download ran at 0.86x of its direct speed with the proxy on a
// CPU of its own (docs/benchmarks.md, "Bulk download").
//
// Now, once a command that may be pipelined has gone upstream, the
// commands that the client has already sent behind it and that may be
// pipelined too go upstream on the same connection at once, before the
// first one's answers are relayed: their extension chains run, and their
// final form is written; their answers are relayed later, in order, each
// when its turn comes (finishAhead), exactly as if it had been sent then.
//
// It assumes that the upstream answers a connection's commands in the
// order they were sent, as Dovecot, Cyrus and go-imap's server do (RFC
// 3501 5.5 lets a server run commands concurrently): with one that does
// not, an answer with an unexpected tag fails the batch (NO
// [UNAVAILABLE], the client retries), and fetch-ahead = 0 turns this off.
// The untagged answers need not be in order: Dovecot runs a batch's UID
// commands at once and sends the second one's answers before the first
// one's tagged OK. They are relayed as they come, each FETCH response
// renumbered by its UID, so the client gets every message whichever
// command's turn it came in; what depends on which command an untagged
// answer belongs to (a STORE's claims and silence, CONDSTORE's MODSEQ, the
// reports of others' changes that are not relayed) goes by the command in
// flight that names its message (whoseAnswer, reportsOnly).
//
// Which commands: UID FETCH and FETCH in the selected state, whole on its
// line (no literal), with no modifier (CHANGEDSINCE, VANISHED), none of
// whose items sets \Seen (no BODY[] without .PEEK), and UID STORE and
// STORE likewise (no UNCHANGEDSINCE), and EXPUNGE, over a watched mailbox
// that is not passive, and only if every handler of its chain says it may
// (PipelineSafe). An EXPUNGE is the last of a batch: nothing goes ahead
// behind it (the client's numbers after it count without its expunges).
// Its tagged answer waits for the hub's watcher when an expunge was
// reported while it was in flight (noteExpunged: a server that ran it
// beside the commands before it may report its expunges in their turns),
// after the connection is given back, nothing being ahead on it any more.
//
// The connection may have been caught up only with what the first
// command of the batch needed (catchup.go: upPartial); a command goes
// ahead on it only if what it needs is covered too (needFor, viewHas;
// an EXPUNGE, which relies on every message, never is).
// Under imaptest's stress a fifth of the commands start on such a lease,
// which used to stop the read-ahead at once.
//
// A FETCH or STORE by sequence numbers (issue 20: imaptest's stress and
// most clients' header downloads use them) is translated to UIDs when it
// goes upstream, through the client's view as it is then; the changes
// reported at the turns of the commands before it must not renumber that
// view. So it goes ahead only when its set is numbers alone, with no "*"
// or "$", whose messages grow with the EXISTS reported before its turn
// (fixedSeqSet), and only behind commands that let no EXPUNGE be reported
// at their turn, FETCHes and STOREs by sequence numbers themselves (RFC
// 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH); behind a UID
// command, which may report one, it waits for its turn (aheadOK). A UID
// STORE keeps "*" for its turn too: it means the client's last message as
// the command arrives (bindStar). Since the answers of commands in flight
// on one connection may come in any order, FETCHes in flight that name
// the same message agree on whether the UID item is shown (a command by
// sequence numbers that did not ask for it has it taken out), and a STORE goes ahead only
// when no command in flight names a message it names, nor a FETCH when a
// STORE in flight does: each of its answers is then known to be its own,
// and shown as its own; a STORE goes ahead beside a FETCH of the same
// messages that asks for more than flags (fetchBeside), but a FETCH
// behind a STORE .SILENT of its messages keeps its turn (aheadOK).
//
// Running such a command's chain before the previous command's answers
// are relayed is safe because a FETCH that changes nothing changes none of
// what the chain looks at (the client's view, the saved SEARCHRES result,
// the session's enabled extensions), and a STORE changes only flags,
// which the chain does not look at. Nothing is written to the client for
// it until its turn, but for its answers that come early: the changes
// reported before a command (deliver) are reported when its answers are
// relayed, except that a flag change of a message a STORE in flight names
// waits for that STORE's answers (selectedMailbox.owed), which tell it: the
// watcher may see the change first, and it is the session's own. A
// silent STORE's "before" (silentBefore) is what the client has been told
// when it goes upstream. A command that does not qualify stops the
// read-ahead and is served in its turn; APPEND and the rest always are
// (APPEND's literal is not read ahead).

// DefaultFetchAhead is Config.FetchAhead's default: how many commands a
// session may have sent upstream ahead of the one whose answers it relays.
// mbsync keeps about 25 FETCHes in flight, and all of them should reach
// the upstream: with 16, mbsync's download with the proxy on a vCPU of
// its own ran at 0.96-0.97x of the direct rate (means of medians), with
// 32 or 40 at 0.99-1.01x (docs/benchmarks.md, session 15). Each command
// ahead costs the session its parsed line until its turn.
const DefaultFetchAhead = 32

// plainClient reports whether the client's connection is plain TCP, with
// no TLS or COMPRESS over it, and one whose socket can be looked at
// (idleConn).
func (s *Session) plainClient() bool {
	if s.idle == nil {
		return false
	}
	_, plain := s.tr.(connTransport)
	return plain
}

// PipelineSafe is implemented by a CommandHandler whose handling of some
// commands may run before the previous command's answers are relayed.
//
// PipelineSafe(x) reports that serving x will only restate it
// (x.Segments), add filters and OnTagged hooks, and pass it on with next,
// with nothing done after next returns, and nothing written to the client
// and no upstream command of its own on the way. next returns as soon as
// the command is written upstream; its answers, the filters and hooks come
// later. A handler that does not implement it (or says false) keeps its
// command in its turn. The core asks only for the commands that may be
// pipelined (see above), after the command is in its UID form. Hooks that
// run later (OnTagged, reports of changes) may still run commands of
// their own: while commands are ahead on the session's connection, those
// go to another one (besideAhead).
type PipelineSafe interface {
	PipelineSafe(x *Exchange) bool
}

// aheadCmd is a command sent upstream before its turn: its exchange, whose
// chain has run, and the upstream tag of its answers.
type aheadCmd struct {
	x     *Exchange
	upTag string
}

// pipelinable reports whether cmd is a command that may go upstream before
// its turn (see above), before the chain is asked.
func (s *Session) pipelinable(cmd *imapcodec.Command) bool {
	want, ok := aheadArgs[cmd.Name]
	if !ok || s.cfg.FetchAhead <= 0 || s.state != StateSelected || s.mbox == nil ||
		len(cmd.Segments) != 1 || cmd.Segments[0].Literal != nil {
		return false
	}
	if strings.HasSuffix(cmd.Name, "FETCH") && !s.mbox.readOnly && fetchSetsSeen(cmd) {
		return false
	}
	if s.mbox.sub.Passive() {
		return false // brought up to date before each command (dispatch)
	}
	vals, err := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{}).Values()
	return err == nil && len(vals) == want
}

// aheadArgs are the commands that may be pipelined, each with the number
// of values on its line with no modifiers: "tag FETCH set items", "tag UID
// STORE set item flags".
var aheadArgs = map[string]int{"FETCH": 4, "UID FETCH": 5, "STORE": 5, "UID STORE": 6, "EXPUNGE": 2}

// aheadOK reports whether x, a command that may be pipelined (and in its
// upstream form), may go upstream behind head, the command whose turn it
// is, and the commands already ahead (see above): a UID FETCH or UID
// STORE always, a FETCH or STORE by sequence numbers only when none of
// them lets an EXPUNGE be reported at its turn; a FETCH only as one that
// shows the UID item as each FETCH among them that names a message it
// names does (whoseAnswer gives an answer about a message two FETCHes
// name to the first); and a STORE only when
// no command among them names a message it names, nor a FETCH one that a
// STORE among them names: each answer about such a message is then known
// to be the STORE's (whoseAnswer), and shown as the STORE's. A FETCH
// behind a STORE .SILENT of one of its messages keeps its turn (below).
//
// Why a FETCH does not go upstream behind a STORE .SILENT in flight that
// names one of its messages, whatever items it asks:
// The client, which sent the STORE first, is to be shown the flags the
// STORE set, and is shown nothing of them but by the FETCH. Dovecot runs
// the two at once and often answers the FETCH first (for half the
// messages of TestSilentStoreThenFetchPipelined's batch). Read before
// the STORE's answer, the FETCH's answer is either older than the STORE
// (made before it ran) or newer than anything the state has, and then
// toldOverAhead shows the state's older flags in its place; either way
// the client was shown the flags as before its STORE, and the STORE's
// answer, silent and what the client expects (silentStoreKnown), was
// taken as told: nothing told it otherwise, and it kept the older flags.
// Deciding in the answers instead would mean holding back a FETCH's
// answer until the STORE's is read; keeping the FETCH in its turn costs
// one round trip only for such a pair. A STORE that is not silent shows
// its answer after such a FETCH's, and a FETCH before a STORE .SILENT
// may show the flags as before it, so those go ahead together.
func (s *Session) aheadOK(head, x *Exchange) bool {
	for _, a := range slices.Concat([]aheadCmd{{x: head}}, s.ahead) {
		t := a.x.xlate
		if t == nil || a.x.Name == "EXPUNGE" {
			return false
		}
		if x.Name == "EXPUNGE" {
			continue
		}
		if t.store == nil && x.xlate.store == nil && t.stripUID != x.xlate.stripUID && t.named.overlaps(x.xlate.named) {
			return false // two FETCHes whose answers about a message cannot be told apart
		}
		if x.xlate.fromName != "" && t.allowExpunge {
			return false
		}
		switch a, b := t.store != nil, x.xlate.store != nil; {
		case a && b, a && t.silent, a != b && !fetchBeside(t, x.xlate):
			if t.named.overlaps(x.xlate.named) {
				return false
			}
		}
	}
	return true
}

// fetchBeside reports whether, of a and b, a FETCH and a STORE, the
// FETCH's answers always hold an item besides UID, FLAGS and MODSEQ, so
// that the two may name the same messages: the STORE's answers have
// nothing else (whoseAnswer).
func fetchBeside(a, b *translation) bool {
	if a.store != nil {
		a = b
	}
	return a.answersBeyondFlags()
}

// fixedSeqSet reports whether the set of a FETCH by sequence numbers
// names the same messages whenever it is translated while no EXPUNGE is
// reported: numbers only. "*" is the largest number in use when the
// command runs, and "$" (RFC 5182, replaced by esearch) may name messages
// the client has not been told of yet; the changes reported before its
// turn ("* 4 EXISTS" before the previous command's OK) make both name
// more, so such a FETCH is translated in its turn. cmd is the command as
// the client sent it, before any CommandRewriter.
func fixedSeqSet(cmd *imapcodec.Command) bool {
	set, _, err := firstSet(cmd)
	if err != nil {
		return false // "$"
	}
	seqs, err := imapcodec.ParseNumSet(set)
	return err == nil && !seqs.Dynamic()
}

// besideAhead runs fn on another upstream connection than the session's,
// which carries commands sent ahead whose answers are not read yet: an
// extension's own command (Session.Exec from a hook or a report of
// changes: an updating search's refresh) would read their answers as its
// own. The session's connection and its commands are set aside meanwhile,
// and the other connection goes back to the pool after fn. Whether the
// session's connection is caught up only partly (upPartial) is set aside
// with it: the other one's lease and release reset it, and the commands
// still to go ahead on the session's connection rely on it (sendAhead).
func (s *Session) besideAhead(ctx context.Context, restore bool, fn func(*upstream.Conn) (*upstream.Response, error)) (*upstream.Response, error) {
	busy, ahead, partial := s.up, s.ahead, s.upPartial
	s.up, s.ahead, s.upPartial = nil, nil, false
	defer func() {
		s.release()
		s.up, s.ahead, s.upPartial = busy, ahead, partial
		s.leased.Store(busy != nil)
	}()
	up, err := s.lease(ctx, restore, nil)
	if err != nil {
		return nil, err
	}
	return fn(up)
}

// chainPipelineSafe asks x's handlers whether it may go upstream before its
// turn.
func (s *Session) chainPipelineSafe(x *Exchange) bool {
	for _, h := range s.srv.chain[x.Name] {
		p, ok := h.(PipelineSafe)
		if !ok || !p.PipelineSafe(x) {
			return false
		}
	}
	return true
}

// sendAhead sends upstream, on up, the commands the client has sent behind
// head, the one just sent there, as long as they may be pipelined and are
// whole in the reader's buffer or in the socket (it never waits for the
// client). It is called only when head may be pipelined itself.
func (s *Session) sendAhead(ctx context.Context, up *upstream.Conn, head *Exchange) {
	for len(s.ahead) < s.cfg.FetchAhead && !up.Broken() {
		peeked, ok := s.r.PeekLine()
		if !ok && s.plainClient() && s.idle.hasInput() {
			// The rest of the client's batch is in the socket: read
			// it, which does not wait (plain TCP only: under TLS or
			// COMPRESS the socket may hold part of a record, and the
			// read would wait for the rest).
			s.r.Fill()
			peeked, ok = s.r.PeekLine()
		}
		if !ok {
			return
		}
		line := bytes.Clone(peeked)
		cmd, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: line}}, s.cfg.Limits)
		if err != nil || !s.pipelinable(cmd) || cmd.Name != "UID FETCH" && cmd.Name != "EXPUNGE" && !fixedSeqSet(cmd) {
			return
		}
		// Everything that could refuse the command is done before it is
		// taken from the reader: a refusal is answered in its turn.
		x := s.newExchange(ctx, cmd, false)
		if len(s.srv.rewriters) > 0 && s.rewriteCommand(x) != nil {
			return
		}
		if s.translateCommand(x) != nil || strings.HasSuffix(x.Name, "STORE") && x.xlate.store == nil ||
			!s.aheadOK(head, x) || !s.chainPipelineSafe(x) {
			return
		}
		if s.upPartial {
			// The connection was caught up only with what the first
			// command needed (catchup.go): one that needs more (or
			// everything: an EXPUNGE) waits for its turn. The need is
			// read from the form translated for upstream, before the
			// chain: a PipelineSafe handler restates a FETCH's items at
			// most (binary), never its set.
			if need := s.needFor(x); need == nil || !s.viewHas(up, need) {
				return
			}
		}
		if x.xlate.silent {
			// As dispatch does after the delivery before a command:
			// here, what the client has been told so far.
			s.silentBefore(x.xlate)
		}
		x.xlate.sentMark = s.mbox.state.HighestModSeq() // staleStoreAnswer
		got, lit, err := s.r.ReadLine()
		if err != nil || lit != nil || !bytes.Equal(got, line) {
			// The buffered line was just seen whole: cannot happen.
			// The command is answered in its turn all the same.
			s.log.Error("pipelined command changed in the reader's buffer", "err", err)
			s.ahead = append(s.ahead, aheadCmd{x: x})
			return
		}
		n := len(s.ahead)
		if err := s.serveChain(ctx, x, s.srv.chain[x.Name], 0, s.writeAhead(up)); err != nil || len(s.ahead) != n+1 {
			// A handler broke its PipelineSafe promise: the command
			// failed, or was answered, out of its turn. One not
			// answered is answered in its turn.
			s.log.Error("a pipelined command was not passed on", "command", x.Name, "err", err)
			if len(s.ahead) == n && !x.answered {
				s.ahead = append(s.ahead, aheadCmd{x: x})
			}
			return
		}
	}
}

// storeAheadNames reports whether a STORE sent ahead of its turn, whose
// answers are not read yet, names uid (deliver holds back its flag
// changes: selectedMailbox.owed).
func (s *Session) storeAheadNames(uid uint32) bool {
	for _, a := range s.ahead {
		if t := a.x.xlate; a.upTag != "" && t != nil && t.store != nil && t.named.has(uid) {
			return true
		}
	}
	return false
}

// writeAhead is the end of a pipelined command's chain: the command is
// written upstream and its answers wait for its turn (finishAhead).
func (s *Session) writeAhead(up *upstream.Conn) Next {
	return func(ctx context.Context, x *Exchange) error {
		upTag := up.NextTag()
		w := up.Writer()
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		w.WriteString(upTag)
		w.Write(x.Segments[0].Text[len(x.Tag):])
		w.WriteString("\r\n")
		if err := w.Flush(); err != nil {
			up.MarkBroken() // its turn answers it (finishAhead)
		} else {
			s.srv.counters.ahead.Add(1)
		}
		x.sentAhead = true
		s.ahead = append(s.ahead, aheadCmd{x: x, upTag: upTag})
		return nil
	}
}

// finishAhead relays the answers of the first command sent ahead, in its
// turn: the changes the client may be told before it, more commands sent
// ahead behind it, then its answers and its tagged response.
func (s *Session) finishAhead() error {
	a := s.ahead[0]
	x := a.x
	up := s.up
	if a.upTag == "" || up == nil || up.Broken() {
		s.ahead = slices.Delete(s.ahead, 0, 1)
		if len(s.ahead) == 0 {
			s.release()
		}
		if a.upTag == "" {
			// Never sent (sendAhead's cannot-happen paths, logged there).
			return s.WriteStatus(x.Tag, "NO", "SERVERBUG", "The command could not be relayed; try again.")
		}
		// The connection failed under an earlier command; this one's
		// answer is lost with it.
		s.srv.countError(ErrUpstreamUnavailable)
		return s.WriteStatus(x.Tag, "NO", "UNAVAILABLE", "Lost the connection to the upstream server.")
	}
	// What changed meanwhile is reported now, as dispatch does before a
	// command. (A mailbox that went passive since the command went
	// upstream is not brought up to date first, nor is a message added
	// since in its answer: both are reported by the next command, as
	// they would be had the change come a moment later.)
	//
	// The command stays in s.ahead until then: its answers wait unread
	// on up, so a command of an extension's own that the delivery runs
	// (a BatchDone hook's Exec: an updating search's refresh) goes to
	// another connection (besideAhead) instead of reading them.
	if _, err := s.deliver(x, x.xlate.allowExpunge); err != nil {
		return err
	}
	s.ahead = slices.Delete(s.ahead, 0, 1)
	s.sendAhead(x.ctx, up, x)
	if _, err := s.relayResponses(x, up, a.upTag); err != nil {
		if err := s.relayFailed(x.Tag, err); err != nil {
			return err
		}
	}
	if len(s.ahead) == 0 {
		s.release()
	}
	return nil
}
