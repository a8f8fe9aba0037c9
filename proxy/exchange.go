package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// An Exchange is one client command on its way through the session: made
// when the command has been read, passed through the extensions' command
// chain (CommandHandler), the core's own handling or the relay, and the
// tagged answer; then dropped. Everything that concerns only the command in
// flight lives here, not on the Session: how its answers are translated,
// which flags its own answers told the client, the filters and tagged-answer
// hooks extensions added, their per-command data, and the outcome. The
// model is net/http's Request.
type Exchange struct {
	// Tag is the client's tag.
	Tag string
	// Name is the command name as the client sent it, upper case
	// ("FETCH", "UID STORE").
	Name string
	// Segments is the command as it goes upstream, the client's tag
	// included (the relay puts its own in its place). In the selected
	// state commands with sequence numbers are already in their UID form.
	// Handlers may replace it, except when Streamed.
	Segments []imapcodec.Segment

	s        *Session
	ctx      context.Context
	cmd      *imapcodec.Command // as the client sent it
	streamed bool
	// pipelined: the commands the client sent behind this one may go
	// upstream before its answers are relayed (ahead.go).
	pipelined bool
	// sentAhead: it went upstream before its turn (ahead.go), so the
	// changes reported before its answers may be newer than they are.
	sentAhead bool

	// xlate translates the upstream's answers in the selected state.
	xlate *translation
	// collect, when set, receives the untagged responses instead of the
	// client, and the tagged response is left to the caller (SELECT
	// rewrites them once its view is known).
	collect *[]*Response
	// seenFlags holds the flags the command's own answers told the client
	// (by UID), so the delivery after it does not repeat them.
	seenFlags map[uint32]string
	filters   []func(*Response) *Response
	onTagged  []func(*imapcodec.ResponseHead)
	// holdNext is what a filter asked (HoldResponse) for the response
	// being filtered; held are the responses kept for the tagged answer.
	holdNext func(*Response) *Response
	held     []heldResponse
	values   map[any]any
	status   string
	answered bool
	// peekN, peek and litSizes: what the relay of a streamed command
	// kept of its literals (PeekLiteral).
	peekN    int
	peek     []byte
	litSizes []int64
	// in, when set by Restream, is what the relay reads the command's
	// literals and later lines from instead of the client.
	in *imapcodec.Reader
	// statusSync is the round trip a STATUS asked for when it arrived
	// (statusSyncSoon).
	statusSync *earlySync
	// upstreamTagged: the tagged answer is the upstream's own to the
	// command the core relayed, whose untagged answers the core saw
	// (translation.needsSync).
	upstreamTagged bool
}

// newExchange makes the exchange of a command read (whole, or its first
// segment when streamed).
func (s *Session) newExchange(ctx context.Context, cmd *imapcodec.Command, streamed bool) *Exchange {
	s.examined = examinedView{}
	return &Exchange{Tag: cmd.Tag, Name: cmd.Name, Segments: cmd.Segments, s: s, ctx: ctx, cmd: cmd, streamed: streamed}
}

// Context returns the context the command runs in: it ends when the
// server shuts down.
func (x *Exchange) Context() context.Context { return x.ctx }

// Session returns the session the command came from.
func (x *Exchange) Session() *Session { return x.s }

// Command returns the command as the client sent it, parsed; its Args
// parser is positioned after the name. For a streamed command it holds the
// first line only.
func (x *Exchange) Command() *imapcodec.Command { return x.cmd }

// Streamed reports whether the command streams from the client to the
// upstream as it arrives (APPEND; commands no extension handles in the
// authenticated state): Segments then hold its first line only.
func (x *Exchange) Streamed() bool { return x.streamed }

// ReadWhole reads the rest of a streamed command (APPEND) into memory,
// each literal up to limit bytes (and the command within the APPEND
// limits), sending the continuation requests its synchronising literals
// need, for a handler that answers the command itself instead of
// streaming it upstream (BINARY's literal8 APPEND, whose message must be
// re-encoded for an upstream without BINARY). On success x.Segments hold
// the whole command and Streamed reports false; the handler must then
// answer it itself (Reply), never call next, which would stream it. ok
// false means a literal was over the limits and the client has been
// answered NO [TOOBIG]. A command already whole is left as it is.
func (x *Exchange) ReadWhole(limit int64) (ok bool, err error) {
	if !x.streamed {
		return true, nil
	}
	segs, ok, err := x.s.readRest(x.Tag, x.Name, x.Segments[0], limit)
	if err != nil || !ok {
		x.answered = x.answered || !ok
		return ok, err
	}
	x.Segments, x.streamed = segs, false
	return true, nil
}

// ReadStreamed reads the rest of a streamed command (APPEND) for a
// handler that answers it itself without holding its literals in memory:
// CATENATE's TEXT parts are spooled to a bounded file as they arrive. For
// each literal, in order, lit is called with the segments read so far (the
// last is the one the literal ends; its Text is the command's text since
// the literal before) and a reader of the literal's bytes. A synchronising
// literal is invited (the continuation request sent) only when lit first
// reads from r, so a handler that finds the command wrong in the text
// before it (a bad URL) refuses the command by returning an error without
// reading: the client then never sends the literal. What lit leaves unread
// is read and dropped.
//
// Each literal is checked against limit and the command's literals
// together against the APPEND limit (MaxCommandBytes) before lit is
// called; over them, the client is answered NO [TOOBIG] and ok is false.
// If lit returns an error, the rest of the command is read and dropped
// (or, while its literal is uninvited, never sent) and ReadStreamed
// returns ok false and that error: the handler answers the command (Reply)
// when the error is its own refusal, and returns any other error (the
// client's connection failed), which ends the session.
//
// On success x.Segments hold the command's text, each literal's header but
// no Data, and Streamed reports false. The handler must then answer the
// command itself (Reply) or make the command to send upstream (Restream);
// it must never pass on the command as it is. A command already whole is
// left as it is.
func (x *Exchange) ReadStreamed(limit int64, lit func(segs []imapcodec.Segment, r io.Reader) error) (ok bool, err error) {
	if !x.streamed {
		return true, nil
	}
	s := x.s
	first := x.Segments[0]
	first.Text = bytes.Clone(first.Text)
	segs := []imapcodec.Segment{first}
	total := len(first.Text)
	var litTotal int64
	for h := first.Literal; h != nil; {
		if why := s.literalTooBig(h, limit, s.commandBytes(x.Name), litTotal); why != "" {
			x.answered = true
			return false, s.refuseLiteral(x.Tag, h, why)
		}
		litTotal += h.Size
		s.renewLiteralDeadline()
		r := &invitingReader{s: s, invite: !h.NonSync}
		if err := lit(segs, r); err != nil {
			if r.invite {
				// Never invited: the client sends nothing more.
				s.r.CancelLiteral()
				return false, err
			}
			if _, derr := io.Copy(io.Discard, s.r.Literal()); derr != nil {
				return false, derr
			}
			_, next, derr := s.r.ReadLine()
			if derr == nil {
				derr = s.discardRest(next)
			}
			if derr != nil {
				return false, derr
			}
			return false, err
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return false, err
		}
		line, next, err := s.r.ReadLine()
		if err != nil {
			return false, err
		}
		total += len(line)
		if total > s.cfg.Limits.MaxLine {
			return false, fmt.Errorf("%w: command text", imapcodec.ErrLineTooLong)
		}
		seg := imapcodec.Segment{Text: bytes.Clone(line), Literal: next}
		if next != nil {
			seg.Text = seg.Text[:next.Start]
		}
		segs = append(segs, seg)
		h = next
	}
	x.Segments, x.streamed = segs, false
	return true, nil
}

// invitingReader reads a client's literal for ReadStreamed, sending the
// continuation request a synchronising literal needs before the first read.
type invitingReader struct {
	s      *Session
	invite bool
}

func (r *invitingReader) Read(p []byte) (int, error) {
	if r.invite {
		r.invite = false
		if err := r.s.Write([]byte("+ Ready for literal data\r\n")); err != nil {
			return 0, err
		}
		if err := r.s.Flush(); err != nil {
			return 0, err
		}
	}
	return r.s.r.Literal().Read(p)
}

// Restream sets the command the relay at the end of the chain sends
// upstream to one the handler made, after it read the client's command
// itself (ReadStreamed, ReadWhole): CATENATE sends the message it
// concatenated as one plain APPEND this way. first is the new command's
// first line up to its first literal, the client's tag in front (the
// relay puts its own in its place); rest is what follows that line on the
// wire: the literal's bytes, then the text up to the next literal header
// or the final CRLF, and so on. Every literal must be in the
// non-synchronising form ("{n+}"): nothing more is asked of the client,
// and the relay still waits for the upstream's continuation request where
// the upstream has no LITERAL+. The limits of a client's APPEND apply.
//
// Streamed then reports true again and the handler passes the exchange on
// (next): the handlers after it and the relay see an ordinary streamed
// command, so PeekLiteral, StreamedLiterals and the APPENDUID a later
// handler adds work on it.
func (x *Exchange) Restream(first imapcodec.Segment, rest io.Reader) {
	x.Segments = []imapcodec.Segment{first}
	x.streamed = true
	// The reader reads the first line too, so that it stands at the
	// first literal as the client's reader would.
	line := bytes.Clone(first.Text)
	if first.Literal != nil {
		line = first.Literal.Format(line)
	}
	line = append(line, '\r', '\n')
	x.in = imapcodec.NewReader(io.MultiReader(bytes.NewReader(line), rest), x.s.cfg.Limits)
	x.in.ReadLine() // cannot fail: the line is in memory and the client's first line was within the limits
}

// Reply answers the command with a tagged status response of the proxy's
// own, for a handler that does not pass the command on. As for every
// command, the selected mailbox's changes are reported first and the
// OnTagged hooks run.
func (x *Exchange) Reply(status, code, text string) error {
	return x.s.writeTagged(x, imapcodec.ResponseHead{Name: status, Code: code, Text: text})
}

// Filter adds a filter for the untagged responses relayed in answer to this
// command, run before the extensions' ResponseFilters. Filters run in the
// order added; each sees what the one before returned, and may return nil
// to drop the response (see ResponseFilter for streamed responses, and
// for how long a response's literal Data may be used).
func (x *Exchange) Filter(f func(*Response) *Response) { x.filters = append(x.filters, f) }

// HoldResponse, called by a filter of x (Filter) about the response it is
// filtering, keeps that response from the client until the upstream's
// tagged answer is in and the command's upstream connection given back:
// the response goes through the rest of the filters as any other, then
// waits (a copy: its literal Data may be used then), and just before the
// tagged response is written, before the OnTagged hooks, finish gets it
// and what it returns is written (nil: nothing). For a filter that must
// wait for something that may need the connection to complete a response
// (condstore's HIGHESTMODSEQ of a mailbox created again waits for the
// hub's resync, which under a full connection budget needs the very
// connection the command holds), as SELECT's wait for the hub gives its
// connection back first (beforeTagged). A response of a command whose
// answers are collected (SELECT's own), or streamed, is finished at once.
// A command that fails before its tagged answer drops what was held.
func (x *Exchange) HoldResponse(finish func(*Response) *Response) { x.holdNext = finish }

// heldResponse is a response kept by HoldResponse and its finish.
type heldResponse struct {
	resp   *Response
	finish func(*Response) *Response
}

// cloneResponse copies resp's segments and their literal data, which
// relayUntagged reads into buffers it reuses once the response is written.
func cloneResponse(resp *Response) *Response {
	c := &Response{Head: resp.Head, Streamed: resp.Streamed, Segments: make([]imapcodec.Segment, len(resp.Segments))}
	for i, seg := range resp.Segments {
		seg.Text = bytes.Clone(seg.Text)
		seg.Data = bytes.Clone(seg.Data)
		if seg.Literal != nil {
			lit := *seg.Literal
			seg.Literal = &lit
		}
		c.Segments[i] = seg
	}
	return c
}

// OnTagged adds a hook that may change the tagged response just before it
// is written, after the changes it follows have been reported to the
// client (QRESYNC's HIGHESTMODSEQ after EXPUNGE). Hooks run in the order
// added.
func (x *Exchange) OnTagged(f func(head *imapcodec.ResponseHead)) {
	x.onTagged = append(x.onTagged, f)
}

// PeekLiteral asks the relay of a streamed command (APPEND) to keep a copy
// of the first n bytes of its first literal as they pass to the upstream,
// for LiteralPeek: a synthesized APPENDUID tells the new message from
// others by its Message-ID, and the message itself is never held. n is
// capped at 64 KiB.
func (x *Exchange) PeekLiteral(n int) { x.peekN = min(n, 64<<10) }

// LiteralPeek returns what PeekLiteral kept, once the literal has passed
// (in the OnTagged hooks, or after next returned).
func (x *Exchange) LiteralPeek() []byte { return x.peek }

// StreamedLiterals returns the sizes of the literals the relay streamed
// for the command so far, in order (a MULTIAPPEND has several).
func (x *Exchange) StreamedLiterals() []int64 { return x.litSizes }

// peekWriter keeps the first bytes written to it up to the exchange's
// PeekLiteral limit and never fails, so that it can sit beside the
// upstream in an io.MultiWriter.
type peekWriter struct{ x *Exchange }

func (w peekWriter) Write(p []byte) (int, error) {
	if room := w.x.peekN - len(w.x.peek); room > 0 {
		w.x.peek = append(w.x.peek, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Value returns what an extension stored for this command under key.
func (x *Exchange) Value(key any) any { return x.values[key] }

// SetValue stores per-command data for an extension; use an unexported key
// type, as with context.Context.
func (x *Exchange) SetValue(key, v any) {
	if x.values == nil {
		x.values = map[any]any{}
	}
	x.values[key] = v
}

// Status returns the status of the tagged response sent ("OK", "NO",
// "BAD"), or "" if none was (the command failed without one, or it is
// still running).
func (x *Exchange) Status() string { return x.status }

// serveChain passes x through handlers from i on, then to last.
func (s *Session) serveChain(ctx context.Context, x *Exchange, hs []CommandHandler, i int, last Next) error {
	if i == len(hs) {
		return last(ctx, x)
	}
	return hs[i].ServeCommand(ctx, x, func(ctx context.Context, x *Exchange) error {
		return s.serveChain(ctx, x, hs, i+1, last)
	})
}

// filter runs the exchange's own filters.
func (x *Exchange) filter(resp *Response) *Response {
	for _, f := range x.filters {
		if resp = f(resp); resp == nil {
			return nil
		}
	}
	return resp
}

// noteFlags records the flags a FETCH answer told the client.
func (x *Exchange) noteFlags(uid uint32, flags string) {
	if x.seenFlags == nil {
		x.seenFlags = map[uint32]string{}
	}
	x.seenFlags[uid] = flags
}

// sawFlags tells whether x's own answers told the client that uid has
// flags (space-separated). A message they did not mention was not told
// anything, not even an empty list: looked up alone, the map's "" for a
// missing UID equals the flags of a message that has none, and a change
// to no flags was never reported (load's TestMixed).
func (x *Exchange) sawFlags(uid uint32, flags string) bool {
	if x == nil {
		return false
	}
	seen, ok := x.seenFlags[uid]
	return ok && seen == flags
}
