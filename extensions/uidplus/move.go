package uidplus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"

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
	unavailable := func(err error) error {
		s.Logger().Warn("synthesized MOVE failed", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
	}
	mu := &e.moving[maphash.String(e.seed, s.UpstreamAccount().Name+"\x00"+m.Name())%uint64(len(e.moving))]
	mu.Lock()
	defer mu.Unlock()
	// The set resolved first: a message that arrives in a range such as
	// 5:* after the COPY must not be flagged and expunged uncopied.
	src, err := existing(ctx, s, c.set)
	if err != nil {
		return unavailable(err)
	}
	if len(src) == 0 {
		return x.Reply("OK", "", "No messages to move.")
	}
	arg, ok := mailboxArg(c.mailbox)
	if !ok {
		return x.Reply("NO", "", "The mailbox name cannot be used with MOVE here.")
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
		if err := copied.write(s); err != nil {
			return err
		}
		return answer()
	}
	e.at("move:before")
	view := m.UIDs()
	rest := src
	for i, set := range uidset.Batches(uidset.Compact(view, src)) {
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
		if f := strings.Fields(resp.Head.CodeArg); strings.EqualFold(resp.Head.Code, "COPYUID") && len(f) == 3 {
			if done, ok := copiedOf(batch, f[1]); ok {
				sets = uidset.Batches(uidset.Compact(view, done))
			}
		}
		copied.add(i, resp.Head)
		e.at("move:copied")
		if err := e.removeOriginals(ctx, s, view, sets); err != nil {
			return stop(func() error { return e.incomplete(x, err) })
		}
	}
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
// messages that did not have it as far as the proxy's state knows, so that
// the NO the client gets leaves them as they were (RFC 6851 3.3) instead of
// expunged by the next EXPUNGE or CLOSE of any client.
func (e *Extension) removeOriginals(ctx context.Context, s *proxy.Session, view []uint32, sets []string) error {
	var undo []uint32
	if m := s.Mailbox(); m != nil {
		for _, set := range sets {
			ranges, err := imapcodec.ParseUIDSet(set)
			if err != nil {
				continue
			}
			for _, u := range view {
				if !ranges.Contains(imap.UID(u)) {
					continue
				}
				if f, _, ok := m.State().Flags(u); ok && !slices.ContainsFunc(f, isDeleted) {
					undo = append(undo, u)
				}
			}
		}
	}
	var err error
	for try := 0; try < 2; try++ {
		if err = flagAndExpunge(ctx, s, sets); err == nil {
			return nil
		}
		e.at("move:retry")
	}
	if len(undo) > 0 {
		for _, set := range uidset.Batches(uidset.Compact(view, undo)) {
			if _, uerr := s.Exec(ctx, "UID STORE "+set+` -FLAGS.SILENT (\Deleted)`, nil); uerr != nil {
				s.Logger().Warn("synthesized MOVE: could not take back \\Deleted from the originals", "err", uerr)
			}
		}
	}
	return err
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

// incomplete answers a MOVE whose copies exist but whose originals could
// not be removed: NO, so the client does not believe them gone (it may
// find the copies and retry, or delete them itself).
func (e *Extension) incomplete(x *proxy.Exchange, err error) error {
	e.movesIncomplete.Add(1)
	x.Session().Logger().Warn("synthesized MOVE copied but did not expunge", "err", err)
	return x.Reply("NO", "", "The messages were copied but could not be removed from this mailbox.")
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

// add takes the tagged answer of batch i's UID COPY.
func (c *copyUIDs) add(i int, h imapcodec.ResponseHead) {
	f := strings.Fields(h.CodeArg)
	if !strings.EqualFold(h.Code, "COPYUID") || len(f) != 3 || i > 0 && f[0] != c.validity {
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
