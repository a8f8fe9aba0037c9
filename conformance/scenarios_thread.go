package conformance

import (
	"fmt"
	"strings"
)

// threadMessages is threadSetup's mailbox (RFC 5256 section 3): a
// conversation with a References chain, an In-Reply-To and a reply
// dated before the one it follows; a reply to a message the mailbox does
// not hold; a reply by subject alone; a message on its own.
var threadMessages = []struct{ internal, header string }{
	{"01-Feb-2026 10:00:00 +0000", "Message-ID: <a@thread.example>\r\nDate: Sun, 1 Feb 2026 10:00:00 +0000\r\nSubject: plan\r\n"},
	{"01-Feb-2026 12:00:00 +0000", "Message-ID: <b@thread.example>\r\nIn-Reply-To: <a@thread.example>\r\nDate: Sun, 1 Feb 2026 12:00:00 +0000\r\nSubject: Re: plan\r\n"},
	{"01-Feb-2026 13:00:00 +0000", "Message-ID: <c@thread.example>\r\nReferences: <a@thread.example> <b@thread.example>\r\nDate: Sun, 1 Feb 2026 11:00:00 +0000\r\nSubject: Re: plan\r\n"},
	{"01-Feb-2026 14:00:00 +0000", "Message-ID: <d@thread.example>\r\nReferences: <a@thread.example>\r\nDate: Sun, 1 Feb 2026 09:00:00 +0000\r\nSubject: RE: Plan\r\n"},
	{"02-Feb-2026 10:00:00 +0000", "Message-ID: <e@thread.example>\r\nReferences: <gone@thread.example>\r\nDate: Mon, 2 Feb 2026 10:00:00 +0000\r\nSubject: other\r\n"},
	{"03-Feb-2026 10:00:00 +0000", "Message-ID: <f@thread.example>\r\nDate: Tue, 3 Feb 2026 10:00:00 +0000\r\nSubject: Re: [list] other\r\n"},
	{"31-Jan-2026 10:00:00 +0000", "Message-ID: <g@thread.example>\r\nSubject: lone\r\n"},
}

// threadStep runs cmd and checks its one THREAD response's thread lists,
// exactly as written (RFC 5256 section 4: no space between lists).
func threadStep(c *Client, cmd, want string) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	all := findAll(res.Untagged, "THREAD")
	if len(all) != 1 {
		return failf("%s: expected one untagged THREAD, got %s", cmd, describe(res.Untagged))
	}
	got, ok := strings.CutPrefix(all[0].Line, "* THREAD")
	if !ok {
		return failf("%s: bad THREAD response %q", cmd, all[0].Line)
	}
	if got = strings.TrimSpace(got); got != want {
		return failf("%s answered %q, expected %q", cmd, got, want)
	}
	return nil
}

func thread5256() []*Scenario {
	sizes := make([]int, len(threadMessages))
	setup := func(t *T) (*Client, []uint32, error) { return t.sortSetup(threadMessages, sizes) }
	return []*Scenario{
		// Sent dates: 7 (INTERNALDATE, 31 Jan), 4 (09:00), 1, 3, 2
		// (12:00), 5 (2 Feb), 6. a is 1's ID: 2 replies to it, 3 to 2,
		// 4 to 1 (siblings by date: 4 first). 5's parent is not here:
		// the dummy goes and 5 is a thread of its own, which 6 joins by
		// its subject (a reply to "other").
		{ID: "5256-thread-references", RFC: 5256, Section: "3", Level: Must, Caps: []string{"THREAD=REFERENCES"},
			Summary: "THREAD REFERENCES links by References and In-Reply-To, drops dummies, merges by base subject and orders by sent date",
			Run: func(t *T) error {
				c, _, err := setup(t)
				if err != nil {
					return err
				}
				return threadStep(c, "THREAD REFERENCES UTF-8 ALL", "(7)(1 (4)(2 3))(5 6)")
			}},
		// Base subjects: PLAN (1 to 4: 4, 1, 3, 2 by date), OTHER (5,
		// 6), LONE (7); threads in the order of their first messages.
		{ID: "5256-thread-orderedsubject", RFC: 5256, Section: "3", Level: Must, Caps: []string{"THREAD=ORDEREDSUBJECT"},
			Summary: "THREAD ORDEREDSUBJECT groups by base subject under the earliest message, threads ordered by it",
			Run: func(t *T) error {
				c, _, err := setup(t)
				if err != nil {
					return err
				}
				return threadStep(c, "THREAD ORDEREDSUBJECT US-ASCII ALL", "(7)(4 (1)(3)(2))(5 6)")
			}},
		{ID: "5256-uid-thread", RFC: 5256, Section: "3", Level: Must, Caps: []string{"THREAD=ORDEREDSUBJECT"},
			Summary: "UID THREAD answers UIDs; the search criteria choose the messages threaded",
			Run: func(t *T) error {
				c, uids, err := setup(t)
				if err != nil {
					return err
				}
				u := func(i int) uint32 { return uids[i-1] }
				want := fmt.Sprintf("(%d (%d)(%d))(%d)", u(4), u(3), u(2), u(5))
				return threadStep(c, "UID THREAD ORDEREDSUBJECT UTF-8 2:5", want)
			}},
		{ID: "5256-thread-empty", RFC: 5256, Section: "4", Level: Must, Caps: []string{"THREAD=REFERENCES"},
			Summary: "a THREAD that matches nothing answers a THREAD response without thread lists",
			Run: func(t *T) error {
				c, _, err := setup(t)
				if err != nil {
					return err
				}
				return threadStep(c, "THREAD REFERENCES UTF-8 SUBJECT nosuchsubject", "")
			}},
		{ID: "5256-bad-thread", RFC: 5256, Section: "3", Level: Must, Caps: []string{"THREAD=REFERENCES"},
			Summary: "an unknown thread algorithm and a missing charset are refused with BAD",
			Run: func(t *T) error {
				c, _, err := t.sortSetup(threadMessages[:1], sizes[:1])
				if err != nil {
					return err
				}
				for _, cmd := range []string{"THREAD NOSUCHALGORITHM UTF-8 ALL", "THREAD REFERENCES ALL"} {
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
