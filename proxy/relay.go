package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// errClientStream means the client's response stream was cut in the middle
// of a response; nothing more can be said to the client.
var errClientStream = errors.New("response to the client cut short")

// upstreamError wraps a failure of the upstream connection during a relay.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// relay forwards a command the core does not interpret, streaming it from
// the client to the upstream as it arrives: a 50 MB APPEND passes through
// without being held in memory. The client's tag is replaced by one of the
// upstream connection's own, and restored on the tagged response.
func (s *Session) relay(ctx context.Context, x *Exchange) error {
	cmd, first := x.cmd, x.Segments[0]
	// in is where the command's literals and later lines come from: the
	// client, or the command a handler made (Exchange.Restream), whose
	// literals are never invited from the client.
	in, own := s.r, x.in != nil
	if own {
		in = x.in
		defer in.Release()
	}
	limit := s.cfg.Limits.MaxInlineLiteral
	if cmd.Name == "APPEND" {
		limit = s.cfg.MaxAppendLiteral
	}
	if lit := first.Literal; lit != nil {
		if why := s.literalTooBig(lit, limit, s.commandBytes(cmd.Name), 0); why != "" {
			return s.refuseLiteralFrom(in, cmd.Tag, lit, why)
		}
	}
	// In the authenticated state a pooled connection may keep another
	// session's mailbox selected: LIST, STATUS, CREATE, APPEND and the like
	// do not care, and its unsolicited mailbox data is dropped (see
	// filterResponse). Re-selecting it later would cost far more. Only
	// DELETE and RENAME, which may hit that very mailbox, unselect first.
	restore := s.state != StateAuthenticated || cmd.Name == "DELETE" || cmd.Name == "RENAME"
	up, err := s.leaseCaughtUp(ctx, restore, x)
	if err != nil {
		if err := s.discardFrom(in, first.Literal); err != nil {
			return err
		}
		return s.upstreamUnavailable(cmd.Tag, err)
	}
	upTag := up.NextTag()
	if !s.fitsUpstreamLine(len(upTag)+len(first.Text)-len(cmd.Tag), first.Literal) {
		// The proxy's tag is longer than the client's: the line that fit
		// the client's limit does not fit the upstream's.
		s.release()
		if err := s.discardFrom(in, first.Literal); err != nil {
			return err
		}
		return s.refuseTooLong(x)
	}
	w := up.Writer()
	pending := append([]byte(upTag), first.Text[len(cmd.Tag):]...)
	// litTotal counts the command's literals for commandBytes: every
	// message of a MULTIAPPEND, every part of a CATENATE.
	var litTotal int64
	for lit := first.Literal; lit != nil; {
		if why := s.literalTooBig(lit, limit, s.commandBytes(cmd.Name), litTotal); why != "" {
			// Part of the command is already upstream and cannot be
			// withdrawn: give up that connection.
			up.MarkBroken()
			if err := s.refuseLiteralFrom(in, cmd.Tag, lit, why); err != nil {
				return err
			}
			return s.afterUpstreamLoss()
		}
		litTotal += lit.Size
		// A synchronising literal stays synchronising upstream and the
		// client gets the upstream's own continuation request (or its
		// refusal), exactly as with a direct connection. A
		// non-synchronising one goes so only in an APPEND
		// (upstreamNonSync).
		caps := up.Caps()
		nonSync := lit.NonSync && upstreamNonSync(cmd.Name, caps, lit) && appendArgsPlain(pending, lit == first.Literal)
		pending = imapcodec.LiteralHeader{Size: lit.Size, NonSync: nonSync, Binary: lit.Binary}.Format(pending)
		pending = append(pending, '\r', '\n')
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		w.Write(pending)
		pending = pending[:0]
		if !nonSync {
			if err := w.Flush(); err != nil {
				return s.abandonUninvited(in, cmd.Tag, lit, err)
			}
			head, accepted, err := s.awaitContinuation(x, up, upTag)
			if accepted && !lit.NonSync && !own {
				s.Write(continuationLine(head))
			}
			if err != nil {
				return s.abandonUninvited(in, cmd.Tag, lit, err)
			}
			if !accepted {
				// The upstream refused the command before its literal:
				// pass its answer on. A synchronising client literal was
				// never invited, so there is nothing more to read.
				if err := s.discardFrom(in, lit); err != nil {
					return err
				}
				x.upstreamTagged = true
				s.writeTagged(x, head)
				s.release()
				return nil
			}
		}
		if !lit.NonSync && !own {
			if err := s.Flush(); err != nil {
				up.MarkBroken()
				return err
			}
		}
		s.renewLiteralDeadline()
		var dst io.Writer = deadlineWriter{w, up, s.srv.cfg.Upstream.Timeout}
		if x.peekN > 0 && len(x.litSizes) == 0 {
			dst = io.MultiWriter(dst, peekWriter{x})
		}
		x.litSizes = append(x.litSizes, lit.Size)
		if _, err := copyLiteral(dst, in.Literal()); err != nil {
			if in.LiteralRemaining() > 0 && !isWriteErr(err) {
				// The client went away mid-literal; the upstream is left
				// mid-command and cannot be reused.
				up.MarkBroken()
				s.release()
				return fmt.Errorf("client cut a literal short: %w", err)
			}
			return s.abandonCommand(in, cmd.Tag, lit, err)
		}
		line, next, err := in.ReadLine()
		if err != nil {
			up.MarkBroken()
			s.release()
			return err
		}
		if next != nil {
			line = line[:next.Start]
		}
		pending = append(pending, line...)
		lit = next
	}
	pending = append(pending, '\r', '\n')
	up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
	w.Write(pending)
	if err := w.Flush(); err != nil {
		return s.upstreamFailed(cmd.Tag, err)
	}
	if _, err := s.relayResponses(x, up, upTag); err != nil {
		return s.relayFailed(cmd.Tag, err)
	}
	s.release()
	return nil
}

// continuationLine is the client's copy of an upstream continuation request.
func continuationLine(head imapcodec.ResponseHead) []byte {
	if head.Text == "" {
		return []byte("+ \r\n")
	}
	return []byte("+ " + head.Text + "\r\n")
}

// isWriteErr tells errors writing to the upstream from errors reading the
// client during a literal copy.
func isWriteErr(err error) bool {
	var we *writeError
	return errors.As(err, &we)
}

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// deadlineWriter writes to the upstream, renewing its deadline per write so
// a slow but moving client literal never times out, and marks write errors.
type deadlineWriter struct {
	w       *bufio.Writer
	up      *upstream.Conn
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.up.SetDeadline(time.Now().Add(d.timeout))
	n, err := d.w.Write(p)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

// abandonCommand handles an upstream failure in the middle of sending a
// command: the client's rest of the command is read from in and dropped
// (so the client stays in step), and the client is told the upstream is
// gone.
func (s *Session) abandonCommand(in *imapcodec.Reader, tag string, lit *imapcodec.LiteralHeader, cause error) error {
	if s.up != nil {
		s.up.MarkBroken()
	}
	if lit != nil && (lit.NonSync || in.LiteralRemaining() < lit.Size) {
		// The client is sending the literal: take it and the rest.
		if _, err := io.Copy(io.Discard, in.Literal()); err != nil {
			return err
		}
		_, next, err := in.ReadLine()
		if err != nil {
			return err
		}
		if err := s.discardFrom(in, next); err != nil {
			return err
		}
	}
	return s.upstreamFailed(tag, cause)
}

// abandonUninvited is abandonCommand for an upstream failure before the
// upstream invited the literal. A client that announced a synchronising
// literal has not been invited either and will not send it: the reader
// must forget it, or it would take the client's next command for the
// literal's bytes and the session would hang (proxy/faults_test.go
// TestFaultUpstreamCutDuringAppend). A non-synchronising literal is on its
// way and is read and dropped as usual.
func (s *Session) abandonUninvited(in *imapcodec.Reader, tag string, lit *imapcodec.LiteralHeader, cause error) error {
	if lit.NonSync {
		return s.abandonCommand(in, tag, lit, cause)
	}
	in.CancelLiteral()
	return s.upstreamFailed(tag, cause)
}

// awaitContinuation reads upstream responses until the continuation request
// for a synchronising literal (accepted) or the command's tagged response
// (refused), relaying untagged responses meanwhile.
func (s *Session) awaitContinuation(x *Exchange, up *upstream.Conn, upTag string) (imapcodec.ResponseHead, bool, error) {
	r := up.Reader()
	for {
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		line, lit, err := r.ReadLine()
		if err != nil {
			up.MarkBroken()
			return imapcodec.ResponseHead{}, false, &upstreamError{err}
		}
		head, err := imapcodec.ParseResponseHead(line)
		if err != nil {
			up.MarkBroken()
			return head, false, &upstreamError{err}
		}
		switch head.Tag {
		case "+":
			return head, true, nil
		case upTag:
			return head, false, nil
		case "*":
			if err := s.relayUntagged(x, up, line, lit, head); err != nil {
				return head, false, err
			}
		default:
			up.MarkBroken()
			return head, false, &upstreamError{fmt.Errorf("unexpected tag %q", head.Tag)}
		}
	}
}

// relayWhole relays a command held whole in memory and answers from the
// upstream's responses: the end of the command chain for every command
// the core relays without streaming it.
func (s *Session) relayWhole(ctx context.Context, x *Exchange) error {
	up, err := s.leaseCaughtUp(ctx, s.state != StateAuthenticated || x.Name == "DELETE" || x.Name == "RENAME", x)
	if err != nil {
		return s.upstreamUnavailable(x.Tag, err)
	}
	if _, err := s.relayCommand(up, x); err != nil {
		return err
	}
	s.release()
	return nil
}

// relayCommand sends a command held in memory (x.Segments, the client's tag
// replaced) and relays the responses. It returns the head of the tagged
// response. Failures are answered to the client; the error is non-nil only
// when the session must end.
func (s *Session) relayCommand(up *upstream.Conn, x *Exchange) (imapcodec.ResponseHead, error) {
	tag, segs := x.Tag, x.Segments
	if !oneLineEach(segs) {
		// A rewriter wrote a literal into a line (a value read from
		// the client's literal, written back as {n}CRLF...): sent so,
		// its data would reach the upstream as commands of their own.
		s.log.Warn("refusing a command whose rewritten form holds a line break", "command", x.Name)
		x.answered, x.status = true, "BAD"
		return imapcodec.ResponseHead{}, s.WriteStatus(tag, "BAD", "", "Error in IMAP command "+x.Name+": a literal is not supported there.")
	}
	upTag := up.NextTag()
	for i, seg := range segs {
		n := len(seg.Text)
		if i == 0 {
			n += len(upTag) - len(tag)
		}
		if !s.fitsUpstreamLine(n, seg.Literal) {
			return imapcodec.ResponseHead{}, s.refuseTooLong(x)
		}
	}
	w := up.Writer()
	up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
	w.WriteString(upTag)
	for i, seg := range segs {
		text := seg.Text
		if i == 0 {
			text = text[len(tag):]
		}
		w.Write(text)
		if seg.Literal == nil {
			break
		}
		caps := up.Caps()
		nonSync := upstreamNonSync(x.Name, caps, seg.Literal) && appendArgsPlain(seg.Text, i == 0)
		w.Write(imapcodec.LiteralHeader{Size: seg.Literal.Size, NonSync: nonSync, Binary: seg.Literal.Binary}.Format(nil))
		w.WriteString("\r\n")
		if !nonSync {
			if err := w.Flush(); err != nil {
				return imapcodec.ResponseHead{}, s.upstreamFailed(tag, err)
			}
			head, ok, err := s.awaitContinuation(x, up, upTag)
			if err != nil {
				return head, s.relayFailed(tag, err)
			}
			if !ok {
				x.upstreamTagged = true
				s.writeTagged(x, head)
				return head, nil
			}
		}
		w.Write(seg.Data)
	}
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		return imapcodec.ResponseHead{}, s.upstreamFailed(tag, err)
	}
	if x.pipelined {
		s.sendAhead(x.ctx, up, x)
	}
	head, err := s.relayResponses(x, up, upTag)
	if err != nil {
		return head, s.relayFailed(tag, err)
	}
	return head, nil
}

// fitsUpstreamLine reports whether a command line of n bytes, followed by
// the header of lit (nil for none), fits the upstream's line limit, taken
// to be the proxy's own (Limits.MaxLine; Dovecot's imap_max_line_length is
// 64 KiB too). A line the proxy made longer than the client's (the
// proxy's own tag, a sequence set written as UIDs, "UID " before the
// command's name) may not. Dovecot answers a line that is too long with
// BAD and skips it up to its CRLF: a non-synchronising literal sent after
// it is then read as commands of their own (a client's data would run
// upstream as commands the proxy never saw), so such a line is never sent.
func (s *Session) fitsUpstreamLine(n int, lit *imapcodec.LiteralHeader) bool {
	if lit != nil {
		n += len(imapcodec.LiteralHeader{Size: lit.Size, NonSync: true, Binary: lit.Binary}.Format(nil))
	}
	return n <= s.cfg.Limits.MaxLine
}

// appendArgsPlain reports whether text, an APPEND's text before one of
// its literals (from the tag when first, else from the literal before),
// is of a form Dovecot surely takes: the mailbox (or nothing, the literal
// being the mailbox), then an optional list of system flags and plain
// keywords and an optional date-time of this era, as a message's
// arguments. Dovecot refuses bad arguments of a message (an invalid
// internal date, a flag it does not know) with BAD before reading the
// literal, skips the rest of the line, and reads the message's data as
// commands; a literal after any other text goes upstream synchronising
// (upstreamNonSync), a round trip that only an odd APPEND pays.
func appendArgsPlain(text []byte, first bool) bool {
	p := imapcodec.NewParser([]imapcodec.Segment{{Text: text}}, imapcodec.Limits{})
	if first {
		if _, err := p.Atom(); err != nil || p.SP() != nil {
			return false
		}
		if name, err := p.Atom(); err != nil || !strings.EqualFold(name, "APPEND") || p.SP() != nil {
			return false
		}
		if p.AtEnd() {
			return true // the literal is the mailbox's name
		}
		if _, err := p.AString(); err != nil {
			return false
		}
	}
	if p.SP() != nil {
		return false
	}
	if c, ok := p.Peek(); ok && c == '(' {
		v, err := p.Value()
		flags, isList := v.(imapcodec.List)
		if err != nil || !isList || p.SP() != nil {
			return false
		}
		for _, f := range flags {
			if a, ok := f.(imapcodec.Atom); !ok || !plainFlag(string(a)) {
				return false
			}
		}
	}
	if c, ok := p.Peek(); ok && c == '"' {
		v, err := p.Value()
		date, isString := v.(imapcodec.String)
		if err != nil || !isString || !plainDate(string(date.Data)) || p.SP() != nil {
			return false
		}
	}
	return p.AtEnd()
}

// plainFlag: a system flag an APPEND may set, or a keyword of letters,
// digits and $_.- up to Dovecot's default mail_max_keyword_length (50).
func plainFlag(f string) bool {
	switch strings.ToLower(f) {
	case `\seen`, `\answered`, `\flagged`, `\deleted`, `\draft`:
		return true
	}
	if f == "" || len(f) > 50 {
		return false
	}
	for _, c := range []byte(f) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("$_.-", c) >= 0) {
			return false
		}
	}
	return true
}

// plainDate: a date-time (RFC 3501) of the years 1980 to 2099 with a zone
// within 14 hours.
func plainDate(d string) bool {
	for _, layout := range []string{"_2-Jan-2006 15:04:05 -0700", "02-Jan-2006 15:04:05 -0700"} {
		t, err := time.Parse(layout, d)
		if err != nil || len(d) != 26 {
			continue
		}
		_, off := t.Zone()
		return t.Year() >= 1980 && t.Year() <= 2099 && off >= -14*3600 && off <= 14*3600
	}
	return false
}

// upstreamNonSync reports whether a literal of the command named name
// may go upstream non-synchronising (RFC 7888), the upstream's
// capabilities caps allowing: only an APPEND's. A server that answers a
// command before it has read the whole line (Dovecot: an unknown command,
// arguments it does not take, such as anything after SUBSCRIBE's name or
// LIST's pattern, a command grown past imap_max_line_length with the
// literals before) skips the rest of the line, and reads the data of a
// non-synchronising literal at its end as commands: commands the proxy
// never saw, on a connection it then lends to other sessions of the
// account, whose commands meet their answers (and may run in a mailbox
// they selected). Synchronising, the literal waits for the upstream's
// continuation request; the answer comes instead and is the client's, and
// nothing more is sent. Dovecot reads an APPEND's messages whatever the
// answer, but for one whose arguments it refuses (appendArgsPlain, which
// the caller asks too); an APPEND's messages are its bulk, and a round
// trip for each would cost every client.
func upstreamNonSync(name string, caps upstream.Caps, lit *imapcodec.LiteralHeader) bool {
	return name == "APPEND" && (caps.Has("LITERAL+") || caps.Has("LITERAL-") && lit.Size <= 4096)
}

// refuseTooLong answers a command whose line, as the proxy would send it,
// does not fit the upstream's line limit (fitsUpstreamLine).
func (s *Session) refuseTooLong(x *Exchange) error {
	s.log.Debug("refusing a command too long for the upstream once rewritten", "command", x.Name)
	x.answered, x.status = true, "BAD"
	return s.WriteStatus(x.Tag, "BAD", "LIMIT", "Error in IMAP command "+x.Name+": the command line is too long once the proxy has written it for the upstream (by UID); use a shorter one.")
}

// oneLineEach reports whether no segment's text holds CR or LF: a
// segment is one line, its literal apart.
func oneLineEach(segs []imapcodec.Segment) bool {
	for _, seg := range segs {
		if bytes.ContainsAny(seg.Text, "\r\n") {
			return false
		}
	}
	return true
}

// relayResponses relays upstream responses to the client until the tagged
// response for upTag, which is passed on under the client's tag.
func (s *Session) relayResponses(x *Exchange, up *upstream.Conn, upTag string) (imapcodec.ResponseHead, error) {
	head, err := s.readResponses(x, up, upTag, nil)
	if err != nil {
		return head, err
	}
	x.upstreamTagged = true
	return head, s.writeTagged(x, head)
}

// readResponses relays the upstream's untagged responses to the client
// until the tagged response for upTag, which it returns without writing
// it. Each continuation request ("+") is passed to onContinue (an error
// from it stops the relay; nil onContinue makes one an upstream failure).
// On failure the upstream connection is marked broken. Responses are
// flushed to the client whenever the upstream has nothing more buffered.
func (s *Session) readResponses(x *Exchange, up *upstream.Conn, upTag string, onContinue func() error) (imapcodec.ResponseHead, error) {
	r := up.Reader()
	for {
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		line, lit, err := r.ReadLine()
		if err != nil {
			up.MarkBroken()
			return imapcodec.ResponseHead{}, &upstreamError{err}
		}
		head, err := imapcodec.ParseResponseHead(line)
		if err != nil {
			up.MarkBroken()
			return head, &upstreamError{fmt.Errorf("unparsable response: %w", err)}
		}
		switch head.Tag {
		case upTag:
			up.Seen()
			if lit != nil {
				up.MarkBroken()
				return head, &upstreamError{errors.New("literal in a tagged response")}
			}
			return head, nil
		case "+":
			if onContinue == nil {
				up.MarkBroken()
				return head, &upstreamError{errors.New("unexpected continuation request")}
			}
			if err := onContinue(); err != nil {
				return head, err
			}
		case "*":
			if err := s.relayUntagged(x, up, line, lit, head); err != nil {
				return head, err
			}
			if r.Buffered() == 0 {
				if err := s.Flush(); err != nil {
					return head, &writeError{err}
				}
			}
		default:
			up.MarkBroken()
			return head, &upstreamError{fmt.Errorf("unexpected response tag %q", truncate(head.Tag))}
		}
	}
}

// writeTagged writes the tagged response of x: the upstream's, or the
// proxy's own (Exchange.Reply), under the client's tag, after the changes
// the protocol lets the client hear of at this point and the OnTagged
// hooks.
func (s *Session) writeTagged(x *Exchange, head imapcodec.ResponseHead) error {
	if x.collect != nil {
		return nil // the caller (SELECT) writes the answer itself
	}
	if x.answered {
		return nil
	}
	x.answered = true
	x.status = head.Name
	if err := s.finishHeld(x); err != nil {
		return err
	}
	if err := s.beforeTagged(x, head); err != nil {
		return err
	}
	if t := x.xlate; t != nil && t.fromName != "" {
		// The upstream's error names the command we sent; the client
		// sent another.
		head.Text = strings.Replace(head.Text, t.toName, t.fromName, 1)
	}
	if head.Code == "CAPABILITY" {
		head.CodeArg = strings.Join(s.capabilities(), " ")
	}
	for _, f := range x.onTagged {
		f(&head)
	}
	if x.Name == "APPEND" && head.Name == "OK" && head.Code == "APPENDUID" {
		s.noteAppended(x, head.CodeArg)
	}
	code := head.Code
	if head.CodeArg != "" {
		code += " " + head.CodeArg
	}
	return s.WriteStatus(x.Tag, head.Name, code, head.Text)
}

// finishHeld writes the responses a filter held (HoldResponse) once
// finished. The upstream's answer is complete: the command's connection
// goes back to the pool first, as before SELECT's wait for the hub
// (beforeTagged), so that what finish waits for may have it.
func (s *Session) finishHeld(x *Exchange) error {
	if len(x.held) == 0 {
		return nil
	}
	held := x.held
	x.held = nil
	s.release()
	for _, h := range held {
		if r := h.finish(h.resp); r != nil {
			if err := s.writeResponse(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// relayUntagged relays one untagged response whose first line has been read,
// through the response filters. Responses whose literals fit in memory are
// filtered whole; larger ones are streamed.
func (s *Session) relayUntagged(x *Exchange, up *upstream.Conn, line []byte, lit *imapcodec.LiteralHeader, head imapcodec.ResponseHead) error {
	r := up.Reader()
	inline := s.cfg.Limits.MaxInlineLiteral
	// The literals held in memory are read into pooled buffers, given
	// back once the response is written (a response filter keeps no
	// Data, see ResponseFilter): a download of many small messages
	// allocates no buffer per message. SELECT's collected responses
	// outlive this call and get buffers of their own.
	pooled := x == nil || x.collect == nil
	var lentArr [2]*[]byte
	lent := lentArr[:0]
	defer func() {
		for _, bp := range lent {
			litBufs.Put(bp)
		}
	}()
	seg := imapcodec.Segment{Text: line, Literal: lit}
	if lit != nil {
		seg.Text = line[:lit.Start]
	}
	seg.Text = append([]byte(nil), seg.Text...)
	segs := []imapcodec.Segment{seg}
	for lit != nil && lit.Size <= inline {
		var data []byte
		var err error
		if pooled && lit.Size <= litBufSize {
			bp := litBufs.Get().(*[]byte)
			lent = append(lent, bp)
			data = (*bp)[:lit.Size]
			_, err = io.ReadFull(r.Literal(), data)
		} else {
			data, err = r.ReadLiteral()
		}
		if err != nil {
			up.MarkBroken()
			return &upstreamError{err}
		}
		segs[len(segs)-1].Data = data
		var next []byte
		next, lit, err = r.ReadLine()
		if err != nil {
			up.MarkBroken()
			return &upstreamError{err}
		}
		seg := imapcodec.Segment{Literal: lit}
		if lit != nil {
			next = next[:lit.Start]
		}
		seg.Text = append([]byte(nil), next...)
		segs = append(segs, seg)
	}
	resp := &Response{Head: head, Segments: segs, Streamed: lit != nil}
	resp = s.filterResponse(x, resp)
	if resp == nil {
		if lit != nil {
			return s.streamRest(up, io.Discard)
		}
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.renewWriteDeadline()
	w := s.w
	for _, seg := range resp.Segments {
		w.Write(seg.Text)
		if seg.Literal != nil {
			w.Write(seg.Literal.Format(nil))
			w.WriteString("\r\n")
			w.Write(seg.Data)
		}
	}
	if !resp.Streamed {
		if _, err := w.WriteString("\r\n"); err != nil {
			// The client is gone mid-answers: the upstream connection
			// still holds the rest of them (relayFailed breaks it).
			return &writeError{err}
		}
		return nil
	}
	return s.streamRest(up, w)
}

// litBufSize is the size of the pooled buffers relayUntagged reads the
// literals it holds in memory into: MaxInlineLiteral's default. Larger
// ones (a configured MaxInlineLiteral above it) are allocated.
const litBufSize = imapcodec.DefaultMaxInlineLiteral

// litBufs holds the buffers of literals relayUntagged holds in memory.
var litBufs = sync.Pool{New: func() any { b := make([]byte, litBufSize); return &b }}

// streamRest copies the rest of a response with a large literal, whose
// header has been written, from the upstream to w, line by line and literal
// by literal.
func (s *Session) streamRest(up *upstream.Conn, w io.Writer) error {
	r := up.Reader()
	for {
		var err error
		if dst := s.spliceTarget(up, w); dst != nil {
			err = s.spliceLiteral(up, dst)
		} else {
			var n int64
			n, err = copyLiteral(clientWriter{w, s}, r.Literal())
			if w != io.Discard {
				s.srv.counters.literalCopied.Add(n)
			}
		}
		if err != nil {
			up.MarkBroken()
			if isWriteErr(err) {
				return errClientStream
			}
			return fmt.Errorf("%w: %w", errClientStream, &upstreamError{err})
		}
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		line, lit, err := r.ReadLine()
		if err != nil {
			up.MarkBroken()
			return fmt.Errorf("%w: %w", errClientStream, &upstreamError{err})
		}
		if _, err := w.Write(line); err != nil {
			return errClientStream
		}
		if lit == nil {
			if _, err := io.WriteString(w, "\r\n"); err != nil {
				return &writeError{err}
			}
			return nil
		}
		io.WriteString(w, "\r\n")
	}
}

// spliceChunk is the most of a literal one splice moves between two
// renewals of the deadlines: a client must take 128 KiB per writeTimeout.
const spliceChunk = 128 << 10

// spliceTarget returns the client's TCP connection when the rest of the
// current streamed literal from up may move from the upstream's socket to
// the client's without passing through the proxy (splice(2) on Linux):
// the literal goes to the session's own output (w is not a filter's
// io.Discard), and both sides are plain TCP, with no TLS, COMPRESS or
// other layer on either. Response filters never see a streamed literal's
// bytes (ResponseFilter), so none can need them. It costs two type checks.
func (s *Session) spliceTarget(up *upstream.Conn, w io.Writer) *net.TCPConn {
	if bw, ok := w.(*burstWriter); !ok || bw != s.w {
		return nil
	}
	ct, ok := s.tr.(connTransport)
	if !ok {
		return nil
	}
	var tc *net.TCPConn
	switch c := ct.Conn.(type) {
	case *net.TCPConn:
		tc = c
	case *idleConn: // a connection the session may park on (park.go): TCP below
		tc = c.TCPConn
	}
	if tc == nil || !up.Reader().CanSplice() {
		return nil
	}
	return tc
}

// spliceLiteral moves the rest of the current literal from up to the
// client's connection dst: the part the upstream's reader already holds
// goes into the session's buffer behind what precedes it (the response's
// text and literal header), which is flushed in one write; the rest moves
// socket to socket, spliceChunk at a time, each under fresh deadlines.
// The client's socket is corked meanwhile (setCork).
// The caller holds wmu.
func (s *Session) spliceLiteral(up *upstream.Conn, dst *net.TCPConn) error {
	r := up.Reader()
	if _, err := r.WriteBufferedLiteral(s.w); err != nil {
		return &writeError{err}
	}
	setCork(dst, true)
	defer setCork(dst, false)
	s.renewWriteDeadline()
	if err := s.w.Flush(); err != nil {
		return &writeError{err}
	}
	for r.LiteralRemaining() > 0 {
		s.renewWriteDeadline()
		up.SetDeadline(time.Now().Add(s.srv.cfg.Upstream.Timeout))
		n, err := r.SpliceLiteral(dst, spliceChunk)
		s.srv.counters.literalSpliced.Add(n)
		if err != nil {
			// Which side failed is not told apart: either way the
			// upstream connection is mid-response and the client's
			// stream mid-literal, and both end. Nothing more may reach
			// the client, which would take it for bytes of the literal
			// (a BYE from Shutdown waiting for wmu): the session's
			// writer fails from now on, as after a failed write of its
			// own (TestShutdownDuringStreamedFetch).
			s.w.fail(err)
			return err
		}
	}
	return nil
}

// clientWriter renews the client's write deadline as a long literal flows.
// copyBufs holds the buffers copyLiteral streams through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyLiteral is io.Copy with a pooled buffer: a literal reader has no
// WriteTo, so io.Copy would allocate 32 KiB for every streamed literal,
// which at hundreds of MB/s of bodies is most of the proxy's garbage.
func copyLiteral(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(dst, src, *bp)
}

type clientWriter struct {
	w io.Writer
	s *Session
}

func (c clientWriter) Write(p []byte) (int, error) {
	c.s.renewWriteDeadline()
	c.s.up.SetDeadline(time.Now().Add(c.s.srv.cfg.Upstream.Timeout))
	n, err := c.w.Write(p)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

// writeTimeout bounds how long a write to a client may block: a client that
// stops reading must not hold its upstream connection forever.
const writeTimeout = 2 * time.Minute

// filterResponse applies the core's own rewriting, the exchange's filters
// and the extensions' response filters.
func (s *Session) filterResponse(x *Exchange, resp *Response) *Response {
	switch {
	case resp.Head.Name == "CAPABILITY" && !resp.Streamed:
		resp.Segments = []imapcodec.Segment{{Text: []byte("* CAPABILITY " + strings.Join(s.capabilities(), " "))}}
	case resp.Head.Name == "OK" && resp.Head.Code == "CLOSED":
		// RFC 7162 [CLOSED] reports the upstream connection's own
		// mailbox switch, which the client never saw.
		return nil
	case resp.Head.Name == "BYE":
		// The upstream is closing this connection; the client is told
		// what that means for it when the command fails.
		return nil
	case resp.Head.Name == "STATUS" && !resp.Streamed && len(resp.Segments) == 1:
		// The upstream's RECENT counts what its connections saw
		// (recent.go).
		resp.Segments[0].Text = s.statusRecent(x, resp.Segments[0].Text)
	case resp.Head.IsStatus() && resp.Head.Code == "CAPABILITY":
		resp.Segments = []imapcodec.Segment{{Text: imapcodec.AppendStatus(nil, "*", resp.Head.Name,
			"CAPABILITY "+strings.Join(s.capabilities(), " "), resp.Head.Text)}}
		resp.Segments[0].Text = resp.Segments[0].Text[:len(resp.Segments[0].Text)-2]
	}
	collecting := x != nil && x.collect != nil
	if x != nil {
		x.holdNext = nil // asked anew for each response (HoldResponse)
	}
	if s.mbox != nil && !collecting {
		if resp = s.filterSelected(x, resp); resp == nil {
			return nil
		}
	}
	if s.mbox == nil && !collecting && s.state == StateAuthenticated && (resp.Head.HasNum || resp.Head.Name == "FLAGS") {
		// Mailbox data of a mailbox the connection, not the client, has
		// selected (see relay).
		return nil
	}
	if x != nil {
		if resp = x.filter(resp); resp == nil {
			return nil
		}
	}
	for _, f := range s.srv.filters {
		if resp = f.FilterResponse(s, resp); resp == nil {
			return nil
		}
	}
	if resp.Head.Name == "STATUS" && !resp.Streamed && len(resp.Segments) > 0 && x != nil && x.statusSync != nil && x.statusSync.addedUIDValidity {
		// The UIDVALIDITY the proxy asked for (statusSyncSoon) goes,
		// after every filter: an extension's may read it as well
		// (condstore's, to tell a mailbox created again). The list is
		// in the last segment, also when the name came as a literal
		// (Dovecot writes one with many quoted-specials so; RECENT
		// then stays the upstream's).
		last := &resp.Segments[len(resp.Segments)-1]
		_, last.Text = statusUIDValidity(last.Text, true)
	}
	if x != nil && x.holdNext != nil {
		finish := x.holdNext
		x.holdNext = nil
		if collecting || resp.Streamed {
			if resp = finish(resp); resp == nil {
				return nil
			}
		} else {
			x.held = append(x.held, heldResponse{cloneResponse(resp), finish})
			return nil
		}
	}
	if collecting && !resp.Streamed {
		*x.collect = append(*x.collect, resp)
		return nil
	}
	return resp
}

// relayFailed turns a relay error into the client's answer.
func (s *Session) relayFailed(tag string, err error) error {
	if errors.Is(err, errClientStream) || isWriteErr(err) {
		// The client cannot be written to: the rest of the answers
		// (and of any command sent ahead) stays unread upstream, so the
		// connection must not go back to the pool.
		if s.up != nil {
			s.up.MarkBroken()
		}
		return err
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		return s.upstreamFailed(tag, err)
	}
	return err
}

// upstreamFailed answers a command whose upstream connection failed. The
// connection is dropped; the session goes on (see afterUpstreamLoss).
func (s *Session) upstreamFailed(tag string, err error) error {
	s.log.Warn("upstream connection failed", "err", err)
	if s.up != nil {
		s.up.MarkBroken()
		s.releaseUpstream()
	}
	s.WriteStatus(tag, "NO", "UNAVAILABLE", "Lost the connection to the upstream server.")
	return s.afterUpstreamLoss()
}

// afterUpstreamLoss drops a broken upstream connection. The session goes
// on: the next command leases another connection, and in the selected state
// the client's view of the mailbox lives in the hub, not on the connection.
func (s *Session) afterUpstreamLoss() error {
	if s.up != nil && s.up.Broken() {
		s.releaseUpstream()
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// leaseCaughtUp leases as lease does and, for a STATUS, brings the
// connection's view up to date (statusCatchUp). A connection whose
// catch-up fails is given up and another one leased, once: its mailbox may
// have been deleted since (Dovecot may then end the connection), and the
// client must get the upstream's answer about the name (NO, it does not
// exist), not a lost connection.
func (s *Session) leaseCaughtUp(ctx context.Context, restore bool, x *Exchange) (*upstream.Conn, error) {
	for try := 0; ; try++ {
		up, err := s.lease(ctx, restore, x)
		if err != nil {
			return nil, err
		}
		err = s.statusCatchUp(ctx, up, x)
		if err == nil {
			s.statusNotSelected(up, x)
			return up, nil
		}
		s.log.Debug("catch-up before STATUS failed; another connection", "err", err)
		up.MarkBroken()
		s.releaseUpstream()
		if try == 1 {
			return nil, err
		}
	}
}

// statusNotSelected keeps the upstream's word that a STATUS named the
// selected mailbox from a client that has not selected it: Dovecot answers
// "OK [CLIENTBUG] Status on selected mailbox completed." when the name is
// the connection's selected mailbox, which on a pooled connection may be
// another session's. The client is answered as Dovecot answers a STATUS
// of a mailbox it has not selected.
func (s *Session) statusNotSelected(up *upstream.Conn, x *Exchange) {
	if x.Name != "STATUS" || up.Selected == "" || s.mbox != nil && s.mbox.name == up.Selected {
		return
	}
	x.onTagged = append(x.onTagged, func(h *imapcodec.ResponseHead) {
		if h.Code != "CLIENTBUG" {
			return
		}
		h.Code, h.CodeArg = "", ""
		if rest, ok := strings.CutPrefix(h.Text, "Status on selected mailbox completed"); ok {
			h.Text = "Status completed" + rest
		}
	})
}

// statusCatchUp takes up out of a mailbox it keeps selected for another
// session before a STATUS of that mailbox: a server answers STATUS of the
// selected mailbox from the connection's view, which it syncs only at
// certain commands (Dovecot does so, adding [CLIENTBUG]), so a client with
// nothing selected would be told the counts of whenever that other session
// last looked, where a direct connection tells the mailbox's. A NOOP
// syncing the view was not enough: of a mailbox deleted and created again
// under the name since, Dovecot's NOOP says nothing and its STATUS keeps
// giving the old mailbox's UIDVALIDITY and counts, so the connection
// leaves the mailbox (UNSELECT) and STATUS reads it afresh. A STATUS of
// the client's own selected mailbox is left as it is, as on a direct
// connection. A name sent as a literal, unread when the command streams,
// counts as that mailbox's.
func (s *Session) statusCatchUp(ctx context.Context, up *upstream.Conn, x *Exchange) error {
	if x.Name != "STATUS" || up.Selected == "" || len(x.Segments) == 0 {
		return nil
	}
	if s.mbox != nil && s.mbox.name == up.Selected {
		return nil
	}
	// A name sent as a literal is not read yet when the command streams
	// (the first segment ends in its header): whatever it is, the UNSELECT
	// is cheap beside an old answer.
	if x.Segments[0].Literal == nil || len(x.Segments) > 1 {
		if name, ok := statusMailbox(x.Segments); !ok || s.hubKey(name).Mailbox != up.Selected {
			return nil
		}
	}
	if err := up.Unselect(ctx); err != nil {
		return fmt.Errorf("leaving %q before its STATUS: %w", up.Selected, err)
	}
	return nil
}
