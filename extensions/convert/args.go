package convert

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// request is a CONVERT or UID CONVERT command (RFC 5259 10, convert).
type request struct {
	set string // the message set as the upstream takes it (UIDs)
	// target is the requested media type as sent ("APPLICATION/PDF"),
	// "" for the default conversion (NIL).
	target string
	params []param
	uid    bool // the UID item was asked for
	items  []item
}

// param is a conversion parameter (transcoding-param), its name as sent.
type param struct{ name, value string }

// item is a CONVERT data item other than UID.
type item struct {
	kind    string // kindBinary, kindSize, kindStructure, kindAvailable, kindHeader, kindMIME
	section string // "1.2", "" for the whole message (or its header)
	partial bool
	off     int64
	length  int64
}

const (
	kindBinary    = "BINARY"
	kindSize      = "BINARY.SIZE"
	kindStructure = "BODYPARTSTRUCTURE"
	kindAvailable = "AVAILABLECONVERSIONS"
	kindHeader    = "HEADER" // BODY[HEADER], BODY[n.HEADER]
	kindMIME      = "MIME"   // BODY[n.MIME]
)

// respName is the item's name in the CONVERTED response.
func (it item) respName() string {
	switch it.kind {
	case kindHeader:
		if it.section == "" {
			return "BODY[HEADER]"
		}
		return "BODY[" + it.section + ".HEADER]"
	case kindMIME:
		return "BODY[" + it.section + ".MIME]"
	}
	n := it.kind + "[" + it.section + "]"
	if it.partial {
		n += "<" + strconv.FormatInt(it.off, 10) + ">"
	}
	return n
}

// isHeader tells the items that convert encoded words in a header.
func (it item) isHeader() bool { return it.kind == kindHeader || it.kind == kindMIME }

// Limits of what one command may ask; beyond them it is refused (BAD) or
// answered with the RFC's NO codes (MaxConvertMessages, MaxConvertParts).
const (
	maxParams     = 16
	maxReplaceLen = 4 // bytes of an unknown-character-replacement value
)

// errBad is answered with BAD; its text goes to the client.
type errBad struct{ msg string }

func (e *errBad) Error() string { return e.msg }

func bad(format string, args ...any) error { return &errBad{fmt.Sprintf(format, args...)} }

var (
	// itemRE matches the convert-att forms with a section-convert
	// (section-binary, RFC 3516) and, for BINARY, a partial.
	itemRE = regexp.MustCompile(`^(?i)(BINARY|BINARY\.SIZE|BODYPARTSTRUCTURE|AVAILABLECONVERSIONS)\[([0-9.]*)\](?:<([0-9]+)\.([0-9]+)>)?$`)
	// bodyRE matches BODY[HEADER], BODY[section-part.HEADER] and
	// BODY[section-part.MIME].
	bodyRE = regexp.MustCompile(`^(?i)BODY\[(?:([0-9.]+)\.)?(HEADER|MIME)\]$`)
	// mimeTypeRE is a concrete media type (RFC 4288 4.2 restricted-name,
	// type "/" subtype).
	mimeTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)
	// mimeReqRE is a CONVERSIONS argument: "*", "type/*" or a concrete
	// type.
	mimeReqRE = regexp.MustCompile(`^(?:\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/(?:\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}))$`)
)

// validSection tells a section-part (nz-number *("." nz-number)), or "".
func validSection(s string) bool {
	if s == "" {
		return true
	}
	for _, n := range strings.Split(s, ".") {
		if v, err := strconv.ParseUint(n, 10, 32); err != nil || v == 0 || n[0] == '0' {
			return false
		}
	}
	return true
}

// parseRequest reads the arguments of a CONVERT in its UID form (the core
// has translated the sequence numbers): vals are the command's values,
// tag, "UID", "CONVERT" included.
func parseRequest(vals []imapcodec.Value) (*request, error) {
	if len(vals) != 6 {
		return nil, bad("CONVERT takes a message set, conversion parameters and data items")
	}
	set, ok := vals[3].(imapcodec.Atom)
	if !ok || !imapcodec.IsSequenceSet(string(set)) {
		return nil, bad("CONVERT needs a message set")
	}
	r := &request{set: string(set)}
	if err := r.parseParams(vals[4]); err != nil {
		return nil, err
	}
	atts := []imapcodec.Value{vals[5]}
	if l, ok := vals[5].(imapcodec.List); ok {
		atts = l
	}
	if len(atts) == 0 {
		return nil, bad("CONVERT needs data items")
	}
	for _, v := range atts {
		a, ok := v.(imapcodec.Atom)
		if !ok {
			return nil, bad("malformed CONVERT data item")
		}
		if strings.EqualFold(string(a), "UID") {
			r.uid = true
			continue
		}
		it, err := parseItem(string(a))
		if err != nil {
			return nil, err
		}
		if it.isHeader() && r.target != "" {
			// RFC 5259 6: these go with the default conversion only.
			return nil, bad("%s takes the default conversion (NIL), not a media type", it.respName())
		}
		r.items = append(r.items, it)
	}
	return r, nil
}

// parseParams reads convert-params: "(" (quoted-to-mime-type / "NIL")
// [SP "(" transcoding-params ")"] ")".
func (r *request) parseParams(v imapcodec.Value) error {
	l, ok := v.(imapcodec.List)
	if !ok || len(l) < 1 || len(l) > 2 {
		return bad("malformed conversion parameters")
	}
	switch t := l[0].(type) {
	case imapcodec.String:
		if !mimeTypeRE.MatchString(string(t.Data)) {
			return bad("malformed media type")
		}
		r.target = string(t.Data)
	default:
		if !imapcodec.IsNil(t) {
			return bad("the media type must be a quoted string or NIL")
		}
	}
	if len(l) == 1 {
		return nil
	}
	pl, ok := l[1].(imapcodec.List)
	if !ok || len(pl) == 0 || len(pl)%2 != 0 {
		return bad("malformed transcoding parameters")
	}
	if len(pl) > 2*maxParams {
		return bad("too many transcoding parameters")
	}
	seen := map[string]bool{}
	for i := 0; i < len(pl); i += 2 {
		n, ok1 := astring(pl[i])
		val, ok2 := astring(pl[i+1])
		if !ok1 || !ok2 || n == "" {
			return bad("malformed transcoding parameter")
		}
		if seen[strings.ToLower(n)] {
			return bad("transcoding parameter %s given twice", n)
		}
		seen[strings.ToLower(n)] = true
		r.params = append(r.params, param{n, val})
	}
	return nil
}

// astring is an astring's text; NIL and lists are not astrings here.
func astring(v imapcodec.Value) (string, bool) {
	if _, isList := v.(imapcodec.List); isList || imapcodec.IsNil(v) {
		return "", false
	}
	return imapcodec.AsString(v)
}

// parseItem reads one convert-att other than UID.
func parseItem(a string) (item, error) {
	if m := bodyRE.FindStringSubmatch(a); m != nil {
		kind := strings.ToUpper(m[2])
		if kind == kindMIME && m[1] == "" || !validSection(m[1]) {
			return item{}, bad("malformed CONVERT data item %s", a)
		}
		return item{kind: kind, section: m[1]}, nil
	}
	m := itemRE.FindStringSubmatch(a)
	if m == nil || !validSection(m[2]) {
		return item{}, bad("unknown or malformed CONVERT data item %s", a)
	}
	it := item{kind: strings.ToUpper(m[1]), section: m[2]}
	if m[3] != "" {
		if it.kind != kindBinary {
			return item{}, bad("only BINARY takes a partial range")
		}
		off, err1 := strconv.ParseInt(m[3], 10, 64)
		n, err2 := strconv.ParseInt(m[4], 10, 64)
		if err1 != nil || err2 != nil || n == 0 {
			return item{}, bad("malformed partial range in %s", a)
		}
		it.partial, it.off, it.length = true, off, n
	}
	return it, nil
}

// parseConversions reads the two arguments of CONVERSIONS (RFC 5259 5.1).
func parseConversions(vals []imapcodec.Value) (from, to string, err error) {
	if len(vals) != 4 {
		return "", "", bad("CONVERSIONS takes a source and a target media type")
	}
	from, ok1 := astring(vals[2])
	to, ok2 := astring(vals[3])
	if !ok1 || !ok2 || !mimeReqRE.MatchString(from) || !mimeReqRE.MatchString(to) {
		return "", "", bad(`CONVERSIONS takes media types, "type/*" or "*"`)
	}
	return strings.ToLower(from), strings.ToLower(to), nil
}
