package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// In the selected state a session has no upstream connection of its own:
// each command runs on whatever connection the pool lends, whose message
// sequence numbers need not match the client's. So commands that take
// sequence numbers are sent upstream in their UID form, with the client's
// numbers translated through the session's view (seqview.go), and the
// answers are translated back: FETCH responses are renumbered by their UID,
// SEARCH, SORT, THREAD and ESEARCH results mapped from UIDs to sequence
// numbers, and the connection's own EXISTS, EXPUNGE and RECENT dropped (the
// session hears of mailbox changes from the hub).

// translation tells the response filter how to turn the upstream's answers
// to the current command into the client's terms.
type translation struct {
	fromName   string // the client's command name, when sent upstream under another
	toName     string // the name it was sent under
	seqResults bool   // search results are UIDs that the client wants as sequence numbers
	stripUID   bool   // a UID item the client did not ask for is removed from FETCH responses
	silent     bool   // STORE .SILENT sent without .SILENT: FETCH answers are recorded, not relayed
	store      *imapcodec.StoreArgs
	before     *toldFlags // silent: the flags its client was told of the messages it names (silentBefore)
	named      *namedUIDs // the UIDs a FETCH or STORE names
	// A FETCH whose answers show flags (catchup.go: fetchShowsFlags), or
	// of the item UID alone: read from formText when a flags-only answer
	// first needs them (itemsRead), not for every FETCH.
	itemsRead, asksFlags, onlyUID bool
	need                          *viewNeed // what it relies on in the leased connection's view (catchup.go); nil: everything
	formRead                      bool      // need and named were read from the form that goes upstream (upstreamForm)
	formText                      []byte    // the first line as translated, before the chain (restated)
	setsSeen                      bool      // a FETCH of a body without PEEK: its answers may show \Seen set by it
	allowExpunge                  bool      // EXPUNGE responses may accompany the command's answer
	syncAfter                     bool      // the command changes the mailbox: sync with the hub before answering
	adds                          bool      // it adds messages to the selected mailbox when it succeeds (APPEND, COPY, MOVE into it)
	expunged                      bool      // the upstream reported an expunge during the command (see needsSync)
	ownChanges                    uint64    // mod-sequences above the connection's SyncedTo its own claims got (see ownChangesSeen)
	sentMark                      uint64    // a command sent ahead of its turn: the state's HIGHESTMODSEQ as it went upstream (staleStoreAnswer)
	resync                        bool      // an answer of it was not claimed (staleStoreAnswer): the hub's watcher syncs before its tagged answer
	// claimed: a STORE's messages whose answer has been claimed (their
	// flags are the state's now), for the FETCHes in flight beside it
	// (storeClaimed).
	claimed map[uint32]bool
}

// needsSync reports whether the command may have changed the selected
// mailbox in a way its client must hear of before the tagged answer, so
// that the session waits for the hub's watcher (beforeTagged). When the
// tagged answer is the upstream's own to the command as the core relayed
// it, the answers tell: a command that removes messages reports each with
// an EXPUNGE response before its tagged answer (RFC 3501 6.4.3, 4315,
// 6851 3.3), and one that adds messages adds none unless it succeeds
// (RFC 3501 6.3.11, 6.4.7: a failed COPY leaves the target as it was). So
// an EXPUNGE with nothing to expunge, a MOVE or UID EXPUNGE of no
// message, a refused APPEND or COPY need no round trip: there is nothing
// of their own to report (issue 20: under imaptest's stress half the
// EXPUNGEs found nothing left to expunge). An answer a handler made
// (Exchange.Reply: MOVE emulated with COPY and UID EXPUNGE, whose
// answers the core never saw) always waits, as before.
func (t *translation) needsSync(x *Exchange) bool {
	if !t.syncAfter {
		return false
	}
	if !x.upstreamTagged {
		return true
	}
	return t.expunged || t.adds && x.status == "OK"
}

// seqCommands take a sequence set as their first argument.
var seqCommands = map[string]bool{"FETCH": true, "STORE": true, "COPY": true, "MOVE": true}

// searchCommands take search criteria.
var searchCommands = map[string]bool{"SEARCH": true, "SORT": true, "THREAD": true}

// translateCommand puts a command of the selected state into the form it
// goes upstream in (x.Segments) and says how its answers come back
// (x.xlate).
func (s *Session) translateCommand(x *Exchange) error {
	m := s.mbox
	cmd := x.cmd
	t := &translation{allowExpunge: true}
	x.xlate = t
	defer func() {
		if len(x.Segments) > 0 {
			t.formText = x.Segments[0].Text
		}
	}()
	name := cmd.Name
	base := strings.TrimPrefix(name, "UID ")
	isUID := base != name
	if cmd.Name == "APPEND" {
		t.syncAfter = targetIsSelected(cmd, m.name)
		t.adds = t.syncAfter
		return nil
	}
	segs := cloneSegments(cmd.Segments)
	x.Segments = segs
	isSeq := seqCommands[base] || s.srv.seqCommands[base]
	if !isUID && (isSeq || searchCommands[base]) {
		t.fromName, t.toName = name, "UID "+name
	}
	switch {
	case isSeq:
		set, rest, err := firstSet(cmd)
		if err != nil {
			return err
		}
		uids := set
		if !isUID {
			seqs, err := imapcodec.ParseNumSet(set)
			if err != nil {
				return err
			}
			us, err := m.view.uidSet(seqs)
			if err != nil {
				return err
			}
			uids = us.String()
		}
		if isUID && (base == "STORE" || base == "COPY" || base == "MOVE" || base == "FETCH" && !m.readOnly && fetchSetsSeen(cmd)) {
			// Commands that change messages work on the client's view
			// (bindStar). A FETCH that changes nothing names whatever
			// the upstream answers for "*" (TestFetchStarAnswersNewMessage).
			bound, err := bindStar(set, m.view.last())
			if err != nil {
				return err
			}
			if bound == "" {
				return ErrNoMessages
			}
			if bound != set {
				uids = bound
				segs[0].Text = slices.Concat([]byte(cmd.Tag+" "+name+" "+uids), rest)
			}
		}
		switch base {
		case "FETCH":
			t.allowExpunge = isUID
			t.stripUID = !isUID && !fetchAsksUID(cmd)
			t.setsSeen = !m.readOnly && fetchSetsSeen(cmd)
			t.named = named(uids)
		case "STORE":
			t.allowExpunge = isUID
			t.stripUID = !isUID
			if st, err := imapcodec.ParseStoreArgs(storeParser(cmd)); err == nil {
				if slices.ContainsFunc(st.Flags, func(f string) bool { return strings.EqualFold(f, `\Recent`) }) {
					// RFC 3501 2.3.2: the server sets \Recent, the
					// client cannot (Dovecot answers BAD too). The
					// proxy's \Recent is its own (recent.go): the
					// upstream must not decide.
					return errStoreRecent
				}
				st.Set = uids
				t.store = st
				t.named = named(uids)
				// STORE ... FLAGS.SILENT goes upstream without .SILENT:
				// its answers tell the hub the new flags at once, and the
				// client still sees none of them (RFC 3501 6.4.6).
				t.silent = st.Silent
				up := *st
				up.Silent = false
				line := fmt.Appendf(nil, "%s UID STORE ", cmd.Tag)
				segs[0].Text = imapcodec.AppendStoreArgs(line, &up)
				return nil
			}
			// Not a STORE the proxy understands: the upstream answers.
		case "MOVE":
			t.syncAfter = true
			t.adds = targetIsSelected(cmd, m.name)
		case "COPY":
			t.syncAfter = targetIsSelected(cmd, m.name)
			t.adds = t.syncAfter
		default: // an extension's (SequenceCommander)
			t.allowExpunge = isUID
		}
		if !isUID {
			segs[0].Text = slices.Concat([]byte(cmd.Tag+" UID "+name+" "+uids), rest)
		}
	case searchCommands[base]:
		if err := rewriteSearch(segs, m, !isUID); err != nil {
			return err
		}
		if !isUID {
			t.seqResults = true
			t.allowExpunge = false
		}
		if base == "THREAD" && !isUID {
			// Only the client's messages: a message the upstream got
			// after the client's view was last brought up to date has
			// no sequence number of the client's, and in a thread tree
			// it cannot simply be left out of the answer (threadToSeqs
			// wrote it as 0, which is no message number).
			last := segs[len(segs)-1]
			key := " NOT ALL"
			if n := m.view.last(); n > 0 {
				key = " UID 1:" + strconv.FormatUint(uint64(n), 10)
			}
			last.Text = append(slices.Clip(last.Text), key...)
			segs[len(segs)-1] = last
		}
	case name == "UID EXPUNGE":
		// Relayed with its set as it is but for "*" (bindStar); "$"
		// would be the saved result of whichever session last searched
		// on the leased connection.
		set, rest, err := firstSet(cmd)
		if err != nil {
			return err
		}
		bound, err := bindStar(set, m.view.last())
		if err != nil {
			return err
		}
		if bound == "" {
			return ErrNoMessages
		}
		if bound != set {
			segs[0].Text = slices.Concat([]byte(cmd.Tag+" "+name+" "+bound), rest)
		}
		t.syncAfter = true
	case name == "EXPUNGE":
		t.syncAfter = true
	}
	return nil
}

// bindStar binds "*" in the UID set of a command that changes messages
// (UID STORE, COPY, MOVE, EXPUNGE, a FETCH that sets \Seen) to last, the
// largest UID of the client's view as the command arrived, as Dovecot
// does: it runs a command on the session's view, and tells of new mail
// after it. Relayed as it was, "*" was the leased connection's largest
// UID, which may be a message delivered since that the client had not
// heard of: "UID STORE 1:* +FLAGS (\Seen)" marked it read, "UID MOVE 1:*
// Archive" moved it, unseen.
// A range with "*" is cut at last ("5:*" is "3" when last is 3); numbers
// the client names are left as they are (it may know them from APPENDUID).
// The result is "" when nothing is left: "1:*" with no messages.
func bindStar(set string, last uint32) (string, error) {
	uids, err := imapcodec.ParseUIDSet(set)
	if err != nil {
		return "", err
	}
	if !uids.Dynamic() {
		return set, nil
	}
	var out imap.UIDSet
	for _, r := range uids {
		lo, hi := uint32(r.Start), uint32(r.Stop)
		if lo != 0 && hi != 0 {
			out.AddRange(r.Start, r.Stop)
			continue
		}
		if last == 0 {
			continue // "*" of no messages: nothing
		}
		n := max(lo, hi) // the end that is not "*", if any
		if n == 0 {
			n = last
		}
		out.AddRange(imap.UID(min(n, last)), imap.UID(last))
	}
	if len(out) == 0 {
		return "", nil
	}
	return out.String(), nil
}

// firstSet returns the set argument of FETCH, STORE, COPY or MOVE (either
// form) or UID EXPUNGE and the text of the first segment after it. RFC
// 5182's "$" is not a set here: an extension that keeps saved results
// replaces it first (CommandRewriter), and without one it is refused.
func firstSet(cmd *imapcodec.Command) (set string, rest []byte, err error) {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	p.Atom() // tag
	p.SP()
	p.Atom() // name
	if strings.HasPrefix(cmd.Name, "UID ") {
		p.SP()
		p.Atom()
	}
	if p.SP() == nil {
		set, err = p.Atom()
	}
	pos := p.Pos()
	if err != nil || pos.Seg != 0 || !imapcodec.IsSequenceSet(set) {
		return "", nil, fmt.Errorf("%s needs a message sequence set", cmd.Name)
	}
	return set, cmd.Segments[0].Text[pos.Off:], nil
}

// storeParser returns a parser of a STORE command positioned after its
// name.
func storeParser(cmd *imapcodec.Command) *imapcodec.Parser {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	p.Atom()
	p.SP()
	p.Atom()
	if strings.HasPrefix(cmd.Name, "UID ") {
		p.SP()
		p.Atom()
	}
	return p
}

func cloneSegments(in []imapcodec.Segment) []imapcodec.Segment {
	out := make([]imapcodec.Segment, len(in))
	for i, s := range in {
		out[i] = s
		out[i].Text = bytes.Clone(s.Text)
	}
	return out
}

// fetchAsksUID reports whether a FETCH command's items include UID.
func fetchAsksUID(cmd *imapcodec.Command) bool {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	vals, err := p.Values()
	if err != nil {
		return true // keep answers as they are
	}
	for _, v := range vals {
		switch v := v.(type) {
		case imapcodec.Atom:
			if strings.EqualFold(string(v), "UID") {
				return true
			}
		case imapcodec.List:
			for _, e := range v {
				if a, ok := e.(imapcodec.Atom); ok && strings.EqualFold(string(a), "UID") {
					return true
				}
			}
		}
	}
	return false
}

// fetchSetsSeen reports whether a FETCH command's items set \Seen
// (RFC 3501 6.4.5: BODY[...], BINARY[...], RFC822 and RFC822.TEXT without
// .PEEK).
func fetchSetsSeen(cmd *imapcodec.Command) bool {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	vals, err := p.Values()
	if err != nil {
		return false
	}
	sets := func(v imapcodec.Value) bool {
		a, ok := v.(imapcodec.Atom)
		if !ok {
			return false
		}
		u := strings.ToUpper(string(a))
		return strings.HasPrefix(u, "BODY[") || strings.HasPrefix(u, "BINARY[") || u == "RFC822" || u == "RFC822.TEXT"
	}
	for _, v := range vals {
		if l, ok := v.(imapcodec.List); ok && slices.ContainsFunc(l, sets) || sets(v) {
			return true
		}
	}
	return false
}

// targetIsSelected reports whether the mailbox argument of COPY, MOVE or
// APPEND names the selected mailbox.
func targetIsSelected(cmd *imapcodec.Command, selected string) bool {
	if cmd.Name == "APPEND" {
		// Read up to the name only: what follows may be a CATENATE list
		// cut by a streamed literal, which no reading of values gets
		// through (such an APPEND into the selected mailbox went
		// unreported until the next command).
		_, name, ok := appendMailbox(cmd)
		return ok && canonicalName(name, "") == selected
	}
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	vals, err := p.Values()
	if err != nil || len(vals) < 3 {
		return false
	}
	idx := 3 // tag NAME seqset mailbox
	if strings.HasPrefix(cmd.Name, "UID ") {
		idx = 4
	}
	if idx >= len(vals) {
		return false
	}
	name, ok := imapcodec.AsString(vals[idx])
	return ok && canonicalName(name, "") == selected
}

// appendMailbox reads an APPEND command's mailbox name from its first
// line, and returns the parser positioned after it. ok is false for a name
// sent as a literal (not worth reading again) or a malformed command.
func appendMailbox(cmd *imapcodec.Command) (p *imapcodec.Parser, name string, ok bool) {
	p = imapcodec.NewParser(cmd.Segments[:1], imapcodec.Limits{})
	p.Atom() // tag
	p.SP()
	p.Atom() // APPEND
	if p.SP() != nil {
		return nil, "", false
	}
	name, err := p.AString()
	return p, name, err == nil
}

// rewriteSearch translates the search keys of SEARCH, SORT or THREAD: with
// toUID, the command goes into its UID form. In both forms every
// sequence set becomes a UID set: a sequence-set key of UID SEARCH is in
// the client's numbering as well (RFC 3501 6.4.4), which the leased
// connection's is not while an expunge has not been reported to the
// client (K-9 Mail's "UID SEARCH n:m NOT DELETED" got the next message's
// UID). RECENT, NEW and OLD name the session's own recent messages
// (recent.go), not the leased connection's.
func rewriteSearch(segs []imapcodec.Segment, m *selectedMailbox, toUID bool) error {
	view := m.view
	_, err := imapcodec.ReplaceSearchKeys(segs, func(k imapcodec.SearchKey) (string, bool, error) {
		switch k.Name {
		case "UID":
			// Relayed as it is, "UID $" would be the saved result of
			// whichever session last searched on the leased connection.
			if a, ok := k.Args[0].(imapcodec.Atom); ok && a == "$" {
				return "", false, errNoSearchRes
			}
			return "", false, nil
		case "RECENT", "NEW", "OLD":
			text, ok := m.recentKey(k.Name)
			return text, ok, nil
		case "":
		default:
			return "", false, nil
		}
		a := string(k.Args[0].(imapcodec.Atom))
		if a == "$" {
			return "", false, errNoSearchRes
		}
		seqs, err := imapcodec.ParseNumSet(a)
		if err != nil {
			return "", false, err
		}
		uids := view.uidSetWithin(seqs)
		if len(uids) == 0 {
			return "NOT ALL", true, nil // only numbers the client has no message for
		}
		return "UID " + uids.String(), true, nil
	})
	if !toUID && !errors.Is(err, errNoSearchRes) {
		// The UID form goes upstream as it is when its criteria do not
		// parse: the upstream says what is wrong.
		return nil
	}
	if err != nil {
		return err
	}
	// "tag SEARCH" -> "tag UID SEARCH"
	t := segs[0].Text
	i := bytes.IndexByte(t, ' ')
	segs[0].Text = slices.Concat(t[:i+1], []byte("UID "), t[i+1:])
	return nil
}

// errStoreRecent refuses a STORE of \Recent.
var errStoreRecent = errors.New(`\Recent cannot be stored`)

// errNoSearchRes refuses RFC 5182's "$" when no extension replaced it
// (CommandRewriter): the proxy keeps no search result of its own, and the
// upstream's would be that of another session sharing its connection.
var errNoSearchRes = errors.New("the search result variable $ is not supported")

// rewriteCommand lets the CommandRewriters restate x's command before its
// translation.
func (s *Session) rewriteCommand(x *Exchange) error {
	for _, r := range s.srv.rewriters {
		segs, err := r.RewriteCommand(s, x.cmd)
		if err != nil {
			return err
		}
		if segs == nil {
			continue
		}
		cmd, err := imapcodec.ParseCommand(segs, s.cfg.Limits)
		if err != nil {
			return err
		}
		if cmd.Name != x.Name || cmd.Tag != x.Tag {
			return fmt.Errorf("internal error: %s rewritten as %s", x.Name, cmd.Name)
		}
		x.cmd, x.Segments = cmd, cmd.Segments
	}
	return nil
}

// noteExpunged records that the upstream reported an expunge in the
// answers to x (translation.needsSync), and to an EXPUNGE sent ahead of
// its turn behind x (ahead.go), whose own may come before x's tagged
// response on a server that runs them at once: its tagged answer then
// waits for the hub to see the expunge (an extra round trip of the
// watcher if the expunge was someone else's).
func (s *Session) noteExpunged(x *Exchange) {
	if x != nil && x.xlate != nil {
		x.xlate.expunged = true
	}
	for _, a := range s.ahead {
		if a.upTag != "" && a.x.Name == "EXPUNGE" && a.x.xlate != nil {
			a.x.xlate.expunged = true
		}
	}
}

// answerEmpty answers a command that names no message (ErrNoMessages) with
// OK, after the changes the client may be told during it (no expunges
// during a command with sequence numbers, RFC 3501 7.4.1).
func (s *Session) answerEmpty(x *Exchange) error {
	x.xlate = &translation{allowExpunge: strings.HasPrefix(x.Name, "UID ")}
	return x.Reply("OK", "", x.Name+" completed, no messages.")
}

// filterSelected translates an untagged response on a leased connection in
// the selected state (see the comment at the top of this file).
func (s *Session) filterSelected(x *Exchange, resp *Response) *Response {
	m := s.mbox
	h := resp.Head
	switch h.Name {
	case "EXISTS", "RECENT", "EXPUNGE":
		if h.HasNum {
			if h.Name == "EXPUNGE" {
				s.noteExpunged(x)
			}
			return nil
		}
	case "VANISHED":
		s.noteExpunged(x)
	case "FETCH":
		return s.translateFetch(x, resp)
	case "FLAGS":
		if !resp.Streamed {
			m.noteFlagList(resp.Segments)
		}
		return resp
	}
	var t *translation
	if x != nil {
		t = x.xlate
	}
	if t == nil || resp.Streamed || len(resp.Segments) != 1 {
		return resp
	}
	text := resp.Segments[0].Text
	switch h.Name {
	case "SEARCH", "SORT":
		if t.seqResults {
			resp.Segments[0].Text = searchToSeqs(text, m.view)
		}
	case "THREAD":
		if t.seqResults {
			resp.Segments[0].Text = threadToSeqs(text, m.view)
		}
	case "ESEARCH":
		resp.Segments[0].Text = translateESearch(text, x.Tag, t.seqResults, m.view)
	}
	return resp
}

// searchToSeqs maps "* SEARCH n n n [(MODSEQ m)]" (or SORT) from UIDs to
// the client's sequence numbers; messages the client does not know are
// left out. The line can hold a whole mailbox (600 KB for 100,000
// messages): it is rewritten in one pass over its bytes, without a string
// per number.
func searchToSeqs(text []byte, view seqView) []byte {
	// "* NAME": copied as it is.
	i, words := 0, 0
	for ; i < len(text) && words < 2; i++ {
		if text[i] == ' ' {
			words++
		}
	}
	if words < 2 {
		return text
	}
	out := make([]byte, 0, len(text))
	out = append(out, text[:i-1]...)
	for i < len(text) {
		j := i
		for j < len(text) && text[j] != ' ' {
			j++
		}
		field := text[i:j]
		switch {
		case len(field) > 0 && field[0] == '(':
			out = append(append(out, ' '), text[i:]...) // (MODSEQ m) and what follows
			return out
		case len(field) == 0:
		default:
			if u, err := strconv.ParseUint(string(field), 10, 32); err == nil {
				if seq := view.seqOf(uint32(u)); seq != 0 {
					out = strconv.AppendUint(append(out, ' '), uint64(seq), 10)
				}
			} else {
				out = append(append(out, ' '), field...)
			}
		}
		i = j + 1
	}
	return out
}

// threadToSeqs maps every number of "* THREAD (1 2)(3 (4)(5))" from a UID
// to the client's sequence number.
func threadToSeqs(text []byte, view seqView) []byte {
	out := make([]byte, 0, len(text))
	for i := 0; i < len(text); {
		if text[i] < '0' || text[i] > '9' {
			out = append(out, text[i])
			i++
			continue
		}
		j := i
		for j < len(text) && text[j] >= '0' && text[j] <= '9' {
			j++
		}
		u, _ := strconv.ParseUint(string(text[i:j]), 10, 32)
		out = strconv.AppendUint(out, uint64(view.seqOf(uint32(u))), 10)
		i = j
	}
	return out
}

// translateESearch restores the client's tag in an ESEARCH response
// (RFC 4731: "* ESEARCH (TAG "t") [UID] data...") and, for a translated
// search (seqResults), turns UID results into sequence numbers: MIN, MAX,
// ALL, and the results of RFC 5267's PARTIAL.
func translateESearch(text []byte, clientTag string, seqResults bool, view seqView) []byte {
	p := imapcodec.NewParser([]imapcodec.Segment{{Text: text}}, imapcodec.Limits{})
	vals, err := p.Values()
	if err != nil || len(vals) < 2 {
		return text
	}
	out := []byte("* ESEARCH")
	rest := vals[2:]
	if len(rest) > 0 {
		if l, ok := rest[0].(imapcodec.List); ok && len(l) == 2 {
			if a, ok := l[0].(imapcodec.Atom); ok && strings.EqualFold(string(a), "TAG") {
				out = imapcodec.AppendQuoted(append(out, " (TAG "...), clientTag)
				out = append(out, ')')
				rest = rest[1:]
			}
		}
	}
	for i := 0; i < len(rest); i++ {
		v := rest[i]
		a, _ := v.(imapcodec.Atom)
		name := strings.ToUpper(string(a))
		if seqResults {
			switch name {
			case "UID":
				continue
			case "ALL":
				// In the order given: an ESORT answer (RFC 5267 3.1)
				// lists the messages in sort order.
				if i+1 < len(rest) {
					arg, _ := rest[i+1].(imapcodec.Atom)
					i++
					if seqs := orderedSeqs(string(arg), view); len(seqs) > 0 {
						out = append(append(out, ' '), a...)
						out = imapcodec.AppendNumSet(append(out, ' '), seqs)
					}
				}
				continue
			case "MIN", "MAX":
				if i+1 < len(rest) {
					arg, _ := rest[i+1].(imapcodec.Atom)
					i++
					uids, err := imapcodec.ParseUIDSet(string(arg))
					if err != nil {
						continue
					}
					seqs := view.seqSet(uids)
					if len(seqs) == 0 {
						continue
					}
					out = append(append(out, ' '), a...)
					out = append(append(out, ' '), seqs.String()...)
				}
				continue
			case "PARTIAL":
				// RFC 5267 4.4: "PARTIAL (lo:hi set)"; the range counts
				// positions in the result and stays, the set is
				// results. NIL (none) stays NIL.
				if i+1 < len(rest) {
					if l, ok := rest[i+1].(imapcodec.List); ok && len(l) == 2 {
						i++
						set := "NIL"
						if arg, ok := l[1].(imapcodec.Atom); ok && !imapcodec.IsNil(arg) {
							if uids, err := imapcodec.ParseUIDSet(string(arg)); err == nil {
								if seqs := view.seqSet(uids); len(seqs) > 0 {
									set = seqs.String()
								}
							}
						}
						out = imapcodec.AppendValue(append(append(append(out, ' '), a...), ' '), imapcodec.List{l[0], imapcodec.Atom(set)})
						continue
					}
				}
			}
		}
		out = imapcodec.AppendValue(append(out, ' '), v)
	}
	return out
}

// orderedSeqs maps the UIDs of a set as written ("5,3:4,1") to the
// client's sequence numbers in the order written, each range in its own
// direction, leaving out what the client does not know. A range costs no
// more than the messages of the view within it.
func orderedSeqs(set string, view seqView) []uint32 {
	var out []uint32
	for _, el := range strings.Split(set, ",") {
		a, b, isRange := strings.Cut(el, ":")
		lo, err1 := strconv.ParseUint(a, 10, 32)
		hi, err2 := lo, error(nil)
		if isRange {
			hi, err2 = strconv.ParseUint(b, 10, 32)
		}
		if err1 != nil || err2 != nil {
			return nil // "*" and garbage: no server writes them here
		}
		down := lo > hi
		if down {
			lo, hi = hi, lo
		}
		i, _ := slices.BinarySearch(view, uint32(lo))
		j := i
		for j < len(view) && uint64(view[j]) <= hi {
			j++
		}
		start := len(out)
		for k := i; k < j; k++ {
			out = append(out, uint32(k+1))
		}
		if down {
			slices.Reverse(out[start:])
		}
	}
	return out
}

// translateFetch renumbers a FETCH response by its UID, or drops it when the
// client does not know the message (yet).
func (s *Session) translateFetch(x *Exchange, resp *Response) *Response {
	m := s.mbox
	seg := resp.Segments[0].Text
	uid, uidStart, uidEnd, ok := findFetchUID(seg)
	if !ok {
		return nil
	}
	seq := m.view.seqOf(uid)
	if seq == 0 || reportsOnly(x, uid, resp) {
		return nil
	}
	// The response read in x's turn may answer a command sent ahead
	// behind it (ahead.go): its claims, its silence and its MODSEQ are
	// that command's. The client is shown it now all the same, as a
	// server may show flags at any time (RFC 3501 7.4.2).
	turn := x
	x = s.whoseAnswer(x, uid, resp)
	var t *translation
	if x != nil {
		t = x.xlate
	}
	// FLAGS the client sees here are not repeated by the delivery after
	// this command. The answers to the session's own STORE also go into
	// the hub at once (other sessions hear without waiting for the
	// watcher): they are the flags right after the change. Other FETCH
	// answers are not trusted that far: the leased connection may lag
	// behind a change the watcher already recorded, and its older flags
	// must not undo it.
	flags, hasFlags := fetchFlags(resp.Segments)
	if hasFlags && untidy([]byte(flags)) {
		flags = tidyList(flags)
	}
	// told: the client learns uid's flags from this answer (noteFlags
	// below), or knows them already. A silent STORE's answers show no
	// flags: told only where the client's own store explains them
	// (silentStoreKnown), not for a report of someone else's change that
	// the connection adds to the answer (a set with "*" names any UID).
	told := hasFlags && (t == nil || !t.silent)
	storeAnswer := false // the flags are those x's STORE set
	if x != nil {
		if hasFlags {
			// claim is what the state's flags of uid become by this
			// command's own doing; ok false when it did nothing to
			// them (an empty flag list is a claim too).
			claim, ok := "", false
			switch {
			case t != nil && t.store != nil && storeResult(t.store, flags):
				told = !t.silent || silentStoreKnown(t, uid, flags)
				claim, ok = flags, !s.staleStoreAnswer(x, uid, flags)
				storeAnswer = true
				if ok && len(s.ahead) > 0 {
					if t.claimed == nil {
						t.claimed = map[uint32]bool{}
					}
					t.claimed[uid] = true
				}
			case t != nil && t.setsSeen:
				claim, ok = s.seenByFetch(uid, flags)
			}
			if ok {
				// A claim, handed to the mailbox's one writer (the hub's
				// watcher), which orders it against its own reports.
				// If it fails, the watcher's own report of the change
				// comes later.
				ctx, cancel := context.WithTimeout(x.Context(), syncTimeout)
				modseq, ok, err := m.sub.Own(ctx, uid, strings.Fields(claim))
				if err != nil {
					s.log.Debug("own STORE answer not recorded in the hub", "uid", uid, "err", err)
				} else if ok && s.up != nil && modseq > s.up.SyncedTo {
					t.ownChanges++
				}
				cancel()
			}
		}
	}
	if hasFlags && x != nil && !storeAnswer && (x.sentAhead || len(s.ahead) > 0) {
		flags, seg = s.toldOverAhead(uid, flags, seg)
		if s.storeClaimed(turn, uid) {
			if cur, _, ok := m.state.Flags(uid); ok {
				flags = strings.Join(cur, " ")
				seg = replaceFlags(seg, flags)
			}
		}
	}
	items := s.fetchItems(uid, false)
	if hasFlags && len(items) > 0 {
		// A reporter adds items from the state (CONDSTORE's MODSEQ): the
		// FLAGS beside them must be the state's too. The leased
		// connection may be ahead of the watcher (another client's change
		// it reports before the watcher does): its newer flags under the
		// state's older MODSEQ would be a change without a new
		// mod-sequence (RFC 7162 3.1). The client hears of the change
		// with its own MODSEQ when the state has it (noteFlags below
		// records what the client saw).
		if stFlags, stItems, ok := s.snapshotFlags(uid); ok {
			items = stItems
			if !slices.Equal(stFlags, syncstate.NormalizeFlags(strings.Fields(flags))) {
				if !answers(x, uid) {
					// The upstream's own report of a change by someone
					// else, relayed in the answer to another command
					// (NOOP, EXPUNGE, COPY...): with the state's flags
					// it would tell nothing new; the change itself
					// comes from the hub.
					return nil
				}
				flags = strings.Join(stFlags, " ")
				seg = replaceFlags(seg, flags)
				if t != nil && t.silent {
					// Another change came after the answer's; a silent
					// answer shows no flags, so the client was told
					// neither: it hears of the message after the
					// command.
					told = false
				}
			}
		}
	}
	if x != nil && told {
		s.noteTold(turn, x, uid, flags)
	}
	if hasFlags && (t == nil || !t.silent) {
		// The flags as they go out, the state's where they replaced
		// the upstream's: a keyword only the state has (another
		// session created it while this answer was on its way) is
		// announced too.
		if kw := m.newKeywords(strings.Fields(flags)); kw != nil {
			s.Write(kw) // before this FETCH (RFC 3501 7.2.6)
		}
	}
	if t != nil && t.silent {
		if len(items) == 0 {
			return nil
		}
		resp.Segments = []imapcodec.Segment{{Text: fmt.Appendf(nil, "* %d FETCH (UID %d %s)", seq, uid, items)}}
		return resp
	}
	if len(items) > 0 {
		seg = slices.Concat(seg[:uidEnd], []byte(" "), items, seg[uidEnd:])
	} else if items == nil && t != nil && t.stripUID {
		// Remove "UID n" and one space next to it.
		if uidEnd < len(seg) && seg[uidEnd] == ' ' {
			uidEnd++
		} else if uidStart > 0 && seg[uidStart-1] == ' ' {
			uidStart--
		}
		seg = slices.Concat(seg[:uidStart], seg[uidEnd:])
	}
	seg = tidyFlags(seg, m.recent.has(uid))
	// "* n FETCH" -> "* seq FETCH"
	rest := seg[2:]
	i := bytes.IndexByte(rest, ' ')
	if i < 0 {
		return nil
	}
	resp.Segments[0].Text = slices.Concat([]byte("* "), []byte(strconv.FormatUint(uint64(seq), 10)), rest[i:])
	return resp
}

// staleStoreAnswer reports whether flags, x's answer about uid to a STORE
// sent ahead of its turn, may be older than the hub's state, and so must
// not be claimed: the state recorded a change of the message after the
// STORE went upstream (above sentMark), and its flags are not the
// answer's. The answer waits behind those of the commands before it
// (ahead.go), and the change may have come after the upstream ran the
// STORE: claimed, the older flags replaced the newer ones in the state,
// every session was told of a change back that never happened, and the
// watcher, which had reported the message already, told nothing more. Or
// the change came before the STORE ran and the watcher has not reported
// the STORE yet; the two look alike here. So the hub is asked: its
// watcher syncs before the command's tagged answer (translation.resync,
// beforeTagged), and the delivery then tells the client what the
// message's flags are. A STORE in its turn is read as soon as the
// upstream answers it, which leaves the window no wider than before the
// STOREs went ahead.
func (s *Session) staleStoreAnswer(x *Exchange, uid uint32, flags string) bool {
	t := x.xlate
	if !x.sentAhead || t == nil {
		return false
	}
	cur, modseq, ok := s.mbox.state.Flags(uid)
	if !ok || modseq <= t.sentMark || slices.Equal(cur, syncstate.NormalizeFlags(strings.Fields(flags))) {
		return false
	}
	t.resync = true
	return true
}

// whoseAnswer returns the command whose answer resp, a FETCH response about
// uid read in x's turn, is: among x and the commands sent ahead behind it
// (ahead.go: Dovecot runs the UID commands of a batch at once, and a
// STORE's answers may come before the tagged response of the FETCH before
// it), the STORE that names uid if resp has nothing but flags, else the
// first FETCH that names it; else x, whose turn reports others' changes.
// A STORE in flight names no message that another STORE in flight names,
// nor one that a FETCH whose answers may have nothing but flags names
// (aheadOK), so its answers are told apart from theirs.
func (s *Session) whoseAnswer(x *Exchange, uid uint32, resp *Response) *Exchange {
	if x == nil || len(s.ahead) == 0 {
		return x
	}
	var fetch, store *Exchange
	consider := func(c *Exchange) {
		if !answers(c, uid) {
			return
		}
		if c.xlate != nil && c.xlate.store != nil {
			if store == nil {
				store = c
			}
		} else if fetch == nil {
			fetch = c
		}
	}
	consider(x)
	for _, a := range s.ahead {
		if a.upTag != "" {
			consider(a.x)
		}
	}
	switch {
	case store != nil && (fetch == nil || flagsOnly(resp.Segments)):
		return store
	case fetch != nil:
		return fetch
	}
	return x
}

// storeClaimed reports whether a STORE in flight (x, whose turn it is, or
// one sent ahead) has read its answer about uid: a FETCH's answer about it
// read later may have been made before the STORE ran (Dovecot runs a
// batch's UID commands at once), and shows the state's flags instead.
func (s *Session) storeClaimed(x *Exchange, uid uint32) bool {
	if x != nil && x.xlate != nil && x.xlate.claimed[uid] {
		return true
	}
	for _, a := range s.ahead {
		if t := a.x.xlate; t != nil && t.claimed[uid] {
			return true
		}
	}
	return false
}

// noteTold records that the client has been told flags of uid in turn's
// answers, by owner's answer (whoseAnswer): with every command from turn to
// owner, so that none of their deliveries (each before its tagged
// response) tells it again.
func (s *Session) noteTold(turn, owner *Exchange, uid uint32, flags string) {
	if turn != nil {
		turn.noteFlags(uid, flags)
	}
	if owner == turn {
		return
	}
	for _, a := range s.ahead {
		a.x.noteFlags(uid, flags)
		if a.x == owner {
			return
		}
	}
}

// toldOverAhead returns the flags of uid, and the FETCH response's first
// segment seg, to relay for an answer that may come from a command sent
// ahead of its turn (ahead.go): the state's flags where they differ from
// the answer's and the client has been told them already (their
// mod-sequence is not above the session's pos). The upstream ran such a
// command before changes that were reported to the client at an earlier
// turn ("* 3 FETCH (FLAGS (\Flagged))" before the previous command's OK):
// relayed after them, its older flags undid them in the client's view,
// and nothing told it again. Where the answer is the newer one (the
// leased connection heard of a change before the watcher), the client
// hears of it from the hub when the state has it, as with any change.
func (s *Session) toldOverAhead(uid uint32, flags string, seg []byte) (string, []byte) {
	m := s.mbox
	cur, modseq, ok := m.state.Flags(uid)
	if !ok || modseq > m.pos || slices.Equal(cur, syncstate.NormalizeFlags(strings.Fields(flags))) {
		return flags, seg
	}
	flags = strings.Join(cur, " ")
	return flags, replaceFlags(seg, flags)
}

// seenByFetch returns what the state's flags of uid become when the FETCH
// that answered flags set \Seen, and false when it did not (the answer lacks
// \Seen, or the state has it already). Only \Seen is added: the leased
// connection may lag behind other changes the state already has. Claimed
// like a STORE's answer, the change is the session's own, and the client
// is not told of it a second time when the watcher reports it (#16.14).
func (s *Session) seenByFetch(uid uint32, flags string) (string, bool) {
	if !slices.Contains(strings.Fields(flags), `\Seen`) {
		return "", false
	}
	cur, _, ok := s.mbox.state.Flags(uid)
	if !ok || slices.Contains(cur, `\Seen`) {
		return "", false
	}
	return strings.Join(syncstate.NormalizeFlags(append(slices.Clone(cur), `\Seen`)), " "), true
}

// silentBefore records, for a STORE .SILENT (sent upstream without
// .SILENT, translation.silent) about to go upstream, the flags its client
// has been told of the messages it names (those it knows; with "*", all
// from the range's start): the state's, where their
// mod-sequence is one the client has been told up to (after the delivery
// that precedes the command). Every named message the client knows is
// recorded, in two arrays aligned by position (28 bytes a message, for
// the command's duration; the flag lists are the state's own): a cap
// would make a large silent STORE tell back every flag it set.
func (s *Session) silentBefore(t *translation) {
	m := s.mbox
	if m == nil || t.named == nil {
		return
	}
	var uids []uint32
	for _, r := range m.view.seqSet(t.named.set) {
		uids = append(uids, m.view[r.Start-1:r.Stop]...)
	}
	b := &toldFlags{uids: make([]uint32, 0, len(uids)), flags: make([][]string, 0, len(uids))}
	m.state.Each(uids, func(i int, flags []string, modseq uint64) {
		if modseq <= m.pos {
			b.uids = append(b.uids, uids[i])
			b.flags = append(b.flags, flags)
		}
	})
	t.before = b
}

// toldFlags are flags a client was told, by UID (sorted).
type toldFlags struct {
	uids  []uint32
	flags [][]string
}

func (b *toldFlags) of(uid uint32) ([]string, bool) {
	if b == nil {
		return nil, false
	}
	i, ok := slices.BinarySearch(b.uids, uid)
	if !ok {
		return nil, false
	}
	return b.flags[i], true
}

// silentStoreKnown tells whether flags, the upstream's answer about uid to
// a STORE .SILENT, are what its client takes the message's flags to be
// without being shown them: its store applied to the flags it had been
// told (silentBefore). Otherwise the answer, which holds the message's
// whole flags, shows a change by someone else, and the client must hear
// of it after the command (deliver), not have it taken as told. Where the
// flags told are not known, the client hears of the message's flags
// (harmless: RFC 3501 7.4.2 lets a server report flags at any time).
func silentStoreKnown(t *translation, uid uint32, flags string) bool {
	prev, ok := t.before.of(uid)
	if !ok {
		return false
	}
	want := map[string]bool{}
	if t.store.Op == '+' || t.store.Op == '-' {
		for _, f := range prev {
			want[strings.ToLower(f)] = true
		}
	}
	for _, f := range t.store.Flags {
		if t.store.Op == '-' {
			delete(want, strings.ToLower(f))
		} else {
			want[strings.ToLower(f)] = true
		}
	}
	got := map[string]bool{}
	for _, f := range strings.Fields(flags) {
		got[strings.ToLower(f)] = true
	}
	return maps.Equal(got, want)
}

// answers tells whether a FETCH response about uid answers the command
// of x: a FETCH's or a STORE's about a message it names; anything else
// the upstream sends is its own report of a change.
func answers(x *Exchange, uid uint32) bool {
	if x == nil {
		return false
	}
	switch strings.TrimPrefix(x.Name, "UID ") {
	case "FETCH", "STORE":
		t := x.xlate
		return t == nil || t.named == nil || t.named.has(uid)
	}
	return false
}

// restated reports whether a handler of x's chain put the command in
// another form than the translation's (a new first line).
func (t *translation) restated(x *Exchange) bool {
	if len(x.Segments) == 0 {
		return false
	}
	a, b := x.Segments[0].Text, t.formText
	return len(a) != len(b) || len(a) > 0 && &a[0] != &b[0]
}

// reportsOnly tells whether resp, a FETCH response about uid in the
// answers to x, can only be the upstream's report of others' changes: the
// leased connection syncs at the end of a command and tells what changed
// since it last synced (more of it when it skipped the catch-up NOOP,
// catchup.go). Such reports are not relayed: the client hears of those
// changes from the hub, once, with their mod-sequences. They are the
// responses to a FETCH or STORE about messages it does not name, and the
// responses with nothing but flags to a FETCH that did not ask for them.
//
// While commands sent ahead share the connection (ahead.go), the response
// may answer any of them (whoseAnswer: Dovecot runs a batch's UID
// commands at once and interleaves their untagged answers): it is a
// report only if it is one for each of them.
func reportsOnly(x *Exchange, uid uint32, resp *Response) bool {
	if x == nil || !reportFor(x, uid, resp) {
		return false
	}
	for _, a := range x.s.ahead {
		if a.upTag != "" && a.x.Name != "EXPUNGE" && !reportFor(a.x, uid, resp) {
			return false // (an EXPUNGE's answers are EXPUNGE responses)
		}
	}
	return true
}

// reportFor tells whether resp, a FETCH response about uid, is no answer
// of x's command (see reportsOnly).
func reportFor(x *Exchange, uid uint32, resp *Response) bool {
	if x.xlate == nil || x.xlate.named == nil {
		return false
	}
	t := x.xlate
	switch strings.TrimPrefix(x.Name, "UID ") {
	case "FETCH":
		return !t.named.has(uid) || flagsOnly(resp.Segments) && !t.keepsFlagsOnly()
	case "STORE":
		return !t.named.has(uid)
	}
	return false
}

// fetchAsksFlags tells whether a FETCH command's items (rest: the text
// after its set) show flags, or may: anything but items known to show
// none (fetchShowsFlags); and whether they are UID alone, whose answer a
// server may merge with its report of a flag change (RFC 3501 7.4.2 lets
// it add FLAGS to any FETCH response), so that a response of UID and FLAGS
// can be the answer.
// keepsFlagsOnly tells whether a FETCH's flags-only answers are its own:
// it asks for flags, or for the UID alone.
func (t *translation) keepsFlagsOnly() bool {
	if !t.itemsRead {
		t.itemsRead = true
		t.asksFlags = true
		cmd := &imapcodec.Command{Name: "UID FETCH", Segments: []imapcodec.Segment{{Text: t.formText}}}
		if _, rest, err := firstSet(cmd); err == nil {
			t.asksFlags, t.onlyUID = fetchAsksFlags(rest)
		}
	}
	return t.asksFlags || t.onlyUID
}

// answersBeyondFlags tells whether every answer of a FETCH holds an item
// besides UID, FLAGS and MODSEQ: a response with nothing else about one of
// its messages is then not its own but a STORE's (whoseAnswer).
func (t *translation) answersBeyondFlags() bool {
	cmd := &imapcodec.Command{Name: "UID FETCH", Segments: []imapcodec.Segment{{Text: t.formText}}}
	_, rest, err := firstSet(cmd)
	if err != nil {
		return false
	}
	p := imapcodec.NewParser([]imapcodec.Segment{{Text: rest}}, imapcodec.Limits{})
	if p.SP() != nil {
		return false
	}
	v, err := p.Value()
	if err != nil {
		return false
	}
	items := []imapcodec.Value{v}
	if l, ok := v.(imapcodec.List); ok {
		items = l
	}
	return slices.ContainsFunc(items, func(it imapcodec.Value) bool {
		a, ok := it.(imapcodec.Atom)
		if !ok {
			return true
		}
		switch strings.ToUpper(string(a)) {
		case "UID", "FLAGS", "MODSEQ":
			return false
		}
		return true
	})
}

func fetchAsksFlags(rest []byte) (flags, onlyUID bool) {
	p := imapcodec.NewParser([]imapcodec.Segment{{Text: rest}}, imapcodec.Limits{})
	if p.SP() != nil {
		return true, false
	}
	v, err := p.Value()
	if err != nil {
		return true, false
	}
	items := []imapcodec.Value{v}
	if l, ok := v.(imapcodec.List); ok {
		items = l
	}
	onlyUID = !slices.ContainsFunc(items, func(it imapcodec.Value) bool {
		a, ok := it.(imapcodec.Atom)
		return !ok || !strings.EqualFold(string(a), "UID")
	})
	flags, ok := fetchShowsFlags(v)
	return flags || !ok, onlyUID
}

// flagsOnly tells whether a FETCH response has no items but UID, FLAGS
// and MODSEQ.
func flagsOnly(segs []imapcodec.Segment) bool {
	if len(segs) != 1 || indexFold(segs[0].Text, "FLAGS") < 0 {
		return false // a literal (a body), or no flags: not parsed
	}
	vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return false
	}
	items, ok := vals[3].(imapcodec.List)
	if !ok || len(items)%2 != 0 {
		return false
	}
	for i := 0; i < len(items); i += 2 {
		name, _ := items[i].(imapcodec.Atom)
		switch strings.ToUpper(string(name)) {
		case "UID", "FLAGS", "MODSEQ":
		default:
			return false
		}
	}
	return true
}

// namedUIDs is the UID set a command names.
type namedUIDs struct {
	set  imap.UIDSet
	star bool // a range of it has "*"
}

// named returns the UID set set (nil if it does not parse: "$").
func named(set string) *namedUIDs {
	s, err := imapcodec.ParseUIDSet(set)
	if err != nil {
		return nil
	}
	return &namedUIDs{set: s, star: s.Dynamic()}
}

// has reports whether the set names uid. A range with "*" names whatever
// the upstream answers for it: "*" is the largest UID the upstream has
// when it runs the command, which may be above any the client knew when
// the command was read (the client hears of new messages between that
// and the command's answers, and answers about them must reach it).
func (n *namedUIDs) has(uid uint32) bool {
	return n.star || n.set.Contains(imap.UID(uid))
}

// overlaps reports whether n and o, the sets of two commands, may name a
// common message: a set with "*" or one not known (nil: "$") may name any,
// and so may two sets of too many ranges to compare cheaply (the check is
// made for every command sent ahead).
func (n *namedUIDs) overlaps(o *namedUIDs) bool {
	if n == nil || o == nil || n.star || o.star || len(n.set)*len(o.set) > 1024 {
		return true
	}
	for _, a := range n.set {
		for _, b := range o.set {
			if a.Start <= b.Stop && b.Start <= a.Stop {
				return true
			}
		}
	}
	return false
}

// snapshotFlags returns the state's flags of uid and the reporters' items
// for it, read together: the items are read between two reads of the
// message's mod-sequence, again if it moved meanwhile. ok is false when
// the state has no such message or kept changing.
func (s *Session) snapshotFlags(uid uint32) (flags []string, items []byte, ok bool) {
	st := s.mbox.state
	for range 3 {
		cur, before, found := st.Flags(uid)
		if !found {
			return nil, nil, false
		}
		items = s.fetchItems(uid, false)
		if _, after, _ := st.Flags(uid); after == before {
			return cur, items, true
		}
	}
	return nil, nil, false
}

// replaceFlags replaces the flag list of the FLAGS item in a FETCH
// response's first segment.
func replaceFlags(seg []byte, flags string) []byte {
	i := indexFold(seg, "FLAGS (")
	if i < 0 {
		return seg
	}
	open := i + len("FLAGS (")
	end := bytes.IndexByte(seg[open:], ')')
	if end < 0 {
		return seg
	}
	return slices.Concat(seg[:open], []byte(flags), seg[open+end:])
}

// tidyFlags writes the FLAGS item of a FETCH response's first segment as
// the proxy's state has flags, with the session's own \Recent (recent.go)
// in place of the upstream's, and with system flags in their canonical
// spelling (\Seen, not \seen). Flags are case-insensitive, but a client
// must not see one message's flags spelt two ways depending on whether
// they came from the hub or from a relayed answer (go-imap's server writes
// them in lower case). It runs for every relayed FETCH: a response that
// needs neither costs one scan and no allocation.
func tidyFlags(seg []byte, recent bool) []byte {
	i := indexFold(seg, "FLAGS (")
	if i < 0 {
		return seg
	}
	open := i + len("FLAGS (")
	end := bytes.IndexByte(seg[open:], ')')
	if end < 0 || !recent && !untidy(seg[open:open+end]) {
		return seg
	}
	list := tidyList(string(seg[open : open+end]))
	if recent {
		list = addRecent(list)
	}
	return slices.Concat(seg[:open], []byte(list), seg[open+end:])
}

// tidyList is tidyFlags for a flag list ("\\seen $x"), without \Recent.
func tidyList(list string) string {
	flags := strings.Fields(list)
	kept := flags[:0]
	for _, f := range flags {
		if !strings.EqualFold(f, `\Recent`) {
			kept = append(kept, syncstate.CanonicalFlag(f))
		}
	}
	return strings.Join(kept, " ")
}

// untidy reports whether a flag list holds \Recent or a system flag not
// in its canonical spelling.
func untidy(list []byte) bool {
	for len(list) > 0 {
		var f []byte
		if j := bytes.IndexByte(list, ' '); j >= 0 {
			f, list = list[:j], list[j+1:]
		} else {
			f, list = list, nil
		}
		if len(f) < 2 || f[0] != '\\' {
			continue
		}
		if asciiEqualFold(f, `\Recent`) {
			return true
		}
		for _, c := range syncstate.SystemFlags {
			if asciiEqualFold(f, c) && string(f) != c {
				return true
			}
		}
	}
	return false
}

// indexFold is bytes.Index ignoring ASCII case.
func indexFold(s []byte, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if asciiEqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// asciiEqualFold reports whether b and s are equal ignoring ASCII case,
// without converting either.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// fetchItems joins the ChangeReporters' items for uid, in chain order; nil
// when none has any.
func (s *Session) fetchItems(uid uint32, unsolicited bool) []byte {
	var items []byte
	for _, r := range s.srv.reporters {
		it := r.FetchItems(s, uid, unsolicited)
		if it == nil {
			continue
		}
		if items == nil {
			items = []byte{}
		}
		if len(it) > 0 {
			if len(items) > 0 {
				items = append(items, ' ')
			}
			items = append(items, it...)
		}
	}
	return items
}

// findFetchUID finds the UID item at the top level of a FETCH response's
// first line: "* n FETCH (... UID 123 ...". Quoted strings and bracketed
// sections are skipped.
func findFetchUID(line []byte) (uid uint32, start, end int, ok bool) {
	open := bytes.IndexByte(line, '(')
	if open < 0 {
		return 0, 0, 0, false
	}
	depth := 0
	for i := open; i < len(line); i++ {
		switch c := line[i]; c {
		case '"':
			for i++; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' {
					i++
				}
			}
		case '[':
			for ; i < len(line) && line[i] != ']'; i++ {
			}
		case '(':
			depth++
		case ')':
			depth--
		case 'U', 'u':
			if depth != 1 || (line[i-1] != '(' && line[i-1] != ' ') || i+4 > len(line) ||
				!strings.EqualFold(string(line[i:i+4]), "UID ") {
				continue
			}
			j := i + 4
			k := j
			for k < len(line) && line[k] >= '0' && line[k] <= '9' {
				k++
			}
			n, err := strconv.ParseUint(string(line[j:k]), 10, 32)
			if err != nil {
				continue
			}
			return uint32(n), i, k, true
		}
	}
	return 0, 0, 0, false
}

// fetchFlags extracts the FLAGS item of a FETCH response as a normalised
// space-separated list. It reads the items one by one, so that it finds
// FLAGS in a streamed response too (only the text before its large literal
// is at hand) when FLAGS comes before the literal, as servers send it.
func fetchFlags(segs []imapcodec.Segment) (string, bool) {
	// A FETCH of bodies (a bulk download: one response per message) has
	// no FLAGS item: parsing it through its literal, and building the
	// parser's error where a streamed one is cut off, costs more than
	// looking for the item's name in the text.
	named := false
	for _, seg := range segs {
		if indexFold(seg.Text, "FLAGS") >= 0 {
			named = true
			break
		}
	}
	if !named {
		return "", false
	}
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	for i := 0; i < 3; i++ { // "*", n, FETCH
		if _, err := p.Atom(); err != nil {
			return "", false
		}
		p.SP()
	}
	if !p.OpenList() {
		return "", false
	}
	for first := true; ; first = false {
		if !first && p.SP() != nil {
			return "", false
		}
		name, err := p.Atom()
		if err != nil || p.SP() != nil {
			return "", false
		}
		v, err := p.Value()
		if err != nil {
			return "", false
		}
		if !strings.EqualFold(name, "FLAGS") {
			continue
		}
		fl, ok := v.(imapcodec.List)
		if !ok {
			return "", false
		}
		var flags []string
		for _, f := range fl {
			if a, ok := f.(imapcodec.Atom); ok {
				flags = append(flags, string(a))
			}
		}
		return strings.Join(syncstate.NormalizeFlags(flags), " "), true
	}
}

// storeResult reports whether flags (a FETCH answer during a STORE, as
// fetchFlags gives them) can be the result of the STORE. A pooled
// connection may also deliver an older report about the same message
// queued before the STORE; it must not be taken as the message's new
// state. Keywords compare case-insensitively (servers differ in case).
func storeResult(st *imapcodec.StoreArgs, flags string) bool {
	have := map[string]bool{}
	for _, f := range strings.Fields(flags) {
		have[strings.ToLower(f)] = true
	}
	want := syncstate.NormalizeFlags(st.Flags)
	switch st.Op {
	case '+':
		for _, f := range want {
			if !have[strings.ToLower(f)] {
				return false
			}
		}
	case '-':
		for _, f := range want {
			if have[strings.ToLower(f)] {
				return false
			}
		}
	default:
		if len(have) != len(want) {
			return false
		}
		for _, f := range want {
			if !have[strings.ToLower(f)] {
				return false
			}
		}
	}
	return true
}
