package listext

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Bounds of what one command may ask for: patterns and options are held
// in memory while the answer is computed, so a client must not be able to
// name an unbounded number of them.
const (
	maxPatterns = 64
	maxOptions  = 16
)

// request is a parsed LIST command (RFC 5258 section 6's grammar).
type request struct {
	// extended is false for a plain RFC 3501 LIST ("LIST ref pattern"),
	// which is relayed untouched.
	extended bool
	// Selection options.
	subscribed, remote, recursive bool
	ref                           string
	patterns                      []string
	// Return options.
	retSubscribed, retChildren bool
	// retStatus is RFC 5819's RETURN (STATUS ...), which the proxy never
	// passes on (see Extension.ServeCommand).
	retStatus bool
}

// errUnsupported marks an option the proxy cannot synthesize but the
// upstream might know (an extension's selection or return option): with
// an upstream that has LIST-EXTENDED the command is relayed; without, it
// is refused with BAD, as RFC 5258 3 wants of unknown options.
var errUnsupported = errors.New("unsupported option")

// parseRequest parses the arguments of a LIST command (segs is the whole
// command, tag and name included).
func parseRequest(segs []imapcodec.Segment) (*request, error) {
	cmd, err := imapcodec.ParseCommand(segs, imapcodec.Limits{})
	if err != nil {
		return nil, err
	}
	if cmd.Name != "LIST" {
		return nil, fmt.Errorf("not LIST: %s", cmd.Name)
	}
	p := cmd.Args
	if err := p.SP(); err != nil {
		return nil, errors.New("missing arguments")
	}
	r := &request{}
	var unsupported error
	if c, ok := p.Peek(); ok && c == '(' {
		r.extended = true
		opts, err := optionList(p)
		if err != nil {
			return nil, fmt.Errorf("selection options: %w", err)
		}
		for _, o := range opts {
			switch o {
			case "SUBSCRIBED":
				r.subscribed = true
			case "REMOTE":
				r.remote = true
			case "RECURSIVEMATCH":
				r.recursive = true
			case "SPECIAL-USE":
				unsupported = fmt.Errorf("%w: selection option %s", errUnsupported, o)
			default:
				return nil, fmt.Errorf("unknown selection option %s", o)
			}
		}
		// RFC 5258 3: RECURSIVEMATCH must not occur alone or with REMOTE
		// only: it needs another option to modify.
		if r.recursive && !r.subscribed && unsupported == nil {
			return nil, errors.New("RECURSIVEMATCH without a selection option it modifies")
		}
		if err := p.SP(); err != nil {
			return nil, errors.New("missing reference")
		}
	}
	if r.ref, err = p.AString(); err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	if err := p.SP(); err != nil {
		return nil, errors.New("missing mailbox pattern")
	}
	if p.OpenList() {
		r.extended = true
		for !p.CloseList() {
			if len(r.patterns) > 0 {
				if err := p.SP(); err != nil {
					return nil, errors.New("bad pattern list")
				}
			}
			if len(r.patterns) == maxPatterns {
				return nil, fmt.Errorf("more than %d patterns", maxPatterns)
			}
			pat, err := p.AString()
			if err != nil {
				return nil, fmt.Errorf("pattern: %w", err)
			}
			r.patterns = append(r.patterns, pat)
		}
		if len(r.patterns) == 0 {
			return nil, errors.New("empty pattern list")
		}
	} else {
		pat, err := p.AString()
		if err != nil {
			return nil, fmt.Errorf("pattern: %w", err)
		}
		r.patterns = []string{pat}
	}
	if !p.AtEnd() {
		r.extended = true
		if err := p.SP(); err != nil {
			return nil, errors.New("junk after the pattern")
		}
		kw, err := p.Atom()
		if err != nil || !strings.EqualFold(kw, "RETURN") {
			return nil, errors.New("junk after the pattern")
		}
		if err := p.SP(); err != nil {
			return nil, errors.New("RETURN without options")
		}
		if c, ok := p.Peek(); !ok || c != '(' {
			return nil, errors.New("RETURN without options")
		}
		opts, err := optionList(p)
		if err != nil {
			return nil, fmt.Errorf("return options: %w", err)
		}
		for _, o := range opts {
			switch o {
			case "SUBSCRIBED":
				r.retSubscribed = true
			case "CHILDREN":
				r.retChildren = true
			case "STATUS":
				r.retStatus = true
				unsupported = fmt.Errorf("%w: return option %s", errUnsupported, o)
			case "SPECIAL-USE", "MYRIGHTS":
				unsupported = fmt.Errorf("%w: return option %s", errUnsupported, o)
			default:
				return nil, fmt.Errorf("unknown return option %s", o)
			}
		}
		if !p.AtEnd() {
			return nil, errors.New("junk after the return options")
		}
	}
	if unsupported != nil {
		return r, unsupported
	}
	return r, nil
}

// optionList reads "(" [option *(SP option)] ")" of options without
// arguments, upper-cased. An option with an argument (a parenthesised
// list, as RETURN (STATUS (MESSAGES)) has) is returned by name, its
// argument skipped: only options the proxy does not synthesize take one.
func optionList(p *imapcodec.Parser) ([]string, error) {
	v, err := p.Value()
	if err != nil {
		return nil, err
	}
	l, ok := v.(imapcodec.List)
	if !ok {
		return nil, errors.New("not a list")
	}
	var out []string
	for i, e := range l {
		a, ok := e.(imapcodec.Atom)
		if !ok {
			if _, isList := e.(imapcodec.List); isList && i > 0 {
				continue // the argument of the option before
			}
			return nil, errors.New("option is not an atom")
		}
		if len(out) == maxOptions {
			return nil, fmt.Errorf("more than %d options", maxOptions)
		}
		out = append(out, strings.ToUpper(string(a)))
	}
	return out, nil
}
