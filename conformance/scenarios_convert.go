package conformance

import (
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// convertLatin1 is the decoded text of convertMessage's part 1, in UTF-8:
// its source is quoted-printable ISO-8859-1, which RFC 5259 7.1 makes
// every CONVERT server convert to UTF-8.
const convertLatin1 = "Caf\u00e9 cr\u00e8me = ok"

// convertMessage has a quoted-printable ISO-8859-1 text part (1) and a
// base64 attachment (2).
func convertMessage(mailbox string) []byte {
	return []byte("From: Conformance <conformance@example.org>\r\nTo: Test <test@example.org>\r\n" +
		"Subject: convert\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n" +
		"Message-ID: <" + mailbox + ".convert@conformance.example.org>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"c1\"\r\n\r\n" +
		"--c1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Caf=E9 cr=E8me =3D ok\r\n" +
		"--c1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"AAECAwQFBgcICQ==\r\n" +
		"--c1--\r\n")
}

// convertSetup makes a mailbox holding convertMessage and selects it.
func (t *T) convertSetup() (*Client, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return nil, err
	}
	if err := createFresh(c, name); err != nil {
		return nil, err
	}
	res, err := c.Append(name, "", convertMessage(name))
	if err != nil {
		return nil, err
	}
	if !res.OK() {
		return nil, failf("setup: APPEND refused: %s", status(res))
	}
	c, sel, err := t.loginSelect(name, "")
	if err != nil {
		return nil, err
	}
	if !sel.OK() {
		return nil, failf("SELECT failed: %s", status(sel))
	}
	return c, nil
}

// converted is one CONVERTED response: its message number, correlator tag
// and data items by name (RFC 5259 8.1).
type converted struct {
	num   uint32
	tag   string
	names []string // in order
	items map[string]imapcodec.Value
}

// convertedOf reads the CONVERTED responses of a reply.
func convertedOf(rs []*Response) ([]converted, error) {
	var out []converted
	for _, r := range findAll(rs, "CONVERTED") {
		if r.ParseErr != nil || len(r.Fields) != 2 {
			return nil, failf("malformed CONVERTED response %q", r.Line)
		}
		corr, ok1 := r.Fields[0].(imapcodec.List)
		atts, ok2 := r.Fields[1].(imapcodec.List)
		if !ok1 || !ok2 || len(corr) != 2 || !isAtom(corr[0], "TAG") || len(atts)%2 != 0 {
			return nil, failf("expected (TAG \"t\") (items), got %q", r.Line)
		}
		cv := converted{num: r.Num, items: map[string]imapcodec.Value{}}
		cv.tag, _ = imapcodec.AsString(corr[1])
		for i := 0; i < len(atts); i += 2 {
			n, _ := atts[i].(imapcodec.Atom)
			name := strings.ToUpper(string(n))
			cv.names = append(cv.names, name)
			cv.items[name] = atts[i+1]
		}
		out = append(out, cv)
	}
	return out, nil
}

// convertOne runs a CONVERT expected to answer one CONVERTED response with
// the command's tag; it returns the response and the reply.
func convertOne(c *Client, cmd string, wantOK bool) (converted, *Reply, error) {
	res, err := c.Do(cmd)
	if err != nil {
		return converted{}, res, err
	}
	if res.OK() != wantOK {
		return converted{}, res, failf("%s: expected %s, got %q", cmd, map[bool]string{true: "OK", false: "NO"}[wantOK], status(res))
	}
	cvs, err := convertedOf(res.Untagged)
	if err != nil {
		return converted{}, res, err
	}
	if len(cvs) != 1 {
		return converted{}, res, failf("%s: expected one CONVERTED response, got %s", cmd, describe(res.Untagged))
	}
	if !strings.EqualFold(cvs[0].tag, res.Tag) {
		return converted{}, res, failf("%s: CONVERTED correlator is TAG %q, expected the command's tag %q", cmd, cvs[0].tag, res.Tag)
	}
	return cvs[0], res, nil
}

// convertError reads a converterror-phrase: (ERROR "text" code ...).
func convertError(v imapcodec.Value) (code string, rest imapcodec.List, ok bool) {
	l, isList := v.(imapcodec.List)
	if !isList || len(l) < 3 || !isAtom(l[0], "ERROR") {
		return "", nil, false
	}
	a, _ := l[2].(imapcodec.Atom)
	return strings.ToUpper(string(a)), l[3:], true
}

func convert5259() []*Scenario {
	caps := []string{"CONVERT"}
	return []*Scenario{
		{ID: "5259-needs-binary", RFC: 5259, Section: "3.1", Level: Must, Caps: caps,
			Summary: "a server with CONVERT also advertises BINARY",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "CAPABILITY")
				if err != nil {
					return err
				}
				r := find(res.Untagged, "CAPABILITY")
				if r == nil {
					return failf("CAPABILITY: expected * CAPABILITY, got %s", describe(res.Untagged))
				}
				has := map[string]bool{}
				for _, v := range r.Fields {
					a, _ := v.(imapcodec.Atom)
					has[strings.ToUpper(string(a))] = true
				}
				if !has["CONVERT"] || !has["BINARY"] {
					return failf("expected CONVERT and BINARY, got %q", r.Line)
				}
				return nil
			}},
		{ID: "5259-conversions-text-plain", RFC: 5259, Section: "7.1", Level: Must, Caps: caps,
			Summary: `CONVERSIONS "text/plain" "text/plain" lists the conversion with "charset" and "unknown-character-replacement"`,
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, `CONVERSIONS "text/plain" "text/plain"`)
				if err != nil {
					return err
				}
				for _, r := range findAll(res.Untagged, "CONVERSION") {
					if len(r.Fields) != 3 {
						continue
					}
					from, _ := imapcodec.AsString(r.Fields[0])
					to, _ := imapcodec.AsString(r.Fields[1])
					params, _ := r.Fields[2].(imapcodec.List)
					has := map[string]bool{}
					for _, p := range params {
						s, _ := imapcodec.AsString(p)
						has[strings.ToLower(s)] = true
					}
					if strings.EqualFold(from, "text/plain") && strings.EqualFold(to, "text/plain") &&
						has["charset"] && has["unknown-character-replacement"] {
						return nil
					}
				}
				return failf(`expected * CONVERSION "text/plain" "text/plain" (... "charset" ... "unknown-character-replacement"), got %s`, describe(res.Untagged))
			}},
		{ID: "5259-charset-to-utf8", RFC: 5259, Section: "7.1", Level: Must, Caps: caps,
			Summary: "CONVERT of a quoted-printable ISO-8859-1 text part to UTF-8 answers the converted text in a CONVERTED response tagged with the command's tag",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				cv, _, err := convertOne(c, `CONVERT 1 ("text/plain" ("charset" "utf-8")) BINARY[1]`, true)
				if err != nil {
					return err
				}
				if s, _ := imapcodec.AsString(cv.items["BINARY[1]"]); s != convertLatin1 {
					return failf("BINARY[1] = %q, expected %q", s, convertLatin1)
				}
				if cv.num != 1 {
					return failf("CONVERTED for message %d, expected 1", cv.num)
				}
				return nil
			}},
		{ID: "5259-uid-first", RFC: 5259, Section: "8.1", Level: Must, Caps: caps,
			Summary: "UID CONVERT returns the UID data item, first in the CONVERTED response",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				res, err := doOK(c, "UID SEARCH ALL")
				if err != nil {
					return err
				}
				s, err := search(res.Untagged)
				if err != nil || len(s.Nums) != 1 {
					return firstErr(err, failf("UID SEARCH ALL: expected one UID, got %v", s.Nums))
				}
				cv, _, err := convertOne(c, fmt.Sprintf(`UID CONVERT %d (NIL) (BINARY.SIZE[2] BINARY[2])`, s.Nums[0]), true)
				if err != nil {
					return err
				}
				if len(cv.names) == 0 || cv.names[0] != "UID" {
					return failf("expected UID first, got items %v", cv.names)
				}
				if u, _ := imapcodec.AsString(cv.items["UID"]); u != fmt.Sprint(s.Nums[0]) {
					return failf("UID %s, expected %d", u, s.Nums[0])
				}
				if d, _ := imapcodec.AsString(cv.items["BINARY[2]"]); d != "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09" {
					return failf("BINARY[2] = %q, expected the decoded attachment", d)
				}
				return nil
			}},
		{ID: "5259-size-partial", RFC: 5259, Section: "8.3", Level: Must, Caps: caps,
			Summary: "BINARY.SIZE of a conversion is the size of its BINARY data, and BINARY<o.n> counts in the converted data",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				cv, _, err := convertOne(c, `CONVERT 1 ("text/plain" ("charset" "utf-8")) (BINARY.SIZE[1] BINARY[1]<3.4>)`, true)
				if err != nil {
					return err
				}
				if n, _ := imapcodec.AsString(cv.items["BINARY.SIZE[1]"]); n != fmt.Sprint(len(convertLatin1)) {
					return failf("BINARY.SIZE[1] %s, expected %d", n, len(convertLatin1))
				}
				if s, _ := imapcodec.AsString(cv.items["BINARY[1]<3>"]); s != convertLatin1[3:7] {
					return failf("BINARY[1]<3> = %q, expected %q", s, convertLatin1[3:7])
				}
				return nil
			}},
		{ID: "5259-unrepresentable", RFC: 5259, Section: "7.1", Level: Must, Caps: caps,
			Summary: "a character the target charset lacks fails the conversion with ERROR BADPARAMETERS, unless unknown-character-replacement is given",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				cv, _, err := convertOne(c, `CONVERT 1 ("text/plain" ("charset" "us-ascii")) BINARY[1]`, false)
				if err != nil {
					return err
				}
				if code, _, ok := convertError(cv.items["BINARY[1]"]); !ok || code != "BADPARAMETERS" {
					return failf("expected BINARY[1] (ERROR \"...\" BADPARAMETERS ...), got %v", cv.items["BINARY[1]"])
				}
				cv, _, err = convertOne(c, `CONVERT 1 ("text/plain" ("charset" "us-ascii" "unknown-character-replacement" "?")) BINARY[1]`, true)
				if err != nil {
					return err
				}
				if s, _ := imapcodec.AsString(cv.items["BINARY[1]"]); s != "Caf? cr?me = ok" {
					return failf("BINARY[1] = %q, expected %q", s, "Caf? cr?me = ok")
				}
				return nil
			}},
		{ID: "5259-missing-part", RFC: 5259, Section: "9", Level: Must, Caps: caps,
			Summary: "a body part that does not exist answers ERROR BADPARAMETERS with a NIL source type",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				cv, _, err := convertOne(c, `CONVERT 1 (NIL) (BINARY[7] BINARY[2])`, true)
				if err != nil {
					return err
				}
				code, rest, ok := convertError(cv.items["BINARY[7]"])
				if !ok || code != "BADPARAMETERS" || len(rest) < 2 || !imapcodec.IsNil(rest[0]) {
					return failf("expected BINARY[7] (ERROR \"...\" BADPARAMETERS NIL ...), got %v", cv.items["BINARY[7]"])
				}
				return nil
			}},
		{ID: "5259-no-seen", RFC: 5259, Section: "6", Level: Must, Caps: caps,
			Summary: "CONVERT does not set \\Seen",
			Run: func(t *T) error {
				c, err := t.convertSetup()
				if err != nil {
					return err
				}
				if _, _, err := convertOne(c, `CONVERT 1 (NIL) BINARY[1]`, true); err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 1 (FLAGS)")
				if err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if f.HasFlag(`\Seen`) {
						return failf("expected no \\Seen after CONVERT, got %s", describe(res.Untagged))
					}
				}
				return nil
			}},
	}
}
