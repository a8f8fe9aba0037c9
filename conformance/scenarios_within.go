package conformance

import (
	"fmt"
	"strings"
	"time"
)

// withinAges are the ages, in seconds when the scenario starts, of the
// messages of withinSetup's mailbox: ten days, two days, two hours and
// ten minutes, with margins of an hour or more around the intervals the
// scenarios search for, so that a server's clock a few minutes off the
// suite's does not change an answer. They are appended in assorted time
// zones: OLDER and YOUNGER compare instants.
var withinAges = []struct {
	age  time.Duration
	zone string
}{
	{240 * time.Hour, "+0000"},
	{48 * time.Hour, "-1100"},
	{2 * time.Hour, "+1400"},
	{10 * time.Minute, "+0530"},
}

// withinSetup makes a mailbox of withinAges's messages, the last two
// seen, and selects it; it returns the client and the UIDs.
func (t *T) withinSetup() (*Client, []uint32, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return nil, nil, err
	}
	if err := createFresh(c, name); err != nil {
		return nil, nil, fmt.Errorf("setup: %w", err)
	}
	now := time.Now()
	for i, m := range withinAges {
		zone, _ := time.Parse("-0700", m.zone)
		date := now.Add(-m.age).In(zone.Location()).Format("02-Jan-2006 15:04:05 -0700")
		flags := ""
		if i >= 2 {
			flags = `\Seen`
		}
		res, err := c.AppendDated(name, flags, date, testMessage(name, i+1, 0))
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
	if len(uids) != len(withinAges) {
		return nil, nil, fmt.Errorf("setup: appended %d messages, mailbox holds %d", len(withinAges), len(uids))
	}
	sel, _, err := t.loginSelect(name, "")
	return sel, uids, err
}

// searchStep runs cmd and checks its SEARCH response's numbers.
func searchStep(c *Client, cmd string, want []uint32) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	s, err := search(res.Untagged)
	if err != nil {
		return failf("%s: %v", cmd, err)
	}
	if !sameSet(s.Nums, want) {
		return failf("%s answered %v, expected %v", cmd, s.Nums, want)
	}
	return nil
}

func within5032() []*Scenario {
	return []*Scenario{
		{ID: "5032-older-younger", RFC: 5032, Section: "3", Level: Must, Caps: []string{"WITHIN"},
			Summary: "OLDER n and YOUNGER n split the messages at n seconds before now by INTERNALDATE, whatever its time zone",
			Run: func(t *T) error {
				c, _, err := t.withinSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct {
					cmd  string
					want []uint32
				}{
					{"SEARCH YOUNGER 3600", u32s(4)},
					{"SEARCH OLDER 3600", u32s(1, 2, 3)},
					{"SEARCH YOUNGER 86400", u32s(3, 4)},
					{"SEARCH OLDER 86400", u32s(1, 2)},
					{"SEARCH YOUNGER 259200", u32s(2, 3, 4)},
					{"SEARCH OLDER 1", u32s(1, 2, 3, 4)},
					{"SEARCH YOUNGER 1", nil},
					{"SEARCH OLDER 2592000", nil},
				} {
					if err := searchStep(c, s.cmd, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5032-uid-search", RFC: 5032, Section: "3", Level: Must, Caps: []string{"WITHIN"},
			Summary: "UID SEARCH with OLDER and YOUNGER answers the UIDs of the matching messages",
			Run: func(t *T) error {
				c, uids, err := t.withinSetup()
				if err != nil {
					return err
				}
				if err := searchStep(c, "UID SEARCH YOUNGER 86400", uids[2:]); err != nil {
					return err
				}
				return searchStep(c, "UID SEARCH OLDER 86400", uids[:2])
			}},
		{ID: "5032-combined", RFC: 5032, Section: "3", Level: Must, Caps: []string{"WITHIN"},
			Summary: "OLDER and YOUNGER combine with other keys, OR, NOT and parentheses (the RFC's UNSEEN YOUNGER example)",
			Run: func(t *T) error {
				c, _, err := t.withinSetup()
				if err != nil {
					return err
				}
				for _, s := range []struct {
					cmd  string
					want []uint32
				}{
					{"SEARCH UNSEEN YOUNGER 259200", u32s(2)},
					{"SEARCH OR YOUNGER 3600 OLDER 259200", u32s(1, 4)},
					{"SEARCH NOT YOUNGER 3600", u32s(1, 2, 3)},
					{"SEARCH (OLDER 3600 YOUNGER 259200) SEEN", u32s(3)},
					{"SEARCH 2:4 NOT OLDER 86400", u32s(3, 4)},
				} {
					if err := searchStep(c, s.cmd, s.want); err != nil {
						return err
					}
				}
				return nil
			}},
		{ID: "5032-esearch", RFC: 5032, Section: "3", Level: Must, Caps: []string{"WITHIN", "ESEARCH"},
			Summary: "OLDER and YOUNGER work in SEARCH RETURN (ESEARCH), matches or none",
			Run: func(t *T) error {
				c, uids, err := t.withinSetup()
				if err != nil {
					return err
				}
				if err := esearchStep(c, "SEARCH RETURN (MIN MAX COUNT) YOUNGER 259200", false, "MIN 2 MAX 4 COUNT 3"); err != nil {
					return err
				}
				if err := esearchStep(c, "UID SEARCH RETURN (ALL) OLDER 86400", true,
					fmt.Sprintf("ALL %d:%d", uids[0], uids[1])); err != nil {
					return err
				}
				return esearchStep(c, "SEARCH RETURN (COUNT) YOUNGER 1", false, "COUNT 0")
			}},
		{ID: "5032-bad-interval", RFC: 5032, Section: "4", Level: Should, Caps: []string{"WITHIN"},
			Summary: "an interval that is not a non-zero number (0, a word) is refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.withinSetup()
				if err != nil {
					return err
				}
				for _, cmd := range []string{"SEARCH YOUNGER 0", "SEARCH OLDER soon"} {
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
