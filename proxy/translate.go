package proxy

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// In the selected state a session has no upstream connection of its own:
// each command runs on whatever connection the pool lends, whose message
// sequence numbers need not match the client's. So commands that take
// sequence numbers are sent upstream in their UID form, with the client's
// numbers translated through the session's view, and the answers are
// translated back: FETCH responses are renumbered by their UID, SEARCH,
// SORT, THREAD and ESEARCH results mapped from UIDs to sequence numbers, and
// the connection's own EXISTS, EXPUNGE and RECENT dropped (the session hears
// of mailbox changes from the hub).

// translation tells the response filter how to turn the upstream's answers
// to the current command into the client's terms.
type translation struct {
	clientTag    string
	fromName     string // the client's command name, when sent upstream under another
	toName       string // the name it was sent under
	seqResults   bool   // search results are UIDs that the client wants as sequence numbers
	stripUID     bool   // a UID item the client did not ask for is removed from FETCH responses
	silent       bool   // STORE .SILENT sent without .SILENT: FETCH answers are recorded, not relayed
	store        bool   // the command is a STORE: its FLAGS answers go into the hub
	storeOp      byte   // '+', '-' or '=': what the STORE does with storeFlags
	storeFlags   []string
	allowExpunge bool // EXPUNGE responses may accompany the command's answer
	syncAfter    bool // the command changes the mailbox: sync with the hub before answering
}

// seqCommands take a sequence set as their first argument.
var seqCommands = map[string]bool{"FETCH": true, "STORE": true, "COPY": true, "MOVE": true}

// searchCommands take search criteria.
var searchCommands = map[string]bool{"SEARCH": true, "SORT": true, "THREAD": true}

// translateCommand rewrites a command for the upstream in the selected state.
func (s *Session) translateCommand(cmd *imapcodec.Command) ([]imapcodec.Segment, *translation, error) {
	m := s.mbox
	t := &translation{clientTag: cmd.Tag, allowExpunge: true}
	defer func() {
		if !isUIDCommand(cmd.Name) && (seqCommands[cmd.Name] || searchCommands[cmd.Name]) {
			t.fromName, t.toName = cmd.Name, "UID "+cmd.Name
		}
	}()
	segs := cloneSegments(cmd.Segments)
	name := cmd.Name
	base := strings.TrimPrefix(name, "UID ")
	isUID := base != name
	switch {
	case seqCommands[base]:
		if !isUID {
			if err := rewriteFirstArg(segs, cmd.Tag, name, m); err != nil {
				return nil, nil, err
			}
		}
		if base == "FETCH" {
			t.allowExpunge = isUID
			t.stripUID = !isUID && !fetchAsksUID(cmd)
		}
		if base == "STORE" {
			t.allowExpunge = isUID
			t.stripUID = !isUID
			t.store = true
			// STORE ... FLAGS.SILENT goes upstream without .SILENT: its
			// answers tell the hub the new flags at once, and the client
			// still sees none of them (RFC 3501 6.4.6).
			t.silent = unsilence(segs)
			t.storeOp, t.storeFlags = storeOperation(segs[0].Text)
		}
		if base == "MOVE" {
			t.syncAfter = true
		}
		if base == "COPY" {
			t.syncAfter = targetIsSelected(cmd, m.name)
		}
	case searchCommands[base]:
		if !isUID {
			if err := rewriteSearch(segs, cmd, m); err != nil {
				return nil, nil, err
			}
			t.seqResults = true
			t.allowExpunge = false
		}
	case name == "EXPUNGE" || name == "UID EXPUNGE":
		t.syncAfter = true
	case name == "APPEND":
		t.syncAfter = targetIsSelected(cmd, m.name)
	}
	return segs, t, nil
}

func isUIDCommand(name string) bool { return strings.HasPrefix(name, "UID ") }

func cloneSegments(in []imapcodec.Segment) []imapcodec.Segment {
	out := make([]imapcodec.Segment, len(in))
	for i, s := range in {
		out[i] = s
		out[i].Text = bytes.Clone(s.Text)
	}
	return out
}

// rewriteFirstArg turns "tag NAME seqset rest" into "tag UID NAME uidset rest".
func rewriteFirstArg(segs []imapcodec.Segment, tag, name string, m *selectedMailbox) error {
	text := segs[0].Text
	parts := bytes.SplitN(text, []byte(" "), 4)
	if len(parts) < 3 || !isSeqSet(string(parts[2])) {
		return fmt.Errorf("%s needs a message sequence set", name)
	}
	uids, err := m.translateSeqSet(string(parts[2]))
	if err != nil {
		return err
	}
	out := []byte(tag + " UID " + name + " " + uids)
	if len(parts) == 4 {
		out = append(out, ' ')
		out = append(out, parts[3]...)
	}
	segs[0].Text = out
	return nil
}

// unsilenceRe matches the data item name of STORE: "+FLAGS.SILENT" etc.
var unsilenceRe = regexp.MustCompile(`(?i)^([^ ]+ UID STORE [^ ]+ (?:\([^)]*\) )?[+-]?FLAGS)\.SILENT`)

// unsilence removes .SILENT from a translated STORE command and reports
// whether it did.
func unsilence(segs []imapcodec.Segment) bool {
	t := segs[0].Text
	m := unsilenceRe.FindSubmatchIndex(t)
	if m == nil {
		return false
	}
	segs[0].Text = slices.Concat(t[:m[3]], t[m[1]:])
	return true
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

// targetIsSelected reports whether the mailbox argument of COPY, MOVE or
// APPEND names the selected mailbox.
func targetIsSelected(cmd *imapcodec.Command, selected string) bool {
	p := imapcodec.NewParser(cmd.Segments, imapcodec.Limits{})
	vals, err := p.Values()
	if err != nil || len(vals) < 3 {
		return false
	}
	idx := 2 // tag NAME [seqset] mailbox
	if strings.HasPrefix(cmd.Name, "UID ") {
		idx = 4
	} else if cmd.Name != "APPEND" {
		idx = 3
	}
	if idx >= len(vals) {
		return false
	}
	name, ok := imapcodec.AsString(vals[idx])
	if !ok {
		return false
	}
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	return name == selected
}

// searchArity gives the number of arguments of search keys that take any;
// NOT, OR and FUZZY take search keys instead (see searchWalker).
var searchArity = map[string]int{
	"BCC": 1, "BEFORE": 1, "BODY": 1, "CC": 1, "FROM": 1, "KEYWORD": 1, "LARGER": 1, "ON": 1,
	"SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1, "SINCE": 1, "SMALLER": 1, "SUBJECT": 1,
	"TEXT": 1, "TO": 1, "UID": 1, "UNKEYWORD": 1, "OLDER": 1, "YOUNGER": 1, "EMAILID": 1,
	"THREADID": 1, "SAVEDBEFORE": 1, "SAVEDON": 1, "SAVEDSINCE": 1, "X-GM-RAW": 1,
	"X-GM-MSGID": 1, "X-GM-THRID": 1, "FILTER": 1, "HEADER": 2, "ANNOTATION": 3,
}

// rewriteSearch turns SEARCH, SORT or THREAD into its UID form with every
// sequence set among the search keys translated.
func rewriteSearch(segs []imapcodec.Segment, cmd *imapcodec.Command, m *selectedMailbox) error {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return err
	}
	p.SP()
	if _, err := p.Atom(); err != nil { // name
		return err
	}
	type repl struct {
		pos  imapcodec.Position
		end  int
		text string
	}
	var repls []repl
	w := searchWalker{p: p, onSeqSet: func(pos imapcodec.Position, atom string) error {
		uids, err := m.translateSeqSet(atom)
		if err != nil {
			return err
		}
		repls = append(repls, repl{pos, pos.Off + len(atom), "UID " + uids})
		return nil
	}}
	var err error
	switch cmd.Name {
	case "SEARCH":
		err = w.search()
	case "SORT":
		err = w.sortOrThread(true)
	case "THREAD":
		err = w.sortOrThread(false)
	}
	if err != nil {
		return err
	}
	for i := len(repls) - 1; i >= 0; i-- {
		r := repls[i]
		t := segs[r.pos.Seg].Text
		segs[r.pos.Seg].Text = slices.Concat(t[:r.pos.Off], []byte(r.text), t[r.end:])
	}
	// "tag SEARCH" -> "tag UID SEARCH"
	t := segs[0].Text
	i := bytes.IndexByte(t, ' ')
	segs[0].Text = slices.Concat(t[:i+1], []byte("UID "), t[i+1:])
	return nil
}

// searchWalker walks search criteria and reports sequence sets in key
// position.
type searchWalker struct {
	p        *imapcodec.Parser
	onSeqSet func(imapcodec.Position, string) error
	// onModSeq, if set, is told of each MODSEQ key: where it starts, its
	// arguments and where they end.
	onModSeq func(start imapcodec.Position, args []imapcodec.Value, end imapcodec.Position) error
}

// ReplaceModSeqKeys finds the MODSEQ search keys (RFC 7162 3.1.5) of a
// SEARCH, SORT or THREAD command, in its UID form or not, and replaces each
// key with its arguments by what fn returns for them (the mod-sequence last,
// after the entry name and type when given). It reports whether there was
// any.
func ReplaceModSeqKeys(segs []imapcodec.Segment, fn func(args []imapcodec.Value) (string, error)) (bool, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return false, err
	}
	p.SP()
	name, err := p.Atom()
	if err != nil {
		return false, err
	}
	if strings.EqualFold(name, "UID") {
		p.SP()
		if name, err = p.Atom(); err != nil {
			return false, err
		}
	}
	type repl struct {
		start, end imapcodec.Position
		text       string
	}
	var repls []repl
	w := searchWalker{p: p, onSeqSet: func(imapcodec.Position, string) error { return nil },
		onModSeq: func(start imapcodec.Position, args []imapcodec.Value, end imapcodec.Position) error {
			if start.Seg != end.Seg {
				return fmt.Errorf("MODSEQ search key split by a literal")
			}
			text, err := fn(args)
			if err != nil {
				return err
			}
			repls = append(repls, repl{start, end, text})
			return nil
		}}
	switch strings.ToUpper(name) {
	case "SEARCH":
		err = w.search()
	case "SORT":
		err = w.sortOrThread(true)
	case "THREAD":
		err = w.sortOrThread(false)
	default:
		return false, fmt.Errorf("not a search command: %s", name)
	}
	if err != nil {
		return false, err
	}
	for i := len(repls) - 1; i >= 0; i-- {
		r := repls[i]
		t := segs[r.start.Seg].Text
		segs[r.start.Seg].Text = slices.Concat(t[:r.start.Off], []byte(r.text), t[r.end.Off:])
	}
	return len(repls) > 0, nil
}

func (w *searchWalker) search() error {
	p := w.p
	if !p.MaybeSP() {
		return fmt.Errorf("SEARCH needs criteria")
	}
	// [RETURN (...)] [CHARSET x]
	for {
		pos := p.Pos()
		a, err := p.Atom()
		if err != nil {
			return w.keysFrom(pos, "")
		}
		switch strings.ToUpper(a) {
		case "RETURN":
			p.SP()
			if _, err := p.Value(); err != nil {
				return err
			}
		case "CHARSET":
			p.SP()
			if _, err := p.Value(); err != nil {
				return err
			}
		default:
			return w.keysFrom(pos, a)
		}
		if !p.MaybeSP() {
			return nil
		}
	}
}

// sortOrThread skips "(sort criteria) charset" or "algorithm charset".
func (w *searchWalker) sortOrThread(sort bool) error {
	p := w.p
	if !p.MaybeSP() {
		return fmt.Errorf("missing arguments")
	}
	if _, err := p.Value(); err != nil { // sort criteria or algorithm
		return err
	}
	p.SP()
	if _, err := p.Value(); err != nil { // charset
		return err
	}
	if !p.MaybeSP() {
		return fmt.Errorf("missing search criteria")
	}
	return w.keysFrom(p.Pos(), "")
}

// keysFrom walks keys to the end; first is an atom already read at pos.
func (w *searchWalker) keysFrom(pos imapcodec.Position, first string) error {
	if first != "" {
		if err := w.keyAfterAtom(pos, first); err != nil {
			return err
		}
		if !w.p.MaybeSP() {
			return nil
		}
	}
	for !w.p.AtEnd() {
		if err := w.key(); err != nil {
			return err
		}
		if c, ok := w.p.Peek(); ok && c == ')' {
			return nil
		}
		if !w.p.MaybeSP() {
			return nil
		}
	}
	return nil
}

func (w *searchWalker) key() error {
	p := w.p
	if p.OpenList() {
		for {
			if err := w.key(); err != nil {
				return err
			}
			if p.CloseList() {
				return nil
			}
			if !p.MaybeSP() {
				return fmt.Errorf("unbalanced parenthesis in search criteria")
			}
		}
	}
	pos := p.Pos()
	a, err := p.Atom()
	if err != nil {
		return fmt.Errorf("bad search key")
	}
	return w.keyAfterAtom(pos, a)
}

func (w *searchWalker) keyAfterAtom(pos imapcodec.Position, a string) error {
	p := w.p
	up := strings.ToUpper(a)
	switch {
	case isSeqSet(a):
		return w.onSeqSet(pos, a)
	case up == "NOT" || up == "FUZZY":
		p.SP()
		return w.key()
	case up == "OR":
		p.SP()
		if err := w.key(); err != nil {
			return err
		}
		p.SP()
		return w.key()
	case up == "MODSEQ":
		p.SP()
		v, err := p.Value()
		if err != nil {
			return err
		}
		args := []imapcodec.Value{v}
		if _, quoted := v.(imapcodec.String); quoted { // entry name, entry type, value
			p.SP()
			t, _ := p.Value()
			p.SP()
			v, err = p.Value()
			args = append(args, t, v)
		}
		if err == nil && w.onModSeq != nil {
			err = w.onModSeq(pos, args, p.Pos())
		}
		return err
	}
	for i := 0; i < searchArity[up]; i++ {
		p.SP()
		if _, err := p.Value(); err != nil {
			return err
		}
	}
	return nil
}

// filterSelected translates an untagged response on a leased connection in
// the selected state (see the comment at the top of this file).
func (s *Session) filterSelected(resp *Response) *Response {
	m := s.mbox
	h := resp.Head
	switch h.Name {
	case "EXISTS", "RECENT", "EXPUNGE":
		if h.HasNum {
			return nil
		}
	case "VANISHED":
		return nil
	case "FETCH":
		return s.translateFetch(resp)
	}
	t := s.xlate
	if t == nil {
		return resp
	}
	text := resp.Segments[0].Text
	switch h.Name {
	case "SEARCH", "SORT":
		if t.seqResults && !resp.Streamed && len(resp.Segments) == 1 {
			fields := strings.Fields(string(text))
			// "* SEARCH n n n [(MODSEQ m)]"
			tail := []string{}
			if i := slices.IndexFunc(fields, func(f string) bool { return strings.HasPrefix(f, "(") }); i >= 0 {
				tail = fields[i:]
				fields = fields[:i]
			}
			out := append(fields[:2:2], m.uidsToSeqs(fields[2:])...)
			resp.Segments[0].Text = []byte(strings.Join(append(out, tail...), " "))
		}
	case "THREAD":
		if t.seqResults && len(resp.Segments) == 1 {
			resp.Segments[0].Text = numberRe.ReplaceAllFunc(text, func(n []byte) []byte {
				u, _ := strconv.ParseUint(string(n), 10, 32)
				return []byte(strconv.FormatUint(uint64(m.seqOf(uint32(u))), 10))
			})
		}
	case "ESEARCH":
		resp.Segments[0].Text = s.translateESearch(text, t)
	}
	return resp
}

var numberRe = regexp.MustCompile(`\b\d+\b`)

var tagCorrelator = regexp.MustCompile(`^\* ESEARCH \(TAG "[^"]*"\)`)

// translateESearch restores the client's tag in an ESEARCH response and, for
// a translated search, turns UID results into sequence numbers.
func (s *Session) translateESearch(text []byte, t *translation) []byte {
	out := tagCorrelator.ReplaceAllLiteral(text, append(imapcodec.AppendQuoted([]byte("* ESEARCH (TAG "), t.clientTag), ')'))
	if !t.seqResults {
		return out
	}
	m := s.mbox
	fields := strings.Fields(string(out))
	var res []string
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		switch strings.ToUpper(f) {
		case "UID":
			continue
		case "MIN", "MAX":
			res = append(res, f)
			if i+1 < len(fields) {
				i++
				res = append(res, m.uidsToSeqs([]string{fields[i]})...)
			}
			continue
		case "ALL":
			res = append(res, f)
			if i+1 < len(fields) {
				i++
				res = append(res, m.uidSetToSeqSet(fields[i]))
			}
			continue
		}
		res = append(res, f)
	}
	return []byte(strings.Join(res, " "))
}

// uidSetToSeqSet maps a UID set to the client's sequence numbers as a set.
func (m *selectedMailbox) uidSetToSeqSet(set string) string {
	var seqs []uint32
	for _, part := range strings.Split(set, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, _ := strconv.ParseUint(lo, 10, 32)
		z := a
		if isRange {
			z, _ = strconv.ParseUint(hi, 10, 32)
		}
		if a > z {
			a, z = z, a
		}
		i, _ := slices.BinarySearch(m.view, uint32(a))
		for ; i < len(m.view) && uint64(m.view[i]) <= z; i++ {
			seqs = append(seqs, uint32(i+1))
		}
	}
	slices.Sort(seqs)
	var b strings.Builder
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(seqs[i]), 10))
		if j > i {
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(seqs[j]), 10))
		}
		i = j + 1
	}
	return b.String()
}

// translateFetch renumbers a FETCH response by its UID, or drops it when the
// client does not know the message (yet).
func (s *Session) translateFetch(resp *Response) *Response {
	m := s.mbox
	seg := resp.Segments[0].Text
	uid, uidStart, uidEnd, ok := findFetchUID(seg)
	if !ok {
		return nil
	}
	seq := m.seqOf(uid)
	if seq == 0 {
		return nil
	}
	t := s.xlate
	// FLAGS the client sees here are not repeated by the delivery after
	// this command. The answers to the session's own STORE also go into
	// the hub at once (other sessions hear without waiting for the
	// watcher): they are the flags right after the change. Other FETCH
	// answers are not trusted that far: the leased connection may lag
	// behind a change the watcher already recorded, and its older flags
	// must not undo it.
	if !resp.Streamed {
		if flags, ok := fetchFlags(resp.Segments); ok {
			if s.sentFlags == nil {
				s.sentFlags = map[uint32]string{}
			}
			s.sentFlags[uid] = flags
			if t != nil && t.store && t.storeResult(flags) {
				// No context reaches here: the claim gets a short
				// timeout of its own. If it fails, the watcher's own
				// report of the change comes later.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if _, _, err := m.sub.Own(ctx, uid, strings.Fields(flags)); err != nil {
					s.log.Debug("own STORE answer not recorded in the hub", "uid", uid, "err", err)
				}
				cancel()
			}
		}
	}
	var items []byte
	if r := s.srv.reporter; r != nil {
		items = r.FetchItems(s, uid)
	}
	if t != nil && t.silent {
		if items == nil {
			return nil
		}
		resp.Segments = []imapcodec.Segment{{Text: fmt.Appendf(nil, "* %d FETCH (UID %d %s)", seq, uid, items)}}
		return resp
	}
	if items != nil {
		seg = slices.Concat(seg[:uidEnd], []byte(" "), items, seg[uidEnd:])
	} else if t != nil && t.stripUID {
		// Remove "UID n" and one space next to it.
		if uidEnd < len(seg) && seg[uidEnd] == ' ' {
			uidEnd++
		} else if uidStart > 0 && seg[uidStart-1] == ' ' {
			uidStart--
		}
		seg = slices.Concat(seg[:uidStart], seg[uidEnd:])
	}
	// "* n FETCH" -> "* seq FETCH"
	rest := seg[2:]
	i := bytes.IndexByte(rest, ' ')
	if i < 0 {
		return nil
	}
	resp.Segments[0].Text = slices.Concat([]byte("* "), []byte(strconv.FormatUint(uint64(seq), 10)), rest[i:])
	return resp
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
// space-separated list.
func fetchFlags(segs []imapcodec.Segment) (string, bool) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	for i := 0; i < 3; i++ {
		if _, err := p.Atom(); err != nil {
			return "", false
		}
		p.SP()
	}
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return "", false
	}
	for i := 0; i+1 < len(l); i += 2 {
		if a, _ := l[i].(imapcodec.Atom); strings.EqualFold(string(a), "FLAGS") {
			fl, ok := l[i+1].(imapcodec.List)
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
	return "", false
}

// storeRe matches a STORE in its UID form: the operation and the flags.
var storeRe = regexp.MustCompile(`(?i)^\S+ UID STORE \S+ (?:\([^)]*\) )?([+-]?)FLAGS(?:\.SILENT)? \(?([^)]*)\)?$`)

// storeOperation returns what a STORE does: '+', '-' or '=' with its flags
// (normalised), or 0 when the command does not parse.
func storeOperation(text []byte) (byte, []string) {
	m := storeRe.FindSubmatch(text)
	if m == nil {
		return 0, nil
	}
	op := byte('=')
	if len(m[1]) == 1 {
		op = m[1][0]
	}
	return op, syncstate.NormalizeFlags(strings.Fields(string(m[2])))
}

// storeResult reports whether flags (a FETCH answer during a STORE, as
// fetchFlags gives them) can be the result of the STORE. A pooled
// connection may also deliver an older report about the same message
// queued before the STORE; it must not be taken as the message's new
// state. Keywords compare case-insensitively (servers differ in case).
func (t *translation) storeResult(flags string) bool {
	if t.storeOp == 0 {
		return false
	}
	have := map[string]bool{}
	for _, f := range strings.Fields(flags) {
		have[strings.ToLower(f)] = true
	}
	switch t.storeOp {
	case '+':
		for _, f := range t.storeFlags {
			if !have[strings.ToLower(f)] {
				return false
			}
		}
	case '-':
		for _, f := range t.storeFlags {
			if have[strings.ToLower(f)] {
				return false
			}
		}
	case '=':
		if len(have) != len(t.storeFlags) {
			return false
		}
		for _, f := range t.storeFlags {
			if !have[strings.ToLower(f)] {
				return false
			}
		}
	}
	return true
}
