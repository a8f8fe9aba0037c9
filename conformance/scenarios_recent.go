package conformance

import (
	"fmt"
	"slices"
)

// RFC 3501 2.3.2's \Recent: "This session is the first session to have
// been notified about this message; if the session is read-write,
// subsequent sessions will not see \Recent set for this message", and
// 6.3.2: EXAMINE "MUST NOT cause messages to lose the \Recent flag".
// Through lemonproxy the sessions are the proxy's own (issue #17,
// docs/hardening.md #16.17).
func recent3501() []*Scenario {
	return []*Scenario{
		{ID: "3501-examine-keeps-recent", RFC: 3501, Section: "6.3.2", Level: MustNot,
			Summary: "EXAMINE does not take \\Recent: a later SELECT still sees the new messages as recent",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				ex, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := selectOK(ex, "EXAMINE", mb, ""); err != nil {
					return err
				}
				_, res, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				return wantRecent(res, "SELECT after another session's EXAMINE", 2)
			}},
		{ID: "3501-recent-first-session", RFC: 3501, Section: "2.3.2", Level: Must,
			Summary: "\\Recent is set in the first read-write session only: RECENT, FETCH FLAGS and SEARCH RECENT/NEW/OLD",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				first, res, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := wantRecent(res, "first SELECT", 2); err != nil {
					return err
				}
				second, res, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := wantRecent(res, "second SELECT", 0); err != nil {
					return err
				}
				for _, c := range []struct {
					c      *Client
					who    string
					recent bool
				}{{first, "first session", true}, {second, "second session", false}} {
					res, err := doOK(c.c, "FETCH 1:2 (FLAGS)")
					if err != nil {
						return err
					}
					f := fetches(res.Untagged)
					if len(f) != 2 {
						return failf("%s: FETCH 1:2 (FLAGS): got %s", c.who, describe(res.Untagged))
					}
					for _, d := range f {
						if d.HasFlag(`\Recent`) != c.recent {
							return failf("%s: FETCH 1:2 (FLAGS): \\Recent expected %v, got %s", c.who, c.recent, describe(res.Untagged))
						}
					}
					want := map[string][]uint32{"RECENT": nil, "NEW": nil, "OLD": {1, 2}}
					if c.recent {
						want = map[string][]uint32{"RECENT": {1, 2}, "NEW": {1, 2}, "OLD": nil}
					}
					for _, key := range []string{"RECENT", "NEW", "OLD"} {
						if err := wantSearch(c.c, c.who, "SEARCH "+key, want[key]); err != nil {
							return err
						}
					}
				}
				return nil
			}},
		{ID: "3501-recent-new-message", RFC: 3501, Section: "2.3.2", Level: Must,
			Summary: "A message delivered while two sessions have the mailbox selected is recent in exactly one",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				var sessions []*Client
				for range 2 {
					c, _, err := t.loginSelect(mb, "")
					if err != nil {
						return err
					}
					sessions = append(sessions, c)
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				n := 0
				for i, c := range sessions {
					if _, ok, err := t.pollNoop(c, func(all []*Response) bool {
						return slices.ContainsFunc(all, func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
					}); err != nil || !ok {
						return failf("session %d never heard of the new message (* 2 EXISTS): %v", i+1, err)
					}
					res, err := doOK(c, "FETCH 2 (FLAGS)")
					if err != nil {
						return err
					}
					f := fetches(res.Untagged)
					if len(f) != 1 {
						return failf("session %d: FETCH 2 (FLAGS): got %s", i+1, describe(res.Untagged))
					}
					if f[0].HasFlag(`\Recent`) {
						n++
					}
				}
				if n != 1 {
					return failf("the new message has \\Recent in %d of the 2 sessions that have the mailbox selected, expected exactly 1", n)
				}
				return nil
			}},
	}
}

// wantRecent checks the RECENT response of a SELECT or EXAMINE.
func wantRecent(res *Reply, what string, n uint32) error {
	r := find(res.Untagged, "RECENT")
	if r == nil || !r.HasNum {
		return failf("%s: expected * %d RECENT, got %s", what, n, describe(res.Untagged))
	}
	if r.Num != n {
		return failf("%s: expected * %d RECENT, got %q", what, n, r.Line)
	}
	return nil
}

// wantSearch runs a SEARCH and checks its result.
func wantSearch(c *Client, who, cmd string, want []uint32) error {
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	s, err := search(res.Untagged)
	if err != nil {
		return failf("%s: %s: %v", who, cmd, err)
	}
	if !sameSet(s.Nums, want) {
		return failf("%s: %s: expected %s, got %s", who, cmd, fmt.Sprint(want), describe(res.Untagged))
	}
	return nil
}
