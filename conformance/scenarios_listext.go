package conformance

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// listextSetup makes RFC 5258's situations under a fresh name b: the
// mailboxes b, b/a, b/b and b/b/c; subscriptions to b/a, b/b/c and b/gone,
// which no longer exists (made, subscribed to, deleted: servers may refuse
// to subscribe to a name that does not exist). It returns the client, b,
// the delimiter and the answers about b/gone the scenarios expect: none
// where the server's DELETE took the subscription away too (go-imap's
// does, though RFC 3501 6.3.4 says it must not), since LIST-EXTENDED
// cannot list a subscription that is not there.
func (t *T) listextSetup() (*Client, string, string, []string, error) {
	c, err := t.Login()
	if err != nil {
		return nil, "", "", nil, err
	}
	res, err := doOK(c, `LIST "" ""`)
	if err != nil {
		return nil, "", "", nil, err
	}
	r := find(res.Untagged, "LIST")
	if r == nil {
		return nil, "", "", nil, failf(`LIST "" "" sent no LIST response: %s`, describe(res.Untagged))
	}
	l, err := r.list()
	if err != nil {
		return nil, "", "", nil, err
	}
	if l.Delim == "" {
		return nil, "", "", nil, fmt.Errorf("setup: a flat namespace has no hierarchy to list")
	}
	d := l.Delim
	b := t.Name()
	for _, m := range []string{b, b + d + "a", b + d + "b", b + d + "b" + d + "c", b + d + "gone"} {
		if m != b {
			t.mailboxes = append(t.mailboxes, m)
		}
		if err := createFresh(c, m); err != nil {
			return nil, "", "", nil, fmt.Errorf("setup: %w", err)
		}
	}
	for _, m := range []string{b + d + "a", b + d + "b" + d + "c", b + d + "gone"} {
		t.Subscribed(m)
		if _, err := doOK(c, "SUBSCRIBE "+quote(m)); err != nil {
			return nil, "", "", nil, fmt.Errorf("setup: %w", err)
		}
	}
	if _, err := doOK(c, "DELETE "+quote(b+d+"gone")); err != nil {
		return nil, "", "", nil, fmt.Errorf("setup: %w", err)
	}
	res, err = doOK(c, "LSUB \"\" "+quote(b+d+"gone"))
	if err != nil {
		return nil, "", "", nil, fmt.Errorf("setup: %w", err)
	}
	var gone []string
	if find(res.Untagged, "LSUB") != nil {
		gone = []string{b + d + `gone (\nonexistent \subscribed)`}
	} else {
		t.Note("the server's DELETE removed the subscription")
	}
	return c, b, d, gone, nil
}

// listStep runs an extended LIST and compares its answers, one
// "name attrs [CHILDINFO]" each with the attributes that matter sorted
// (the others a server may add are left out), with want, in any order.
func listStep(c *Client, cmd string, want []string) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	var got []string
	for _, r := range findAll(res.Untagged, "LIST") {
		l, err := r.list()
		if err != nil {
			return failf("%s: %v", cmd, err)
		}
		var attrs []string
		for _, a := range l.Attrs {
			switch la := strings.ToLower(a); la {
			case `\subscribed`, `\nonexistent`, `\haschildren`, `\hasnochildren`:
				attrs = append(attrs, la)
			}
		}
		slices.Sort(attrs)
		s := l.Name + " (" + strings.Join(attrs, " ") + ")"
		if len(r.Fields) > 3 {
			if ext, ok := r.Fields[3].(imapcodec.List); ok && len(ext) == 2 {
				k, _ := imapcodec.AsString(ext[0])
				if a, ok := ext[0].(imapcodec.Atom); ok {
					k = string(a)
				}
				if strings.EqualFold(k, "CHILDINFO") {
					s += " CHILDINFO"
				}
			}
		}
		got = append(got, s)
	}
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		return failf("%s answered %q, expected %q", cmd, got, w)
	}
	return nil
}

func listext5258() []*Scenario {
	return []*Scenario{
		{ID: "5258-subscribed", RFC: 5258, Section: "3", Level: Must, Caps: []string{"LIST-EXTENDED"},
			Summary: "LIST (SUBSCRIBED) answers the subscriptions with \\Subscribed, a deleted one with \\NonExistent too",
			Run: func(t *T) error {
				c, b, d, gone, err := t.listextSetup()
				if err != nil {
					return err
				}
				return listStep(c, `LIST (SUBSCRIBED) "" `+quote(b+d+"*"), append([]string{
					b + d + `a (\subscribed)`, b + d + "b" + d + `c (\subscribed)`}, gone...))
			}},
		{ID: "5258-recursivematch", RFC: 5258, Section: "3", Level: Must, Caps: []string{"LIST-EXTENDED"},
			Summary: "RECURSIVEMATCH returns a parent the pattern matches of a subscription it misses, with CHILDINFO (\"SUBSCRIBED\")",
			Run: func(t *T) error {
				c, b, d, gone, err := t.listextSetup()
				if err != nil {
					return err
				}
				return listStep(c, `LIST (SUBSCRIBED RECURSIVEMATCH) "" `+quote(b+d+"%"), append([]string{
					b + d + `a (\subscribed)`, b + d + `b () CHILDINFO`}, gone...))
			}},
		{ID: "5258-return-children", RFC: 5258, Section: "4", Level: Must, Caps: []string{"LIST-EXTENDED"},
			Summary: "RETURN (CHILDREN SUBSCRIBED) marks children and subscriptions of the listed mailboxes",
			Run: func(t *T) error {
				c, b, d, _, err := t.listextSetup()
				if err != nil {
					return err
				}
				return listStep(c, `LIST "" `+quote(b+d+"%")+` RETURN (CHILDREN SUBSCRIBED)`, []string{
					b + d + `a (\hasnochildren \subscribed)`, b + d + `b (\haschildren)`})
			}},
		{ID: "5258-patterns", RFC: 5258, Section: "3", Level: Must, Caps: []string{"LIST-EXTENDED"},
			Summary: "a parenthesised list of patterns answers each mailbox any of them matches, once",
			Run: func(t *T) error {
				c, b, d, _, err := t.listextSetup()
				if err != nil {
					return err
				}
				return listStep(c, `LIST "" (`+quote(b+d+"a")+" "+quote(b+d+"b"+d+"%")+" "+quote(b+d+"*c")+`)`, []string{
					b + d + `a ()`, b + d + "b" + d + `c ()`})
			}},
		{ID: "5258-bad-options", RFC: 5258, Section: "3", Level: Must, Caps: []string{"LIST-EXTENDED"},
			Summary: "RECURSIVEMATCH alone or with REMOTE only, and unknown selection or return options, are refused with BAD",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				for _, cmd := range []string{`LIST (RECURSIVEMATCH) "" "*"`, `LIST (RECURSIVEMATCH REMOTE) "" "*"`,
					`LIST (X-NO-SUCH-OPTION) "" "*"`, `LIST "" "*" RETURN (X-NO-SUCH-OPTION)`} {
					res, err := c.Do(cmd)
					if err != nil {
						return err
					}
					if res.Status == nil || !strings.EqualFold(res.Status.Name, "BAD") {
						return failf("%s: expected BAD, got %q", cmd, status(res))
					}
				}
				return nil
			}},
	}
}
