package esearch

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// maxReturnOpts bounds the RETURN list: RFC 4731, 5182 and 5267 define
// eight options, and a list longer than a few times that is no client's.
const maxReturnOpts = 16

// returnOpts are the result options of an extended SEARCH: RFC 4731 3.1's
// MIN, MAX, COUNT and ALL, RFC 5182's SAVE, and RFC 5267 4's CONTEXT,
// UPDATE and PARTIAL.
type returnOpts struct {
	min, max, count, all, save bool
	// context is RFC 5267 4.2's hint, which a server may ignore; update
	// asks for ADDTO/REMOVEFROM updates (4.3).
	context, update bool
	// partial is PARTIAL's range (4.4), lo <= hi; nil without PARTIAL.
	partial *span
}

// respond reports whether the options ask for an ESEARCH response: SAVE
// alone does not (RFC 5182 2.1). UPDATE does, even alone: the response
// then carries no result item, only the tag the updates will name (as
// Dovecot answers).
func (o returnOpts) respond() bool {
	return o.min || o.max || o.count || o.all || o.partial != nil || o.update
}

// contextual reports whether the options use RFC 5267's, which only
// CONTEXT=SEARCH allows.
func (o returnOpts) contextual() bool { return o.context || o.update || o.partial != nil }

// contextName names one of RFC 5267's options the options use.
func (o returnOpts) contextName() string {
	switch {
	case o.partial != nil:
		return "PARTIAL"
	case o.update:
		return "UPDATE"
	}
	return "CONTEXT"
}

// searchReturn is what parseReturn found in a SEARCH command.
type searchReturn struct {
	opts returnOpts
	// start and end delimit "RETURN (...) " in the first segment's text,
	// the space after the list included, so that cutting them out leaves
	// the plain SEARCH the upstream gets when the proxy synthesizes.
	start, end int
}

// parseReturn reads the RETURN option of "tag [UID] SEARCH RETURN (...)
// criteria" (RFC 4731 3.1). It returns nil when the command has none. An
// option it does not know is an error, for the client's BAD: no other
// option is advertised.
func parseReturn(segs []imapcodec.Segment) (*searchReturn, error) {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	if _, err := p.Atom(); err != nil { // tag
		return nil, nil
	}
	name, err := atomAfterSP(p)
	if err != nil {
		return nil, nil
	}
	if strings.EqualFold(name, "UID") {
		if name, err = atomAfterSP(p); err != nil {
			return nil, nil
		}
	}
	if !strings.EqualFold(name, "SEARCH") || p.SP() != nil {
		return nil, nil
	}
	start := p.Pos()
	if a, err := p.Atom(); err != nil || !strings.EqualFold(a, "RETURN") {
		return nil, nil
	}
	if p.SP() != nil {
		return nil, errors.New("RETURN needs a list of options")
	}
	opts, err := parseReturnList(p)
	if err != nil {
		return nil, err
	}
	r := &searchReturn{start: start.Off, opts: opts}
	if p.SP() != nil {
		return nil, errors.New("SEARCH needs criteria after RETURN")
	}
	end := p.Pos()
	if start.Seg != 0 || end.Seg != 0 {
		return nil, errors.New("bad RETURN list")
	}
	r.end = end.Off
	return r, nil
}

// parseReturnList reads the list of options after RETURN, its
// parentheses included.
func parseReturnList(p *imapcodec.Parser) (returnOpts, error) {
	var o returnOpts
	if !p.OpenList() {
		return o, errors.New("RETURN needs a list of options")
	}
	n := 0
	for !p.CloseList() {
		if n > 0 && p.SP() != nil {
			return o, errors.New("bad RETURN list")
		}
		if n++; n > maxReturnOpts {
			return o, errors.New("too many RETURN options")
		}
		a, err := p.Atom()
		if err != nil {
			return o, errors.New("bad RETURN list")
		}
		switch strings.ToUpper(a) {
		case "MIN":
			o.min = true
		case "MAX":
			o.max = true
		case "COUNT":
			o.count = true
		case "ALL":
			o.all = true
		case "SAVE":
			o.save = true
		case "CONTEXT":
			o.context = true
		case "UPDATE":
			o.update = true
		case "PARTIAL":
			if o.partial != nil {
				return o, errors.New("PARTIAL can be used only once")
			}
			if p.SP() != nil {
				return o, errors.New("PARTIAL needs a range")
			}
			rg, err := p.Atom()
			if err != nil {
				return o, errors.New("PARTIAL needs a range")
			}
			if o.partial, err = parsePartial(rg); err != nil {
				return o, err
			}
		default:
			return o, fmt.Errorf("unknown RETURN option %s", a)
		}
	}
	if o.partial != nil && o.all {
		// RFC 5267 4.4: one PARTIAL, one ALL, or neither.
		return o, errors.New("PARTIAL conflicts with ALL")
	}
	if !o.respond() && !o.save {
		// RETURN () is RETURN (ALL), RFC 4731 3.1; so is a list of
		// nothing but the CONTEXT hint, which asks for no result itself.
		o.all = true
	}
	return o, nil
}

// ReturnOptions are the result options of RFC 4731 3.1 as ESORT (RFC
// 5267 3) gives them to SORT, and RFC 5267 4's as CONTEXT=SORT adds them:
// extensions/sort parses them with ParseSortReturn and answers with
// AppendResponse, so that SORT RETURN and SEARCH RETURN share one parser
// and one writer.
type ReturnOptions struct {
	Min, Max, Count, All bool
	// Context is RFC 5267 4.2's hint; Update asks for a live context
	// (4.3). Neither changes the response AppendResponse writes.
	Context, Update bool
	// PartialLo and PartialHi are PARTIAL's range (4.4), lo <= hi, both
	// 0 without PARTIAL.
	PartialLo, PartialHi uint32
}

// Contextual reports whether the options use RFC 5267 4's (CONTEXT=SORT
// with a SORT).
func (o ReturnOptions) Contextual() bool { return o.Context || o.Update || o.PartialLo != 0 }

// ParseSortReturn reads the list of options after a SORT's RETURN: RFC
// 4731's MIN, MAX, COUNT and ALL, and RFC 5267 4's CONTEXT, UPDATE and
// PARTIAL, which the caller refuses where it offers no CONTEXT=SORT. SAVE
// is not offered with SORT (RFC 5182 defines it for SEARCH).
func ParseSortReturn(p *imapcodec.Parser) (ReturnOptions, error) {
	o, err := parseReturnList(p)
	switch {
	case err != nil:
		return ReturnOptions{}, err
	case o.save:
		return ReturnOptions{}, errors.New("SAVE is not supported with SORT")
	}
	return o.exported(), nil
}

// exported returns the options as ReturnOptions (SAVE left out).
func (o returnOpts) exported() ReturnOptions {
	r := ReturnOptions{Min: o.min, Max: o.max, Count: o.count, All: o.all, Context: o.context, Update: o.update}
	if o.partial != nil {
		r.PartialLo, r.PartialHi = o.partial.Lo, o.partial.Hi
	}
	return r
}

// parsePartial reads RFC 5267's partial-range, "lo:hi" of non-zero
// 32-bit numbers in either order (500:400 is 400:500). RFC 9394's negative
// ranges are not RFC 5267's and are refused.
func parsePartial(rg string) (*span, error) {
	a, b, ok := strings.Cut(rg, ":")
	if !ok {
		return nil, errors.New("PARTIAL range broken")
	}
	lo, err1 := strconv.ParseUint(a, 10, 32)
	hi, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil || lo == 0 || hi == 0 {
		return nil, errors.New("PARTIAL range broken")
	}
	if lo > hi {
		lo, hi = hi, lo
	}
	return &span{Lo: uint32(lo), Hi: uint32(hi)}, nil
}

func atomAfterSP(p *imapcodec.Parser) (string, error) {
	if err := p.SP(); err != nil {
		return "", err
	}
	return p.Atom()
}

// span is a range of consecutive numbers, Lo <= Hi.
type span = uidset.Span
