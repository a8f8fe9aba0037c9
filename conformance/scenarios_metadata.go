package conformance

import (
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// metadataEntry is one entry of METADATA responses; value nil is NIL.
type metadataEntry struct {
	name  string
	value []byte
}

// metadataOf collects the entries of a mailbox's METADATA responses in
// rs, names lower-cased (entry names are case-insensitive).
func metadataOf(rs []*Response, mailbox string) ([]metadataEntry, error) {
	var out []metadataEntry
	for _, r := range findAll(rs, "METADATA") {
		if r.ParseErr != nil || len(r.Fields) != 2 {
			return nil, failf("malformed METADATA response %q", r.Line)
		}
		mb, ok := imapcodec.AsString(r.Fields[0])
		l, isList := r.Fields[1].(imapcodec.List)
		if !ok || !isList || len(l)%2 != 0 {
			return nil, failf("malformed METADATA response %q", r.Line)
		}
		if !strings.EqualFold(mb, mailbox) {
			continue
		}
		for i := 0; i < len(l); i += 2 {
			name, ok := imapcodec.AsString(l[i])
			if !ok {
				return nil, failf("malformed entry in METADATA response %q", r.Line)
			}
			e := metadataEntry{name: strings.ToLower(name)}
			if s, ok := l[i+1].(imapcodec.String); ok {
				e.value = append([]byte{}, s.Data...)
			} else if !imapcodec.IsNil(l[i+1]) {
				return nil, failf("entry value neither a string nor NIL in %q", r.Line)
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// getMetadata runs a GETMETADATA that must succeed and returns the
// mailbox's entries that have a value (an entry answered NIL or left out
// is absent, both allowed by RFC 5464).
func getMetadata(c *Client, args, mailbox string) (map[string]string, *Reply, error) {
	res, err := doOK(c, "GETMETADATA "+args)
	if err != nil {
		return nil, res, err
	}
	es, err := metadataOf(res.Untagged, mailbox)
	if err != nil {
		return nil, res, err
	}
	out := map[string]string{}
	for _, e := range es {
		if e.value != nil {
			out[e.name] = string(e.value)
		}
	}
	return out, res, nil
}

// expectEntries checks the values a GETMETADATA answered.
func expectEntries(cmd string, got, want map[string]string) error {
	if len(got) != len(want) {
		return failf("GETMETADATA %s answered %v, expected %v", cmd, got, want)
	}
	for k, v := range want {
		if got[k] != v {
			return failf("GETMETADATA %s answered %v, expected %v", cmd, got, want)
		}
	}
	return nil
}

// serverEntry returns a server entry name of the scenario's own and
// registers it for removal at cleanup (server entries outlive the
// scenario's mailboxes).
func (t *T) serverEntry(tree string) string {
	t.k++
	name := fmt.Sprintf("/%s/vendor/conformance/%s-%d", tree, strings.ToLower(t.base), t.k)
	t.ServerEntry(name)
	return name
}

func metadata5464() []*Scenario {
	return []*Scenario{
		{ID: "5464-server-entry", RFC: 5464, Section: "4.3", Level: Must, Caps: []string{"METADATA"},
			Summary: "SETMETADATA on the server (mailbox \"\") sets a private entry that GETMETADATA returns",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				entry := t.serverEntry("private")
				if err := mustOK(c, `SETMETADATA "" (`+entry+` "server value")`); err != nil {
					return err
				}
				got, _, err := getMetadata(c, `"" `+entry, "")
				if err != nil {
					return err
				}
				return expectEntries(entry, got, map[string]string{entry: "server value"})
			}},
		{ID: "5464-mailbox-entries", RFC: 5464, Section: "4.2", Level: Must, Caps: []string{"METADATA"},
			Summary: "mailbox entries, /private and /shared, are set together and read back in one GETMETADATA",
			Run: func(t *T) error {
				name := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := createFresh(c, name); err != nil {
					return err
				}
				if err := mustOK(c, "SETMETADATA "+quote(name)+` (/private/comment "My own comment" /shared/comment "Shared comment")`); err != nil {
					return err
				}
				got, _, err := getMetadata(c, quote(name)+" (/shared/comment /private/comment)", name)
				if err != nil {
					return err
				}
				return expectEntries("(/shared/comment /private/comment)", got, map[string]string{"/private/comment": "My own comment", "/shared/comment": "Shared comment"})
			}},
		{ID: "5464-nil-removes", RFC: 5464, Section: "4.3", Level: Must, Caps: []string{"METADATA"},
			Summary: "SETMETADATA with the value NIL removes the entry",
			Run: func(t *T) error {
				name := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := createFresh(c, name); err != nil {
					return err
				}
				for _, v := range []string{`"x"`, "NIL"} {
					if err := mustOK(c, "SETMETADATA "+quote(name)+" (/private/comment "+v+")"); err != nil {
						return err
					}
				}
				got, _, err := getMetadata(c, quote(name)+" /private/comment", name)
				if err != nil {
					return err
				}
				return expectEntries("/private/comment after NIL", got, map[string]string{})
			}},
		{ID: "5464-maxsize", RFC: 5464, Section: "4.2.1", Level: Must, Caps: []string{"METADATA"},
			Summary: "GETMETADATA (MAXSIZE n) leaves out longer values and says so with METADATA LONGENTRIES",
			Run: func(t *T) error {
				name := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := createFresh(c, name); err != nil {
					return err
				}
				long := strings.Repeat("0123456789", 10)
				if err := mustOK(c, "SETMETADATA "+quote(name)+` (/private/comment "short" /shared/comment "`+long+`")`); err != nil {
					return err
				}
				got, res, err := getMetadata(c, "(MAXSIZE 50) "+quote(name)+" (/shared/comment /private/comment)", name)
				if err != nil {
					return err
				}
				if err := expectEntries("(MAXSIZE 50)", got, map[string]string{"/private/comment": "short"}); err != nil {
					return err
				}
				if res.Status.Code != "METADATA" || !strings.EqualFold(res.Status.CodeArg, "LONGENTRIES 100") {
					return failf("expected OK [METADATA LONGENTRIES 100] for the 100-byte value left out, got %q", status(res))
				}
				return nil
			}},
		{ID: "5464-depth", RFC: 5464, Section: "4.2.2", Level: Must, Caps: []string{"METADATA"},
			Summary: "GETMETADATA DEPTH 0, 1 and infinity return the entry, its children, all its descendants",
			Run: func(t *T) error {
				name := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := createFresh(c, name); err != nil {
					return err
				}
				if err := mustOK(c, "SETMETADATA "+quote(name)+` (/private/tree/a "1" /private/tree/a/b "2" /private/tree/a/b/c "3" /private/tree/ab "4")`); err != nil {
					return err
				}
				for _, s := range []struct {
					depth string
					want  map[string]string
				}{
					{"0", map[string]string{"/private/tree/a": "1"}},
					{"1", map[string]string{"/private/tree/a": "1", "/private/tree/a/b": "2"}},
					{"infinity", map[string]string{"/private/tree/a": "1", "/private/tree/a/b": "2", "/private/tree/a/b/c": "3"}},
				} {
					got, _, err := getMetadata(c, "(DEPTH "+s.depth+") "+quote(name)+" /private/tree/a", name)
					if err != nil {
						return err
					}
					if err := expectEntries("(DEPTH "+s.depth+") /private/tree/a", got, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5464-bad-entry-names", RFC: 5464, Section: "3.2", Level: Must, Caps: []string{"METADATA"},
			Summary: "entry names with * or %, or outside /private and /shared, are answered BAD",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				for _, cmd := range []string{`GETMETADATA "" /private/a*`, `GETMETADATA "" /private/a%`, `GETMETADATA "" /other/a`, `SETMETADATA "" (/private/a* "x")`} {
					res, err := c.Do(cmd)
					if err != nil {
						return err
					}
					if res.Status.Name != "BAD" {
						return failf("%s: expected BAD, got %q", cmd, status(res))
					}
				}
				return nil
			}},
		{ID: "5464-nonexistent-mailbox", RFC: 5464, Section: "4.3", Level: Must, Caps: []string{"METADATA"},
			Summary: "SETMETADATA and GETMETADATA on a mailbox that does not exist are refused with NO",
			Run: func(t *T) error {
				name := t.Name() // never created
				c, err := t.Login()
				if err != nil {
					return err
				}
				for _, cmd := range []string{"GETMETADATA " + quote(name) + " /private/comment", "SETMETADATA " + quote(name) + ` (/private/comment "x")`} {
					res, err := c.Do(cmd)
					if err != nil {
						return err
					}
					if res.Status.Name != "NO" {
						return failf("%s: expected NO, got %q", shorten(cmd), status(res))
					}
				}
				return nil
			}},
		{ID: "5464-rename-delete", RFC: 5464, Section: "3.1", Level: Should, Caps: []string{"METADATA"},
			Summary: "a mailbox's entries move with RENAME and go with DELETE (a new mailbox of the old name has none)",
			Run: func(t *T) error {
				from, to := t.Name(), t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := createFresh(c, from); err != nil {
					return err
				}
				if err := mustOK(c, "SETMETADATA "+quote(from)+` (/private/comment "moves")`); err != nil {
					return err
				}
				if err := mustOK(c, "RENAME "+quote(from)+" "+quote(to)); err != nil {
					return err
				}
				got, _, err := getMetadata(c, quote(to)+" /private/comment", to)
				if err != nil {
					return err
				}
				if err := expectEntries("/private/comment of the renamed mailbox", got, map[string]string{"/private/comment": "moves"}); err != nil {
					return err
				}
				if err := mustOK(c, "DELETE "+quote(to)); err != nil {
					return err
				}
				for _, n := range []string{from, to} {
					if err := createFresh(c, n); err != nil {
						return err
					}
					got, _, err := getMetadata(c, quote(n)+" /private/comment", n)
					if err != nil {
						return err
					}
					if err := expectEntries("/private/comment of a new mailbox of an old name", got, map[string]string{}); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5464-private-per-user", RFC: 5464, Section: "3.2", Level: Must, Caps: []string{"METADATA"},
			Summary: "a user's /private server entry is not another user's",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				c2, err := t.Second()
				if err != nil {
					return err
				}
				entry := t.serverEntry("private")
				if err := mustOK(c, `SETMETADATA "" (`+entry+` "first user's")`); err != nil {
					return err
				}
				got, _, err := getMetadata(c2, `"" `+entry, "")
				if err != nil {
					return err
				}
				if v, ok := got[entry]; ok {
					return failf("the second user read the first one's private entry %s: %q", entry, v)
				}
				return nil
			}},
	}
}
