package conformance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// sortMessages is sortSetup's mailbox: every sort key of RFC 5256 and
// RFC 5957 orders it differently (the orders are worked out at each
// scenario). Bodies pad the sizes apart.
var sortMessages = []struct{ internal, header string }{
	{"01-Feb-2026 10:00:00 +0000", "Date: Mon, 2 Feb 2026 10:00:00 +0000\r\nFrom: Carol <carol@example.org>\r\nTo: dave@example.org\r\nSubject: Re: beta\r\n"},
	{"01-Feb-2026 08:00:00 -0500", "Date: Sun, 1 Feb 2026 09:00:00 -0800\r\nFrom: alice@example.org\r\nTo: Zoe <bob@example.org>\r\nSubject: [list] Alpha\r\n"},
	{"01-Feb-2026 12:00:00 +0000", "From: Bob <Bob@example.org>\r\nCc: eve@example.org\r\nSubject: Fwd: alpha (fwd)\r\n"},
	{"31-Jan-2026 23:00:00 +0000", "Date: Sat, 31 Jan 2026 23:30:00 +0000\r\nFrom: Ann <zack@example.org>\r\nSubject: gamma\r\n"},
}

// sortSizes are the body sizes of sortMessages: SIZE orders them 4 2 3 1.
var sortSizes = []int{3000, 1000, 2000, 500}

// sortSetup makes a mailbox of msgs (header, INTERNALDATE, body size)
// and selects it; it returns the client and the UIDs.
func (t *T) sortSetup(msgs []struct{ internal, header string }, sizes []int) (*Client, []uint32, error) {
	c, _, uids, err := t.sortMailbox(msgs, sizes)
	return c, uids, err
}

// sortMailbox is sortSetup that also returns the mailbox's name, for the
// outside changes of CONTEXT=SORT's scenarios.
func (t *T) sortMailbox(msgs []struct{ internal, header string }, sizes []int) (*Client, string, []uint32, error) {
	name := t.Name()
	c, uids, err := t.fillSortMailbox(name, msgs, sizes)
	return c, name, uids, err
}

func (t *T) fillSortMailbox(name string, msgs []struct{ internal, header string }, sizes []int) (*Client, []uint32, error) {
	c, err := t.setupClient()
	if err != nil {
		return nil, nil, err
	}
	if err := createFresh(c, name); err != nil {
		return nil, nil, fmt.Errorf("setup: %w", err)
	}
	for i, m := range msgs {
		body := strings.Repeat("x", sizes[i]) + "\r\n"
		res, err := c.AppendDated(name, "", m.internal, []byte(m.header+"\r\n"+body))
		if err != nil {
			return nil, nil, fmt.Errorf("setup: %w", err)
		}
		if !res.OK() {
			return nil, nil, fmt.Errorf("setup: APPEND with a date refused: %s", status(res))
		}
	}
	uids, err := t.uids(c, name)
	if err != nil {
		return nil, nil, fmt.Errorf("setup: %w", err)
	}
	if len(uids) != len(msgs) {
		return nil, nil, fmt.Errorf("setup: appended %d messages, mailbox holds %d", len(msgs), len(uids))
	}
	sel, _, err := t.loginSelect(name, "")
	return sel, uids, err
}

// sortResult returns the numbers of the one SORT response among rs, in
// order.
func sortResult(rs []*Response) ([]uint32, error) {
	all := findAll(rs, "SORT")
	if len(all) != 1 {
		return nil, fmt.Errorf("expected one untagged SORT, got %s", describe(rs))
	}
	r := all[0]
	if r.ParseErr != nil {
		return nil, fmt.Errorf("unparsable SORT %q: %v", r.Line, r.ParseErr)
	}
	var out []uint32
	for _, f := range r.Fields {
		a, ok := f.(imapcodec.Atom)
		if !ok {
			continue // (MODSEQ n)
		}
		n, err := strconv.ParseUint(string(a), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("SORT %q: bad number %q", r.Line, a)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// sortStep runs cmd and checks its SORT response's numbers, in order.
func sortStep(c *Client, cmd string, want []uint32) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	got, err := sortResult(res.Untagged)
	if err != nil {
		return failf("%s: %v", cmd, err)
	}
	if !slices.Equal(got, want) {
		return failf("%s answered %v, expected %v", cmd, got, want)
	}
	return nil
}

// orderedSet expands a sequence set as written, in its order ("4,1:2" is
// 4 1 2).
func orderedSet(s string) ([]uint32, error) {
	var out []uint32
	for _, el := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(el, ":")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil {
			return nil, err
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 32); err != nil {
				return nil, err
			}
		}
		for n := a; ; {
			out = append(out, uint32(n))
			if n == b {
				break
			}
			if a < b {
				n++
			} else {
				n--
			}
		}
	}
	return out, nil
}

func sort5256() []*Scenario {
	keys := func(id, summary string, steps []struct {
		cmd  string
		want []uint32
	}) *Scenario {
		return &Scenario{ID: id, RFC: 5256, Section: "3", Level: Must, Caps: []string{"SORT"}, Summary: summary,
			Run: func(t *T) error {
				c, _, err := t.sortSetup(sortMessages, sortSizes)
				if err != nil {
					return err
				}
				for _, s := range steps {
					if err := sortStep(c, s.cmd, s.want); err != nil {
						return err
					}
				}
				return nil
			}}
	}
	type step = struct {
		cmd  string
		want []uint32
	}
	return []*Scenario{
		// INTERNALDATE in UTC: 4 (31 Jan 23:00), 1 (10:00), 3 (12:00),
		// 2 (08:00 -0500 = 13:00).
		keys("5256-arrival", "ARRIVAL orders by INTERNALDATE as an instant, REVERSE ARRIVAL the other way", []step{
			{"SORT (ARRIVAL) UTF-8 ALL", u32s(4, 1, 3, 2)},
			{"SORT (REVERSE ARRIVAL) UTF-8 ALL", u32s(2, 3, 1, 4)},
		}),
		// Sent dates in UTC: 4 (31 Jan 23:30), 3 (no Date: INTERNALDATE,
		// 1 Feb 12:00), 2 (09:00 -0800 = 17:00), 1 (2 Feb).
		keys("5256-date", "DATE orders by the Date header in UTC, a message without one by its INTERNALDATE (2.2)", []step{
			{"SORT (DATE) UTF-8 ALL", u32s(4, 3, 2, 1)},
			{"SORT (REVERSE DATE) US-ASCII ALL", u32s(1, 2, 3, 4)},
		}),
		// Base subjects: ALPHA (2: "[list] Alpha", 3: "Fwd: alpha (fwd)"),
		// BETA (1: "Re: beta"), GAMMA (4). Equal keys keep mailbox order,
		// which REVERSE does not reverse.
		keys("5256-subject", "SUBJECT orders by base subject (2.1): Re:, Fwd:, [blob] and (fwd) removed, case ignored; ties in mailbox order", []step{
			{"SORT (SUBJECT) UTF-8 ALL", u32s(2, 3, 1, 4)},
			{"SORT (REVERSE SUBJECT) UTF-8 ALL", u32s(4, 1, 2, 3)},
			{"SORT (SUBJECT ARRIVAL) UTF-8 ALL", u32s(3, 2, 1, 4)},
		}),
		// addr-mailbox of the first address: From alice, Bob, carol,
		// zack; To "" (3, 4), bob, dave; Cc "" (1, 2, 4), eve.
		keys("5256-address", "FROM, TO and CC order by the mailbox part of the first address, a missing one first", []step{
			{"SORT (FROM) UTF-8 ALL", u32s(2, 3, 1, 4)},
			{"SORT (TO) UTF-8 ALL", u32s(3, 4, 2, 1)},
			{"SORT (CC) UTF-8 ALL", u32s(1, 2, 4, 3)},
			{"SORT (REVERSE CC) UTF-8 ALL", u32s(3, 1, 2, 4)},
		}),
		keys("5256-size", "SIZE orders by RFC822.SIZE", []step{
			{"SORT (SIZE) UTF-8 ALL", u32s(4, 2, 3, 1)},
			{"SORT (REVERSE SIZE) UTF-8 ALL", u32s(1, 3, 2, 4)},
		}),
		{ID: "5256-uid-sort-criteria", RFC: 5256, Section: "3", Level: Must, Caps: []string{"SORT"},
			Summary: "UID SORT answers UIDs; the search criteria (with sequence sets) choose the messages sorted",
			Run: func(t *T) error {
				c, uids, err := t.sortSetup(sortMessages, sortSizes)
				if err != nil {
					return err
				}
				for _, s := range []step{
					{"UID SORT (ARRIVAL) UTF-8 ALL", u32s(uids[3], uids[0], uids[2], uids[1])},
					{"SORT (ARRIVAL) UTF-8 2:4", u32s(4, 3, 2)},
					{"SORT (DATE) UTF-8 FROM example.org NOT FROM carol", u32s(4, 3, 2)},
					{"UID SORT (SIZE) UTF-8 UID " + fmt.Sprint(uids[0]) + ":" + fmt.Sprint(uids[1]), u32s(uids[1], uids[0])},
					{"SORT (SUBJECT) UTF-8 SUBJECT nothing-like-this", nil},
				} {
					if err := sortStep(c, s.cmd, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5256-bad-sort", RFC: 5256, Section: "3", Level: Must, Caps: []string{"SORT"},
			Summary: "an unknown sort key, a REVERSE without key and a missing charset are refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.sortSetup(sortMessages[:1], sortSizes[:1])
				if err != nil {
					return err
				}
				for _, cmd := range []string{"SORT (NOSUCHKEY) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL", "SORT (DATE) ALL"} {
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
	}
}

func sortDisplay5957() []*Scenario {
	return []*Scenario{
		// Display names: Ann (4), Bob (3), Carol (1), and 2 has none:
		// alice@example.org, before ANN. To: 3 and 4 have none; dave
		// has no name (dave@example.org), Zoe.
		{ID: "5957-display", RFC: 5957, Section: "2", Level: Must, Caps: []string{"SORT=DISPLAY"},
			Summary: "DISPLAYFROM and DISPLAYTO order by the first address's display name, or its address without one",
			Run: func(t *T) error {
				c, _, err := t.sortSetup(sortMessages, sortSizes)
				if err != nil {
					return err
				}
				if err := sortStep(c, "SORT (DISPLAYFROM) UTF-8 ALL", u32s(2, 4, 3, 1)); err != nil {
					return err
				}
				return sortStep(c, "SORT (DISPLAYTO) UTF-8 ALL", u32s(3, 4, 1, 2))
			}},
	}
}

func esort5267() []*Scenario {
	return []*Scenario{
		{ID: "5267-esort", RFC: 5267, Section: "3.1", Level: Must, Caps: []string{"ESORT"},
			Summary: "SORT RETURN answers ESEARCH: MIN and MAX are the first and last in sort order, ALL lists the messages in sort order",
			Run: func(t *T) error {
				c, uids, err := t.sortSetup(sortMessages, sortSizes)
				if err != nil {
					return err
				}
				for _, s := range []struct {
					cmd  string
					uid  bool
					want string
					all  []uint32
				}{
					{"SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL", false, "MIN 4 MAX 1 COUNT 4", nil},
					{"SORT RETURN (ALL) (DATE) UTF-8 ALL", false, "", u32s(4, 3, 2, 1)},
					{"SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL", false, "", u32s(2, 3, 1, 4)},
					{"UID SORT RETURN (MIN ALL) (SIZE) UTF-8 ALL", true, fmt.Sprintf("MIN %d", uids[3]), u32s(uids[3], uids[1], uids[2], uids[0])},
					{"SORT RETURN (COUNT) (SUBJECT) UTF-8 FROM nobody-at-all", false, "COUNT 0", nil},
				} {
					res, err := doOK(c, s.cmd)
					if err != nil {
						return err
					}
					d, err := esearchOf(res.Untagged)
					if err != nil {
						return failf("%s: %v", s.cmd, err)
					}
					all, hasAll := d.Items["ALL"]
					delete(d.Items, "ALL")
					if err := d.check(res.Tag, s.uid, s.want); err != nil {
						return failf("%s: %v", s.cmd, err)
					}
					if s.all == nil {
						if hasAll {
							return failf("%s: unexpected ALL %s", s.cmd, all)
						}
						continue
					}
					got, err := orderedSet(all)
					if err != nil || !slices.Equal(got, s.all) {
						return failf("%s: ALL %q, expected %v in that order", s.cmd, all, s.all)
					}
				}
				return nil
			}},
	}
}

func i18n5255() []*Scenario {
	return []*Scenario{
		// i;unicode-casemap folds "Äb" and "äa" to A+diaeresis B and
		// A+diaeresis A: 2 before 1. Octet order (i;ascii-casemap) would
		// put Ä (C3 84) before ä (C3 A4): 1 before 2.
		{ID: "5255-casemap-sort", RFC: 5255, Section: "4.3", Level: Must, Caps: []string{"I18NLEVEL=1", "SORT"},
			Summary: "with I18NLEVEL=1, SORT compares strings with i;unicode-casemap (non-ASCII letters without regard to case)",
			Run: func(t *T) error {
				c, _, err := t.sortSetup([]struct{ internal, header string }{
					{"01-Feb-2026 10:00:00 +0000", "From: x@example.org\r\nSubject: =?UTF-8?Q?=C3=84b?=\r\n"},
					{"01-Feb-2026 11:00:00 +0000", "From: y@example.org\r\nSubject: =?UTF-8?Q?=C3=A4a?=\r\n"},
				}, []int{10, 10})
				if err != nil {
					return err
				}
				return sortStep(c, "SORT (SUBJECT) UTF-8 ALL", u32s(2, 1))
			}},
		{ID: "5255-language", RFC: 5255, Section: "3.3", Level: Must, Caps: []string{"LANGUAGE"},
			Summary: "LANGUAGE lists the languages, i-default among them; LANGUAGE i-default selects it with a LANGUAGE response",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				defer c.Close()
				for _, cmd := range []string{"LANGUAGE", "LANGUAGE i-default"} {
					res, err := doOK(c, cmd)
					if err != nil {
						return err
					}
					r := find(res.Untagged, "LANGUAGE")
					if r == nil || r.ParseErr != nil || len(r.Fields) != 1 {
						return failf("%s: expected * LANGUAGE (tags), got %s", cmd, describe(res.Untagged))
					}
					l, _ := r.Fields[0].(imapcodec.List)
					var tags []string
					for _, v := range l {
						s, _ := imapcodec.AsString(v)
						tags = append(tags, strings.ToLower(s))
					}
					if !slices.Contains(tags, "i-default") || cmd != "LANGUAGE" && len(tags) != 1 {
						return failf("%s: expected i-default in %q", cmd, r.Line)
					}
				}
				return nil
			}},
	}
}
