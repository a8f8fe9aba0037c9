package conformance

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Two extensions RFC 5550 §3 requires of a Lemonade server that a proxy
// may have to provide over an upstream that lacks them: NAMESPACE (RFC
// 2342) and LITERAL+ (RFC 7888). Both are skipped against a server that
// does not advertise them, which is its right.

func namespace2342() []*Scenario {
	return []*Scenario{
		{ID: "2342-namespace-syntax", RFC: 2342, Section: "5", Level: Must, Caps: []string{"NAMESPACE"},
			Summary: "NAMESPACE answers one untagged NAMESPACE of three namespace lists (or NIL), then OK",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, err = namespaceOK(c)
				return err
			}},
		{ID: "2342-namespace-selected", RFC: 2342, Section: "5", Level: Must, Caps: []string{"NAMESPACE"},
			Summary: "NAMESPACE works in the selected state too, with the same answer",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				before, err := namespaceOK(c)
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
					return err
				}
				after, err := namespaceOK(c)
				if err != nil {
					return err
				}
				if before.Line != after.Line {
					return failf("NAMESPACE changed with SELECT: %q, then %q", before.Line, after.Line)
				}
				return nil
			}},
		{ID: "2342-personal-delimiter", RFC: 2342, Section: "5", Level: Should, Caps: []string{"NAMESPACE"},
			Summary: "a personal namespace with the empty prefix has the delimiter LIST \"\" \"\" reports",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				ns, err := namespaceOK(c)
				if err != nil {
					return err
				}
				personal, err := parseNamespace(ns)
				if err != nil {
					return err
				}
				var delim *string
				for _, d := range personal {
					if d.prefix == "" {
						delim = &d.delim
					}
				}
				if delim == nil {
					return skipf("no personal namespace with the empty prefix: %s", ns.Line)
				}
				res, err := doOK(c, `LIST "" ""`)
				if err != nil {
					return err
				}
				r := find(res.Untagged, "LIST")
				if r == nil {
					return failf(`LIST "" "" sent no LIST response: %s`, describe(res.Untagged))
				}
				l, err := r.list()
				if err != nil {
					return err
				}
				if l.Delim != *delim {
					return failf(`NAMESPACE says delimiter %q for prefix "", LIST "" "" says %q`, *delim, l.Delim)
				}
				return nil
			}},
		// SHOULD, not MUST NOT: RFC 2342 section 5 says nothing of the
		// not-authenticated state (its only keywords are on the response's
		// extensions), so the rule is RFC 3501 section 3's for any command
		// in the wrong state, without an RFC 2119 keyword: "It is a
		// protocol error for the client to attempt a command while the
		// connection is in an inappropriate state, and the server will
		// respond with a BAD or NO (depending upon server implementation)
		// command completion result."
		{ID: "2342-namespace-before-login", RFC: 2342, Section: "5", Level: Should, Caps: []string{"NAMESPACE"},
			Summary: "NAMESPACE is refused in the not-authenticated state",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				res, err := c.Do("NAMESPACE")
				if err != nil {
					return err
				}
				if res.OK() || find(res.Untagged, "NAMESPACE") != nil {
					return failf("NAMESPACE before login was answered: %s / %s", describe(res.Untagged), status(res))
				}
				return nil
			}},
	}
}

// namespaceOK runs NAMESPACE, requires OK and exactly one untagged
// NAMESPACE of valid syntax (RFC 2342 §6), and returns it.
func namespaceOK(c *Client) (*Response, error) {
	res, err := doOK(c, "NAMESPACE")
	if err != nil {
		return nil, err
	}
	all := findAll(res.Untagged, "NAMESPACE")
	if len(all) != 1 {
		return nil, failf("expected one untagged NAMESPACE, got %s", describe(res.Untagged))
	}
	if _, err := parseNamespace(all[0]); err != nil {
		return nil, err
	}
	return all[0], nil
}

// namespaceDesc is one namespace of a NAMESPACE response.
type namespaceDesc struct{ prefix, delim string }

// parseNamespace checks the syntax of a NAMESPACE response (RFC 2342 §6:
// three namespace lists, each NIL or a list of descriptors, a descriptor
// being a prefix string, a one-character quoted delimiter or NIL, and
// extension name-value pairs) and returns the personal namespaces.
func parseNamespace(r *Response) ([]namespaceDesc, error) {
	if r.ParseErr != nil {
		return nil, failf("unparsable NAMESPACE response %q: %v", r.Line, r.ParseErr)
	}
	if len(r.Fields) != 3 {
		return nil, failf("NAMESPACE response %q has %d namespace lists, expected 3 (personal, other users', shared)", r.Line, len(r.Fields))
	}
	var personal []namespaceDesc
	for i, v := range r.Fields {
		if imapcodec.IsNil(v) {
			continue
		}
		l, ok := v.(imapcodec.List)
		if !ok || len(l) == 0 {
			return nil, failf("NAMESPACE response %q: namespace list %d is neither NIL nor a non-empty list", r.Line, i+1)
		}
		for _, d := range l {
			desc, ok := d.(imapcodec.List)
			if !ok || len(desc) < 2 || len(desc)%2 != 0 {
				return nil, failf("NAMESPACE response %q: a namespace is not (prefix delimiter [extension values])", r.Line)
			}
			prefix, ok := desc[0].(imapcodec.String)
			if !ok {
				return nil, failf("NAMESPACE response %q: a prefix is not a string", r.Line)
			}
			var delim string
			if dv, ok := desc[1].(imapcodec.String); ok && len(dv.Data) == 1 && !dv.Literal {
				delim = string(dv.Data)
			} else if !imapcodec.IsNil(desc[1]) {
				return nil, failf("NAMESPACE response %q: a delimiter is neither one quoted character nor NIL", r.Line)
			}
			if i == 0 {
				personal = append(personal, namespaceDesc{string(prefix.Data), delim})
			}
		}
	}
	return personal, nil
}

func literal7888() []*Scenario {
	return []*Scenario{
		{ID: "7888-append-nonsync", RFC: 7888, Section: "3", Level: Must, Caps: []string{"LITERAL+"},
			Summary: "APPEND with a non-synchronising literal (above LITERAL-'s 4096 bytes) completes without a continuation request and stores the message",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				msg := testMessage(mb, 1, 10000)
				res, err := c.doRaw("APPEND "+quote(mb)+" {"+strconv.Itoa(len(msg))+"+}", msg, "")
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("APPEND with {%d+}: expected OK, got %q", len(msg), status(res))
				}
				if _, err := selectOK(c, "EXAMINE", mb, ""); err != nil {
					return err
				}
				res, err = doOK(c, "FETCH 1 BODY.PEEK[]")
				if err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if body, ok := f.Bytes("BODY[]"); ok && string(body) == string(msg) {
						return nil
					}
				}
				return failf("the appended message is not stored byte for byte: %s", describe(res.Untagged))
			}},
		{ID: "7888-search-nonsync", RFC: 7888, Section: "3", Level: Must, Caps: []string{"LITERAL+"},
			Summary: "a non-synchronising literal in SEARCH is taken at once and searched for",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				key := "Message 2"
				res, err := c.doRaw("UID SEARCH SUBJECT {"+strconv.Itoa(len(key))+"+}", []byte(key), "")
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("UID SEARCH SUBJECT {%d+}: expected OK, got %q", len(key), status(res))
				}
				s, err := search(res.Untagged)
				if err != nil {
					return err
				}
				if !sameSet(s.Nums, uids[1:]) {
					return failf("UID SEARCH SUBJECT %q returned %v, expected %v", key, s.Nums, uids[1:])
				}
				return nil
			}},
		{ID: "7888-login-nonsync", RFC: 7888, Section: "3", Level: Must, Caps: []string{"LITERAL+"},
			Summary: "LOGIN with the user name and password as non-synchronising literals (the RFC's example) succeeds",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				caps, err := capabilities(c)
				if err != nil {
					return err
				}
				if !caps["LITERAL+"] {
					return skipf("LITERAL+ is not advertised before login")
				}
				user, pass := t.cfg.User, t.cfg.Pass
				res, err := c.doRaw("LOGIN {"+strconv.Itoa(len(user))+"+}", []byte(user), " {"+strconv.Itoa(len(pass))+"+}\r\n"+pass)
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("LOGIN with non-synchronising literals: expected OK, got %q", status(res))
				}
				return nil
			}},
	}
}

// doRaw sends "TAG head" CRLF, data, tail, CRLF in one write (head ends in
// a non-synchronising literal of data; tail may hold more of them) and
// collects the answer: a continuation request is an error (Wait). The
// transcript shows head and the sizes only, never the data (LOGIN's
// password).
func (c *Client) doRaw(head string, data []byte, tail string) (*Reply, error) {
	tag := c.NextTag()
	c.tr.add(c.name, "C: ", redact(tag+" "+head)+fmt.Sprintf(" (then %d bytes and %d more of the command)", len(data), len(tail)))
	var b strings.Builder
	b.WriteString(tag + " " + head + "\r\n")
	b.Write(data)
	b.WriteString(tail + "\r\n")
	if err := c.write([]byte(b.String())); err != nil {
		return nil, err
	}
	return c.Wait(tag, head)
}
