package proxy

import (
	"context"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// maxTold bounds how many new messages one COPY may tell the hub of; a
// larger COPY waits for the watcher's round trip, as every COPY did.
const maxTold = 1024

// tellAdded tells the hub the messages the command added to the selected
// mailbox, as the upstream's own tagged answer names them (APPENDUID,
// COPYUID: RFC 4315), so that the client hears of them before the tagged
// answer without waiting for the watcher's round trip (hub/ownchanges.go has
// why that is safe and when the hub refuses). It reports whether the hub
// took them; if not, the caller waits for the round trip as before.
//
// The new messages' flags are the APPEND's flag list, or the copied
// messages' flags as the state has them; the watcher's own report of the
// messages, later, corrects flags the upstream stored otherwise.
func (s *Session) tellAdded(x *Exchange, head imapcodec.ResponseHead) bool {
	t := x.xlate
	if !x.upstreamTagged || head.Name != "OK" || !t.adds || !s.UpstreamCaps().Has("UIDPLUS") {
		// Not the upstream's own success; or a code from an upstream
		// that does not advertise UIDPLUS, which the proxy does not
		// trust (extensions/uidplus strips it from the client's answer).
		// An expunge reported during the command is someone else's
		// (APPEND and COPY remove nothing): the client may hear of it
		// after the tagged answer, and the watcher reports it.
		return false
	}
	var msgs []syncstate.Message
	switch x.Name {
	case "APPEND":
		if head.Code == "APPENDUID" {
			msgs = s.appended(x, head.CodeArg)
		}
	case "COPY", "UID COPY":
		if head.Code == "COPYUID" {
			msgs = s.copied(head.CodeArg)
		}
	}
	if msgs == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	ok, err := s.mbox.sub.Added(ctx, msgs)
	if err != nil {
		s.log.Debug("telling the hub of new messages failed", "err", err)
		return false
	}
	return ok
}

// validity parses the UIDVALIDITY at the start of an APPENDUID or COPYUID
// argument, and says whether it is the selected mailbox's.
func (s *Session) validity(arg string) (rest string, ok bool) {
	v, rest, _ := strings.Cut(arg, " ")
	n, err := strconv.ParseUint(v, 10, 32)
	return rest, err == nil && uint32(n) == s.mbox.state.UIDValidity()
}

// appended returns the message a single-message APPEND added: its UID
// from APPENDUID, its flags from the command. Nil for anything else (a
// MULTIAPPEND, a flag list it cannot read).
func (s *Session) appended(x *Exchange, arg string) []syncstate.Message {
	set, ok := s.validity(arg)
	if !ok {
		return nil
	}
	uid, err := strconv.ParseUint(set, 10, 32)
	if err != nil || uid == 0 {
		return nil // a set: several messages
	}
	flags, ok := appendFlags(x.cmd)
	if !ok {
		return nil
	}
	return []syncstate.Message{{UID: uint32(uid), Flags: flags}}
}

// appendFlags reads the flag list of an APPEND command (none if it has
// none).
func appendFlags(cmd *imapcodec.Command) ([]string, bool) {
	p, _, ok := appendMailbox(cmd)
	if !ok || p.SP() != nil {
		return nil, false
	}
	if c, ok := p.Peek(); !ok || c != '(' {
		return nil, true
	}
	v, err := p.Value()
	list, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return nil, false
	}
	flags := make([]string, 0, len(list))
	for _, f := range list {
		a, ok := f.(imapcodec.Atom)
		if !ok {
			return nil, false
		}
		flags = append(flags, string(a))
	}
	return syncstate.NormalizeFlags(flags), true
}

// copied returns the messages a COPY into the selected mailbox added, in
// ascending UID order: COPYUID pairs each source UID with its copy's,
// and a copy has its source's flags. Nil if a source is not in the state.
func (s *Session) copied(arg string) []syncstate.Message {
	sets, ok := s.validity(arg)
	if !ok {
		return nil
	}
	src, dst, _ := strings.Cut(sets, " ")
	from, err1 := imapcodec.ExpandNumSet(src, maxTold)
	to, err2 := imapcodec.ExpandNumSet(dst, maxTold)
	if err1 != nil || err2 != nil || len(from) != len(to) {
		return nil
	}
	msgs := make([]syncstate.Message, len(to))
	for i, uid := range from {
		flags, _, ok := s.mbox.state.Flags(uid)
		if !ok {
			return nil
		}
		msgs[i] = syncstate.Message{UID: to[i], Flags: flags}
	}
	for i := 1; i < len(msgs); i++ {
		if msgs[i].UID <= msgs[i-1].UID {
			// The hub takes new UIDs in ascending order only; copies in
			// another order are rare enough to wait for the watcher.
			return nil
		}
	}
	return msgs
}
