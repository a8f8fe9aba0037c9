package catenate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// The APPEND command with CATENATE (RFC 4469 5, RFC 3502 for several
// messages):
//
//	append         = "APPEND" SP mailbox 1*append-message
//	append-message = [SP flag-list] [SP date-time] SP append-data
//	append-data    = literal / "CATENATE" SP "(" cat-part *(SP cat-part) ")"
//	cat-part       = "TEXT" SP literal / "URL" SP astring
//
// The command arrives as text segments, each but the last ending in a
// literal whose bytes are not held (they are spooled as they arrive), so
// it is read by a small state machine fed one segment at a time (feed),
// with an event for each literal (literal). Its limits: a command of at
// most maxMessages messages of at most maxParts parts each; the text
// itself is bounded by the core's line limit.

const (
	maxMessages = 64
	maxParts    = 256
	maxTokenLen = 8192 // a quoted URL or date; longer is refused
)

// errSyntax is the cause of every syntax error (answered BAD).
var errSyntax = errors.New("syntax error")

type state int

const (
	stTag state = iota
	stName
	stMailbox
	stMailboxLit // the mailbox name is a literal: setMailbox
	stMessage    // a message starts: flags, date, CATENATE or literal
	stFlags      // inside the flag list
	stAfterFlag  // after the flag list: date, CATENATE or literal
	stAfterDate  // after the date: CATENATE or literal
	stCatOpen    // after CATENATE: "("
	stPart       // a part: TEXT, URL, or ")" after one
	stText       // after TEXT: the literal
	stURL        // after URL: the astring
	stEnd        // after a message: another one, or the end
)

// message is one message of the command as it is read.
type message struct {
	flags string // the flag list as the client sent it, "" if none
	date  string // the quoted date-time as the client sent it, "" if none
	cat   bool   // CATENATE (else one literal)
	// binary: the literal is a literal8 (RFC 3516), which goes upstream
	// as one (only over an upstream with BINARY).
	binary bool
	parts  []part
}

// part is a piece of a message: a literal's bytes in the spool, or a URL.
type part struct {
	url    string // the URL; "" for text
	off, n int64  // where the part's bytes are in the spool
}

// cmdParser reads the command's text.
type cmdParser struct {
	st      state
	mailbox string // as the client sent it (atom or quoted string)
	msgs    []*message
	flagBuf []string
	// onURL is called for each URL part as it is read, in order, so its
	// data can go to the spool before any later part's.
	onURL func(m *message, url string) error
}

func syntaxf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errSyntax}, args...)...)
}

// feed reads one text segment (the command's text since the previous
// literal, the first with the tag).
func (p *cmdParser) feed(text []byte) error {
	t := tokenizer{s: string(text)}
	for {
		tok, raw, err := t.next()
		if err != nil {
			return err
		}
		if tok == tokEOF {
			return nil
		}
		if err := p.token(tok, raw); err != nil {
			return err
		}
	}
}

// literal is the event of a literal after the text fed so far: what it is
// in the command.
type literalKind int

const (
	litMessage literalKind = iota // a message's data (append-data literal)
	litText                       // a CATENATE TEXT part
	litURL                        // a URL given as a literal
	litMailbox                    // the mailbox name (setMailbox)
)

// maxMailboxLiteral bounds a mailbox name sent as a literal: the longest
// imapcodec.CanQuote takes.
const maxMailboxLiteral = 1024

// literal moves past a literal and says what it is.
func (p *cmdParser) literal() (literalKind, error) {
	switch p.st {
	case stEnd:
		// Another message, with neither flags nor date (MULTIAPPEND).
		if err := p.newMessage(); err != nil {
			return 0, err
		}
		return litMessage, nil
	case stMessage, stAfterFlag, stAfterDate:
		p.st = stEnd
		return litMessage, nil
	case stText:
		p.st = stPart
		return litText, nil
	case stURL:
		p.st = stPart
		return litURL, nil
	case stMailbox:
		p.st = stMailboxLit
		return litMailbox, nil
	}
	return 0, syntaxf("unexpected literal")
}

// setMailbox takes the mailbox name a litMailbox literal held. It is
// kept as a quoted string, the form every APPEND the extension sends
// upstream writes it in, so a name that cannot be quoted (a CR, LF or NUL,
// or 8-bit data, which IMAP4rev1 mailbox names never hold) is refused.
func (p *cmdParser) setMailbox(name []byte) error {
	if p.st != stMailboxLit {
		return syntaxf("unexpected mailbox name")
	}
	if !imapcodec.CanQuote(string(name)) {
		return syntaxf("mailbox name that cannot be quoted")
	}
	p.mailbox = string(imapcodec.AppendQuoted(nil, string(name)))
	p.st = stMessage
	return p.newMessage()
}

// done checks the command is complete after its last segment.
func (p *cmdParser) done() error {
	if p.st != stEnd {
		return syntaxf("command ends early")
	}
	return nil
}

func (p *cmdParser) newMessage() error {
	if len(p.msgs) >= maxMessages {
		return syntaxf("more than %d messages", maxMessages)
	}
	p.msgs = append(p.msgs, &message{})
	return nil
}

func (p *cmdParser) token(tok tokKind, raw string) error {
	upper := strings.ToUpper(raw)
	switch p.st {
	case stTag:
		if tok != tokAtom {
			return syntaxf("bad tag")
		}
		p.st = stName
	case stName:
		if upper != "APPEND" {
			return syntaxf("not APPEND")
		}
		p.st = stMailbox
	case stMailbox:
		if tok != tokAtom && tok != tokQuoted {
			return syntaxf("bad mailbox")
		}
		p.mailbox = raw
		p.st = stMessage
		return p.newMessage()
	case stEnd:
		// Another message (MULTIAPPEND).
		if err := p.newMessage(); err != nil {
			return err
		}
		p.st = stMessage
		return p.token(tok, raw)
	case stMessage, stAfterFlag, stAfterDate:
		m := p.msgs[len(p.msgs)-1]
		switch {
		case p.st == stMessage && tok == tokOpen:
			p.st, p.flagBuf = stFlags, p.flagBuf[:0]
		case p.st != stAfterDate && tok == tokQuoted:
			m.date, p.st = raw, stAfterDate
		case tok == tokAtom && upper == "CATENATE":
			m.cat, p.st = true, stCatOpen
		default:
			return syntaxf("unexpected %q in APPEND", clip(raw))
		}
	case stFlags:
		m := p.msgs[len(p.msgs)-1]
		switch tok {
		case tokClose:
			m.flags = "(" + strings.Join(p.flagBuf, " ") + ")"
			p.st = stAfterFlag
		case tokAtom:
			if len(p.flagBuf) >= maxParts {
				return syntaxf("too many flags")
			}
			p.flagBuf = append(p.flagBuf, raw)
		default:
			return syntaxf("bad flag")
		}
	case stCatOpen:
		if tok != tokOpen {
			return syntaxf("CATENATE without \"(\"")
		}
		p.st = stPart
	case stPart:
		m := p.msgs[len(p.msgs)-1]
		switch {
		case tok == tokClose && len(m.parts) > 0:
			p.st = stEnd
		case tok == tokAtom && upper == "TEXT":
			p.st = stText
		case tok == tokAtom && upper == "URL":
			p.st = stURL
		default:
			return syntaxf("unexpected %q in CATENATE", clip(raw))
		}
		if p.st == stText || p.st == stURL {
			if len(m.parts) >= maxParts {
				return syntaxf("more than %d parts", maxParts)
			}
		}
	case stText:
		return syntaxf("TEXT without a literal")
	case stURL:
		var url string
		switch tok {
		case tokAtom:
			url = raw
		case tokQuoted:
			url = unquote(raw)
		default:
			return syntaxf("URL without a URL")
		}
		p.st = stPart
		return p.onURL(p.msgs[len(p.msgs)-1], url)
	}
	return nil
}

type tokKind int

const (
	tokEOF tokKind = iota
	tokAtom
	tokQuoted
	tokOpen
	tokClose
)

// tokenizer splits a text segment into atoms, quoted strings and
// parentheses. Atoms are what RFC 3501 allows and more ("\Seen",
// "$MDNSent"; "]" too): the values are checked where they are used.
type tokenizer struct {
	s string
	i int
}

func (t *tokenizer) next() (tokKind, string, error) {
	for t.i < len(t.s) && t.s[t.i] == ' ' {
		t.i++
	}
	if t.i >= len(t.s) {
		return tokEOF, "", nil
	}
	start := t.i
	switch c := t.s[t.i]; c {
	case '(':
		t.i++
		return tokOpen, "(", nil
	case ')':
		t.i++
		return tokClose, ")", nil
	case '"':
		t.i++
		for t.i < len(t.s) {
			switch t.s[t.i] {
			case '\\':
				t.i += 2
				continue
			case '"':
				t.i++
				if t.i-start > maxTokenLen {
					return 0, "", syntaxf("string too long")
				}
				return tokQuoted, t.s[start:t.i], nil
			}
			t.i++
		}
		return 0, "", syntaxf("unterminated string")
	}
	for t.i < len(t.s) {
		c := t.s[t.i]
		if c == ' ' || c == '(' || c == ')' || c == '"' || c < ' ' || c == 0x7f {
			break
		}
		t.i++
	}
	if t.i == start {
		return 0, "", syntaxf("bad character %q", t.s[t.i])
	}
	if t.i-start > maxTokenLen {
		return 0, "", syntaxf("atom too long")
	}
	return tokAtom, t.s[start:t.i], nil
}

// unquote returns the value of a quoted string the tokenizer read.
func unquote(q string) string {
	q = q[1 : len(q)-1]
	if !strings.Contains(q, "\\") {
		return q
	}
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		if q[i] == '\\' && i+1 < len(q) {
			i++
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// clip shortens s for a message to the client.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// isCatenate tells whether the first line of an APPEND (the text before
// its first literal) starts a CATENATE message: the APPENDs this
// extension reads. One whose first message is a literal, or whose
// mailbox name is a literal, is streamed as it is.
func isCatenate(first []byte) bool {
	p := cmdParser{onURL: func(*message, string) error { return nil }}
	t := tokenizer{s: string(first)}
	for {
		tok, raw, err := t.next()
		if err != nil || tok == tokEOF {
			return false
		}
		if err := p.token(tok, raw); err != nil {
			return false
		}
		if p.st == stCatOpen {
			return true
		}
	}
}

// isPlainAppend reports whether first (an APPEND's first line up to its
// first literal) is an APPEND whose first message is a plain literal, or
// whose mailbox name is a literal: the forms the MULTIAPPEND synthesis
// reads besides CATENATE (one that starts with a literal8 message is
// binary's to convert).
func isPlainAppend(first []byte) bool {
	p := cmdParser{onURL: func(*message, string) error { return nil }}
	if err := p.feed(first); err != nil {
		return false
	}
	kind, err := p.literal()
	return err == nil && (kind == litMessage || kind == litMailbox)
}
