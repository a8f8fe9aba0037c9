package conformance

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// contextItem is one result item of an ESEARCH response as RFC 5267 adds
// them: PARTIAL, ADDTO or REMOVEFROM, with its list's pairs (a range or
// position, and a set or NIL).
type contextItem struct {
	Name  string
	Pairs [][2]string
}

// contextItems returns the TAG, the UID indicator and the RFC 5267 items
// of an ESEARCH response (other items are skipped).
func contextItems(r *Response) (tag string, uid bool, items []contextItem, err error) {
	if r.ParseErr != nil {
		return "", false, nil, fmt.Errorf("unparsable ESEARCH %q: %v", r.Line, r.ParseErr)
	}
	f := r.Fields
	if len(f) > 0 {
		if l, ok := f[0].(imapcodec.List); ok && len(l) == 2 && isAtom(l[0], "TAG") {
			tag, _ = imapcodec.AsString(l[1])
			f = f[1:]
		}
	}
	if len(f) > 0 && isAtom(f[0], "UID") {
		uid, f = true, f[1:]
	}
	for ; len(f) >= 2; f = f[2:] {
		name, _ := f[0].(imapcodec.Atom)
		l, ok := f[1].(imapcodec.List)
		if !ok {
			continue // MIN 2, COUNT 3...
		}
		it := contextItem{Name: strings.ToUpper(string(name))}
		for i := 0; i+1 < len(l); i += 2 {
			a, _ := imapcodec.AsString(l[i])
			b, _ := imapcodec.AsString(l[i+1])
			it.Pairs = append(it.Pairs, [2]string{a, b})
		}
		if len(l)%2 != 0 {
			return "", false, nil, fmt.Errorf("ESEARCH %q: %s has an odd list", r.Line, it.Name)
		}
		items = append(items, it)
	}
	return tag, uid, items, nil
}

// setIs compares a set as written (or NIL) with the numbers expected, in
// any order: a sequence set is a set (RFC 3501 9), so "4,2" is as right as
// "2,4" and "4:2" as "2:4".
func setIs(got string, want []uint32) bool {
	if strings.EqualFold(got, "NIL") {
		return len(want) == 0
	}
	nums, err := parseSet(got)
	return err == nil && sameSet(nums, want)
}

// partialStep runs a PARTIAL search and checks its PARTIAL item: the range
// (either way round: RFC 5267 calls 500:400 the same as 400:500) and the
// results in it.
func partialStep(c *Client, cmd string, uid bool, lo, hi uint32, want []uint32) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	all := findAll(res.Untagged, "ESEARCH")
	if len(all) != 1 {
		return failf("%s: expected one ESEARCH, got %s", cmd, describe(res.Untagged))
	}
	tag, isUID, items, err := contextItems(all[0])
	if err != nil {
		return err
	}
	if tag != res.Tag || isUID != uid {
		return failf("%s: ESEARCH %q: expected TAG %q, UID %v", cmd, all[0].Line, res.Tag, uid)
	}
	i := slices.IndexFunc(items, func(it contextItem) bool { return it.Name == "PARTIAL" })
	if i < 0 || len(items[i].Pairs) != 1 {
		return failf("%s: ESEARCH %q lacks one PARTIAL (range set)", cmd, all[0].Line)
	}
	p := items[i].Pairs[0]
	r, err := parseSet(p[0])
	if err != nil || len(r) == 0 || r[0] != lo || r[len(r)-1] != hi {
		return failf("%s: PARTIAL range %s, expected %d:%d", cmd, p[0], lo, hi)
	}
	if !setIs(p[1], want) {
		return failf("%s: PARTIAL results %s, expected %v", cmd, p[1], want)
	}
	return nil
}

// updatesFor collects the ADDTO and REMOVEFROM items of the ESEARCH
// responses tagged tag among rs, in order, with each one's index in rs.
func updatesFor(rs []*Response, tag string) (items []contextItem, at []int, err error) {
	for i, r := range rs {
		if r.Name != "ESEARCH" {
			continue
		}
		t, _, its, err := contextItems(r)
		if err != nil {
			return nil, nil, err
		}
		if t != tag {
			continue
		}
		for _, it := range its {
			if it.Name == "ADDTO" || it.Name == "REMOVEFROM" {
				items, at = append(items, it), append(at, i)
			}
		}
	}
	return items, at, nil
}

// awaitUpdate polls with NOOP until an update (name) of the context tagged
// tag comes, and checks that its messages (whatever its position: RFC 5267
// lets a SEARCH context use 0 or not) are want. It returns everything
// received and the index of the update's response.
func (t *T) awaitUpdate(c *Client, tag, name string, want []uint32) ([]*Response, int, error) {
	has := func(rs []*Response) bool {
		items, _, _ := updatesFor(rs, tag)
		return slices.ContainsFunc(items, func(it contextItem) bool { return it.Name == name })
	}
	all, ok, err := t.pollNoop(c, has)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, 0, failf("expected ESEARCH (TAG %q) %s, not even after NOOP; got %s", tag, name, describe(all))
	}
	items, at, err := updatesFor(all, tag)
	if err != nil {
		return nil, 0, err
	}
	var nums []uint32
	idx := -1
	for i, it := range items {
		if it.Name != name {
			failNote := fmt.Sprintf("%s %v", it.Name, it.Pairs)
			return nil, 0, failf("ESEARCH (TAG %q): unexpected %s before the %s", tag, failNote, name)
		}
		for _, p := range it.Pairs {
			n, err := parseSet(p[1])
			if err != nil {
				return nil, 0, failf("ESEARCH (TAG %q) %s: bad set %q", tag, name, p[1])
			}
			nums = append(nums, n...)
		}
		if idx < 0 {
			idx = at[i]
		}
	}
	slices.Sort(nums)
	if !slices.Equal(nums, want) {
		return nil, 0, failf("ESEARCH (TAG %q) %s named %v, expected %v", tag, name, nums, want)
	}
	return all, idx, nil
}

// updateSearch runs an updating search and checks that it was accepted:
// OK, with no NOUPDATE for it.
func updateSearch(c *Client, cmd string) (*Reply, error) {
	res, err := doOK(c, cmd)
	if err != nil {
		return nil, err
	}
	if r := findCode(res.Untagged, "NOUPDATE"); r != nil {
		return nil, failf("%s: refused updates: %q", cmd, r.Line)
	}
	return res, nil
}

// contextSetup is esearchSetup that also returns the mailbox's name, for
// the outside changes.
func (t *T) contextSetup() (*Client, string, []uint32, error) {
	name, uids, err := t.Mailbox(5)
	if err != nil {
		return nil, "", nil, err
	}
	if err := t.SetupStore(name, `2,4 +FLAGS (\Flagged)`); err != nil {
		return nil, "", nil, err
	}
	c, _, err := t.loginSelect(name, "")
	return c, name, uids, err
}

func context5267() []*Scenario {
	caps := []string{"CONTEXT=SEARCH", "ESEARCH"}
	return []*Scenario{
		{ID: "5267-partial", RFC: 5267, Section: "4.4", Level: Must, Caps: caps,
			Summary: "RETURN (PARTIAL lo:hi) answers the range and the results at those positions, NIL beyond the end",
			Run: func(t *T) error {
				c, uids, err := t.esearchSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct {
					cmd    string
					uid    bool
					lo, hi uint32
					want   []uint32
				}{
					{"SEARCH RETURN (PARTIAL 1:2) ALL", false, 1, 2, u32s(1, 2)},
					{"UID SEARCH RETURN (PARTIAL 2:1) FLAGGED", true, 1, 2, u32s(uids[1], uids[3])},
					{"SEARCH RETURN (PARTIAL 4:9) ALL", false, 4, 9, u32s(4, 5)},
					{"SEARCH RETURN (PARTIAL 6:9) ALL", false, 6, 9, nil},
					{"SEARCH RETURN (PARTIAL 2:2) FLAGGED", false, 2, 2, u32s(4)},
				} {
					if err := partialStep(c, s.cmd, s.uid, s.lo, s.hi, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5267-partial-or-all", RFC: 5267, Section: "4.4", Level: Must, Caps: caps,
			Summary: "a search with PARTIAL and ALL, or two PARTIALs, is refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				if err := partialStep(c, "SEARCH RETURN (PARTIAL 1:1) ALL", false, 1, 1, u32s(1)); err != nil {
					return err
				}
				for _, cmd := range []string{"SEARCH RETURN (PARTIAL 1:2 ALL) ALL", "SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL"} {
					res, err := c.Do(cmd)
					if err != nil {
						return err
					}
					if res.Status == nil || res.Status.Name != "BAD" {
						return failf("%s: expected BAD, got %q", cmd, status(res))
					}
				}
				return nil
			}},
		{ID: "5267-update-flags", RFC: 5267, Section: "4.3", Level: Must, Caps: caps,
			Summary: "an UPDATE search tells of another client's flag changes: ADDTO for a new match, REMOVEFROM for a lost one",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) FLAGGED")
				if err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[0], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				if _, _, err := t.awaitUpdate(c, res.Tag, "ADDTO", u32s(1)); err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[1], `-FLAGS (\Flagged)`); err != nil {
					return err
				}
				_, _, err = t.awaitUpdate(c, res.Tag, "REMOVEFROM", u32s(2))
				return err
			}},
		{ID: "5267-update-uid", RFC: 5267, Section: "4.3.2", Level: Must, Caps: caps,
			Summary: "the updates of a UID SEARCH carry UIDs, marked UID",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "UID SEARCH RETURN (UPDATE) UNFLAGGED")
				if err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[2], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				all, i, err := t.awaitUpdate(c, res.Tag, "REMOVEFROM", u32s(uids[2]))
				if err != nil {
					return err
				}
				if _, uid, _, _ := contextItems(all[i]); !uid {
					return failf("update %q lacks the UID indicator", all[i].Line)
				}
				return nil
			}},
		{ID: "5267-update-new-message", RFC: 5267, Section: "4.3.3", Level: Must, Caps: caps,
			Summary: "a new matching message is added with ADDTO, after the EXISTS that makes its number valid",
			Run: func(t *T) error {
				c, name, _, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) UNFLAGGED")
				if err != nil {
					return err
				}
				if err := t.OutsideAppend(name); err != nil {
					return err
				}
				all, i, err := t.awaitUpdate(c, res.Tag, "ADDTO", u32s(6))
				if err != nil {
					return err
				}
				e := indexOf(all, func(r *Response) bool { return r.Name == "EXISTS" && r.Num == 6 })
				if e < 0 || e > i {
					return failf("ADDTO %q came before * 6 EXISTS: %s", all[i].Line, describe(all))
				}
				return nil
			}},
		{ID: "5267-update-expunge", RFC: 5267, Section: "4.3.4", Level: Must, Caps: caps,
			Summary: "an expunged match is removed with REMOVEFROM before the EXPUNGE, in the numbers it had",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) FLAGGED")
				if err != nil {
					return err
				}
				if err := t.OutsideExpunge(name, uids[1]); err != nil {
					return err
				}
				all, i, err := t.awaitUpdate(c, res.Tag, "REMOVEFROM", u32s(2))
				if err != nil {
					return err
				}
				expunged := func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return r.Name == "EXPUNGE" || r.Name == "VANISHED" })
				}
				if !expunged(all) {
					more, ok, err := t.pollNoop(c, expunged)
					if err != nil {
						return err
					}
					if !ok {
						return failf("the expunge itself never came: %s", describe(append(all, more...)))
					}
					all = append(all, more...)
				}
				e := indexOf(all, func(r *Response) bool { return r.Name == "EXPUNGE" })
				if e >= 0 && e < i {
					return failf("REMOVEFROM %q came after the EXPUNGE: %s", all[i].Line, describe(all))
				}
				return nil
			}},
		{ID: "5267-update-tag-reuse", RFC: 5267, Section: "4.3", Level: Must, Caps: caps,
			Summary: "an UPDATE search under the tag of a live one is refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) FLAGGED")
				if err != nil {
					return err
				}
				cmd := "SEARCH RETURN (UPDATE) UNFLAGGED"
				if err := c.WriteLine(res.Tag + " " + cmd); err != nil {
					return err
				}
				again, err := c.Wait(res.Tag, cmd)
				if err != nil {
					return err
				}
				if again.Status == nil || again.Status.Name != "BAD" {
					return failf("%s under the live tag %s: expected BAD, got %q", cmd, res.Tag, status(again))
				}
				return nil
			}},
		{ID: "5267-cancelupdate", RFC: 5267, Section: "4.3.5", Level: Must, Caps: caps,
			Summary: "after CANCELUPDATE the context's changes are no longer told",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) FLAGGED")
				if err != nil {
					return err
				}
				if err := mustOK(c, fmt.Sprintf("CANCELUPDATE %q", res.Tag)); err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[0], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				all, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return r.Name == "FETCH" && r.Num == 1 })
				})
				if err != nil {
					return err
				}
				if !ok {
					return skipf("the flag change itself was never reported: %s", describe(all))
				}
				if items, _, err := updatesFor(all, res.Tag); err != nil || len(items) > 0 {
					return failf("updates after CANCELUPDATE: %s", describe(all))
				}
				return nil
			}},
		{ID: "5267-updates-end-with-mailbox", RFC: 5267, Section: "4.3", Level: Must, Caps: caps,
			Summary: "updates cease when the mailbox is selected again",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SEARCH RETURN (UPDATE) FLAGGED")
				if err != nil {
					return err
				}
				if err := mustOK(c, "SELECT "+quote(name)); err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[0], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				all, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return r.Name == "FETCH" && r.Num == 1 })
				})
				if err != nil {
					return err
				}
				if !ok {
					return skipf("the flag change itself was never reported: %s", describe(all))
				}
				if items, _, err := updatesFor(all, res.Tag); err != nil || len(items) > 0 {
					return failf("updates after SELECT: %s", describe(all))
				}
				return nil
			}},
		{ID: "5267-noupdate", RFC: 5267, Section: "4.3.1", Level: Must, Caps: caps,
			Summary: "many UPDATE searches: the first is kept; any refused gets NOUPDATE with its tag and is still answered",
			Run: func(t *T) error {
				c, _, err := t.esearchSetup()
				if err != nil {
					return err
				}
				refused := 0
				for i := range 40 {
					cmd := "SEARCH RETURN (UPDATE COUNT) ALL"
					res, err := doOK(c, cmd)
					if err != nil {
						return err
					}
					d, err := esearchOf(res.Untagged)
					if err != nil {
						return failf("%s: %v", cmd, err)
					}
					if err := d.check(res.Tag, false, "COUNT 5"); err != nil {
						return failf("%s (search %d): %v", cmd, i+1, err)
					}
					r := findCode(res.Untagged, "NOUPDATE")
					if r == nil {
						continue
					}
					if i == 0 {
						return failf("the first updating search was refused: %q", r.Line)
					}
					if arg := strings.Trim(r.CodeArg, `"`); arg != res.Tag || r.Name != "NO" {
						return failf("NOUPDATE %q: expected * NO [NOUPDATE %q]", r.Line, res.Tag)
					}
					refused++
				}
				t.Note(fmt.Sprintf("%d of 40 updating searches refused", refused))
				return nil
			}},
	}
}
