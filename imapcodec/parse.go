package imapcodec

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Value is one parsed IMAP data item: an [Atom], a [String] or a [List].
type Value interface{ isValue() }

// Atom is an atom, a number, NIL, a flag ("\Seen") or a fetch item with its
// section ("BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>"), exactly as sent.
type Atom string

// String is a quoted string or a literal.
type String struct {
	Data    []byte
	Literal bool // sent as a literal
	Binary  bool // sent as a literal8 (~{n})
}

// List is a parenthesised list.
type List []Value

func (Atom) isValue()   {}
func (String) isValue() {}
func (List) isValue()   {}

// IsNil reports whether v is the atom NIL.
func IsNil(v Value) bool {
	a, ok := v.(Atom)
	return ok && strings.EqualFold(string(a), "NIL")
}

// AsString returns the text of an astring (atom, quoted string or literal).
func AsString(v Value) (string, bool) {
	switch v := v.(type) {
	case Atom:
		return string(v), true
	case String:
		return string(v.Data), true
	}
	return "", false
}

// Parser reads values from a command or response held in memory as segments.
type Parser struct {
	segs  []Segment
	i     int // current segment
	pos   int // offset in segs[i].Text
	depth int
	lim   Limits
}

// NewParser returns a parser over segs.
func NewParser(segs []Segment, lim Limits) *Parser {
	return &Parser{segs: segs, lim: lim.WithDefaults()}
}

func (p *Parser) errorf(format string, args ...any) error {
	return fmt.Errorf("imapcodec: %w: %s", ErrSyntax, fmt.Sprintf(format, args...))
}

// text returns the unread text of the current segment.
func (p *Parser) text() []byte {
	if p.i >= len(p.segs) {
		return nil
	}
	return p.segs[p.i].Text[p.pos:]
}

// atLiteral reports whether the current position is at a literal.
func (p *Parser) atLiteral() bool {
	return p.i < len(p.segs) && p.pos == len(p.segs[p.i].Text) && p.segs[p.i].Literal != nil
}

// AtEnd reports whether all input has been consumed.
func (p *Parser) AtEnd() bool {
	return p.i >= len(p.segs) || (p.i == len(p.segs)-1 && p.pos == len(p.segs[p.i].Text) && p.segs[p.i].Literal == nil)
}

func (p *Parser) peek() (byte, bool) {
	t := p.text()
	if len(t) == 0 {
		return 0, false
	}
	return t[0], true
}

// SP consumes exactly one space.
func (p *Parser) SP() error {
	if c, ok := p.peek(); !ok || c != ' ' {
		return p.errorf("expected space")
	}
	p.pos++
	return nil
}

// MaybeSP consumes a space if there is one.
func (p *Parser) MaybeSP() bool {
	if c, ok := p.peek(); ok && c == ' ' {
		p.pos++
		return true
	}
	return false
}

// Rest returns the unread text of the current line, without consuming it.
// Literals are not included.
func (p *Parser) Rest() string { return string(p.text()) }

// isAtomChar reports whether c may appear in an atom as this package reads it:
// the RFC's ATOM-CHAR plus the list wildcards and "\" (flags), which the proxy
// relays untouched.
func isAtomChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '"', ']', '[':
		return false
	}
	return c > 0x1f && c < 0x7f
}

// Atom reads an atom. Square-bracketed sections ("BODY[HEADER.FIELDS (A B)]")
// are part of the atom, spaces and parentheses inside them included.
func (p *Parser) Atom() (string, error) {
	t := p.text()
	i := 0
	for i < len(t) {
		c := t[i]
		if c == '[' {
			j, err := skipBracket(t, i)
			if err != nil {
				return "", err
			}
			i = j
			continue
		}
		if !isAtomChar(c) {
			break
		}
		i++
	}
	if i == 0 {
		return "", p.errorf("expected atom")
	}
	p.pos += i
	return string(t[:i]), nil
}

// skipBracket returns the offset just past the "]" matching the "[" at t[i].
func skipBracket(t []byte, i int) (int, error) {
	depth := 0
	inQuote := false
	for ; i < len(t); i++ {
		c := t[i]
		switch {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case inQuote:
		case c == '[':
			depth++
		case c == ']':
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("imapcodec: %w: unbalanced '['", ErrSyntax)
}

// Value reads one value of any kind.
func (p *Parser) Value() (Value, error) {
	if p.atLiteral() {
		s := p.segs[p.i]
		p.i++
		p.pos = 0
		return String{Data: s.Data, Literal: true, Binary: s.Literal.Binary}, nil
	}
	c, ok := p.peek()
	if !ok {
		return nil, p.errorf("unexpected end of input")
	}
	switch c {
	case '"':
		return p.quoted()
	case '(':
		return p.list()
	case ')':
		return nil, p.errorf("unexpected ')'")
	}
	a, err := p.Atom()
	if err != nil {
		return nil, err
	}
	return Atom(a), nil
}

// AString reads an astring (RFC 3501): a quoted string, a literal, or a
// run of ASTRING-CHARs. Unlike Atom it takes "[" and "]" as plain
// characters, without balancing them: mailbox names such as "a]b", "a[b"
// or "[Gmail]/Drafts" are astrings, while Atom reads brackets as the
// sections of fetch attributes. List wildcards and "\" are accepted too;
// the upstream judges the name.
func (p *Parser) AString() (string, error) {
	if p.atLiteral() {
		v, err := p.Value()
		if err != nil {
			return "", err
		}
		s, _ := AsString(v)
		return s, nil
	}
	t := p.text()
	if len(t) > 0 && t[0] == '"' {
		v, err := p.quoted()
		if err != nil {
			return "", err
		}
		s, _ := AsString(v)
		return s, nil
	}
	i := 0
	for i < len(t) && isAStringChar(t[i]) {
		i++
	}
	if i == 0 {
		return "", p.errorf("expected a string")
	}
	p.pos += i
	return string(t[:i]), nil
}

// isAStringChar reports whether c may appear in an unquoted astring as
// AString reads it.
func isAStringChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '"':
		return false
	}
	return c > 0x1f && c < 0x7f
}

func (p *Parser) quoted() (Value, error) {
	t := p.text()
	var b []byte
	for i := 1; i < len(t); i++ {
		c := t[i]
		switch c {
		case '"':
			p.pos += i + 1
			return String{Data: b}, nil
		case '\\':
			i++
			if i == len(t) || (t[i] != '"' && t[i] != '\\') {
				return nil, p.errorf("bad escape in quoted string")
			}
			b = append(b, t[i])
		case 0:
			return nil, p.errorf("NUL in quoted string")
		default:
			b = append(b, c)
		}
	}
	return nil, p.errorf("unterminated quoted string")
}

func (p *Parser) list() (Value, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > p.lim.MaxDepth {
		return nil, fmt.Errorf("imapcodec: %w (limit %d)", ErrTooDeep, p.lim.MaxDepth)
	}
	p.pos++ // '('
	l := List{}
	for {
		if c, ok := p.peek(); ok && c == ')' {
			p.pos++
			return l, nil
		}
		if len(l) > 0 {
			// A list directly after a list needs no space: RFC 3501's
			// address lists ("(" 1*address ")") and body parts run
			// together, "((...)(...))".
			_, prevList := l[len(l)-1].(List)
			if c, ok := p.peek(); !prevList || !ok || c != '(' {
				if err := p.SP(); err != nil {
					return nil, p.errorf("expected space or ')' in list")
				}
			}
		}
		v, err := p.Value()
		if err != nil {
			return nil, err
		}
		l = append(l, v)
	}
}

// Values reads space-separated values up to the end of input.
func (p *Parser) Values() ([]Value, error) {
	var vs []Value
	for !p.AtEnd() {
		if len(vs) > 0 || p.pos > 0 {
			if err := p.SP(); err != nil {
				return nil, err
			}
		}
		v, err := p.Value()
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// Command is the head of a client command.
type Command struct {
	Tag string
	// Name is the upper-cased command name; "UID FETCH" etc. for UID commands.
	Name string
	// Args is positioned just after the name.
	Args *Parser
	// Segments is the whole command as read.
	Segments []Segment
}

// ParseCommand parses the tag and name of a command read with ReadSegments.
func ParseCommand(segs []Segment, lim Limits) (*Command, error) {
	p := NewParser(segs, lim)
	tag, err := p.Atom()
	if err != nil || !validTag(tag) {
		return nil, fmt.Errorf("imapcodec: %w: missing or invalid tag", ErrSyntax)
	}
	cmd := &Command{Tag: tag, Segments: segs, Args: p}
	if err := p.SP(); err != nil {
		return cmd, fmt.Errorf("imapcodec: %w: missing command name", ErrSyntax)
	}
	name, err := p.Atom()
	if err != nil {
		return cmd, fmt.Errorf("imapcodec: %w: missing command name", ErrSyntax)
	}
	cmd.Name = upperASCII(name)
	if cmd.Name == "UID" {
		if err := p.SP(); err != nil {
			return cmd, fmt.Errorf("imapcodec: %w: UID without a command", ErrSyntax)
		}
		sub, err := p.Atom()
		if err != nil {
			return cmd, fmt.Errorf("imapcodec: %w: UID without a command", ErrSyntax)
		}
		cmd.Name = "UID " + upperASCII(sub)
	}
	return cmd, nil
}

// upperASCII upper-cases the ASCII letters of s and nothing else. IMAP
// keywords are ASCII: strings.ToUpper would also map non-ASCII letters onto
// them ("capabılıty" to "CAPABILITY") and replace invalid UTF-8 with U+FFFD.
func upperASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'a' <= s[i] && s[i] <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'a' <= b[j] && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// validTag tells whether an atom can be a command's tag. Atom is lenient
// (flags and LIST patterns are atoms to it); RFC 3501's tag is
// ASTRING-CHARs except "+", so no list wildcard, backslash or bracketed
// section either. Dovecot refuses the same.
func validTag(tag string) bool { return !strings.ContainsAny(tag, `+[*%\`) }

// ParseTag returns the tag at the start of a line, or "" if there is none;
// used to answer a command that could not be read whole.
func ParseTag(line []byte) string {
	p := NewParser([]Segment{{Text: line}}, Limits{})
	tag, err := p.Atom()
	if err != nil || !validTag(tag) || len(tag) > 64 {
		return ""
	}
	return tag
}

// ResponseHead is what the proxy needs to know of a response line to route
// it: who it is for and what kind it is. The rest of the line is relayed as is.
type ResponseHead struct {
	// Tag is "*" for untagged data, "+" for a continuation request, or the
	// command's tag.
	Tag string
	// Num is the number of "* 3 EXISTS"-style responses; HasNum tells
	// whether there was one.
	Num    uint32
	HasNum bool
	// Name is the upper-cased response name: OK, NO, BAD, PREAUTH, BYE, or
	// a data name such as CAPABILITY, FETCH, EXISTS.
	Name string
	// Code and CodeArg are the response code of a status response, the code
	// name upper-cased ("CAPABILITY", "IMAP4rev1 IDLE").
	Code    string
	CodeArg string
	// Text is the human-readable text of a status or continuation response,
	// or for data responses the rest of the line after the name.
	Text string
}

// IsStatus reports whether the response is a status response (OK, NO, BAD,
// PREAUTH or BYE).
func (h *ResponseHead) IsStatus() bool {
	switch h.Name {
	case "OK", "NO", "BAD", "PREAUTH", "BYE":
		return true
	}
	return false
}

// ParseResponseHead parses the first line of a server response.
func ParseResponseHead(line []byte) (ResponseHead, error) {
	var h ResponseHead
	s := string(line)
	if strings.HasPrefix(s, "+") {
		h.Tag = "+"
		h.Text = strings.TrimPrefix(s[1:], " ")
		return h, nil
	}
	tag, rest, ok := strings.Cut(s, " ")
	if !ok || tag == "" {
		return h, fmt.Errorf("imapcodec: %w: response without tag", ErrSyntax)
	}
	h.Tag = tag
	if tag == "*" && rest != "" && rest[0] >= '0' && rest[0] <= '9' {
		numStr, r, _ := strings.Cut(rest, " ")
		n, err := strconv.ParseUint(numStr, 10, 32)
		if err != nil {
			return h, fmt.Errorf("imapcodec: %w: bad number %q", ErrSyntax, numStr)
		}
		h.Num, h.HasNum = uint32(n), true
		rest = r
	}
	name, rest, _ := strings.Cut(rest, " ")
	if name == "" {
		return h, fmt.Errorf("imapcodec: %w: response without a name", ErrSyntax)
	}
	h.Name = upperASCII(name)
	if !h.IsStatus() || h.HasNum {
		h.Text = rest
		return h, nil
	}
	h.Code, h.CodeArg, h.Text = parseRespText(rest)
	return h, nil
}

// parseRespText splits "[CODE arg] text".
func parseRespText(s string) (code, arg, text string) {
	if !strings.HasPrefix(s, "[") {
		return "", "", s
	}
	end, err := skipBracket([]byte(s), 0)
	if err != nil {
		return "", "", s
	}
	inner := s[1 : end-1]
	code, arg, _ = strings.Cut(inner, " ")
	return upperASCII(code), arg, strings.TrimPrefix(s[end:], " ")
}

// Position is a place in a parser's input: segment index and byte offset in
// that segment's text.
type Position struct{ Seg, Off int }

// Pos returns the parser's current position, for callers that rewrite a
// command in place (the proxy's sequence-number translation).
func (p *Parser) Pos() Position { return Position{p.i, p.pos} }

// Peek returns the next byte of the current line without consuming it; ok is
// false at the end of a line or before a literal.
func (p *Parser) Peek() (c byte, ok bool) { return p.peek() }

// OpenList consumes a "(" if there is one.
func (p *Parser) OpenList() bool {
	if c, ok := p.peek(); ok && c == '(' && p.depth < p.lim.MaxDepth {
		p.depth++
		p.pos++
		return true
	}
	return false
}

// CloseList consumes a ")" if there is one.
func (p *Parser) CloseList() bool {
	if c, ok := p.peek(); ok && c == ')' {
		p.depth--
		p.pos++
		return true
	}
	return false
}

// StatusItems splits the item list of a STATUS response, "* STATUS name
// (items)", or of the text after the name's literal when the name came as
// one (" (items)"): open is the index of its "(", items its names and
// values in turn. The list ends the response and holds no parenthesis, so
// the last "(" opens it whatever the name holds.
func StatusItems(text []byte) (open int, items []string, ok bool) {
	open = bytes.LastIndexByte(text, '(')
	if open < 0 || !bytes.HasSuffix(text, []byte(")")) {
		return 0, nil, false
	}
	return open, strings.Fields(string(text[open+1 : len(text)-1])), true
}
