package imapcodec

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A SearchKey is one search key of a SEARCH, SORT or THREAD command, as
// ReplaceSearchKeys reports it: Name is its name in upper case ("MODSEQ",
// "UID"), or "" for a bare sequence set (RFC 5182's "$" included); Args are its arguments (for a
// sequence set, the set as an Atom). Keys that take other keys (NOT, OR,
// FUZZY) are walked into, not reported.
type SearchKey struct {
	Name string
	Args []Value
	// Negated is set when the key stands under an odd number of NOTs:
	// a message matching it makes the criteria less likely to match.
	// Replacing every key by ALL where it is not negated and by NOT ALL
	// where it is therefore gives criteria that match a superset of what
	// they matched (OR and AND only ever grow with their operands).
	Negated bool
}

// searchArity gives the number of arguments of search keys that take any
// (RFC 3501, 4551/7162 MODSEQ aside, and common extensions); NOT, OR and
// FUZZY take search keys instead.
var searchArity = map[string]int{
	"BCC": 1, "BEFORE": 1, "BODY": 1, "CC": 1, "FROM": 1, "KEYWORD": 1, "LARGER": 1, "ON": 1,
	"SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1, "SINCE": 1, "SMALLER": 1, "SUBJECT": 1,
	"TEXT": 1, "TO": 1, "UID": 1, "UNKEYWORD": 1, "OLDER": 1, "YOUNGER": 1, "EMAILID": 1,
	"THREADID": 1, "SAVEDBEFORE": 1, "SAVEDON": 1, "SAVEDSINCE": 1, "X-GM-RAW": 1,
	"X-GM-MSGID": 1, "X-GM-THRID": 1, "FILTER": 1, "HEADER": 2, "ANNOTATION": 3,
	// Dovecot's own (a number argument read as a key would be taken for
	// a sequence set and translated).
	"X-BODY-FAST": 1, "X-TEXT-FAST": 1, "X-GUID": 1, "X-MAILBOX": 1, "X-REAL-UID": 1,
}

// ReplaceSearchKeys walks the search criteria of a SEARCH, SORT or THREAD
// command (in its UID form or not; segs start with the tag) and calls fn for
// every key. Where fn returns replace, the key and its arguments are
// replaced by text in segs. It returns how many keys were replaced.
//
// The grammar knows RFC 3501's keys, RFC 7162's MODSEQ (with its optional
// entry name and type) and the common extensions' keys with arguments;
// an unknown key is taken to have none.
func ReplaceSearchKeys(segs []Segment, fn func(k SearchKey) (text string, replace bool, err error)) (int, error) {
	out, n, err := rewriteSearchKeys(segs, fn, false)
	if err == nil {
		copy(segs, out)
	}
	return n, err
}

// RewriteSearchKeys is ReplaceSearchKeys for replacements that may take
// literals with them: a key whose arguments were sent as literals
// ("SUBJECT {6}" and its six octets) is replaced whole, and the segments
// around it are joined into one. It returns the new segments and leaves
// segs as they were. A replaced key must be followed by a space, a ")"
// or the end (the walk is lenient about spaces, and `SUBJECT "x"0` made
// "UID 5" + "0" would be another command).
func RewriteSearchKeys(segs []Segment, fn func(k SearchKey) (text string, replace bool, err error)) ([]Segment, int, error) {
	out := slices.Clone(segs)
	out, n, err := rewriteSearchKeys(out, fn, true)
	if err != nil {
		return nil, 0, err
	}
	return out, n, nil
}

// rewriteSearchKeys walks the criteria of segs, calling fn for each key,
// and returns segs with the replacements made (in place where none
// spans a literal); span allows replacements that take literals along.
func rewriteSearchKeys(segs []Segment, fn func(k SearchKey) (text string, replace bool, err error), span bool) ([]Segment, int, error) {
	p := NewParser(segs, Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return nil, 0, err
	}
	p.SP()
	name, err := p.Atom()
	if err != nil {
		return nil, 0, err
	}
	if strings.EqualFold(name, "UID") {
		p.SP()
		if name, err = p.Atom(); err != nil {
			return nil, 0, err
		}
	}
	type repl struct {
		start, end Position
		text       string
	}
	var repls []repl
	w := searchWalker{p: p, onKey: func(start Position, k SearchKey) error {
		text, replace, err := fn(k)
		if err != nil || !replace {
			return err
		}
		end := p.Pos()
		if start.Seg != end.Seg && !span {
			return fmt.Errorf("%s search key split by a literal", k.Name)
		}
		if c, ok := p.Peek(); span && ok && c != ' ' && c != ')' {
			return fmt.Errorf("%s search key not followed by a space", k.Name)
		}
		repls = append(repls, repl{start, end, text})
		return nil
	}}
	switch strings.ToUpper(name) {
	case "SEARCH":
		err = w.search()
	case "SORT", "THREAD":
		err = w.sortOrThread()
	default:
		return nil, 0, fmt.Errorf("not a search command: %s", name)
	}
	if err != nil {
		return nil, 0, err
	}
	// From the last to the first, so that earlier positions stay valid.
	for i := len(repls) - 1; i >= 0; i-- {
		r := repls[i]
		first, last := segs[r.start.Seg], segs[r.end.Seg]
		joined := last // its literal, if any, follows the joined text
		joined.Text = slices.Concat(first.Text[:r.start.Off], []byte(r.text), last.Text[r.end.Off:])
		segs = slices.Replace(segs, r.start.Seg, r.end.Seg+1, joined)
	}
	return segs, len(repls), nil
}

// searchWalker walks search criteria and reports each key to onKey once
// its arguments have been read (the parser is then just after them).
type searchWalker struct {
	p     *Parser
	onKey func(start Position, k SearchKey) error
	neg   bool // under an odd number of NOTs
}

func (w *searchWalker) search() error {
	p := w.p
	if !p.MaybeSP() {
		return errors.New("SEARCH needs criteria")
	}
	// [RETURN (...)] [CHARSET x]
	for {
		pos := p.Pos()
		a, err := p.Atom()
		if err != nil {
			return w.keysFrom(pos, "")
		}
		switch strings.ToUpper(a) {
		case "RETURN", "CHARSET":
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

// sortOrThread skips "[RETURN (options)] (sort criteria) charset" (RFC
// 5267's ESORT adds the RETURN) or "algorithm charset".
func (w *searchWalker) sortOrThread() error {
	p := w.p
	if !p.MaybeSP() {
		return errors.New("missing arguments")
	}
	v, err := p.Value() // RETURN, sort criteria or algorithm
	if err != nil {
		return err
	}
	if a, ok := v.(Atom); ok && strings.EqualFold(string(a), "RETURN") {
		p.SP()
		if _, err := p.Value(); err != nil { // the options
			return err
		}
		p.SP()
		if _, err := p.Value(); err != nil { // sort criteria
			return err
		}
	}
	p.SP()
	if _, err := p.Value(); err != nil { // charset
		return err
	}
	if !p.MaybeSP() {
		return errors.New("missing search criteria")
	}
	return w.keysFrom(p.Pos(), "")
}

// keysFrom walks keys to the end; first is an atom already read at pos.
func (w *searchWalker) keysFrom(pos Position, first string) error {
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
				return errors.New("unbalanced parenthesis in search criteria")
			}
		}
	}
	pos := p.Pos()
	a, err := p.Atom()
	if err != nil {
		return errors.New("bad search key")
	}
	return w.keyAfterAtom(pos, a)
}

func (w *searchWalker) keyAfterAtom(pos Position, a string) error {
	p := w.p
	up := strings.ToUpper(a)
	switch {
	case IsSequenceSet(a) || a == "$":
		// "$" is RFC 5182's sequence set (the saved search result): a
		// set, so that whoever translates sets sees it.
		return w.onKey(pos, SearchKey{Args: []Value{Atom(a)}, Negated: w.neg})
	case up == "NOT":
		p.SP()
		w.neg = !w.neg
		err := w.key()
		w.neg = !w.neg
		return err
	case up == "FUZZY":
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
		args := []Value{v}
		if _, quoted := v.(String); quoted { // entry name, entry type, value
			p.SP()
			t, _ := p.Value()
			p.SP()
			if v, err = p.Value(); err != nil {
				return err
			}
			args = append(args, t, v)
		}
		return w.onKey(pos, SearchKey{Name: up, Args: args, Negated: w.neg})
	}
	var args []Value
	for i := 0; i < searchArity[up]; i++ {
		p.SP()
		v, err := p.Value()
		if err != nil {
			return err
		}
		args = append(args, v)
	}
	return w.onKey(pos, SearchKey{Name: up, Args: args, Negated: w.neg})
}

// IsSequenceSet reports whether an atom has the characters of a sequence
// set (digits, ':', ',' and '*'); ParseNumSet checks its syntax.
func IsSequenceSet(a string) bool {
	if a == "" {
		return false
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if !(c >= '0' && c <= '9' || c == ':' || c == ',' || c == '*') {
			return false
		}
	}
	return true
}
