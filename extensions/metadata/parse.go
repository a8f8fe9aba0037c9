package metadata

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Parsing bounds. The command itself is bounded by the core's limits (line
// and inline literal); these bound what one command can make the proxy
// do.
const (
	// maxEntryName bounds an entry name, in bytes.
	maxEntryName = 1024
	// maxCommandEntries bounds the entries one GETMETADATA names or one
	// SETMETADATA sets.
	maxCommandEntries = 1000
)

// errSyntax marks a client's error in a command's arguments (BAD).
type errSyntax struct{ msg string }

func (e *errSyntax) Error() string { return e.msg }

func syntaxf(format string, args ...any) error { return &errSyntax{fmt.Sprintf(format, args...)} }

// CheckEntry reports whether name is a valid entry name (RFC 5464 3.2):
// /private or /shared, or a path below them, slash-separated, with no
// empty component, no trailing slash, no "*" or "%", valid UTF-8 and no
// control characters. Entry names are case-insensitive: see Canonical.
func CheckEntry(name string) error {
	switch {
	case len(name) > maxEntryName:
		return syntaxf("entry name longer than %d bytes", maxEntryName)
	case !utf8.ValidString(name):
		return syntaxf("entry name is not UTF-8")
	case strings.ContainsAny(name, "*%"):
		return syntaxf("entry name contains '*' or '%%'")
	case strings.Contains(name, "//"):
		return syntaxf("entry name contains consecutive '/'")
	case strings.HasSuffix(name, "/"):
		return syntaxf("entry name ends with '/'")
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] == 0x7f {
			return syntaxf("entry name contains a control character")
		}
	}
	l := Canonical(name)
	if l != "/private" && l != "/shared" && !strings.HasPrefix(l, "/private/") && !strings.HasPrefix(l, "/shared/") {
		return syntaxf("entry name must begin with /private or /shared")
	}
	return nil
}

// Canonical spells an entry name as the proxy keeps and reports it: entry
// names are case-insensitive, and the ASCII letters are lower-cased (as
// Dovecot does; other letters are left as they are rather than guess at
// a Unicode folding the client may not share).
func Canonical(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}

// isRoot reports whether a canonical entry name is /private or /shared
// itself, which names a tree but holds no value.
func isRoot(entry string) bool { return entry == "/private" || entry == "/shared" }

// Depth values of GETMETADATA.
const (
	depth0        = 0
	depth1        = 1
	depthInfinity = -1
)

// getArgs are GETMETADATA's arguments.
type getArgs struct {
	maxSize int64 // -1: none
	depth   int
	mailbox string
	entries []string // canonical
}

// parseGet reads GETMETADATA's arguments (RFC 5464 4.2): an optional list
// of options (MAXSIZE n, DEPTH 0/1/infinity), the mailbox ("" for the
// server) and one entry or a parenthesised list of them.
func parseGet(p *imapcodec.Parser) (*getArgs, error) {
	a := &getArgs{maxSize: -1, depth: depth0}
	if err := p.SP(); err != nil {
		return nil, syntaxf("missing arguments")
	}
	hadOpts := false
	if c, ok := p.Peek(); ok && c == '(' {
		v, err := p.Value()
		opts, ok := v.(imapcodec.List)
		if err != nil || !ok {
			return nil, syntaxf("bad options")
		}
		if err := a.options(opts); err != nil {
			return nil, err
		}
		hadOpts = true
		if err := p.SP(); err != nil {
			return nil, syntaxf("missing mailbox")
		}
	}
	mbox, err := p.AString()
	if err != nil {
		return nil, syntaxf("bad mailbox name")
	}
	a.mailbox = mbox
	if err := p.SP(); err != nil {
		return nil, syntaxf("missing entries")
	}
	v, err := p.Value()
	if err != nil {
		return nil, syntaxf("bad entries: %v", err)
	}
	// RFC 5464's examples (4.2.1 to 4.2.3) put the options after the
	// mailbox, its grammar before: both are taken.
	if opts, ok := v.(imapcodec.List); ok && !p.AtEnd() && !hadOpts {
		if err := a.options(opts); err != nil {
			return nil, err
		}
		if err := p.SP(); err != nil {
			return nil, syntaxf("missing entries")
		}
		if v, err = p.Value(); err != nil {
			return nil, syntaxf("bad entries: %v", err)
		}
	}
	if !p.AtEnd() {
		return nil, syntaxf("unexpected arguments after the entries")
	}
	var list imapcodec.List
	if l, ok := v.(imapcodec.List); ok {
		list = l
	} else {
		list = imapcodec.List{v}
	}
	if len(list) > maxCommandEntries {
		return nil, syntaxf("more than %d entries", maxCommandEntries)
	}
	for _, e := range list {
		s, ok := imapcodec.AsString(e)
		if !ok {
			return nil, syntaxf("entry name expected")
		}
		if err := CheckEntry(s); err != nil {
			return nil, err
		}
		a.entries = append(a.entries, Canonical(s))
	}
	return a, nil
}

func (a *getArgs) options(l imapcodec.List) error {
	if len(l) == 0 || len(l)%2 != 0 {
		return syntaxf("options are name and value pairs")
	}
	seen := map[string]bool{}
	for i := 0; i < len(l); i += 2 {
		n, ok1 := l[i].(imapcodec.Atom)
		v, ok2 := l[i+1].(imapcodec.Atom)
		if !ok1 || !ok2 {
			return syntaxf("options are name and value pairs")
		}
		name := strings.ToUpper(string(n))
		if seen[name] {
			return syntaxf("option %s given twice", name)
		}
		seen[name] = true
		switch name {
		case "MAXSIZE":
			size, err := strconv.ParseUint(string(v), 10, 32)
			if err != nil {
				return syntaxf("invalid value for MAXSIZE")
			}
			a.maxSize = int64(size)
		case "DEPTH":
			switch strings.ToLower(string(v)) {
			case "0":
				a.depth = depth0
			case "1":
				a.depth = depth1
			case "infinity":
				a.depth = depthInfinity
			default:
				return syntaxf("invalid value for DEPTH")
			}
		default:
			return syntaxf("unknown option %s", name)
		}
	}
	return nil
}

// setEntry is one entry of SETMETADATA: a nil value removes it.
type setEntry struct {
	name  string // canonical
	value []byte
}

// setArgs are SETMETADATA's arguments.
type setArgs struct {
	mailbox string
	entries []setEntry
}

// parseSet reads SETMETADATA's arguments (RFC 5464 4.3): the mailbox and a
// parenthesised list of entry names and values (nstring or literal8; NIL
// removes the entry). An entry named twice takes its last value, as
// Dovecot does.
func parseSet(p *imapcodec.Parser) (*setArgs, error) {
	a := &setArgs{}
	if err := p.SP(); err != nil {
		return nil, syntaxf("missing arguments")
	}
	mbox, err := p.AString()
	if err != nil {
		return nil, syntaxf("bad mailbox name")
	}
	a.mailbox = mbox
	if err := p.SP(); err != nil {
		return nil, syntaxf("missing entries")
	}
	v, err := p.Value()
	if err != nil {
		return nil, syntaxf("bad entries: %v", err)
	}
	if !p.AtEnd() {
		return nil, syntaxf("unexpected arguments after the entries")
	}
	l, ok := v.(imapcodec.List)
	if !ok {
		return nil, syntaxf("entries must be a parenthesised list")
	}
	if len(l)%2 != 0 {
		return nil, syntaxf("entry value missing")
	}
	if len(l)/2 > maxCommandEntries {
		return nil, syntaxf("more than %d entries", maxCommandEntries)
	}
	for i := 0; i < len(l); i += 2 {
		name, ok := imapcodec.AsString(l[i])
		if !ok {
			return nil, syntaxf("entry name expected")
		}
		if err := CheckEntry(name); err != nil {
			return nil, err
		}
		name = Canonical(name)
		if isRoot(name) {
			return nil, syntaxf("%s holds no value; name an entry below it", name)
		}
		e := setEntry{name: name}
		switch v := l[i+1].(type) {
		case imapcodec.String:
			e.value = v.Data
			if e.value == nil {
				e.value = []byte{}
			}
		case imapcodec.Atom:
			if !imapcodec.IsNil(v) {
				return nil, syntaxf("entry value must be a string, a literal or NIL")
			}
		default:
			return nil, syntaxf("entry value must be a string, a literal or NIL")
		}
		a.entries = append(a.entries, e)
	}
	return a, nil
}

// appendValue appends an entry's value in wire form: NIL, a quoted string
// where one can carry it, a literal, or a literal8 when it holds a NUL
// (RFC 5464's value is nstring / literal8).
func appendValue(b []byte, v []byte) []byte {
	switch {
	case v == nil:
		return append(b, "NIL"...)
	case imapcodec.CanQuote(string(v)):
		return imapcodec.AppendQuoted(b, string(v))
	}
	h := imapcodec.LiteralHeader{Size: int64(len(v)), Binary: strings.IndexByte(string(v), 0) >= 0}
	b = h.Format(b)
	b = append(b, '\r', '\n')
	return append(b, v...)
}

// appendMailbox appends a mailbox name as an astring the client can read
// back: quoted where possible, else a literal.
func appendMailbox(b []byte, name string) []byte {
	if imapcodec.CanQuote(name) {
		return imapcodec.AppendQuoted(b, name)
	}
	h := imapcodec.LiteralHeader{Size: int64(len(name))}
	b = h.Format(b)
	b = append(b, '\r', '\n')
	return append(b, name...)
}
