package convert

import (
	"io"
	"sort"
	"strings"

	"golang.org/x/text/encoding"
	"golang.org/x/text/transform"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// What the proxy converts (RFC 5259 5.1, 7.1):
//
//   - A part to its own media type ("identity"): its data with the
//     Content-Transfer-Encoding decoded, as BINARY sends it. This is also
//     what the default conversion (NIL) picks.
//   - A text/* leaf part to its own type in another charset: the
//     "charset" parameter names the target (any charset golang.org/x/text
//     knows), "unknown-character-replacement" what replaces characters the
//     target lacks; without it such a character fails the conversion
//     (BADPARAMETERS, RFC 5259 7.1).
//
// Nothing converts from one media type to another.

// charsetTypes are the text types RFC 5259 7.1 names for the "charset"
// parameter; CONVERSIONS lists them first. Every text/* leaf converts the
// same way.
var charsetTypes = []string{"text/plain", "text/html", "text/css", "text/csv", "text/enriched", "text/xml"}

// otherTypes are listed by CONVERSIONS with wildcards besides charsetTypes:
// the identity conversion of the structures a CONVERT of a whole message
// or a non-leaf section sends (RFC 5259 6 wants multipart/* listed where
// non-leaf parts convert).
var otherTypes = []string{"message/rfc822", "multipart/alternative", "multipart/mixed", "multipart/related"}

// textParams are the conversion parameters of a text conversion.
var textParams = []string{"charset", "unknown-character-replacement"}

// conversions lists the pairs CONVERSIONS from to answers: identity pairs
// of the known types and of a concrete type the query names.
func conversions(from, to string) []string {
	cands := append(append([]string{}, charsetTypes...), otherTypes...)
	for _, t := range []string{from, to} {
		if !strings.Contains(t, "*") && !contains(cands, t) {
			cands = append(cands, t)
		}
	}
	var out []string
	for _, t := range cands {
		if matches(from, t) && matches(to, t) {
			out = append(out, t)
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// matches tells whether a CONVERSIONS argument ("*", "type/*", a type)
// covers a concrete type.
func matches(pattern, t string) bool {
	if pattern == "*" {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(t, p+"/")
	}
	return pattern == t
}

// conversionLine is the CONVERSION response for an identity pair.
func conversionLine(t string) []byte {
	b := []byte("* CONVERSION ")
	b = imapcodec.AppendQuoted(b, t)
	b = append(b, ' ')
	b = imapcodec.AppendQuoted(b, t)
	if strings.HasPrefix(t, "text/") {
		b = append(b, " ("...)
		for i, p := range textParams {
			if i > 0 {
				b = append(b, ' ')
			}
			b = imapcodec.AppendQuoted(b, p)
		}
		b = append(b, ')')
	}
	return append(b, "\r\n"...)
}

// plan is how one section of one message is converted, or why not.
type plan struct {
	part bodypart.Part
	from string // the source's concrete media type, "" if no such part
	to   string // the target type as the client sent it, or the chosen one
	err  *convertError
	// A charset conversion (text leaf with "charset"):
	charset      bool
	src, dst     encoding.Encoding
	dstName      string
	charsetParam param // the "charset" parameter as the client sent it
	repl         []byte
	hasRepl      bool
	params       map[string]string // the part's BODYSTRUCTURE parameters
	key          string            // what makes two conversions of a section the same
	whole        bool              // the whole message (section "")
	text         bool              // a text/* leaf
}

// convertError is a converterror-phrase (RFC 5259 9/10).
type convertError struct {
	text string
	code string // "BADPARAMETERS": no conversion here needs a parameter, so MISSINGPARAMETERS never comes
	// from and to are the media types; from "" is NIL (no such part).
	from, to string
	params   []param // the refused parameters
}

// appendTo writes the phrase: (ERROR "text" code ...).
func (e *convertError) appendTo(b []byte) []byte {
	b = append(b, "(ERROR "...)
	b = imapcodec.AppendQuoted(b, e.text)
	b = append(b, ' ')
	b = append(b, e.code...)
	b = append(b, ' ')
	if e.from == "" {
		b = append(b, "NIL"...)
	} else {
		b = imapcodec.AppendQuoted(b, e.from)
	}
	b = append(b, ' ')
	b = imapcodec.AppendQuoted(b, e.to)
	if len(e.params) > 0 {
		b = append(b, " ("...)
		for i, p := range e.params {
			if i > 0 {
				b = append(b, ' ')
			}
			b = appendAString(b, p.name)
			b = append(b, ' ')
			b = appendAString(b, p.value)
		}
		b = append(b, ')')
	}
	return append(b, ')')
}

// appendAString writes s quoted, or as a literal when it cannot be quoted.
func appendAString(b []byte, s string) []byte {
	if imapcodec.CanQuote(s) {
		return imapcodec.AppendQuoted(b, s)
	}
	return imapcodec.AppendString(b, s, false)
}

// defaultMissing is the target named in an error about a part that does
// not exist under the default conversion: the grammar wants a concrete
// type where the server had nothing to choose from.
const defaultMissing = "application/octet-stream"

// makePlan decides how section of a message with BODYSTRUCTURE bs is
// converted under req (RFC 5259 6, 7, 9).
func makePlan(bs imapcodec.Value, section string, req *request) *plan {
	p := &plan{part: bodypart.Resolve(bs, section), to: req.target}
	if !p.part.Found {
		if p.to == "" {
			p.to = defaultMissing
		}
		p.err = &convertError{text: "No such body part", code: "BADPARAMETERS", to: p.to, params: req.params}
		return p
	}
	leaf := false
	switch {
	case section == "":
		p.from = "message/rfc822"
		p.part.Body, _ = bs.(imapcodec.List)
		p.whole = true
	default:
		typ, sub, params := bodypart.MediaType(p.part.Body)
		p.from, p.params = typ+"/"+sub, params
		leaf = bodypart.IsLeaf(p.part.Body)
	}
	if p.to == "" {
		p.to = p.from // the default conversion: the identity
	}
	if !strings.EqualFold(p.to, p.from) {
		p.err = &convertError{text: "Cannot convert " + p.from + " to " + strings.ToLower(p.to), code: "BADPARAMETERS", from: p.from, to: p.to}
		return p
	}
	if !bodypart.KnownCTE(p.part.Enc) {
		p.err = &convertError{text: "Unknown Content-Transfer-Encoding " + p.part.Enc, code: "BADPARAMETERS", from: p.from, to: p.to}
		return p
	}
	text := leaf && strings.HasPrefix(p.from, "text/")
	p.text = text
	var refused []param
	var charset, repl *param
	for i, pr := range req.params {
		switch strings.ToLower(pr.name) {
		case "charset":
			if text {
				charset = &req.params[i]
				continue
			}
		case "unknown-character-replacement":
			if text {
				repl = &req.params[i]
				continue
			}
		}
		refused = append(refused, pr)
	}
	reason := "Conversion parameters not valid for " + p.from
	if charset == nil && repl != nil {
		refused = append(refused, *repl)
		reason = "unknown-character-replacement needs charset"
	}
	if charset != nil {
		dst, ok := lookupCharset(charset.value)
		if !ok {
			refused = append(refused, *charset)
			reason = "Unknown charset " + charset.value
		} else {
			p.dst, p.dstName, p.charsetParam = dst, charset.value, *charset
		}
		if ok && repl != nil {
			r, err := encodeString(dst, repl.value)
			if err != nil || len(repl.value) > maxReplaceLen || repl.value == "" {
				refused = append(refused, *repl)
				reason = "unknown-character-replacement must be 1 to 4 bytes representable in " + charset.value
			}
			p.repl, p.hasRepl = r, true
		}
	}
	if len(refused) > 0 {
		p.err = &convertError{text: reason, code: "BADPARAMETERS", from: p.from, to: p.to, params: refused}
		return p
	}
	if charset != nil {
		srcName := p.params["charset"]
		if srcName == "" {
			srcName = "us-ascii" // RFC 2045 5.2
		}
		src, ok := lookupCharset(srcName)
		if !ok {
			p.err = &convertError{text: "Unknown source charset " + srcName, code: "BADPARAMETERS", from: p.from, to: p.to}
			return p
		}
		p.charset, p.src = true, src
		p.key = "charset=" + strings.ToLower(p.dstName)
		if repl != nil {
			p.key += ";repl=" + repl.value
		}
	}
	return p
}

// failed returns the error of a charset conversion that met a character
// the target lacks (RFC 5259 7.1).
func (p *plan) failed() *convertError {
	return &convertError{text: "Source text has characters not in " + p.dstName, code: "BADPARAMETERS",
		from: p.from, to: p.to, params: []param{p.charsetParam}}
}

// converter is the Source.Convert of a text leaf (bare LF made CRLF, the
// charset converted if asked); lines counts its line feeds. Other parts
// are decoded only (nil).
func (p *plan) converter(lines *int64) func(io.Reader) io.Reader {
	if !p.text {
		return nil
	}
	return func(r io.Reader) io.Reader {
		*lines = 0
		if !p.charset {
			return transform.NewReader(r, &crlf{lf: lines})
		}
		return transcode(r, p.src, p.dst, p.repl, p.hasRepl, lines)
	}
}

// available is the AVAILABLECONVERSIONS answer (RFC 5259 8.4): the one
// target the part converts to under the request, in a mimetype-list.
func (p *plan) available() []byte {
	return append(imapcodec.AppendQuoted([]byte("(("), strings.ToLower(p.to)), "))"...)
}

// structure is the BODYPARTSTRUCTURE of a converted leaf part (RFC 5259
// 8.2): its BODYSTRUCTURE with the charset, encoding and size (and lines)
// of the converted data. Non-leaf sections and whole messages are sent as
// they are, so their BODYSTRUCTURE is the upstream's.
func (p *plan) structure(size, lines int64, nul bool) []byte {
	body := p.part.Body
	if p.whole || !bodypart.IsLeaf(body) {
		return imapcodec.AppendValue(nil, body)
	}
	typ, sub, _ := bodypart.MediaType(body)
	b := []byte{'('}
	b = imapcodec.AppendQuoted(b, strings.ToUpper(typ))
	b = append(b, ' ')
	b = imapcodec.AppendQuoted(b, strings.ToUpper(sub))
	b = append(b, ' ')
	keys := make([]string, 0, len(p.params))
	for k := range p.params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if p.charset && p.params["charset"] == "" {
		keys = append(keys, "charset")
	}
	if len(keys) == 0 {
		b = append(b, "NIL"...)
	} else {
		b = append(b, '(')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ' ')
			}
			v := p.params[k]
			if k == "charset" && p.charset {
				v = p.dstName
			}
			b = imapcodec.AppendQuoted(b, strings.ToUpper(k))
			b = append(b, ' ')
			b = appendAString(b, v)
		}
		b = append(b, ')')
	}
	for _, i := range []int{3, 4} { // body-fld-id, body-fld-desc
		b = append(b, ' ')
		if i < len(body) {
			b = imapcodec.AppendValue(b, body[i])
		} else {
			b = append(b, "NIL"...)
		}
	}
	enc := "8BIT"
	if nul {
		enc = "BINARY"
	}
	b = append(b, " \""+enc+"\" "...)
	b = appendInt(b, size)
	if typ == "text" {
		b = append(b, ' ')
		b = appendInt(b, lines)
	}
	return append(b, ')')
}
