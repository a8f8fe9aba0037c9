package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// coreCommand is a command the session core answers or relays with
// bookkeeping of its own.
type coreCommand struct {
	minState, maxState State // maxState 0 means no upper bound
	// preAuthOnly restricts the command to the not-authenticated state
	// (maxState cannot say so: its zero value means no bound).
	preAuthOnly bool
	handle      func(s *Session, ctx context.Context, x *Exchange) error
}

var coreCommands map[string]coreCommand

func init() {
	coreCommands = map[string]coreCommand{
		"CAPABILITY":   {handle: (*Session).cmdCapability},
		"NOOP":         {handle: (*Session).cmdNoop},
		"LOGOUT":       {handle: (*Session).cmdLogout},
		"ID":           {handle: (*Session).cmdID},
		"STARTTLS":     {preAuthOnly: true, handle: (*Session).cmdStartTLS},
		"LOGIN":        {preAuthOnly: true, handle: (*Session).cmdLogin},
		"AUTHENTICATE": {preAuthOnly: true, handle: (*Session).cmdAuthenticate},
		"ENABLE":       {minState: StateAuthenticated, maxState: StateAuthenticated, handle: (*Session).cmdEnable},
		"SELECT":       {minState: StateAuthenticated, handle: (*Session).cmdSelect},
		"EXAMINE":      {minState: StateAuthenticated, handle: (*Session).cmdSelect},
		"CLOSE":        {minState: StateSelected, handle: (*Session).cmdClose},
		"UNSELECT":     {minState: StateSelected, handle: (*Session).cmdClose},
	}
}

// knownCommands are the RFC 3501 commands (and common extensions') names,
// for telling "not in this state" from "unknown".
var knownCommands = map[string]bool{
	"CREATE": true, "DELETE": true, "RENAME": true, "SUBSCRIBE": true, "UNSUBSCRIBE": true,
	"LIST": true, "LSUB": true, "STATUS": true, "APPEND": true, "CHECK": true, "EXPUNGE": true,
	"SEARCH": true, "FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID FETCH": true,
	"UID STORE": true, "UID COPY": true, "UID MOVE": true, "UID SEARCH": true, "UID EXPUNGE": true,
	"NAMESPACE": true, "IDLE": true, "GETQUOTA": true, "GETQUOTAROOT": true, "SORT": true,
	"THREAD": true, "UID SORT": true, "UID THREAD": true,
}

// neverRelayed are commands that change the upstream connection itself
// (its encoding, its login, what it reports unasked): relayed, they would
// spoil a pooled connection for the next lessee. Unless an extension
// implements them, the proxy answers them as unknown.
var neverRelayed = map[string]bool{
	"COMPRESS": true, "NOTIFY": true, "UNAUTHENTICATE": true, "IDLE": true,
	"XCLIENT": true, "STARTTLS": true, "LOGIN": true, "AUTHENTICATE": true, "ENABLE": true,
	// LANGUAGE (RFC 5255) sets the language of the connection's
	// responses: the next session to lease the connection would get it.
	"LANGUAGE": true,
}

// selectedOnly are relayed commands that need a selected mailbox; the core
// refuses them itself in the authenticated state rather than relaying them to
// a connection that might, from an earlier lease, still have one selected.
var selectedOnly = map[string]bool{
	"CHECK": true, "EXPUNGE": true, "SEARCH": true, "FETCH": true, "STORE": true, "COPY": true,
	"MOVE": true, "UID FETCH": true, "UID STORE": true, "UID COPY": true, "UID MOVE": true,
	"UID SEARCH": true, "UID EXPUNGE": true, "SORT": true, "THREAD": true, "UID SORT": true,
	"UID THREAD": true,
}

// relayable are upstream capabilities a relay can pass on unchanged: they
// add commands or response data that need no help from the proxy. Anything
// not listed (CONDSTORE, QRESYNC, NOTIFY, COMPRESS, IDLE, IMAP4rev2, UTF8=...)
// is either provided by an extension or not offered. SEARCHRES and
// CONTEXT=SEARCH/SORT are left out because their state lives on one upstream
// connection, and sessions use whichever connection the pool lends.
// LIST-STATUS is left out because its STATUS HIGHESTMODSEQ would be the
// upstream's, not the proxy's (see extensions/condstore); clients fall
// back to STATUS, which the proxy answers.
var relayable = []string{
	"NAMESPACE", "UIDPLUS", "MOVE", "ESEARCH", "ESORT", "SPECIAL-USE",
	"CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-MYRIGHTS", "BINARY", "CATENATE",
	"MULTIAPPEND", "SORT", "SORT=DISPLAY", "CHILDREN", "WITHIN",
	"QUOTA", "ACL", "METADATA", "METADATA-SERVER", "STATUS=SIZE", "SAVEDATE", "OBJECTID",
	"PREVIEW", "SPECIAL-USE", "URL-PARTIAL", "FUZZY", "MAILBOX-REFERRALS", "LOGIN-REFERRALS",
}

var relayablePrefixes = []string{"THREAD=", "I18NLEVEL=", "QUOTA=", "RIGHTS=", "APPENDLIMIT=", "SNIPPET="}

func relayableCaps(up upstream.Caps) []string {
	var out []string
	for _, c := range relayable {
		if v, ok := up[c]; ok {
			out = append(out, v)
		}
	}
	for _, p := range relayablePrefixes {
		out = append(out, sortedStrings(up.WithPrefix(p))...)
	}
	return out
}

func (s *Session) cmdCapability(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	if !cmd.Args.AtEnd() {
		return x.done("BAD", "", "CAPABILITY takes no arguments.")
	}
	s.Write([]byte("* CAPABILITY " + strings.Join(s.capabilities(), " ") + "\r\n"))
	return x.done("OK", "", "Capability completed.")
}

// cmdNoop answers NOOP. In the selected state it asks the hub's watcher to
// check the upstream now and reports what changed; otherwise there is
// nothing to learn.
func (s *Session) cmdNoop(ctx context.Context, x *Exchange) error {
	if s.mbox != nil {
		s.syncMailbox(ctx, syncTimeout)
		if _, err := s.deliver(x, true); err != nil {
			return err
		}
	}
	return x.done("OK", "", "NOOP completed.")
}

func (s *Session) cmdLogout(ctx context.Context, x *Exchange) error {
	s.Write([]byte("* BYE Logging out\r\n"))
	x.done("OK", "", "Logout completed.")
	s.Flush()
	s.byeOnce.Do(func() {}) // the BYE has been sent
	s.setState(StateLogout)
	return nil
}

func (s *Session) cmdID(ctx context.Context, x *Exchange) error {
	if err := checkIDArgs(x.cmd); err != nil {
		return x.done("BAD", "", "Error in IMAP command ID: "+err.Error()+".")
	}
	if s.state != StateNotAuthenticated && s.upCaps.Has("ID") {
		return s.relayWhole(ctx, x)
	}
	s.Write([]byte(`* ID ("name" "lemonproxy" "version" ` + string(imapcodec.AppendQuoted(nil, Version)) + ")\r\n"))
	return x.done("OK", "", "ID completed.")
}

// checkIDArgs checks the argument of ID (RFC 2971 3.1): NIL, or a list of
// at most 30 field-value pairs whose fields are strings of at most 30
// octets and values strings of at most 1024 octets or NIL (#16.19: the
// proxy answered anything, 5,000 unbalanced parentheses included).
func checkIDArgs(cmd *imapcodec.Command) error {
	p := cmd.Args
	if p.SP() != nil {
		return errors.New("ID needs NIL or a parenthesised list")
	}
	v, err := p.Value()
	if err != nil || !p.AtEnd() {
		return errors.New("ID needs NIL or a parenthesised list")
	}
	if imapcodec.IsNil(v) {
		return nil
	}
	l, ok := v.(imapcodec.List)
	if !ok || len(l)%2 != 0 {
		return errors.New("ID needs NIL or a list of field-value pairs")
	}
	if len(l) > 60 {
		return errors.New("ID allows at most 30 field-value pairs")
	}
	for i := 0; i < len(l); i += 2 {
		field, ok := l[i].(imapcodec.String)
		if !ok || len(field.Data) > 30 {
			return errors.New("ID fields are strings of at most 30 octets")
		}
		if imapcodec.IsNil(l[i+1]) {
			continue
		}
		value, ok := l[i+1].(imapcodec.String)
		if !ok || len(value.Data) > 1024 {
			return errors.New("ID values are strings of at most 1024 octets, or NIL")
		}
	}
	return nil
}

func (s *Session) cmdStartTLS(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	if !cmd.Args.AtEnd() {
		return x.done("BAD", "", "STARTTLS takes no arguments.")
	}
	if !s.canStartTLS() {
		return x.done("BAD", "", "STARTTLS not available.")
	}
	x.done("OK", "", "Begin TLS negotiation now.")
	if err := s.Flush(); err != nil {
		return err
	}
	return s.starttls()
}

func (s *Session) cmdEnable(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	args, err := cmd.Args.Values()
	if err != nil || len(args) == 0 {
		return x.done("BAD", "", "ENABLE needs at least one capability name.")
	}
	var enabled []string
	for _, a := range args {
		name, ok := a.(imapcodec.Atom)
		if !ok {
			return x.done("BAD", "", "ENABLE takes atoms.")
		}
		up := strings.ToUpper(string(name))
		if s.enabled[up] {
			continue
		}
		for _, e := range s.srv.enablers {
			if e.Enable(s, up) {
				s.setEnabled(up)
				enabled = append(enabled, string(name))
				break
			}
		}
	}
	line := "* ENABLED"
	for _, n := range enabled {
		line += " " + n
	}
	s.Write([]byte(line + "\r\n"))
	return x.done("OK", "", "Enabled.")
}

// cmdSelect relays SELECT and EXAMINE, arguments untouched, and subscribes
// the session to the mailbox's watcher in the hub. The session's view of the
// mailbox is the hub's state at that moment; the upstream's EXISTS and
// [UNSEEN] are rewritten to match it, so the client's sequence numbers are
// the session's from the first response on.
func (s *Session) cmdSelect(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	var mailbox string
	err := cmd.Args.SP()
	if err == nil {
		mailbox, err = cmd.Args.AString()
	}
	if err != nil {
		return x.done("BAD", "", cmd.Name+" needs a mailbox name.")
	}
	segs := cmd.Segments
	params, err := s.selectParams(cmd)
	if err != nil {
		return x.done("BAD", "", sentence(err.Error())+".")
	}
	if params != nil {
		// The parameters are the extensions'; the upstream gets a plain
		// command.
		segs = selectCommand(cmd.Tag, cmd.Name, mailbox)
	}
	if s.mbox != nil {
		for _, h := range s.srv.selectHooks {
			h.SelectClosing(s)
		}
	}
	// Whatever happens now, the previous mailbox is closed (RFC 3501 6.3.1).
	s.setState(StateAuthenticated)
	up, err := s.leaseAny(ctx)
	if err != nil {
		return s.upstreamUnavailable(cmd.Tag, err)
	}
	mailbox = s.mailboxName(ctx, up, mailbox) // inbox/Child is INBOX/Child (names.go)
	key := hub.Key{Account: s.account, Mailbox: mailbox}
	// The watcher's round trip that brings the state up to date
	// (watchSelected) overlaps the upstream's SELECT.
	early := s.srv.hub.SyncSoon(key)
	// What the state knew before the SELECT went upstream, the
	// connection will have seen (catchup.go).
	var mark syncMark
	var markState *syncstate.Mailbox
	if early != nil {
		if markState = early.State(); markState != nil {
			mark = markOf(markState)
		}
	}
	up.Selected = ""
	var collected []*Response
	x.Segments = segs
	x.collect = &collected
	head, err := s.relayCommand(up, x)
	x.collect = nil
	if err != nil {
		return err
	}
	if head.Tag == "" { // failed and already answered
		s.release()
		return nil
	}
	if head.Name != "OK" {
		s.forgetIfGone(ctx, up, head, mailbox)
		s.release()
		for _, r := range collected {
			s.writeResponse(r)
		}
		return s.writeTagged(x, head)
	}
	readOnly := cmd.Name == "EXAMINE" || head.Code == "READ-ONLY"
	var uidValidity uint32
	for _, r := range collected {
		if r.Head.Code == "UIDVALIDITY" {
			uidValidity = upstream.ParseUIDValidity(r.Head.CodeArg)
		}
	}
	up.Selected, up.ReadOnly, up.UIDValidity = mailbox, readOnly, uidValidity
	if markState == nil || markState.UIDValidity() != uidValidity {
		mark = syncMark{} // nothing known: the next command catches up
	}
	// Not the marks the connection had of the mailbox it had selected
	// before: they may run far above this one's.
	up.SyncedTo, up.SyncedUID = mark.modseq, mark.uid
	s.release()

	m := &selectedMailbox{name: mailbox, readOnly: readOnly}
	if err := s.watchSelected(ctx, m, key, early); err != nil {
		s.log.Warn("cannot watch mailbox", "mailbox", mailbox, "err", err)
		return x.done("NO", "UNAVAILABLE", "Cannot open the mailbox now; try again later.")
	}
	if uidValidity != 0 && m.state.UIDValidity() != uidValidity {
		// The mailbox was deleted and re-created under the hub's
		// watcher (#16.8): its state is of the old one. The watcher
		// starts over; this session waits for the new state, and the
		// sessions of the old one hear of it at their next command.
		m.sub.Close()
		rctx, cancel := context.WithTimeout(ctx, syncTimeout)
		err := s.srv.hub.Resync(rctx, key, uidValidity)
		cancel()
		if err == nil {
			err = s.watchSelected(ctx, m, key, nil)
		}
		if err == nil && m.state.UIDValidity() != uidValidity {
			m.sub.Close()
			err = fmt.Errorf("state has UIDVALIDITY %d, the upstream %d", m.state.UIDValidity(), uidValidity)
		}
		if err != nil {
			s.log.Warn("mailbox changed under its watcher", "mailbox", mailbox, "err", err)
			return x.done("NO", "UNAVAILABLE", "The mailbox changed while it was opened; try again.")
		}
	}
	snap := m.state.Snapshot()
	m.view, m.pos = snap.UIDs, snap.Highest
	noteSelectRecent(m.state, collected, m.view)
	m.takeRecent(0, m.view.last())
	recentSent := false
	for _, r := range collected {
		switch {
		case r.Head.Name == "EXISTS" && r.Head.HasNum:
			// The session's own RECENT follows (recent.go); the
			// upstream's is its connection's.
			line := fmt.Appendf(nil, "* %d EXISTS\r\n", len(m.view))
			line = append(line, m.recentLine()...)
			r.Segments = []imapcodec.Segment{{Text: line[:len(line)-2]}}
			recentSent = true
		case r.Head.Name == "RECENT" && r.Head.HasNum:
			continue
		case r.Head.Name == "FLAGS" && !r.Streamed:
			m.noteFlagList(r.Segments)
		case r.Head.Name == "OK" && r.Head.Code == "UNSEEN":
			seq := m.firstUnseen()
			if seq == 0 {
				continue
			}
			r.Segments = []imapcodec.Segment{{Text: fmt.Appendf(nil, "* OK [UNSEEN %d] %s", seq, r.Head.Text)}}
		}
		s.writeResponse(r)
	}
	if !recentSent {
		s.Write(m.recentLine())
	}
	s.mbox = m
	s.setState(StateSelected)
	for _, h := range s.srv.selectHooks {
		if err := h.SelectOpened(s, params); err != nil {
			return err
		}
	}
	return s.writeTagged(x, head)
}

// watchSelected subscribes m to the hub's watcher of key and brings the
// watcher up to date: it may have been running for other sessions and not
// have heard yet of changes this client made through pooled connections
// (CLOSE, APPEND in the authenticated state), which SELECT must report.
// early, if not nil, is a round trip asked for when the SELECT arrived
// (Hub.SyncSoon), which does as well: those changes were made before.
func (s *Session) watchSelected(ctx context.Context, m *selectedMailbox, key hub.Key, early *hub.PendingSync) error {
	sub, err := s.srv.hub.Watch(ctx, key, s.watcherDial(), s.notify(m))
	if err != nil {
		return err
	}
	m.sub, m.state = sub, sub.State()
	sub.SetIdle(s.currentUpdates() != UpdatesWithCommands)
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	if err := sub.Await(sctx, early); err != nil {
		s.log.Debug("mailbox sync failed", "err", err)
	}
	cancel()
	return nil
}

// selectParams parses the parameter list of SELECT or EXAMINE (RFC 4466
// 2.4) after the mailbox name and hands each parameter to the extension that
// implements it. It returns nil when the command has none.
// forgetIfGone drops the saved state of a mailbox whose SELECT or EXAMINE
// the upstream refused, if the upstream has no such mailbox to select
// (Conn.Selectable): deleted or renamed outside the proxy, where forgetOnOK
// does not see it, its state would stay in the Store for good. Only a
// refusal that may mean the mailbox is gone is looked into, and only for a
// name with a saved state.
func (s *Session) forgetIfGone(ctx context.Context, up *upstream.Conn, head imapcodec.ResponseHead, mailbox string) {
	if head.Name != "NO" || head.Code != "" && head.Code != "NONEXISTENT" || !s.srv.hub.Saved(s.account, mailbox) {
		return
	}
	if ok, err := up.Selectable(ctx, mailbox); err == nil && !ok {
		s.srv.hub.ForgetMailboxes(s.account, mailbox, "")
	}
}

func (s *Session) selectParams(cmd *imapcodec.Command) (map[string]any, error) {
	p := cmd.Args
	if p.AtEnd() {
		return nil, nil
	}
	if err := p.SP(); err != nil {
		return nil, fmt.Errorf("unexpected text after the mailbox name")
	}
	v, err := p.Value()
	list, ok := v.(imapcodec.List)
	if err != nil || !ok || !p.AtEnd() {
		return nil, fmt.Errorf("%s parameters must be one parenthesised list", cmd.Name)
	}
	params := map[string]any{}
	for i := 0; i < len(list); i++ {
		a, ok := list[i].(imapcodec.Atom)
		if !ok {
			return nil, fmt.Errorf("%s parameter names are atoms", cmd.Name)
		}
		name := strings.ToUpper(string(a))
		var arg imapcodec.List
		if i+1 < len(list) {
			if l, ok := list[i+1].(imapcodec.List); ok {
				arg = l
				i++
			}
		}
		h := s.srv.selectParams[name]
		if h == nil {
			return nil, fmt.Errorf("unknown %s parameter %s", cmd.Name, name)
		}
		if _, dup := params[name]; dup {
			return nil, fmt.Errorf("%s parameter %s given twice", cmd.Name, name)
		}
		val, err := h.SelectParam(s, name, arg)
		if err != nil {
			return nil, err
		}
		params[name] = val
	}
	return params, nil
}

// selectCommand builds "tag SELECT mailbox" for the upstream.
func selectCommand(tag, name, mailbox string) []imapcodec.Segment {
	head := []byte(tag + " " + name + " ")
	if imapcodec.CanQuote(mailbox) {
		return []imapcodec.Segment{{Text: imapcodec.AppendQuoted(head, mailbox)}}
	}
	return []imapcodec.Segment{
		{Text: head, Literal: &imapcodec.LiteralHeader{Size: int64(len(mailbox))}, Data: []byte(mailbox)},
		{Text: nil},
	}
}

// cmdClose handles CLOSE (relayed: it expunges) and UNSELECT (answered by
// the proxy: the session holds no upstream connection to unselect).
func (s *Session) cmdClose(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	if !cmd.Args.AtEnd() {
		return x.done("BAD", "", cmd.Name+" takes no arguments.")
	}
	if cmd.Name == "UNSELECT" {
		s.setState(StateAuthenticated)
		return x.done("OK", "", "Unselect completed.")
	}
	if s.mbox.readOnly {
		// CLOSE of a read-only mailbox expunges nothing (RFC 3501 6.4.2).
		s.setState(StateAuthenticated)
		return x.done("OK", "", "Close completed.")
	}
	up, err := s.upstreamConn(ctx)
	if err != nil {
		return s.upstreamUnavailable(cmd.Tag, err)
	}
	m := s.mbox
	s.mbox = nil // CLOSE sends no EXPUNGE responses: nothing to translate or deliver
	head, err := s.relayCommand(up, x)
	s.mbox = m
	if err != nil {
		return err
	}
	if head.Name == "OK" {
		up.Selected = ""
		s.setState(StateAuthenticated)
	}
	s.release()
	return nil
}

// done writes the tagged answer of a command the core answers itself.
// Unlike Reply it reports no mailbox changes: the core's own commands that
// may do so (NOOP) do it themselves.
func (x *Exchange) done(status, code, text string) error {
	x.status, x.answered = status, true
	return x.s.WriteStatus(x.Tag, status, code, text)
}

func sortedStrings(l []string) []string {
	slices.Sort(l)
	return l
}
