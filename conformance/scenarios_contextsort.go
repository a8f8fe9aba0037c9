package conformance

import (
	"fmt"
	"slices"
)

// CONTEXT=SORT (RFC 5267 section 4 with SORT), on sortSetup's mailbox,
// whose ARRIVAL order is 4 1 3 2 (REVERSE ARRIVAL 2 3 1 4): every update
// of a sorted context carries the position of each message in the sorted
// result (4.3.3), so the scenarios check positions exactly.

// sortedPairs returns the (position, set) pairs of the ADDTO or
// REMOVEFROM updates (name) of the context tagged tag among rs, in order.
func sortedPairs(rs []*Response, tag, name string) ([][2]string, error) {
	items, _, err := updatesFor(rs, tag)
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, it := range items {
		if it.Name == name {
			out = append(out, it.Pairs...)
		}
	}
	return out, nil
}

// awaitSorted polls with NOOP until the context tagged tag tells an
// update (name) and checks that it is exactly want, one (position,
// number) pair each; it returns everything received and the index of the
// update's response.
func (t *T) awaitSorted(c *Client, tag, name string, want [][2]string) ([]*Response, int, error) {
	all, ok, err := t.pollNoop(c, func(rs []*Response) bool {
		p, _ := sortedPairs(rs, tag, name)
		return len(p) > 0
	})
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
	var got [][2]string
	for _, it := range items {
		if it.Name != name {
			return nil, 0, failf("ESEARCH (TAG %q): unexpected %s %v with the %s", tag, it.Name, it.Pairs, name)
		}
		got = append(got, it.Pairs...)
	}
	if !slices.Equal(got, want) {
		return nil, 0, failf("ESEARCH (TAG %q) %s %v, expected %v (position, number)", tag, name, got, want)
	}
	return all, at[0], nil
}

func pair(pos int, n uint32) [2]string { return [2]string{fmt.Sprint(pos), fmt.Sprint(n)} }

// sortPartialStep runs a SORT with PARTIAL and checks the range and the
// numbers at those positions, in sort order.
func sortPartialStep(c *Client, cmd string, uid bool, lo, hi uint32, want []uint32) error {
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
	if p[0] != fmt.Sprintf("%d:%d", lo, hi) && p[0] != fmt.Sprintf("%d:%d", hi, lo) {
		return failf("%s: PARTIAL range %s, expected %d:%d", cmd, p[0], lo, hi)
	}
	if len(want) == 0 {
		if p[1] != "NIL" {
			return failf("%s: PARTIAL results %s, expected NIL", cmd, p[1])
		}
		return nil
	}
	got, err := orderedSet(p[1])
	if err != nil || !slices.Equal(got, want) {
		return failf("%s: PARTIAL results %s, expected %v in that order", cmd, p[1], want)
	}
	return nil
}

// contextSortSetup is sortSetup's mailbox, with its name.
func (t *T) contextSortSetup() (*Client, string, []uint32, error) {
	return t.sortMailbox(sortMessages, sortSizes)
}

func contextSort5267() []*Scenario {
	caps := []string{"CONTEXT=SORT", "ESORT"}
	return []*Scenario{
		{ID: "5267-sort-partial", RFC: 5267, Section: "4.4", Level: Must, Caps: caps,
			Summary: "SORT RETURN (PARTIAL lo:hi) answers the results at those positions of the sorted list, in sort order; with ALL it is BAD",
			Run: func(t *T) error {
				c, _, uids, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct {
					cmd    string
					uid    bool
					lo, hi uint32
					want   []uint32
				}{
					{"SORT RETURN (PARTIAL 1:1) (ARRIVAL) UTF-8 ALL", false, 1, 1, u32s(4)},
					{"SORT RETURN (PARTIAL 2:3) (ARRIVAL) UTF-8 ALL", false, 2, 3, u32s(1, 3)},
					{"SORT RETURN (PARTIAL 3:1) (REVERSE ARRIVAL) UTF-8 ALL", false, 1, 3, u32s(2, 3, 1)},
					{"UID SORT RETURN (PARTIAL 2:9) (ARRIVAL) UTF-8 ALL", true, 2, 9, u32s(uids[0], uids[2], uids[1])},
					{"SORT RETURN (PARTIAL 5:9) (ARRIVAL) UTF-8 ALL", false, 5, 9, nil},
				} {
					if err := sortPartialStep(c, s.cmd, s.uid, s.lo, s.hi, s.want); err != nil {
						return err
					}
				}
				cmd := "SORT RETURN (PARTIAL 1:2 ALL) (ARRIVAL) UTF-8 ALL"
				res, err := c.Do(cmd)
				if err != nil {
					return err
				}
				if res.Status == nil || res.Status.Name != "BAD" {
					return failf("%s: expected BAD, got %q", cmd, status(res))
				}
				return nil
			}},
		{ID: "5267-sort-update-flags", RFC: 5267, Section: "4.3.3", Level: Must, Caps: caps,
			Summary: "an updating SORT tells of another client's flag changes with the message's position in the sorted result",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 UNFLAGGED")
				if err != nil {
					return err
				}
				// Message 3, third of 4 1 3 2, leaves and comes back.
				if err := t.OutsideStore(name, uids[2], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				if _, _, err := t.awaitSorted(c, res.Tag, "REMOVEFROM", [][2]string{pair(3, 3)}); err != nil {
					return err
				}
				if err := t.OutsideStore(name, uids[2], `-FLAGS (\Flagged)`); err != nil {
					return err
				}
				_, _, err = t.awaitSorted(c, res.Tag, "ADDTO", [][2]string{pair(3, 3)})
				return err
			}},
		{ID: "5267-sort-update-uid", RFC: 5267, Section: "4.3.3", Level: Must, Caps: caps,
			Summary: "the updates of a UID SORT carry UIDs, marked UID, at their sorted positions",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "UID SORT RETURN (UPDATE) (REVERSE ARRIVAL) UTF-8 UNFLAGGED")
				if err != nil {
					return err
				}
				// Message 1, third of 2 3 1 4.
				if err := t.OutsideStore(name, uids[0], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				all, i, err := t.awaitSorted(c, res.Tag, "REMOVEFROM", [][2]string{pair(3, uids[0])})
				if err != nil {
					return err
				}
				if _, uid, _, _ := contextItems(all[i]); !uid {
					return failf("update %q lacks the UID indicator", all[i].Line)
				}
				return nil
			}},
		{ID: "5267-sort-update-new-message", RFC: 5267, Section: "4.3.3", Level: Must, Caps: caps,
			Summary: "a new message is added at its sorted position, after the EXISTS that makes its number valid",
			Run: func(t *T) error {
				c, name, _, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL")
				if err != nil {
					return err
				}
				// Arrived between 1 (10:00Z) and 3 (12:00Z) of 4 1 3 2:
				// third.
				o, err := t.Outside()
				if err != nil {
					return err
				}
				msg := []byte("From: frank@example.org\r\nSubject: delta\r\n\r\nbody\r\n")
				if r, err := o.AppendDated(name, "", "01-Feb-2026 11:00:00 +0000", msg); err != nil || !r.OK() {
					return fmt.Errorf("outside: APPEND with a date: %v %s", err, status(r))
				}
				all, i, err := t.awaitSorted(c, res.Tag, "ADDTO", [][2]string{pair(3, 5)})
				if err != nil {
					return err
				}
				e := indexOf(all, func(r *Response) bool { return r.Name == "EXISTS" && r.Num == 5 })
				if e < 0 || e > i {
					return failf("ADDTO %q came before * 5 EXISTS: %s", all[i].Line, describe(all))
				}
				return nil
			}},
		{ID: "5267-sort-update-expunge", RFC: 5267, Section: "4.3.4", Level: Must, Caps: caps,
			Summary: "an expunged message is removed at its sorted position, before the EXPUNGE, in the number it had",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL")
				if err != nil {
					return err
				}
				// Message 1, second of 4 1 3 2.
				if err := t.OutsideExpunge(name, uids[0]); err != nil {
					return err
				}
				all, i, err := t.awaitSorted(c, res.Tag, "REMOVEFROM", [][2]string{pair(2, 1)})
				if err != nil {
					return err
				}
				e := indexOf(all, func(r *Response) bool { return r.Name == "EXPUNGE" })
				if e >= 0 && e < i {
					return failf("REMOVEFROM %q came after the EXPUNGE: %s", all[i].Line, describe(all))
				}
				return nil
			}},
		{ID: "5267-sort-update-cancel", RFC: 5267, Section: "4.3.5", Level: Must, Caps: caps,
			Summary: "an updating SORT under a live tag is BAD; after CANCELUPDATE its changes are no longer told",
			Run: func(t *T) error {
				c, name, uids, err := t.contextSortSetup()
				if err != nil {
					return err
				}
				res, err := updateSearch(c, "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 UNFLAGGED")
				if err != nil {
					return err
				}
				cmd := "SORT RETURN (UPDATE) (SIZE) UTF-8 ALL"
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
	}
}
