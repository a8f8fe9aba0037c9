package uidplus

import (
	"context"
	"errors"
	"strings"

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
// client doing COPY + STORE + UID EXPUNGE itself would show.
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
	set := setOf(src)
	e.at("move:before")
	resp, err := s.Exec(ctx, "UID COPY "+set+" "+arg, nil)
	var se *upstream.StatusError
	if errors.As(err, &se) {
		h := se.Head
		code := h.Code
		if h.CodeArg != "" {
			code += " " + h.CodeArg
		}
		return x.Reply(h.Name, code, h.Text)
	}
	if err != nil {
		return unavailable(err)
	}
	copyUID := ""
	if strings.EqualFold(resp.Head.Code, "COPYUID") {
		copyUID = resp.Head.CodeArg
		// Its source set names exactly what was copied: an original
		// expunged before the COPY reached it is not in it.
		if f := strings.Fields(copyUID); len(f) == 3 {
			set = f[1]
		}
	}
	e.at("move:copied")
	if _, err := s.Exec(ctx, `UID STORE `+set+` +FLAGS.SILENT (\Deleted)`, nil); err != nil {
		return e.incomplete(x, err)
	}
	if _, err := s.Exec(ctx, "UID EXPUNGE "+set, nil); err != nil {
		return e.incomplete(x, err)
	}
	if copyUID != "" {
		if err := s.Write([]byte("* OK [COPYUID " + copyUID + "] Moved UIDs.\r\n")); err != nil {
			return err
		}
	}
	e.moves.Add(1)
	return x.Reply("OK", "", "Move completed.")
}

// incomplete answers a MOVE whose copies exist but whose originals could
// not be removed: NO, so the client does not believe them gone (it may
// find the copies and retry, or delete them itself).
func (e *Extension) incomplete(x *proxy.Exchange, err error) error {
	e.movesIncomplete.Add(1)
	x.Session().Logger().Warn("synthesized MOVE copied but did not expunge", "err", err)
	return x.Reply("NO", "", "The messages were copied but could not be removed from this mailbox.")
}
