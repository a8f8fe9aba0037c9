package imapcodec

import (
	"fmt"
	"strings"
)

// StoreArgs are the arguments of STORE and UID STORE (RFC 3501 6.4.6, with
// RFC 4466 modifiers such as RFC 7162's UNCHANGEDSINCE), decoded once so
// that nobody downstream re-reads the wire text.
type StoreArgs struct {
	// Set is the sequence or UID set as sent.
	Set string
	// Modifiers is the parenthesised modifier list, nil when there is none.
	Modifiers List
	// Op is '+' (add), '-' (remove) or 0 (replace).
	Op byte
	// Silent is set for FLAGS.SILENT.
	Silent bool
	// Flags are the flags, as sent.
	Flags []string
}

// ParseStoreArgs parses what follows the command name of STORE or UID
// STORE: "SP set [SP (modifiers)] SP item SP flags".
func ParseStoreArgs(p *Parser) (*StoreArgs, error) {
	var st StoreArgs
	if err := p.SP(); err != nil {
		return nil, fmt.Errorf("imapcodec: %w: STORE needs a message set", ErrSyntax)
	}
	set, err := p.Atom()
	if err != nil || !IsSequenceSet(set) {
		return nil, fmt.Errorf("imapcodec: %w: STORE needs a message set", ErrSyntax)
	}
	st.Set = set
	if err := p.SP(); err != nil {
		return nil, fmt.Errorf("imapcodec: %w: STORE needs a data item", ErrSyntax)
	}
	if c, ok := p.Peek(); ok && c == '(' {
		v, err := p.Value()
		if err != nil {
			return nil, err
		}
		st.Modifiers = v.(List)
		if err := p.SP(); err != nil {
			return nil, fmt.Errorf("imapcodec: %w: STORE needs a data item", ErrSyntax)
		}
	}
	item, err := p.Atom()
	if err != nil {
		return nil, fmt.Errorf("imapcodec: %w: STORE needs a data item", ErrSyntax)
	}
	item = strings.ToUpper(item)
	if item != "" && (item[0] == '+' || item[0] == '-') {
		st.Op = item[0]
		item = item[1:]
	}
	switch item {
	case "FLAGS":
	case "FLAGS.SILENT":
		st.Silent = true
	default:
		return nil, fmt.Errorf("imapcodec: %w: unknown STORE data item %q", ErrSyntax, item)
	}
	if err := p.SP(); err != nil {
		return nil, fmt.Errorf("imapcodec: %w: STORE needs flags", ErrSyntax)
	}
	if c, ok := p.Peek(); ok && c == '(' {
		v, err := p.Value()
		if err != nil {
			return nil, err
		}
		for _, f := range v.(List) {
			a, ok := f.(Atom)
			if !ok {
				return nil, fmt.Errorf("imapcodec: %w: a flag is an atom", ErrSyntax)
			}
			st.Flags = append(st.Flags, string(a))
		}
	} else {
		for {
			a, err := p.Atom()
			if err != nil {
				return nil, fmt.Errorf("imapcodec: %w: a flag is an atom", ErrSyntax)
			}
			st.Flags = append(st.Flags, a)
			if !p.MaybeSP() {
				break
			}
		}
	}
	if !p.AtEnd() {
		return nil, fmt.Errorf("imapcodec: %w: unexpected text after the STORE flags", ErrSyntax)
	}
	return &st, nil
}

// AppendStoreArgs appends st in wire form, without a leading space:
// "set [(modifiers) ]item (flags)".
func AppendStoreArgs(b []byte, st *StoreArgs) []byte {
	b = append(b, st.Set...)
	b = append(b, ' ')
	if st.Modifiers != nil {
		b = AppendValue(b, st.Modifiers)
		b = append(b, ' ')
	}
	if st.Op != 0 {
		b = append(b, st.Op)
	}
	b = append(b, "FLAGS"...)
	if st.Silent {
		b = append(b, ".SILENT"...)
	}
	b = append(b, " ("...)
	b = append(b, strings.Join(st.Flags, " ")...)
	return append(b, ')')
}
