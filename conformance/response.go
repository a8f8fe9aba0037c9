package conformance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Response is one server response, parsed as far as the checks need.
type Response struct {
	// Head fields, from imapcodec.ParseResponseHead.
	Tag     string // "*", "+" or a command tag
	Num     uint32
	HasNum  bool
	Name    string // upper-cased: OK, NO, FETCH, EXISTS, VANISHED, ...
	Code    string // upper-cased response code of a status response
	CodeArg string
	Text    string
	// Fields are the values after the name of a data response
	// ("* 3 FETCH (...)": one list; "* SEARCH 1 2 (MODSEQ 5)": three values).
	Fields []imapcodec.Value
	// ParseErr is set when Fields could not be parsed; the head fields are
	// still valid.
	ParseErr error
	// Line is the response's first line, shortened for reports.
	Line string
}

// maxReportLine bounds how much of a response line goes into a reason or
// transcript.
const maxReportLine = 200

func shorten(s string) string {
	if len(s) > maxReportLine {
		return s[:maxReportLine] + "..."
	}
	return s
}

// parseResponse turns a response read with ReadSegments into a Response.
func parseResponse(segs []imapcodec.Segment) *Response {
	first := segs[0].Text
	line := string(first)
	if segs[0].Literal != nil {
		line += string(segs[0].Literal.Format(nil))
		if len(segs) > 1 {
			line += " ..."
		}
	}
	r := &Response{Line: shorten(line)}
	h, err := imapcodec.ParseResponseHead(first)
	if err != nil {
		r.ParseErr = err
		return r
	}
	r.Tag, r.Num, r.HasNum, r.Name = h.Tag, h.Num, h.HasNum, h.Name
	r.Code, r.CodeArg, r.Text = h.Code, h.CodeArg, h.Text
	if r.Tag == "+" || (h.IsStatus() && !h.HasNum) {
		return r
	}
	p := imapcodec.NewParser(segs, limits)
	if _, err := p.Atom(); err != nil { // tag
		r.ParseErr = err
		return r
	}
	if err := p.SP(); err != nil {
		r.ParseErr = err
		return r
	}
	if h.HasNum {
		if _, err := p.Atom(); err != nil {
			r.ParseErr = err
			return r
		}
		if err := p.SP(); err != nil {
			r.ParseErr = err
			return r
		}
	}
	if _, err := p.Atom(); err != nil { // name
		r.ParseErr = err
		return r
	}
	r.Fields, r.ParseErr = p.Values()
	return r
}

// IsStatus reports whether r is an OK/NO/BAD/BYE/PREAUTH response.
func (r *Response) IsStatus() bool {
	switch r.Name {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		return !r.HasNum
	}
	return false
}

// Untagged reports whether r is untagged data or status named name.
func (r *Response) Untagged(name string) bool { return r.Tag == "*" && r.Name == name }

// FetchData is a parsed FETCH response.
type FetchData struct {
	Seq   uint32
	Items map[string]imapcodec.Value // item names upper-cased
}

// Fetch returns r's FETCH data, if r is a FETCH response.
func (r *Response) Fetch() (FetchData, bool) {
	if r.Tag != "*" || r.Name != "FETCH" || !r.HasNum || len(r.Fields) != 1 {
		return FetchData{}, false
	}
	l, ok := r.Fields[0].(imapcodec.List)
	if !ok || len(l)%2 != 0 {
		return FetchData{}, false
	}
	f := FetchData{Seq: r.Num, Items: map[string]imapcodec.Value{}}
	for i := 0; i < len(l); i += 2 {
		name, ok := l[i].(imapcodec.Atom)
		if !ok {
			return FetchData{}, false
		}
		f.Items[strings.ToUpper(string(name))] = l[i+1]
	}
	return f, true
}

// Has reports whether the FETCH carries item.
func (f FetchData) Has(item string) bool { _, ok := f.Items[item]; return ok }

// UID returns the UID item.
func (f FetchData) UID() (uint32, bool) {
	a, ok := f.Items["UID"].(imapcodec.Atom)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(a), 10, 32)
	return uint32(n), err == nil
}

// Modseq returns the MODSEQ item ("MODSEQ (n)").
func (f FetchData) Modseq() (uint64, bool) {
	l, ok := f.Items["MODSEQ"].(imapcodec.List)
	if !ok || len(l) != 1 {
		return 0, false
	}
	a, ok := l[0].(imapcodec.Atom)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(a), 10, 64)
	return n, err == nil
}

// Flags returns the FLAGS item, each flag as sent.
func (f FetchData) Flags() ([]string, bool) {
	l, ok := f.Items["FLAGS"].(imapcodec.List)
	if !ok {
		return nil, false
	}
	var out []string
	for _, v := range l {
		if a, ok := v.(imapcodec.Atom); ok {
			out = append(out, string(a))
		}
	}
	return out, true
}

// HasFlag reports whether the FLAGS item contains flag (case-insensitive).
func (f FetchData) HasFlag(flag string) bool {
	flags, _ := f.Flags()
	return slices.ContainsFunc(flags, func(s string) bool { return strings.EqualFold(s, flag) })
}

// Bytes returns a string item (BODY[], RFC822 ...).
func (f FetchData) Bytes(item string) ([]byte, bool) {
	s, ok := f.Items[item].(imapcodec.String)
	return s.Data, ok
}

// Number returns a numeric item (RFC822.SIZE ...).
func (f FetchData) Number(item string) (uint64, bool) {
	a, ok := f.Items[item].(imapcodec.Atom)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(a), 10, 64)
	return n, err == nil
}

// fetches returns the FETCH responses among rs.
func fetches(rs []*Response) []FetchData {
	var out []FetchData
	for _, r := range rs {
		if f, ok := r.Fetch(); ok {
			out = append(out, f)
		}
	}
	return out
}

// find returns the first untagged response named name.
func find(rs []*Response, name string) *Response {
	for _, r := range rs {
		if r.Tag == "*" && r.Name == name {
			return r
		}
	}
	return nil
}

// findAll returns the untagged responses named name.
func findAll(rs []*Response, name string) []*Response {
	var out []*Response
	for _, r := range rs {
		if r.Tag == "*" && r.Name == name {
			out = append(out, r)
		}
	}
	return out
}

// findCode returns the first untagged status response with code.
func findCode(rs []*Response, code string) *Response {
	for _, r := range rs {
		if r.Tag == "*" && r.IsStatus() && r.Code == code {
			return r
		}
	}
	return nil
}

// indexOf returns the position of the first response matching m, or -1.
func indexOf(rs []*Response, m func(*Response) bool) int {
	for i, r := range rs {
		if m(r) {
			return i
		}
	}
	return -1
}

// SearchResult is a parsed SEARCH response.
type SearchResult struct {
	Nums      []uint32
	Modseq    uint64
	HasModseq bool
}

// search parses the SEARCH response among rs.
func search(rs []*Response) (SearchResult, error) {
	r := find(rs, "SEARCH")
	if r == nil {
		return SearchResult{}, fmt.Errorf("no untagged SEARCH response")
	}
	if r.ParseErr != nil {
		return SearchResult{}, fmt.Errorf("unparsable SEARCH response %q: %v", r.Line, r.ParseErr)
	}
	var s SearchResult
	for i, v := range r.Fields {
		switch v := v.(type) {
		case imapcodec.Atom:
			n, err := strconv.ParseUint(string(v), 10, 32)
			if err != nil {
				return s, fmt.Errorf("SEARCH response %q: %q is not a number", r.Line, v)
			}
			s.Nums = append(s.Nums, uint32(n))
		case imapcodec.List:
			if i != len(r.Fields)-1 || len(v) != 2 || !isAtom(v[0], "MODSEQ") {
				return s, fmt.Errorf("SEARCH response %q: unexpected list", r.Line)
			}
			a, _ := v[1].(imapcodec.Atom)
			n, err := strconv.ParseUint(string(a), 10, 64)
			if err != nil {
				return s, fmt.Errorf("SEARCH response %q: bad MODSEQ", r.Line)
			}
			s.Modseq, s.HasModseq = n, true
		default:
			return s, fmt.Errorf("SEARCH response %q: unexpected string", r.Line)
		}
	}
	return s, nil
}

func isAtom(v imapcodec.Value, s string) bool {
	a, ok := v.(imapcodec.Atom)
	return ok && strings.EqualFold(string(a), s)
}

// maxSetSize bounds how many numbers a sequence set from the server may
// expand to: the suite's mailboxes hold a handful of messages.
const maxSetSize = 100000

// parseSet expands "1:3,7" into its numbers; "*" is not accepted (servers
// send concrete sets).
func parseSet(s string) ([]uint32, error) {
	var out []uint32
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad set %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 32); err != nil {
				return nil, fmt.Errorf("bad set %q", s)
			}
		}
		if a > b {
			a, b = b, a
		}
		if b-a+uint64(len(out)) > maxSetSize {
			return nil, fmt.Errorf("set %q too large", shorten(s))
		}
		for n := a; n <= b; n++ {
			out = append(out, uint32(n))
		}
	}
	return out, nil
}

// vanished parses a VANISHED response: whether it is (EARLIER) and its UIDs.
func (r *Response) vanished() (earlier bool, uids []uint32, err error) {
	f := r.Fields
	if len(f) == 2 {
		l, ok := f[0].(imapcodec.List)
		if !ok || len(l) != 1 || !isAtom(l[0], "EARLIER") {
			return false, nil, fmt.Errorf("bad VANISHED response %q", r.Line)
		}
		earlier = true
		f = f[1:]
	}
	if len(f) != 1 {
		return false, nil, fmt.Errorf("bad VANISHED response %q", r.Line)
	}
	a, ok := f[0].(imapcodec.Atom)
	if !ok {
		return false, nil, fmt.Errorf("bad VANISHED response %q", r.Line)
	}
	uids, err = parseSet(string(a))
	return earlier, uids, err
}

// vanishedUIDs returns the UIDs of all VANISHED responses among rs with the
// given EARLIER-ness.
func vanishedUIDs(rs []*Response, earlier bool) ([]uint32, error) {
	var out []uint32
	for _, r := range findAll(rs, "VANISHED") {
		e, uids, err := r.vanished()
		if err != nil {
			return nil, err
		}
		if e == earlier {
			out = append(out, uids...)
		}
	}
	return out, nil
}

// statusItems parses "* STATUS name (K V ...)": the mailbox name and items.
func (r *Response) statusItems() (string, map[string]uint64, error) {
	if len(r.Fields) != 2 {
		return "", nil, fmt.Errorf("bad STATUS response %q", r.Line)
	}
	name, ok := imapcodec.AsString(r.Fields[0])
	l, ok2 := r.Fields[1].(imapcodec.List)
	if !ok || !ok2 || len(l)%2 != 0 {
		return "", nil, fmt.Errorf("bad STATUS response %q", r.Line)
	}
	items := map[string]uint64{}
	for i := 0; i < len(l); i += 2 {
		k, _ := l[i].(imapcodec.Atom)
		v, _ := l[i+1].(imapcodec.Atom)
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return "", nil, fmt.Errorf("bad STATUS response %q", r.Line)
		}
		items[strings.ToUpper(string(k))] = n
	}
	return name, items, nil
}

// listData parses "* LIST (attrs) delim name [ext]".
type listData struct {
	Attrs   []string
	Delim   string
	Name    string
	OldName string // from the OLDNAME extended data item
}

func (r *Response) list() (listData, error) {
	var d listData
	if len(r.Fields) < 3 {
		return d, fmt.Errorf("bad LIST response %q", r.Line)
	}
	attrs, ok := r.Fields[0].(imapcodec.List)
	if !ok {
		return d, fmt.Errorf("bad LIST response %q", r.Line)
	}
	for _, a := range attrs {
		if s, ok := a.(imapcodec.Atom); ok {
			d.Attrs = append(d.Attrs, string(s))
		}
	}
	if !imapcodec.IsNil(r.Fields[1]) {
		d.Delim, _ = imapcodec.AsString(r.Fields[1])
	}
	d.Name, ok = imapcodec.AsString(r.Fields[2])
	if !ok {
		return d, fmt.Errorf("bad LIST response %q", r.Line)
	}
	if len(r.Fields) > 3 {
		if ext, ok := r.Fields[3].(imapcodec.List); ok {
			for i := 0; i+1 < len(ext); i += 2 {
				if k, _ := imapcodec.AsString(ext[i]); strings.EqualFold(k, "OLDNAME") {
					if l, ok := ext[i+1].(imapcodec.List); ok && len(l) == 1 {
						d.OldName, _ = imapcodec.AsString(l[0])
					}
				}
			}
		}
	}
	return d, nil
}

func (d listData) has(attr string) bool {
	return slices.ContainsFunc(d.Attrs, func(s string) bool { return strings.EqualFold(s, attr) })
}

// codeNumber returns the numeric argument of an untagged OK response code
// ("* OK [HIGHESTMODSEQ 7]") among rs.
func codeNumber(rs []*Response, code string) (uint64, bool) {
	r := findCode(rs, code)
	if r == nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(r.CodeArg), 10, 64)
	return n, err == nil
}

// describe summarises responses for a failure reason: the first few lines.
func describe(rs []*Response) string {
	if len(rs) == 0 {
		return "nothing"
	}
	var b strings.Builder
	for i, r := range rs {
		if i == 6 {
			fmt.Fprintf(&b, " ... (%d more)", len(rs)-i)
			break
		}
		if i > 0 {
			b.WriteString(" | ")
		}
		b.WriteString(r.Line)
	}
	return b.String()
}

// status describes a tagged completion for a reason.
func status(res *Reply) string {
	if res == nil || res.Status == nil {
		return "no tagged response"
	}
	return res.Status.Line
}

// transcript keeps the last lines exchanged by a scenario's connections, to
// explain a failure. It is bounded: old lines are dropped.
type transcript struct {
	mu    sync.Mutex
	lines []string
}

const maxTranscript = 60

func (t *transcript) add(who, dir, line string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) >= maxTranscript {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, who+" "+dir+shorten(line))
}

func (t *transcript) String() string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
