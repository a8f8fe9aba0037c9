package catenate

// MULTIAPPEND (RFC 3502) over an upstream without it.
//
// This package owns the loop over an APPEND's messages because RFC 4469
// defines CATENATE inside RFC 3502's grammar (append-message repeats, and
// each may be a literal or CATENATE): one reader of the command must
// understand both, and two extensions reading the same streamed APPEND
// cannot. So the extension in the chain that offers CATENATE offers
// MULTIAPPEND too.
//
// Where the upstream has MULTIAPPEND, a plain APPEND streams to it as
// always, and one with CATENATE is put together (where CATENATE is
// synthesized) and goes upstream as one MULTIAPPEND. Where it has not but
// has UIDPLUS, the proxy advertises MULTIAPPEND and:
//
//  1. Reads the whole command with Exchange.ReadStreamed into the spool
//     (each message bounded by MaxAppendLiteral, all together by
//     MaxCommandBytes, at most maxMessages messages), so that a client
//     that goes away or a message over the limits leaves nothing
//     appended. This costs every APPEND over such an upstream a pass
//     through the spool (in memory for a message of up to
//     urlfetch.SpoolMemory): whether a second message follows is known
//     only after the first one's literal has been read.
//  2. A command of one message goes on as one plain APPEND (Restream):
//     uidplus, the relay and the upstream see it as before.
//  3. Several messages are appended one by one, each as its own APPEND
//     on a connection of the proxy's own (Account.Dial; the session's
//     leased connection cannot carry the proxy's own literals), each
//     upstream answer's APPENDUID noted. When one fails, the messages
//     already appended are removed (UID STORE +FLAGS.SILENT (\Deleted),
//     UID EXPUNGE of exactly their UIDs: UIDPLUS's UID EXPUNGE touches no
//     other message) and the client gets the failing APPEND's status,
//     code and text: nothing was appended (RFC 3502 3). On success it gets
//     OK [APPENDUID uidvalidity uid-set] (RFC 4315 3 allows a uid-set for
//     MULTIAPPEND). A message whose APPEND got no answer (the connection
//     failed or timed out after its literal was sent) may have been
//     stored: the rollback looks for it among the messages appended
//     since (UIDNEXT read before the first APPEND, then each APPENDUID),
//     and when one of them has its text, byte for byte (lostMessage.find),
//     leaves it and logs its UID: it may also be another client's APPEND
//     of the same message, this one's literal having never arrived, and
//     removing that would lose it (a duplicate loses nothing).
//
// Limits: atomicity is the proxy's doing, not the upstream's. Other
// clients of the mailbox may see the first messages for the moment
// before a rollback removes them, and a proxy that dies between two
// APPENDs, or an upstream that fails the rollback, leaves the messages
// appended so far (logged). A message whose APPEND got no answer is left
// (above), and logged when the rollback finds its text. Over an upstream without UIDPLUS no APPENDUID
// names the appended messages for sure and UID EXPUNGE is not there to
// remove exactly them (see extensions/uidplus), so no rollback is
// possible: MULTIAPPEND is not advertised and a second message is
// refused BAD.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// appendTimeout bounds each of the proxy's own upstream APPENDs and the
// rollback's commands.
const appendTimeout = 2 * time.Minute

// synthesizesMulti reports whether the proxy offers MULTIAPPEND over up
// itself.
func synthesizesMulti(up upstream.Caps) bool {
	return up != nil && !up.Has("MULTIAPPEND") && up.Has("UIDPLUS")
}

// appendEach appends p's messages one by one on a connection of the
// proxy's own and answers the command (see the comment above).
func (e *Extension) appendEach(ctx context.Context, x *proxy.Exchange, p *cmdParser, sp *urlfetch.Spool) error {
	s := x.Session()
	e.multi.Add(1)
	conn, err := s.UpstreamAccount().Dial(ctx)
	if err != nil {
		s.Logger().Warn("multiappend: cannot open an upstream connection", "err", err)
		return x.Reply(errUnavailable.status, errUnavailable.code, errUnavailable.text)
	}
	defer conn.Logout()
	stopWatch := conn.Watch(ctx)
	defer stopWatch()
	var validity string
	var uids []uint32
	// next is the lowest UID the next message can get (of UIDVALIDITY
	// nextValidity; 0 when unknown): where the rollback looks for a
	// message whose APPEND's answer was lost.
	next, nextValidity := uidNext(ctx, conn, p.mailbox)
	// undo rolls back what was appended, without the command's context
	// watching conn (see rollback); lost, if not nil, is a message that
	// may have been appended without its APPENDUID reaching the proxy.
	undo := func(lost *message) {
		stopWatch()
		var l *lostMessage
		if lost != nil && next != 0 {
			l = &lostMessage{m: lost, sp: sp, from: next, validity: nextValidity}
		}
		e.rollback(ctx, x, conn, p.mailbox, validity, uids, l)
	}
	for i, m := range p.msgs {
		head, err := appendOne(conn, p.mailbox, m, sp)
		if err != nil {
			// The connection failed or timed out: the upstream may
			// have stored the message and the answer never came.
			s.Logger().Warn("multiappend: upstream APPEND failed", "message", i+1, "err", err)
			undo(m)
			return x.Reply(errUnavailable.status, errUnavailable.code, errUnavailable.text)
		}
		if head.Name != "OK" {
			undo(nil)
			code := head.Code
			if head.CodeArg != "" {
				code += " " + head.CodeArg
			}
			return x.Reply(head.Name, code, head.Text)
		}
		v, uid, ok := appendUID(head)
		if !ok {
			// UIDPLUS promised the code: without it this message
			// cannot be rolled back.
			s.Logger().Warn("multiappend: upstream APPEND without a usable APPENDUID", "message", i+1, "code", head.Code+" "+head.CodeArg)
			undo(m)
			return x.Reply("NO", "SERVERBUG", "The upstream did not say where it appended a message.")
		}
		if validity != "" && v != validity {
			// The mailbox was deleted and created again since the
			// first message: those before this one went with the old
			// mailbox; this one, in the new, is removed.
			s.Logger().Warn("multiappend: the mailbox was created again during the append", "message", i+1, "uidvalidity", v, "before", validity)
			validity, uids = v, []uint32{uid}
			undo(nil)
			return x.Reply("NO", "", "The mailbox was deleted and created again during the append; nothing was appended.")
		}
		validity = v
		uids = append(uids, uid)
		next, nextValidity = uid+1, upstream.ParseUIDValidity(v)
		e.at("multiappend:appended")
	}
	syncSelected(ctx, s)
	return x.Reply("OK", "APPENDUID "+validity+" "+uidSet(uids), "Append completed.")
}

// appendOne sends one message as a plain APPEND on conn and returns the
// tagged answer.
func appendOne(conn *upstream.Conn, mailbox string, m *message, sp *urlfetch.Spool) (imapcodec.ResponseHead, error) {
	size := messageSize(m)
	nonSync := conn.Caps().Has("LITERAL+") || conn.Caps().Has("LITERAL-") && size <= 4096
	tag := conn.NextTag()
	line := messageHead([]byte(tag+" APPEND "+mailbox+" "), m)
	line = imapcodec.LiteralHeader{Size: size, NonSync: nonSync, Binary: m.binary}.Format(line)
	line = append(line, '\r', '\n')
	w := conn.Writer()
	conn.SetDeadline(time.Now().Add(appendTimeout))
	w.Write(line)
	fail := func(err error) (imapcodec.ResponseHead, error) {
		conn.MarkBroken()
		return imapcodec.ResponseHead{}, err
	}
	if !nonSync {
		if err := w.Flush(); err != nil {
			return fail(err)
		}
		for {
			r, err := conn.ReadResponse()
			if err != nil {
				return fail(err)
			}
			if r.Head.Tag == tag {
				return r.Head, nil // refused before the literal
			}
			if r.Head.Tag == "+" {
				break
			}
		}
	}
	for _, pt := range m.parts {
		if _, err := io.Copy(w, io.NewSectionReader(sp, pt.off, pt.n)); err != nil {
			return fail(err)
		}
	}
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	for {
		r, err := conn.ReadResponse()
		if err != nil {
			return fail(err)
		}
		switch r.Head.Tag {
		case tag:
			return r.Head, nil
		case "*":
		default:
			return fail(fmt.Errorf("unexpected response %q to APPEND", r.Head.Tag))
		}
	}
}

// appendUID reads "APPENDUID uidvalidity uid" from an APPEND's answer.
func appendUID(h imapcodec.ResponseHead) (validity string, uid uint32, ok bool) {
	if !strings.EqualFold(h.Code, "APPENDUID") {
		return "", 0, false
	}
	v, u, found := strings.Cut(strings.TrimSpace(h.CodeArg), " ")
	n, err := strconv.ParseUint(u, 10, 32)
	if !found || err != nil || n == 0 || upstream.ParseUIDValidity(v) == 0 {
		return "", 0, false
	}
	return v, uint32(n), true
}

// uidSet writes uids, in the order given, as an RFC 4315 uid-set, runs
// of consecutive UIDs as ranges.
func uidSet(uids []uint32) string {
	var b strings.Builder
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(uids[i]), 10))
		if j > i {
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(uids[j]), 10))
		}
		i = j + 1
	}
	return b.String()
}

// rollback removes the messages a failed MULTIAPPEND appended (uids, of
// UIDVALIDITY validity) on a fresh connection: conn, which appended them,
// may be broken, or out of step (a BAD while a non-synchronising literal
// was on its way leaves the upstream reading the literal as commands).
// conn is closed first: a second connection while conn holds its place
// in the account's budget could wait for a place forever. It is not cut short
// with the command's context (a shutdown cancels that one, and then
// closes conn): half a MULTIAPPEND must not stay behind (RFC 3502: all or
// none). A mailbox whose UIDVALIDITY is no longer validity was deleted
// and created again meanwhile; its messages of the same UIDs are someone
// else's and are left alone.
func (e *Extension) rollback(ctx context.Context, x *proxy.Exchange, conn *upstream.Conn, mailbox, validity string, uids []uint32, lost *lostMessage) {
	// The failed APPEND may have left conn out of step (a refusal read
	// while a non-synchronising literal was still on its way): it is
	// closed without a LOGOUT, which would wait for an answer that may
	// never come.
	conn.MarkBroken()
	conn.Close()
	if len(uids) == 0 && lost == nil {
		return
	}
	s := x.Session()
	set := uidSet(uids)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), appendTimeout)
	defer cancel()
	err := func() error {
		conn, err := s.UpstreamAccount().Dial(ctx)
		if err != nil {
			return err
		}
		defer conn.Logout()
		var now uint32
		if _, err := conn.Exec(ctx, "SELECT "+mailbox, func(r *upstream.Response) {
			if r.Head.Code == "UIDVALIDITY" {
				now = upstream.ParseUIDValidity(r.Head.CodeArg)
			}
		}); err != nil {
			var se *upstream.StatusError
			if errors.As(err, &se) && se.Head.Name == "NO" {
				// Deleted meanwhile: the messages went with it.
				s.Logger().Info("multiappend: nothing to roll back, the mailbox is gone", "mailbox", mailbox, "err", err)
				return nil
			}
			return err
		}
		remove := func(uids []uint32) error {
			set = uidSet(uids)
			for _, cmd := range []string{"UID STORE " + set + ` +FLAGS.SILENT (\Deleted)`, "UID EXPUNGE " + set} {
				if _, err := conn.Exec(ctx, cmd, nil); err != nil {
					return err
				}
			}
			return nil
		}
		if len(uids) > 0 {
			if v := strconv.FormatUint(uint64(now), 10); v != validity {
				return fmt.Errorf("the mailbox's UIDVALIDITY is now %s, not %s: it was created again", v, validity)
			}
			// The messages known appended go first: the look for the
			// lost one reads texts, and may fail or take long.
			if err := remove(uids); err != nil {
				return err
			}
		}
		if lost != nil && lost.validity == now {
			// Not found for sure, it is left.
			switch uid, err := lost.find(ctx, conn); {
			case err != nil:
				e.rollbackFailed.Add(1)
				s.Logger().Error("multiappend: cannot tell whether a message whose APPEND was not answered was appended; left as it is", "mailbox", mailbox, "err", err)
			case uid != 0:
				// Left: the text alone cannot tell it from another
				// client's APPEND of the same message while this one's
				// literal never arrived, and removing that one would
				// lose it. A duplicate, if the client retries, loses
				// nothing.
				e.rollbackFailed.Add(1)
				s.Logger().Warn("multiappend: a message with the text of one whose APPEND was not answered is left; it may be a duplicate", "mailbox", mailbox, "uid", uid)
			}
		}
		return nil
	}()
	if err != nil {
		e.rollbackFailed.Add(1)
		s.Logger().Error("multiappend: rollback failed; messages left appended", "mailbox", mailbox, "uids", set, "err", err)
		return
	}
	syncSelected(ctx, s)
}

// lostMessage is a message of a MULTIAPPEND whose APPEND may have stored
// it without its answer (APPENDUID) reaching the proxy: the connection
// failed or timed out after the literal was sent, or the answer lacked
// the code. Its UID, if it was stored, is at least from (of UIDVALIDITY
// validity), read before it was sent.
type lostMessage struct {
	m        *message
	sp       *urlfetch.Spool
	from     uint32
	validity uint32
}

// maxLostCandidates bounds the messages of the right size, appended
// since, that find compares with the lost one.
const maxLostCandidates = 16

// find looks for the lost message in the mailbox selected on conn: among
// the messages of UID from or above and of its size (RFC822.SIZE, which
// SEARCH's LARGER and SMALLER read), the one whose text is the message's,
// byte for byte. It returns 0 when none is (the APPEND did not store
// it), and an error when it cannot tell: more than one such message (the
// same message appended by another client meanwhile), too many
// candidates, or a failed read. A message stored with other bytes than
// sent (bare LFs that the server turned into CRLF) is not found.
func (l *lostMessage) find(ctx context.Context, conn *upstream.Conn) (uint32, error) {
	size := messageSize(l.m)
	if size == 0 {
		return 0, nil
	}
	var cands []uint32
	// "from:*" names the last message even when from is above its UID
	// (RFC 3501 6.4.8): the UIDs are checked.
	cmd := fmt.Sprintf("UID SEARCH UID %d:* LARGER %d SMALLER %d", l.from, size-1, size+1)
	if _, err := conn.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != "SEARCH" || len(r.Segments) != 1 {
			return
		}
		w := strings.Fields(string(r.Segments[0].Text))
		for _, f := range w[min(2, len(w)):] {
			if u, err := strconv.ParseUint(f, 10, 32); err == nil && uint32(u) >= l.from {
				cands = append(cands, uint32(u))
			}
		}
	}); err != nil {
		return 0, err
	}
	if len(cands) > maxLostCandidates {
		return 0, fmt.Errorf("%d messages of its size appended since", len(cands))
	}
	var found []uint32
	for _, uid := range cands {
		same, err := l.same(ctx, conn, uid, size)
		if err != nil {
			return 0, err
		}
		if same {
			found = append(found, uid)
		}
	}
	switch len(found) {
	case 0:
		return 0, nil
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("%d messages appended since have its text", len(found))
}

// lostChunk is how much of a candidate find reads per FETCH.
const lostChunk = 64 << 10

// same tells whether message uid's text is the lost message's.
func (l *lostMessage) same(ctx context.Context, conn *upstream.Conn, uid uint32, size int64) (bool, error) {
	want := make([]byte, 0, min(size, lostChunk))
	r := l.reader()
	for off := int64(0); off < size; off += lostChunk {
		n := min(lostChunk, size-off)
		var got []byte
		var have bool
		cmd := fmt.Sprintf("UID FETCH %d (BODY.PEEK[]<%d.%d>)", uid, off, n)
		if _, err := conn.Exec(ctx, cmd, func(r *upstream.Response) {
			if d, ok := fetchedBody(r, uid); ok {
				got, have = d, true
			}
		}); err != nil {
			return false, err
		}
		if !have {
			return false, nil // expunged meanwhile: not one to remove
		}
		want = want[:n]
		if _, err := io.ReadFull(r, want); err != nil {
			return false, fmt.Errorf("reading the spool: %w", err)
		}
		if !bytes.Equal(got, want) {
			return false, nil
		}
	}
	return true, nil
}

// reader reads the lost message's text from the spool.
func (l *lostMessage) reader() io.Reader {
	rs := make([]io.Reader, 0, len(l.m.parts))
	for _, pt := range l.m.parts {
		rs = append(rs, io.NewSectionReader(l.sp, pt.off, pt.n))
	}
	return io.MultiReader(rs...)
}

// fetchedBody reads the BODY[] item of a FETCH response for uid.
func fetchedBody(r *upstream.Response, uid uint32) ([]byte, bool) {
	body, ok, isString := upstream.FetchBody(r, uid)
	return body, ok && isString
}

// uidNext reads the UIDNEXT and UIDVALIDITY of mailbox (as it goes on a
// command line) on conn; 0, 0 when the STATUS fails (a mailbox that does
// not exist: the APPEND says so).
func uidNext(ctx context.Context, conn *upstream.Conn, mailbox string) (next, validity uint32) {
	_, err := conn.Exec(ctx, "STATUS "+mailbox+" (UIDNEXT UIDVALIDITY)", func(r *upstream.Response) {
		if n := upstream.StatusNumbers(r); n != nil {
			next, validity = n["UIDNEXT"], n["UIDVALIDITY"]
		}
	})
	if err != nil || next == 0 || validity == 0 {
		return 0, 0
	}
	return next, validity
}

// syncSelected brings the client's selected mailbox up to date, so that
// the EXISTS of messages appended to it come before the tagged answer,
// as after a relayed APPEND.
func syncSelected(ctx context.Context, s *proxy.Session) {
	if mb := s.Mailbox(); mb != nil {
		mb.Sync(ctx, 5*time.Second)
	}
}
