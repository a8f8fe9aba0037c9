package bodypart

import (
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Part is where a section's data is and how it is decoded.
type Part struct {
	Found bool
	// Section is the BODY section read from the upstream: the section
	// itself, "" for the whole message, "TEXT" for the body of a
	// single-part message whose header is rewritten (Header).
	Section string
	Enc     string // lower case; "" for an identity encoding
	Text    bool   // text/*: bare LF becomes CRLF
	Header  bool   // BINARY[] of an encoded single-part message
	// Body is the section's own BODYSTRUCTURE (nil for the whole
	// message): its media type and parameters (MediaType).
	Body imapcodec.List
}

// KnownCTE tells the encodings the proxy decodes.
func KnownCTE(enc string) bool {
	switch enc {
	case "", "7bit", "8bit", "binary", "base64", "quoted-printable":
		return true
	}
	return false
}

// Resolve finds section in a BODYSTRUCTURE (RFC 3501 6.4.5 numbering).
func Resolve(bs imapcodec.Value, section string) Part {
	top, ok := bs.(imapcodec.List)
	if !ok || len(top) == 0 {
		return Part{}
	}
	if section == "" {
		if multipart(top) {
			return Part{Found: true}
		}
		enc := encoding(top)
		if enc == "" || enc == "7bit" || enc == "8bit" || enc == "binary" {
			return Part{Found: true}
		}
		return Part{Found: true, Section: "TEXT", Enc: enc, Text: isText(top), Header: true}
	}
	body := top
	var cur imapcodec.List
	for i, f := range strings.Split(section, ".") {
		n, _ := strconv.Atoi(f)
		if i > 0 {
			switch {
			case multipart(cur):
				body = cur
			case isMessage(cur) && len(cur) > 8:
				b, ok := cur[8].(imapcodec.List)
				if !ok {
					return Part{}
				}
				body = b
			default:
				return Part{}
			}
		}
		switch {
		case multipart(body):
			kids := children(body)
			if n > len(kids) {
				return Part{}
			}
			cur = kids[n-1]
		case n == 1:
			cur = body
		default:
			return Part{}
		}
	}
	p := Part{Found: true, Section: section, Body: cur}
	if multipart(cur) || isMessage(cur) {
		return p // an identity encoding by RFC 2045 6.4
	}
	p.Enc = encoding(cur)
	p.Text = isText(cur)
	return p
}

func multipart(l imapcodec.List) bool {
	if len(l) == 0 {
		return false
	}
	_, ok := l[0].(imapcodec.List)
	return ok
}

func children(l imapcodec.List) []imapcodec.List {
	var kids []imapcodec.List
	for _, v := range l {
		k, ok := v.(imapcodec.List)
		if !ok {
			break
		}
		kids = append(kids, k)
	}
	return kids
}

func field(l imapcodec.List, i int) string {
	if i >= len(l) {
		return ""
	}
	s, _ := imapcodec.AsString(l[i])
	if imapcodec.IsNil(l[i]) {
		return ""
	}
	return strings.ToLower(s)
}

func isMessage(l imapcodec.List) bool {
	return field(l, 0) == "message" && field(l, 1) == "rfc822"
}

func isText(l imapcodec.List) bool { return field(l, 0) == "text" }

// encoding is a single part's Content-Transfer-Encoding, "" for 7bit.
func encoding(l imapcodec.List) string {
	e := strings.TrimSpace(field(l, 5))
	if e == "7bit" {
		return ""
	}
	return e
}

// MediaType reads a body's media type, lower case, and its parameters
// (names lower case, values as sent) from its BODYSTRUCTURE; a multipart
// body is "multipart/<subtype>" with no parameters read.
func MediaType(body imapcodec.List) (typ, subtype string, params map[string]string) {
	params = map[string]string{}
	if multipart(body) {
		kids := children(body)
		return "multipart", field(body, len(kids)), params
	}
	if len(body) < 3 {
		return field(body, 0), field(body, 1), params
	}
	if l, ok := body[2].(imapcodec.List); ok {
		for i := 0; i+1 < len(l); i += 2 {
			k, _ := imapcodec.AsString(l[i])
			v, _ := imapcodec.AsString(l[i+1])
			params[strings.ToLower(k)] = v
		}
	}
	return field(body, 0), field(body, 1), params
}

// IsLeaf tells whether a body is neither a multipart nor a message/rfc822.
func IsLeaf(body imapcodec.List) bool {
	return len(body) > 0 && !multipart(body) && !isMessage(body)
}
