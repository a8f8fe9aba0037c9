package uidplus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// serveMove does MOVE over an upstream with UIDPLUS and without MOVE:
// UID COPY, UID STORE +FLAGS.SILENT (\Deleted) and UID EXPUNGE of exactly
// the UIDs copied. The client hears the untagged OK [COPYUID], then the
// expunges (the core's sync with the hub before the tagged answer, as
// after any MOVE: EXPUNGE, or VANISHED once QRESYNC is enabled), then OK
// (RFC 6851 4.3). It is not atomic as a server's MOVE is: for a moment the
// originals exist beside their copies, with \Deleted, which is what a
// client doing COPY + STORE + UID EXPUNGE itself would show. The proxy's
// own MOVEs out of one mailbox run one at a time, so that two devices
// moving the same message do not both copy it (the second finds it gone);
// against a client connected to the upstream directly that moves the
// same message at the same moment, nothing in IMAP4rev1 and UIDPLUS can
// keep both from copying it.
func (e *Extension) serveMove(ctx context.Context, x *proxy.Exchange) error {
	s := x.Session()
	m := s.Mailbox()
	if m == nil {
		return x.Reply("BAD", "", "No mailbox selected.")
	}
	c, err := parseCopy(x)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	if m.ReadOnly() {
		return x.Reply("NO", "", "The mailbox is read-only.")
	}
	arg, ok := mailboxArg(c.mailbox)
	if !ok {
		return x.Reply("NO", "", "The mailbox name cannot be used with MOVE here.")
	}
	done, err := e.takeTurn(ctx, s.UpstreamAccount().Name+"\x00"+m.Name())
	if err != nil {
		return x.Reply("NO", "INUSE", "Another MOVE out of this mailbox is in progress; try again.")
	}
	// The turn ends before anything is written to the client, which may
	// be slow to read.
	defer done()
	unavailable := func(err error) error {
		done()
		s.Logger().Warn("synthesized MOVE failed", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
	}
	// The set resolved first: a message that arrives in a range such as
	// 5:* after the COPY must not be flagged and expunged uncopied.
	src, err := existing(ctx, s, c.set)
	if err != nil {
		return unavailable(err)
	}
	if len(src) == 0 {
		done()
		return x.Reply("OK", "", "No messages to move.")
	}
	// The resolved set runs over the UIDs expunged between its messages
	// (uidset.Compact), and may still be too long for one command line
	// (messages that alternate with others): then it moves in batches, each copied,
	// flagged and expunged before the next, so that every message is
	// either moved or untouched whatever fails (RFC 6851 3.3). The
	// client gets one COPYUID for all batches that moved.
	var copied copyUIDs
	// stop answers a MOVE that failed in a batch, after the COPYUID of
	// those that moved before it.
	stop := func(answer func() error) error {
		done()
		if err := copied.write(s); err != nil {
			return err
		}
		return answer()
	}
	e.at("move:before")
	view := m.UIDs()
	rest := src
	for _, set := range uidset.Batches(uidset.Compact(view, src)) {
		// The batch's messages: those of src up to the set's last UID.
		n, _ := slices.BinarySearch(rest, lastUID(set)+1)
		batch := rest[:n]
		rest = rest[n:]
		resp, err := s.Exec(ctx, "UID COPY "+set+" "+arg, nil)
		if err != nil {
			var se *upstream.StatusError
			if !errors.As(err, &se) {
				return stop(func() error { return unavailable(err) })
			}
			h := se.Head
			code := h.Code
			if h.CodeArg != "" {
				code += " " + h.CodeArg
			}
			return stop(func() error { return x.Reply(h.Name, code, h.Text) })
		}
		// COPYUID's source set names exactly what was copied: an
		// original expunged before the COPY reached it is not in it.
		// It is written again as short lines.
		sets := []string{set}
		originals := batch
		f := strings.Fields(resp.Head.CodeArg)
		hasCode := strings.EqualFold(resp.Head.Code, "COPYUID") && len(f) == 3
		if hasCode {
			if done, ok := copiedOf(batch, f[1]); ok {
				sets = uidset.Batches(uidset.Compact(view, done))
				originals = done
			}
		}
		e.at("move:copied")
		if !hasCode {
			// An OK without COPYUID from a server with UIDPLUS: a COPY
			// that found none of the batch's messages (expunged by
			// another client since the set was resolved; Dovecot's
			// "No messages found") copied nothing, and leaves the
			// other batches' code whole. Otherwise the copies are
			// unknown and the MOVE goes without the code.
			left, err := existing(ctx, s, set)
			if err == nil && len(left) == 0 {
				continue
			}
		}
		if stuck, err := e.removeOriginals(ctx, s, view, sets); err != nil {
			// The originals are back as they were (or gone, if the
			// EXPUNGE was done and only its answer lost): the copies
			// of those still there are taken back, so that the NO
			// leaves the batch unmoved (RFC 6851 3.3) instead of
			// copied, and its COPYUID is not told.
			moved, answer := e.takeBack(ctx, x, m.Name(), m.State().UIDValidity(), c.mailbox, originals, stuck, resp.Head, len(copied.src) > 0, err)
			if !moved {
				e.movesIncomplete.Add(1)
				return stop(answer)
			}
		}
		copied.add(resp.Head)
	}
	done()
	if err := copied.write(s); err != nil {
		return err
	}
	e.moves.Add(1)
	return x.Reply("OK", "", "Move completed.")
}

// removeOriginals flags and expunges the originals of a batch once
// copied (sets, UID sets of view's messages). A failure (the connection
// lost between the STORE and the EXPUNGE) is tried once more, on another
// connection: the copies exist, so finishing is the better outcome. If
// that fails too, the \Deleted the STORE set is taken back from the
// messages that did not have it upstream just before (read on the
// connection that stores), so that the NO the client gets leaves them as
// they were (RFC 6851 3.3) instead of expunged by the next EXPUNGE or
// CLOSE of any client. A \Deleted another client sets on one of them
// between the STORE and that undo goes too: the window is the failing
// MOVE's, and IMAP4rev1 has no conditional STORE to close it. stuck are
// the originals whose undo failed too (their \Deleted may be there).
func (e *Extension) removeOriginals(ctx context.Context, s *proxy.Session, view []uint32, sets []string) (stuck []uint32, err error) {
	var undo []uint32
	for _, set := range sets {
		_, err := s.Exec(ctx, "UID FETCH "+set+" (FLAGS)", func(r *upstream.Response) {
			if uid, flags, ok := parseFlags(r); ok && !slices.ContainsFunc(flags, isDeleted) {
				undo = append(undo, uid)
			}
		})
		if err != nil {
			return nil, err // nothing stored yet: the originals are as they were
		}
	}
	slices.Sort(undo)
	for try := 0; try < 2; try++ {
		if err = flagAndExpunge(ctx, s, sets); err == nil {
			return nil, nil
		}
		e.at("move:retry")
	}
	if len(undo) > 0 {
		for _, set := range uidset.Batches(uidset.Compact(view, undo)) {
			if _, uerr := s.Exec(ctx, "UID STORE "+set+` -FLAGS.SILENT (\Deleted)`, nil); uerr != nil {
				s.Logger().Warn("synthesized MOVE: could not take back \\Deleted from the originals", "err", uerr)
				named, _ := copiedOf(undo, set)
				stuck = append(stuck, named...)
			}
		}
	}
	return stuck, err
}

// parseFlags reads the UID and the flags of a FETCH response to
// (FLAGS) in the UID form (which carries the UID).
func parseFlags(r *upstream.Response) (uid uint32, flags []string, ok bool) {
	if r.Head.Name != "FETCH" {
		return 0, nil, false
	}
	vals, err := imapcodec.NewParser(r.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return 0, nil, false
	}
	l, isList := vals[3].(imapcodec.List)
	if !isList {
		return 0, nil, false
	}
	var haveUID, haveFlags bool
	for i := 0; i+1 < len(l); i += 2 {
		name, _ := l[i].(imapcodec.Atom)
		switch strings.ToUpper(string(name)) {
		case "UID":
			a, _ := l[i+1].(imapcodec.Atom)
			n, err := strconv.ParseUint(string(a), 10, 32)
			uid, haveUID = uint32(n), err == nil
		case "FLAGS":
			fl, isList := l[i+1].(imapcodec.List)
			if !isList {
				return 0, nil, false
			}
			for _, f := range fl {
				if a, isAtom := f.(imapcodec.Atom); isAtom {
					flags = append(flags, string(a))
				}
			}
			haveFlags = true
		}
	}
	return uid, flags, haveUID && haveFlags
}

// moveTurn is one mailbox's turn for synthesized MOVEs: a one-slot
// channel, and how many MOVEs hold or wait for it.
type moveTurn struct {
	slot    chan struct{}
	waiting int
}

// moveWait bounds how long a MOVE waits for another out of the same
// mailbox (itself bounded by its upstream round trips).
const moveWait = time.Minute

// takeTurn waits for the turn of key (account NUL mailbox) and returns the
// function that ends it (safe to call more than once). It gives up when
// ctx ends or after moveWait.
func (e *Extension) takeTurn(ctx context.Context, key string) (func(), error) {
	e.movingMu.Lock()
	t := e.moving[key]
	if t == nil {
		t = &moveTurn{slot: make(chan struct{}, 1)}
		e.moving[key] = t
	}
	t.waiting++
	e.movingMu.Unlock()
	leave := func() {
		e.movingMu.Lock()
		if t.waiting--; t.waiting == 0 {
			delete(e.moving, key)
		}
		e.movingMu.Unlock()
	}
	timer := time.NewTimer(moveWait)
	defer timer.Stop()
	select {
	case t.slot <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	case <-timer.C:
		leave()
		return nil, errors.New("uidplus: waited too long for another MOVE")
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-t.slot
			leave()
		})
	}, nil
}

// flagAndExpunge sets \Deleted on sets' messages and expunges exactly them.
func flagAndExpunge(ctx context.Context, s *proxy.Session, sets []string) error {
	for _, cmd := range []string{`UID STORE %s +FLAGS.SILENT (\Deleted)`, "UID EXPUNGE %s"} {
		for _, set := range sets {
			if _, err := s.Exec(ctx, fmt.Sprintf(cmd, set), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// isDeleted reports whether a flag is \Deleted.
func isDeleted(f string) bool { return strings.EqualFold(f, `\Deleted`) }

// takeBackTimeout bounds the removal of a failed MOVE's copies (its own
// connection, its checks and its commands).
const takeBackTimeout = time.Minute

// takeBack handles a batch whose copies exist (the tagged answer of its
// UID COPY, head) but whose originals (the UIDs of source the COPY
// copied, ascending) could not be removed (err). On a connection of its
// own, opened now (the session's may be what failed) and not cut short
// by the command's end, it reads which originals are still in source (of
// UIDVALIDITY validity, the session's view of it): if
// none is, the EXPUNGE was done and only its answer lost, and the batch
// has moved (moved true). Otherwise the copies of those still there are
// flagged \Deleted and expunged by their UIDs in target (UID EXPUNGE
// touches no other message), once target's UIDVALIDITY is checked to be
// COPYUID's (a mailbox created again meanwhile has other messages under
// those UIDs). A copy is never removed unless its original was seen in
// source, so a message is not lost whatever failed; nor is the copy of an
// original in stuck (its \Deleted, set by the MOVE, could not be taken
// back: the next EXPUNGE of any client would remove it) unless the
// \Deleted is taken back here first. answer writes the NO
// that says what became of the batch (and, with earlier, that batches
// before it moved).
func (e *Extension) takeBack(ctx context.Context, x *proxy.Exchange, source string, validity uint32, target string, originals, stuck []uint32, head imapcodec.ResponseHead, earlier bool, err error) (moved bool, answer func() error) {
	s := x.Session()
	log := s.Logger()
	log.Warn("synthesized MOVE copied but did not expunge the originals; taking the copies back", "err", err)
	no := func(text string) func() error {
		return func() error { return x.Reply("NO", "", text) }
	}
	cannot := no("The messages were copied but could not be removed from this mailbox, and their copies could not be removed from the target mailbox.")
	if earlier {
		cannot = no("Some of the messages were moved; the others were copied but could not be removed from this mailbox, and their copies could not be removed from the target mailbox.")
	}
	f := strings.Fields(head.CodeArg)
	if !strings.EqualFold(head.Code, "COPYUID") || len(f) != 3 {
		log.Warn("synthesized MOVE: no COPYUID names the copies; they are left in the target", "mailbox", target)
		return false, cannot
	}
	dst, derr := expandSet(f[2])
	if derr != nil {
		log.Warn("synthesized MOVE: cannot read the COPYUID's target set; the copies are left", "code", head.CodeArg, "err", derr)
		return false, cannot
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), takeBackTimeout)
	defer cancel()
	conn, derr := s.UpstreamAccount().Dial(ctx)
	if derr != nil {
		log.Warn("synthesized MOVE: cannot open a connection to take the copies back", "err", derr)
		return false, cannot
	}
	defer conn.Logout()
	if derr := conn.Select(ctx, source, true, nil); derr != nil {
		log.Warn("synthesized MOVE: cannot read the originals to take the copies back", "err", derr)
		return false, cannot
	}
	if conn.UIDValidity != validity {
		// Created again: its messages of those UIDs are others'.
		log.Warn("synthesized MOVE: the source was created again; the copies are not taken back", "uidvalidity", conn.UIDValidity, "was", validity)
		return false, cannot
	}
	var there []uint32
	for _, set := range uidset.Batches(uidset.SpansOf(originals)) {
		if _, derr := conn.Exec(ctx, "UID SEARCH UID "+set, func(r *upstream.Response) {
			if r.Head.Name != "SEARCH" || len(r.Segments) != 1 {
				return
			}
			w := strings.Fields(string(r.Segments[0].Text))
			for _, n := range w[min(2, len(w)):] {
				if u, err := strconv.ParseUint(n, 10, 32); err == nil {
					there = append(there, uint32(u))
				}
			}
		}); derr != nil {
			log.Warn("synthesized MOVE: cannot read the originals to take the copies back", "err", derr)
			return false, cannot
		}
	}
	slices.Sort(there)
	there = slices.Compact(there)
	if len(there) > 0 && len(stuck) > 0 {
		if derr := clearDeleted(ctx, conn, source, validity, stuck); derr != nil {
			log.Warn("synthesized MOVE: could not take back \\Deleted from the originals; their copies are left", "err", derr)
		} else {
			stuck = nil
		}
	}
	kept := func(u uint32) bool {
		_, found := slices.BinarySearch(there, u)
		_, deleted := slices.BinarySearch(stuck, u)
		return found && !deleted
	}
	var remove []uint32
	switch {
	case len(there) == 0:
		log.Info("synthesized MOVE: the originals are gone after all; the batch moved")
		return true, nil
	case len(there) == len(originals) && len(stuck) == 0:
		remove = dst
	case pairs(f[1], dst):
		// Some originals are gone (expunged by another client, or by
		// an EXPUNGE of ours whose answer was lost): their copies
		// stay. COPYUID pairs the sets in order (RFC 4315 3).
		src, _ := expandSet(f[1])
		for i, u := range src {
			if kept(u) {
				remove = append(remove, dst[i])
			}
		}
	default:
		log.Warn("synthesized MOVE: some originals are gone and the COPYUID does not pair the copies; they are left", "code", head.CodeArg)
		return false, no("Some of the messages were moved; the others were copied but could not be removed from this mailbox, nor their copies from the target mailbox.")
	}
	if derr := conn.Select(ctx, target, false, nil); derr != nil {
		log.Warn("synthesized MOVE: cannot open the target to take the copies back", "err", derr)
		return false, cannot
	}
	if v := strconv.FormatUint(uint64(conn.UIDValidity), 10); v != f[0] {
		log.Warn("synthesized MOVE: the target was created again; the copies are not taken back", "uidvalidity", v, "copyuid", f[0])
		return false, cannot
	}
	if len(remove) == 0 {
		return false, cannot
	}
	slices.Sort(remove)
	for _, set := range uidset.Batches(uidset.SpansOf(remove)) {
		if derr := flagAndExpungeOn(ctx, conn, set); derr != nil {
			log.Warn("synthesized MOVE: could not take the copies back", "err", derr)
			return false, cannot
		}
	}
	if len(remove) < len(dst) || earlier {
		return false, no("Some of the messages were moved; the others could not be, and were left in this mailbox.")
	}
	return false, no("The messages could not be moved; they were left in this mailbox.")
}

// clearDeleted takes \Deleted back from uids (ascending) of source, of
// UIDVALIDITY validity, on the take-back's connection.
func clearDeleted(ctx context.Context, conn *upstream.Conn, source string, validity uint32, uids []uint32) error {
	if err := conn.Select(ctx, source, false, nil); err != nil {
		return err
	}
	if conn.UIDValidity != validity {
		return fmt.Errorf("the source was created again (UIDVALIDITY %d, was %d)", conn.UIDValidity, validity)
	}
	for _, set := range uidset.Batches(uidset.SpansOf(uids)) {
		if _, err := conn.Exec(ctx, "UID STORE "+set+` -FLAGS.SILENT (\Deleted)`, nil); err != nil {
			return err
		}
	}
	return nil
}

// pairs tells whether a COPYUID's source set names exactly as many UIDs
// as its target set, dst, so that they pair one to one.
func pairs(srcSet string, dst []uint32) bool {
	src, err := expandSet(srcSet)
	return err == nil && len(src) == len(dst)
}

// flagAndExpungeOn sets \Deleted on set's messages and expunges exactly
// them, on a connection of the extension's own.
func flagAndExpungeOn(ctx context.Context, conn *upstream.Conn, set string) error {
	for _, cmd := range []string{`UID STORE %s +FLAGS.SILENT (\Deleted)`, "UID EXPUNGE %s"} {
		if _, err := conn.Exec(ctx, fmt.Sprintf(cmd, set), nil); err != nil {
			return err
		}
	}
	return nil
}

// expandSet lists the UIDs of a COPYUID's set, parts in their order and
// each range ascending (RFC 4315 4: 4:2 is 2:4), at most maxCopied.
func expandSet(set string) ([]uint32, error) {
	var out []uint32
	for part := range strings.SplitSeq(set, ",") {
		a, b, isRange := strings.Cut(part, ":")
		lo, err := strconv.ParseUint(a, 10, 32)
		hi := lo
		if err == nil && isRange {
			hi, err = strconv.ParseUint(b, 10, 32)
		}
		if err != nil || lo == 0 || hi == 0 {
			return nil, fmt.Errorf("bad part %q of set %q", part, set)
		}
		lo, hi = min(lo, hi), max(lo, hi)
		if uint64(len(out))+hi-lo >= maxCopied {
			return nil, fmt.Errorf("set %q names too many UIDs", set)
		}
		for u := lo; u <= hi; u++ {
			out = append(out, uint32(u))
		}
	}
	return out, nil
}

// copyUIDs gathers the COPYUID codes of a MOVE's batches into one: the
// source sets and the target sets joined in the same order still
// correspond. Any batch without the code, or with another UIDVALIDITY,
// leaves the MOVE without it.
type copyUIDs struct {
	validity string
	src, dst []string
	broken   bool
}

// add takes the tagged answer of a batch's UID COPY.
func (c *copyUIDs) add(h imapcodec.ResponseHead) {
	f := strings.Fields(h.CodeArg)
	if !strings.EqualFold(h.Code, "COPYUID") || len(f) != 3 || len(c.src) > 0 && f[0] != c.validity {
		c.broken = true
		return
	}
	c.validity = f[0]
	c.src = append(c.src, f[1])
	c.dst = append(c.dst, f[2])
}

// write sends the untagged OK [COPYUID] of the batches added, if any.
func (c *copyUIDs) write(s *proxy.Session) error {
	if c.broken || len(c.src) == 0 {
		return nil
	}
	return s.Write([]byte("* OK [COPYUID " + c.validity + " " + strings.Join(c.src, ",") + " " + strings.Join(c.dst, ",") + "] Moved UIDs.\r\n"))
}

// lastUID is the last number of a set uidset.Batches wrote.
func lastUID(set string) uint32 {
	n, _ := strconv.ParseUint(set[strings.LastIndexAny(set, ",:")+1:], 10, 32)
	return uint32(n)
}

// copiedOf returns the UIDs of batch (ascending) that set, a COPYUID's
// source set, names; ok is false for a set that does not parse. It reads
// the set's ranges, not every UID they span: a server's range may run
// over UIDs that do not exist.
func copiedOf(batch []uint32, set string) (out []uint32, ok bool) {
	ranges, err := imapcodec.ParseUIDSet(set)
	if err != nil {
		return nil, false
	}
	rs := slices.Clone(ranges)
	for i, r := range rs {
		if r.Stop != 0 && r.Start > r.Stop {
			rs[i].Start, rs[i].Stop = r.Stop, r.Start
		}
	}
	slices.SortFunc(rs, func(a, b imap.UIDRange) int { return cmp.Compare(a.Start, b.Start) })
	j := 0
	for _, u := range batch {
		for j < len(rs) && rs[j].Stop != 0 && uint32(rs[j].Stop) < u {
			j++
		}
		if j < len(rs) && uint32(rs[j].Start) <= u && (rs[j].Stop == 0 || u <= uint32(rs[j].Stop)) {
			out = append(out, u)
		}
	}
	return out, true
}
