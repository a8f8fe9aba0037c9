package proxy

import (
	"context"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// forgetOnOK wraps last, the relay of a DELETE or RENAME, so that once the
// upstream has answered OK the hub drops the saved states of the mailboxes
// that went (hub.Hub.ForgetMailboxes): the deleted one, or the renamed one
// and those below it, which a RENAME moves with it. Without it their
// states stayed in the Store for good, and a client renaming a mailbox
// again and again, selecting it under each name, stored a full copy of
// its messages' state each time. A handler that answers the command
// itself never reaches last, and nothing is dropped. The names are spelt
// as SELECT spells them (canonicalName); the hierarchy delimiter, when
// the name or a RENAME's children need it and the account's is not known
// yet, is asked for after the command, at most once per account. RENAME
// INBOX moves INBOX's messages and leaves INBOX, whose state stays. A
// command whose first segment ends in a literal (a name sent as a
// literal, streamed in the authenticated state where no extension reads
// DELETE or RENAME) is not followed.
func (s *Session) forgetOnOK(x *Exchange, last Next) Next {
	if x.Name != "DELETE" && x.Name != "RENAME" || x.streamed && x.Segments[0].Literal != nil {
		return last
	}
	cmd, err := imapcodec.ParseCommand(x.Segments, s.cfg.Limits)
	if err != nil || cmd.Args.SP() != nil {
		return last
	}
	raw, err := cmd.Args.AString()
	if err != nil || x.Name == "RENAME" && strings.EqualFold(raw, "INBOX") {
		return last
	}
	return func(ctx context.Context, x *Exchange) error {
		err := last(ctx, x)
		if err != nil || x.Status() != "OK" {
			return err
		}
		children := x.Name == "RENAME" && s.srv.hub.Persistent()
		delim := ""
		if needsDelim(raw) || children {
			if h, herr := s.Hierarchy(ctx); herr == nil {
				delim = h.Delim
			}
		}
		name, below := canonicalName(raw, delim), ""
		if children && delim != "" {
			below = name + delim
		}
		s.srv.hub.ForgetMailboxes(s.account, name, below)
		return nil
	}
}
