package conformance

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// esearchData is a parsed ESEARCH response (RFC 4731 3.1): the TAG it
// correlates with, whether its numbers are UIDs, and its result items by
// upper-cased name (ALL's set as written).
type esearchData struct {
	Tag   string
	UID   bool
	Items map[string]string
}

// esearchOf finds the one ESEARCH response among rs.
func esearchOf(rs []*Response) (*esearchData, error) {
	all := findAll(rs, "ESEARCH")
	if len(all) != 1 {
		return nil, fmt.Errorf("expected one untagged ESEARCH, got %s", describe(rs))
	}
	r := all[0]
	if r.ParseErr != nil {
		return nil, fmt.Errorf("unparsable ESEARCH %q: %v", r.Line, r.ParseErr)
	}
	d := &esearchData{Items: map[string]string{}}
	f := r.Fields
	if len(f) > 0 {
		if l, ok := f[0].(imapcodec.List); ok && len(l) == 2 && isAtom(l[0], "TAG") {
			d.Tag, _ = imapcodec.AsString(l[1])
			f = f[1:]
		}
	}
	if len(f) > 0 && isAtom(f[0], "UID") {
		d.UID, f = true, f[1:]
	}
	for ; len(f) >= 2; f = f[2:] {
		name, ok1 := f[0].(imapcodec.Atom)
		val, ok2 := f[1].(imapcodec.Atom)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("ESEARCH %q: unexpected item", r.Line)
		}
		d.Items[strings.ToUpper(string(name))] = string(val)
	}
	if len(f) != 0 {
		return nil, fmt.Errorf("ESEARCH %q: item without a value", r.Line)
	}
	return d, nil
}

// check compares the items with want ("MIN 2 MAX 4", "" for none).
func (d *esearchData) check(tag string, uid bool, want string) error {
	if d.Tag != tag {
		return failf("ESEARCH correlates with tag %q, expected %q", d.Tag, tag)
	}
	if d.UID != uid {
		return failf("ESEARCH UID indicator is %v, expected %v", d.UID, uid)
	}
	w := strings.Fields(want)
	wm := map[string]string{}
	for i := 0; i+1 < len(w); i += 2 {
		wm[w[i]] = w[i+1]
	}
	for k, v := range wm {
		got, ok := d.Items[k]
		if !ok {
			return failf("ESEARCH lacks %s (expected %s %s), has %v", k, k, v, d.Items)
		}
		if k == "ALL" {
			g, err1 := parseSet(got)
			e, _ := parseSet(v)
			if err1 != nil || !sameSet(g, e) {
				return failf("ESEARCH ALL %s, expected %s", got, v)
			}
		} else if got != v {
			return failf("ESEARCH %s %s, expected %s", k, got, v)
		}
	}
	for k := range d.Items {
		if _, ok := wm[k]; !ok {
			return failf("ESEARCH has %s %s, not asked for or not expected: %v", k, d.Items[k], d.Items)
		}
	}
	return nil
}

// esearchSetup makes a mailbox of five messages, 2 and 4 flagged, and
// selects it; it returns the client and the UIDs.
func (t *T) esearchSetup() (*Client, []uint32, error) {
	name, uids, err := t.Mailbox(5)
	if err != nil {
		return nil, nil, err
	}
	if err := t.SetupStore(name, `2,4 +FLAGS (\Flagged)`); err != nil {
		return nil, nil, err
	}
	c, _, err := t.loginSelect(name, "")
	return c, uids, err
}

// esearchStep runs cmd and checks its one ESEARCH response.
func esearchStep(c *Client, cmd string, uid bool, want string) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	d, err := esearchOf(res.Untagged)
	if err != nil {
		return failf("%s: %v", cmd, err)
	}
	if err := d.check(res.Tag, uid, want); err != nil {
		return failf("%s: %v", cmd, err)
	}
	return nil
}

// fetchUIDs runs "FETCH set (UID)" and returns the sequence numbers and
// UIDs it answered, ordered by sequence number. RFC 3501 (7.4.2) does not
// make a server send the FETCH responses of a set in message order, and
// RFC 5182 gives $ no order either, so the order they came in is no part
// of what a scenario may check; callers compare the sorted lists with what
// they expect, message 2 before message 4.
func fetchUIDs(c *Client, cmd string) (seqs, uids []uint32, err error) {
	res, err := doOK(c, cmd)
	if err != nil {
		return nil, nil, err
	}
	var got [][2]uint32
	for _, r := range res.Untagged {
		f, ok := r.Fetch()
		if !ok {
			continue
		}
		u, _ := f.UID()
		got = append(got, [2]uint32{r.Num, u})
	}
	slices.SortStableFunc(got, func(a, b [2]uint32) int { return cmp.Compare(a[0], b[0]) })
	for _, p := range got {
		seqs, uids = append(seqs, p[0]), append(uids, p[1])
	}
	return seqs, uids, nil
}

func u32s(ns ...uint32) []uint32 { return ns }

func esearch4731() []*Scenario {
	return []*Scenario{
		{ID: "4731-return-options", RFC: 4731, Section: "3.1", Level: Must, Caps: []string{"ESEARCH"},
			Summary: "SEARCH RETURN (MIN MAX COUNT ALL) answers one ESEARCH with the client's tag and each item",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct{ cmd, want string }{
					{"SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED", "MIN 2 MAX 4 COUNT 2 ALL 2,4"},
					{"SEARCH RETURN (MIN) FLAGGED", "MIN 2"},
					{"SEARCH RETURN (COUNT) UNFLAGGED", "COUNT 3"},
					{"SEARCH RETURN () ALL", "ALL 1:5"},
				} {
					if err := esearchStep(c, s.cmd, false, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "4731-uid-search", RFC: 4731, Section: "3.1", Level: Must, Caps: []string{"ESEARCH"},
			Summary: "UID SEARCH RETURN answers UIDs and marks the ESEARCH response UID",
			Run: func(t *T) error {
				c, uids, err := t.esearchSetup()
				if err != nil {
					return err
				}
				return esearchStep(c, "UID SEARCH RETURN (MIN MAX ALL) FLAGGED", true,
					fmt.Sprintf("MIN %d MAX %d ALL %d,%d", uids[1], uids[3], uids[1], uids[3]))
			}},
		{ID: "4731-no-match", RFC: 4731, Section: "3.1", Level: Must, Caps: []string{"ESEARCH"},
			Summary: "a search matching nothing still answers ESEARCH, without MIN, MAX and ALL, with COUNT 0",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				if err := esearchStep(c, "SEARCH RETURN (MIN MAX ALL) NOT ALL", false, ""); err != nil {
					return err
				}
				if err := esearchStep(c, "UID SEARCH RETURN (MIN) NOT ALL", true, ""); err != nil {
					return err
				}
				return esearchStep(c, "SEARCH RETURN (COUNT) NOT ALL", false, "COUNT 0")
			}},
		{ID: "4731-unknown-option", RFC: 4731, Section: "3.1", Level: Should, Caps: []string{"ESEARCH"},
			Summary: "an unknown RETURN option is refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				res, err := c.Do("SEARCH RETURN (XLPCONF-UNKNOWN) ALL")
				if err != nil {
					return err
				}
				if res.Status == nil || res.Status.Name != "BAD" {
					return failf("expected BAD, got %q", status(res))
				}
				return nil
			}},
	}
}

func searchres5182() []*Scenario {
	return []*Scenario{
		{ID: "5182-save-fetch", RFC: 5182, Section: "2.1", Level: Must, Caps: []string{"SEARCHRES"},
			Summary: "SEARCH RETURN (SAVE) answers no ESEARCH, and FETCH $ fetches the messages found",
			Run: func(t *T) error {
				c, uids, err := t.esearchSetup()
				if err != nil {
					return err
				}
				res, err := doOK(c, "SEARCH RETURN (SAVE) FLAGGED")
				if err != nil {
					return err
				}
				if r := find(res.Untagged, "ESEARCH"); r != nil {
					return failf("SAVE alone answered %q", r.Line)
				}
				seqs, got, err := fetchUIDs(c, "FETCH $ (UID)")
				if err != nil {
					return err
				}
				if !slices.Equal(seqs, u32s(2, 4)) || !slices.Equal(got, u32s(uids[1], uids[3])) {
					return failf("FETCH $ answered messages %v (UIDs %v), expected 2 and 4", seqs, got)
				}
				return nil
			}},
		{ID: "5182-dollar-follows-expunge", RFC: 5182, Section: "2.1", Level: Must, Caps: []string{"SEARCHRES"},
			Summary: "$ keeps naming the saved messages after an expunge renumbers them, the expunged one gone",
			Run: func(t *T) error {
				c, uids, err := t.esearchSetup()
				if err != nil {
					return err
				}
				if err := mustOK(c, "UID SEARCH RETURN (SAVE) FLAGGED"); err != nil {
					return err
				}
				if err := mustOK(c, `STORE 1:2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				if err := mustOK(c, "EXPUNGE"); err != nil {
					return err
				}
				seqs, got, err := fetchUIDs(c, "FETCH $ (UID)")
				if err != nil {
					return err
				}
				if !slices.Equal(seqs, u32s(2)) || !slices.Equal(got, u32s(uids[3])) {
					return failf("FETCH $ answered messages %v (UIDs %v), expected 2 (UID %d)", seqs, got, uids[3])
				}
				return nil
			}},
		{ID: "5182-dollar-in-search", RFC: 5182, Section: "2.1", Level: Must, Caps: []string{"SEARCHRES"},
			Summary: "$ is a search key, in SEARCH and UID SEARCH (also as UID $)",
			Run: func(t *T) error {
				c, uids, err := t.esearchSetup()
				if err != nil {
					return err
				}
				if err := mustOK(c, "SEARCH RETURN (SAVE) FLAGGED"); err != nil {
					return err
				}
				for _, s := range []struct {
					cmd  string
					want []uint32
				}{
					{"SEARCH $", u32s(2, 4)},
					{"SEARCH NOT $", u32s(1, 3, 5)},
					{"UID SEARCH UID $", u32s(uids[1], uids[3])},
				} {
					res, err := doOK(c, s.cmd)
					if err != nil {
						return err
					}
					r, err := search(res.Untagged)
					if err != nil {
						return err
					}
					if !sameSet(r.Nums, s.want) {
						return failf("%s answered %v, expected %v", s.cmd, r.Nums, s.want)
					}
				}
				return nil
			}},
		{ID: "5182-empty-dollar", RFC: 5182, Section: "2.1", Level: Must, Caps: []string{"SEARCHRES"},
			Summary: "after SELECT $ is empty: FETCH $ and UID FETCH $ succeed with no FETCH response",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				for _, cmd := range []string{"FETCH $ (UID)", "UID FETCH $ (UID)"} {
					seqs, _, err := fetchUIDs(c, cmd)
					if err != nil {
						return err
					}
					if len(seqs) != 0 {
						return failf("%s answered messages %v, expected none", cmd, seqs)
					}
				}
				return nil
			}},
		{ID: "5182-failed-save", RFC: 5182, Section: "2.1", Level: Must, Caps: []string{"SEARCHRES"},
			Summary: "a SEARCH with SAVE that fails with NO empties $; one that fails with BAD leaves it",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				if err := mustOK(c, "SEARCH RETURN (SAVE) FLAGGED"); err != nil {
					return err
				}
				if res, err := c.Do("SEARCH RETURN (SAVE) FLAGGED ("); err != nil {
					return err
				} else if res.Status == nil || res.Status.Name != "BAD" {
					return skipf("a malformed SEARCH was not refused with BAD: %q", status(res))
				}
				if seqs, _, err := fetchUIDs(c, "FETCH $ (UID)"); err != nil {
					return err
				} else if !slices.Equal(seqs, u32s(2, 4)) {
					return failf("after a BAD search FETCH $ answered %v, expected 2 and 4", seqs)
				}
				res, err := c.Do("SEARCH RETURN (SAVE) CHARSET XLPCONF-NO-SUCH-CHARSET ALL")
				if err != nil {
					return err
				}
				if res.Status == nil || res.Status.Name != "NO" {
					return skipf("an unknown CHARSET was not refused with NO: %q", status(res))
				}
				if seqs, _, err := fetchUIDs(c, "FETCH $ (UID)"); err != nil {
					return err
				} else if len(seqs) != 0 {
					return failf("after a NO search FETCH $ answered %v, expected nothing", seqs)
				}
				return nil
			}},
		{ID: "5182-save-min-max", RFC: 5182, Section: "2.4", Level: Must, Caps: []string{"SEARCHRES", "ESEARCH"},
			Summary: "SAVE with MIN and/or MAX alone saves those messages; with COUNT the whole result",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct {
					opts string
					want []uint32
				}{
					{"MIN SAVE", u32s(1)}, {"MAX SAVE", u32s(5)}, {"MIN MAX SAVE", u32s(1, 5)}, {"MIN COUNT SAVE", u32s(1, 3, 5)},
				} {
					if err := mustOK(c, "SEARCH RETURN ("+s.opts+") UNFLAGGED"); err != nil {
						return err
					}
					res, err := doOK(c, "SEARCH $")
					if err != nil {
						return err
					}
					r, err := search(res.Untagged)
					if err != nil {
						return err
					}
					if !sameSet(r.Nums, s.want) {
						return failf("after RETURN (%s) $ is %v, expected %v", s.opts, r.Nums, s.want)
					}
				}
				return nil
			}},
	}
}
