package casesearch

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/casemap"
)

// kind is what part of a message a substring key looks at.
type kind int

const (
	// kindHeader: the decoded values of the header fields named field
	// (SUBJECT, HEADER field).
	kindHeader kind = iota
	// kindAddress: the addresses of the field (FROM, TO, CC, BCC), as
	// the upstream's ENVELOPE gives them, written out (addressText).
	kindAddress
	// kindBody: the decoded text of the body parts (BODY).
	kindBody
	// kindText: the header fields and MIME headers as "Name:value", and
	// the body parts' text (TEXT).
	kindText
)

// atom is one distinct substring key of a command: the keys SUBJECT x and
// HEADER Subject x, written twice or under NOT, are one atom.
type atom struct {
	kind  kind
	field string // lower case, for kindHeader and kindAddress
	// needle is the search string in its canonical form
	// (casemap.Fold), empty when the string is: an empty HEADER string
	// matches every message with the field, an empty BODY or TEXT string
	// every message (as Dovecot does; RFC 3501 6.4.4's empty substring).
	needle string
}

// String is the key as a client would write it (for logs and errors).
func (a atom) String() string {
	switch a.kind {
	case kindBody:
		return "BODY"
	case kindText:
		return "TEXT"
	case kindAddress:
		return strings.ToUpper(a.field)
	}
	return "HEADER " + a.field
}

// maxAtoms bounds the distinct substring keys of one command: each costs
// a comparison with every candidate message's text.
const maxAtoms = 64

// program is a searching command (SEARCH, SORT or THREAD, in the UID form
// the core gives the chain) as this extension needs it.
type program struct {
	segs []imapcodec.Segment
	// charset is CHARSET's argument (SEARCH) or the charset (SORT,
	// THREAD), "" when a SEARCH names none.
	charset string
	// critStart is where the criteria begin in segs. Everything before
	// it is the command's prefix, which rewriting the keys leaves alone.
	critStart imapcodec.Position
	atoms     []atom
	modseq    bool // a MODSEQ key, which only extensions/condstore answers
}

// errNotOurs marks a command this extension leaves to the rest of the
// chain and the upstream, which say what is wrong with it.
var errNotOurs = errors.New("casesearch: not a command to evaluate")

// errTooMany refuses a command of more than maxAtoms distinct keys.
var errTooMany = errors.New("casesearch: too many substring keys")

// parseProgram reads a searching command's charset, where its criteria
// begin and its substring keys. A command whose criteria do not parse is
// errNotOurs.
func parseProgram(segs []imapcodec.Segment) (*program, error) {
	charset, start, err := parsePrefix(segs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotOurs, err)
	}
	prog := &program{segs: segs, charset: charset, critStart: start}
	seen := map[atom]bool{}
	_, err = imapcodec.ReplaceSearchKeys(slices.Clone(segs), func(k imapcodec.SearchKey) (string, bool, error) {
		if k.Name == "MODSEQ" {
			prog.modseq = true
		}
		a, ok, err := atomOf(k)
		if err != nil || !ok || seen[a] {
			return "", false, err
		}
		if len(prog.atoms) == maxAtoms {
			return "", false, errTooMany
		}
		seen[a] = true
		prog.atoms = append(prog.atoms, a)
		return "", false, nil
	})
	if errors.Is(err, errTooMany) {
		return nil, err
	}
	if err == nil && len(prog.atoms) > 0 {
		// The keys must be replaceable (RewriteSearchKeys is stricter
		// about what follows them than the walk).
		_, err = prog.rewrite(func(int, bool) string { return "ALL" })
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotOurs, err)
	}
	return prog, nil
}

// atomOf reads a substring key; ok is false for any other key.
func atomOf(k imapcodec.SearchKey) (a atom, ok bool, err error) {
	var field, needle string
	switch k.Name {
	case "SUBJECT", "FROM", "TO", "CC", "BCC":
		field = strings.ToLower(k.Name)
		needle, ok = arg(k.Args, 0)
	case "HEADER":
		field, ok = arg(k.Args, 0)
		if ok {
			needle, ok = arg(k.Args, 1)
		}
		field = strings.ToLower(field)
	case "BODY", "TEXT":
		needle, ok = arg(k.Args, 0)
	default:
		return atom{}, false, nil
	}
	if !ok {
		return atom{}, false, fmt.Errorf("%s needs a string", k.Name)
	}
	a = atom{kind: kindHeader, field: field, needle: casemap.Fold(needle)}
	switch k.Name {
	case "FROM", "TO", "CC", "BCC":
		a.kind = kindAddress
	case "BODY":
		a = atom{kind: kindBody, needle: a.needle}
	case "TEXT":
		a = atom{kind: kindText, needle: a.needle}
	}
	return a, true, nil
}

// arg returns the i-th argument as a string (atom, quoted or literal).
func arg(args []imapcodec.Value, i int) (string, bool) {
	if i >= len(args) {
		return "", false
	}
	return imapcodec.AsString(args[i])
}

// parsePrefix reads what comes before the criteria: "tag UID SEARCH
// [RETURN (...)] [CHARSET c]", "tag UID SORT [RETURN (...)] (keys) c" or
// "tag UID THREAD alg c" (the UID is optional), and returns the charset
// and where the criteria begin.
func parsePrefix(segs []imapcodec.Segment) (charset string, start imapcodec.Position, err error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return "", start, err
	}
	if err := p.SP(); err != nil {
		return "", start, err
	}
	name, err := p.Atom()
	if err != nil {
		return "", start, err
	}
	if strings.EqualFold(name, "UID") {
		if err := p.SP(); err != nil {
			return "", start, err
		}
		if name, err = p.Atom(); err != nil {
			return "", start, err
		}
	}
	if err := p.SP(); err != nil {
		return "", start, errors.New("missing arguments")
	}
	astring := func() (string, error) {
		v, err := p.Value()
		if err != nil {
			return "", err
		}
		s, ok := imapcodec.AsString(v)
		if !ok {
			return "", errors.New("charset is not a string")
		}
		return s, nil
	}
	switch strings.ToUpper(name) {
	case "SEARCH":
		for {
			pos := p.Pos()
			a, err := p.Atom()
			if err != nil {
				return charset, pos, nil // "(" or a string: the criteria
			}
			switch strings.ToUpper(a) {
			case "RETURN":
				if p.SP() != nil {
					return "", start, errors.New("RETURN needs options")
				}
				if _, err := p.Value(); err != nil {
					return "", start, err
				}
			case "CHARSET":
				if p.SP() != nil {
					return "", start, errors.New("CHARSET needs a name")
				}
				if charset, err = astring(); err != nil {
					return "", start, err
				}
			default:
				return charset, pos, nil
			}
			if p.SP() != nil {
				return "", start, errors.New("missing search criteria")
			}
		}
	case "SORT":
		v, err := p.Value()
		if err != nil {
			return "", start, err
		}
		if a, ok := v.(imapcodec.Atom); ok && strings.EqualFold(string(a), "RETURN") {
			if p.SP() != nil {
				return "", start, errors.New("RETURN needs options")
			}
			if _, err := p.Value(); err != nil {
				return "", start, err
			}
			if p.SP() != nil {
				return "", start, errors.New("missing sort criteria")
			}
			if _, err := p.Value(); err != nil {
				return "", start, err
			}
		}
	case "THREAD":
		if _, err := p.Atom(); err != nil {
			return "", start, err
		}
	default:
		return "", start, fmt.Errorf("not a searching command: %s", name)
	}
	if p.SP() != nil {
		return "", start, errors.New("missing charset")
	}
	if charset, err = astring(); err != nil {
		return "", start, err
	}
	if p.SP() != nil {
		return "", start, errors.New("missing search criteria")
	}
	return charset, p.Pos(), nil
}

// charsetOK reports whether the proxy reads the command's strings: in
// US-ASCII or UTF-8, the two charsets RFC 3501 6.4.4 requires (a string
// in US-ASCII is the same in UTF-8). Others are answered NO [BADCHARSET],
// as go-imap's server answers them; converting them would be easy, but
// the upstream, which is asked the rest of the search, may refuse the
// name.
func (p *program) charsetOK() bool {
	return p.charset == "" || strings.EqualFold(p.charset, "UTF-8") || strings.EqualFold(p.charset, "US-ASCII")
}

// candidates returns the criteria that match a superset of what the
// command's criteria match, whatever its substring keys match: each
// substring key (and MODSEQ, which the upstream may not know) becomes ALL
// where it is not negated and NOT ALL where it is (imapcodec.SearchKey's
// Negated), in "UID SEARCH criteria" form for Session.Exec, literals
// inlined for caps.
func (p *program) candidates(caps interface{ Has(string) bool }) (string, error) {
	segs, _, err := imapcodec.RewriteSearchKeys(p.segs, func(k imapcodec.SearchKey) (string, bool, error) {
		_, ok, _ := atomOf(k)
		if !ok && k.Name != "MODSEQ" {
			return "", false, nil
		}
		if k.Negated {
			return "NOT ALL", true, nil
		}
		return "ALL", true, nil
	})
	if err != nil {
		return "", err
	}
	return inline([]byte("UID SEARCH "), segs, p.critStart, caps)
}

// rewrite returns the command with each substring key replaced by
// key(i, negated), i its atom's index.
func (p *program) rewrite(key func(i int, negated bool) string) ([]imapcodec.Segment, error) {
	index := make(map[atom]int, len(p.atoms))
	for i, a := range p.atoms {
		index[a] = i
	}
	segs, _, err := imapcodec.RewriteSearchKeys(p.segs, func(k imapcodec.SearchKey) (string, bool, error) {
		a, ok, _ := atomOf(k)
		if !ok {
			return "", false, nil
		}
		return key(index[a], k.Negated), true, nil
	})
	return segs, err
}

// searchForm returns segs (the command rewritten or not, with the same
// prefix as p.segs) as "tag UID SEARCH [CHARSET c] criteria": the form
// extensions/contextsearch re-runs.
func (p *program) searchForm(segs []imapcodec.Segment) []imapcodec.Segment {
	head := []byte(tagOf(p.segs) + " UID SEARCH ")
	if p.charset != "" {
		head = imapcodec.AppendString(append(head, "CHARSET "...), p.charset, false)
		head = append(head, ' ')
	}
	out := slices.Clone(segs[p.critStart.Seg:])
	out[0].Text = slices.Concat(head, out[0].Text[p.critStart.Off:])
	return out
}

// tagOf returns a command's tag.
func tagOf(segs []imapcodec.Segment) string {
	t, _, _ := strings.Cut(string(segs[0].Text), " ")
	return t
}

// errLiteral says criteria hold a literal that cannot be sent on a
// command of the proxy's own (no LITERAL+, and not quotable).
var errLiteral = errors.New("casesearch: criteria with a literal the upstream cannot take")

// inline appends the criteria of segs from start to b, each literal as a
// non-synchronising literal where caps allow (Session.Exec takes no
// synchronising ones) or as a quoted string.
func inline(b []byte, segs []imapcodec.Segment, start imapcodec.Position, caps interface{ Has(string) bool }) (string, error) {
	for i := start.Seg; i < len(segs); i++ {
		t := segs[i].Text
		if i == start.Seg {
			t = t[start.Off:]
		}
		b = append(b, t...)
		sg := segs[i]
		if sg.Literal == nil {
			continue
		}
		switch n := len(sg.Data); {
		case caps.Has("LITERAL+") || caps.Has("LITERAL-") && n <= 4096:
			b = fmt.Appendf(b, "{%d+}\r\n", n)
			b = append(b, sg.Data...)
		case imapcodec.CanQuote(string(sg.Data)):
			b = imapcodec.AppendQuoted(b, string(sg.Data))
		default:
			return "", errLiteral
		}
	}
	return string(b), nil
}

// encode returns the search key that stands for an atom at one place of
// the rewritten criteria. For the candidates it is true where the atom
// matches (match, by candidate index); for every other message it is
// false where the key stands plain and true where it stands negated, so
// that through it a message the proxy did not evaluate (not a candidate,
// or new since) is never counted in (see the package comment). known are
// every UID the proxy knows of in the mailbox, candidates included,
// ascending: a range may run over UIDs it does not know, which no longer
// exist, so the set is as short as the alternations between the messages
// it names and the others allow. A plain key that matches nothing is NOT
// ALL; a negated one that matches every candidate, ALL.
func encode(known, cands []uint32, match []bool, negated bool) string {
	j := 0 // index into cands
	spans := uidset.Runs(known, func(u uint32) bool {
		for j < len(cands) && cands[j] < u {
			j++
		}
		// Named: the message is in the set.
		return j < len(cands) && cands[j] == u && match[j] != negated
	})
	switch {
	case len(spans) == 0 && negated:
		return "ALL"
	case len(spans) == 0:
		return "NOT ALL"
	case negated:
		return string(uidset.AppendSpans([]byte("NOT UID "), spans))
	}
	return string(uidset.AppendSpans([]byte("UID "), spans))
}
