package conformance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// highest returns the HIGHESTMODSEQ response code among rs.
func highest(rs []*Response) (uint64, bool) { return codeNumber(rs, "HIGHESTMODSEQ") }

// selectHighest selects mailbox with params and requires a non-zero
// HIGHESTMODSEQ.
func selectHighest(c *Client, verb, mailbox, params string) (*Reply, uint64, error) {
	res, err := selectOK(c, verb, mailbox, params)
	if err != nil {
		return res, 0, err
	}
	h, ok := highest(res.Untagged)
	if !ok {
		if findCode(res.Untagged, "NOMODSEQ") != nil {
			return res, 0, failf("%s %s answered NOMODSEQ: the mailbox keeps no mod-sequences", verb, params)
		}
		return res, 0, failf("%s %s: no OK [HIGHESTMODSEQ n]; got %s", verb, params, describe(res.Untagged))
	}
	if h == 0 {
		return res, 0, failf("%s %s: HIGHESTMODSEQ is 0; mod-sequences are positive", verb, params)
	}
	return res, h, nil
}

// modseqs fetches MODSEQ (and UID) for set and returns them by sequence
// number.
func modseqs(c *Client, set string) (map[uint32]FetchData, error) {
	res, err := doOK(c, "FETCH "+set+" (UID MODSEQ)")
	if err != nil {
		return nil, err
	}
	out := map[uint32]FetchData{}
	for _, f := range fetches(res.Untagged) {
		if _, ok := f.Modseq(); !ok {
			return nil, failf("FETCH (MODSEQ) answered without a MODSEQ item: %s", describe(res.Untagged))
		}
		out[f.Seq] = f
	}
	return out, nil
}

func modseqOf(c *Client, seq uint32) (uint64, error) {
	m, err := modseqs(c, strconv.FormatUint(uint64(seq), 10))
	if err != nil {
		return 0, err
	}
	f, ok := m[seq]
	if !ok {
		return 0, failf("FETCH %d (MODSEQ): no FETCH response", seq)
	}
	v, _ := f.Modseq()
	return v, nil
}

// enabling checks that after a CONDSTORE enabling command, a flag change
// made elsewhere is reported with a FETCH carrying UID and MODSEQ. before
// runs in the authenticated state, selectParams go with SELECT, during
// runs in the selected state.
func enabling(t *T, before, verb, selectParams, during string) error {
	mb, uids, err := t.Mailbox(3)
	if err != nil {
		return err
	}
	c, err := t.Login()
	if err != nil {
		return err
	}
	r := strings.NewReplacer("MBOX", quote(mb))
	if before != "" {
		if err := mustOK(c, r.Replace(before)); err != nil {
			return err
		}
	}
	if _, err := selectOK(c, verb, mb, selectParams); err != nil {
		return err
	}
	if during != "" {
		if err := mustOK(c, r.Replace(during)); err != nil {
			return err
		}
	}
	if err := t.OutsideStore(mb, uids[2], `+FLAGS (\Flagged)`); err != nil {
		return err
	}
	var ev FetchData
	got, ok, err := t.pollNoop(c, func(rs []*Response) bool {
		for _, f := range fetches(rs) {
			if f.Seq == 3 && f.HasFlag(`\Flagged`) {
				ev = f
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	if !ok {
		return failf("the outside flag change was never reported (NOOP for %v gave %s)", t.cfg.EventWait, describe(got))
	}
	var missing []string
	if _, ok := ev.UID(); !ok {
		missing = append(missing, "UID")
	}
	if _, ok := ev.Modseq(); !ok {
		missing = append(missing, "MODSEQ")
	}
	if len(missing) > 0 {
		line := got[slices.IndexFunc(got, func(r *Response) bool { f, ok := r.Fetch(); return ok && f.Seq == 3 })].Line
		return failf("unsolicited FETCH lacks %s: %q", strings.Join(missing, " and "), line)
	}
	return nil
}

// expectBAD runs cmd and requires a tagged BAD.
func expectBAD(c *Client, cmd string) error {
	res, err := c.Do(cmd)
	if err != nil {
		return err
	}
	if res.Status.Name != "BAD" {
		return failf("%s: expected BAD, got %q", cmd, status(res))
	}
	return nil
}

// modifiedSet parses the MODIFIED response code of a tagged completion.
func modifiedSet(res *Reply) ([]uint32, bool, error) {
	if res.Status == nil || res.Status.Code != "MODIFIED" {
		return nil, false, nil
	}
	s, err := parseSet(strings.TrimSpace(res.Status.CodeArg))
	return s, true, err
}

func condstore7162() []*Scenario {
	cs := []string{"CONDSTORE"}
	csEnable := []string{"CONDSTORE", "ENABLE"}
	return []*Scenario{
		{ID: "7162-select-highestmodseq", RFC: 7162, Section: "3.1.2.1", Level: Must, Caps: cs,
			Summary: "SELECT (CONDSTORE) reports a non-zero HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, _, err = selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				return err
			}},
		{ID: "7162-highestmodseq-empty-mailbox", RFC: 7162, Section: "3.1.2.1", Level: Must, Caps: cs,
			Summary: "an empty mailbox also has a HIGHESTMODSEQ, and it is not 0",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, _, err = selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				return err
			}},
		{ID: "7162-examine-highestmodseq", RFC: 7162, Section: "3.1.8", Level: Must, Caps: cs,
			Summary: "EXAMINE (CONDSTORE) reports HIGHESTMODSEQ too",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, _, err = selectHighest(c, "EXAMINE", mb, "(CONDSTORE)")
				return err
			}},
		{ID: "7162-plain-select-highestmodseq", RFC: 7162, Section: "3.1.2.1", Level: Must, Caps: cs,
			Summary: "every successful SELECT, even without CONDSTORE, reports HIGHESTMODSEQ or NOMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				_, res, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if _, ok := highest(res.Untagged); !ok && findCode(res.Untagged, "NOMODSEQ") == nil {
					return failf("plain SELECT of a fresh mailbox: expected OK [HIGHESTMODSEQ n] or OK [NOMODSEQ], got neither: %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-nomodseq-exclusive", RFC: 7162, Section: "3.1.2.2", Level: MustNot, Caps: cs,
			Summary: "SELECT never reports both HIGHESTMODSEQ and NOMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				_, res, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if _, ok := highest(res.Untagged); ok && findCode(res.Untagged, "NOMODSEQ") != nil {
					return failf("SELECT sent both: %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-fetch-modseq", RFC: 7162, Section: "3.1.4.2", Level: Must, Caps: cs,
			Summary: "FETCH (MODSEQ) gives every message a mod-sequence between 1 and HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				m, err := modseqs(c, "1:*")
				if err != nil {
					return err
				}
				if len(m) != 3 {
					return failf("FETCH 1:* (MODSEQ) answered for %d messages, expected 3", len(m))
				}
				for seq, f := range m {
					v, _ := f.Modseq()
					if v == 0 || v > h {
						return failf("message %d has MODSEQ %d, outside 1..HIGHESTMODSEQ %d", seq, v, h)
					}
				}
				return nil
			}},
		{ID: "7162-store-raises-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "a flag change gives the message a mod-sequence above the previous HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 1 +FLAGS (\Flagged)`); err != nil {
					return err
				}
				m1, err := modseqOf(c, 1)
				if err != nil {
					return err
				}
				if m1 <= h {
					return failf("after STORE, MODSEQ %d is not above the earlier HIGHESTMODSEQ %d", m1, h)
				}
				if err := mustOK(c, `STORE 2 +FLAGS (\Flagged)`); err != nil {
					return err
				}
				m2, err := modseqOf(c, 2)
				if err != nil {
					return err
				}
				if m2 <= m1 {
					return failf("a second change got MODSEQ %d, not above the first change's %d", m2, m1)
				}
				return nil
			}},
		{ID: "7162-new-message-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "a new message gets a mod-sequence above the HIGHESTMODSEQ seen before it arrived",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				if _, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
				}); err != nil || !ok {
					return failf("the new message was never reported (%v)", err)
				}
				m, err := modseqOf(c, 2)
				if err != nil {
					return err
				}
				if m <= h {
					return failf("the new message has MODSEQ %d, not above the earlier HIGHESTMODSEQ %d", m, h)
				}
				return nil
			}},
		{ID: "7162-highestmodseq-covers-messages", RFC: 7162, Section: "3.1.2.1", Level: Must, Caps: cs,
			Summary: "HIGHESTMODSEQ is at least the mod-sequence of every message after changes",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				if err := t.OutsideStore(mb, uids[1], `+FLAGS (\Seen)`); err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "EXAMINE", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				m, err := modseqs(c, "1:*")
				if err != nil {
					return err
				}
				for seq, f := range m {
					if v, _ := f.Modseq(); v > h {
						return failf("message %d has MODSEQ %d above HIGHESTMODSEQ %d", seq, v, h)
					}
				}
				return nil
			}},
		{ID: "7162-store-answer-has-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "once enabled, the FETCH answering a STORE carries UID and MODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				res, err := doOK(c, `STORE 1 +FLAGS (\Flagged)`)
				if err != nil {
					return err
				}
				return fetchHasUIDModseq(res.Untagged, 1, "STORE")
			}},
		{ID: "7162-implicit-seen-has-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "once enabled, the flag change made by FETCH BODY[] is reported with UID and MODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 1 (BODY[])")
				if err != nil {
					return err
				}
				for _, r := range res.Untagged {
					if f, ok := r.Fetch(); ok && f.Has("FLAGS") {
						return fetchHasUIDModseq(res.Untagged, 1, "FETCH BODY[]")
					}
				}
				// The flag change may be reported in a FETCH of its own
				// after the one carrying the body.
				res2, err := doOK(c, "NOOP")
				if err != nil {
					return err
				}
				all := append(res.Untagged, res2.Untagged...)
				for _, r := range all {
					if f, ok := r.Fetch(); ok && f.Has("FLAGS") {
						return fetchHasUIDModseq([]*Response{r}, 1, "FETCH BODY[]")
					}
				}
				return failf("the \\Seen set by FETCH BODY[] was not reported with FLAGS: %s", describe(all))
			}},
		{ID: "7162-changedsince", RFC: 7162, Section: "3.1.4.1", Level: Must, Caps: cs,
			Summary: "FETCH (CHANGEDSINCE m) returns exactly the messages changed after m",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Flagged)`); err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)", h))
				if err != nil {
					return err
				}
				// The set of messages counts, not the number of FETCH
				// responses: a server may send more than one for a
				// message (an unsolicited one reporting the STORE's
				// change, then the answer), which RFC 3501 §7.4.2 allows.
				var seqs []uint32
				for _, f := range fetches(res.Untagged) {
					if !slices.Contains(seqs, f.Seq) {
						seqs = append(seqs, f.Seq)
					}
				}
				if !sameSet(seqs, []uint32{2}) {
					return failf("expected a FETCH for message 2 only, got %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-changedsince-adds-modseq", RFC: 7162, Section: "3.1.4.1", Level: Must, Caps: cs,
			Summary: "FETCH with CHANGEDSINCE includes MODSEQ in its answers without being asked",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
				if err != nil {
					return err
				}
				fs := fetches(res.Untagged)
				if len(fs) == 0 {
					return failf("FETCH (CHANGEDSINCE 1) returned nothing; every message changed after 1")
				}
				for _, f := range fs {
					if _, ok := f.Modseq(); !ok {
						return failf("FETCH without MODSEQ: %s", describe(res.Untagged))
					}
				}
				return nil
			}},
		{ID: "7162-unchangedsince-pass", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "STORE (UNCHANGEDSINCE current) changes the flags and reports no MODIFIED",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				m, err := modseqOf(c, 1)
				if err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf(`STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\Flagged)`, m))
				if err != nil {
					return err
				}
				if res.Status.Code == "MODIFIED" {
					return failf("unexpected %q", status(res))
				}
				for _, f := range fetches(res.Untagged) {
					if f.Seq == 1 && f.HasFlag(`\Flagged`) {
						if v, ok := f.Modseq(); !ok || v <= m {
							return failf("the STORE's FETCH has MODSEQ %d (present: %v), expected above %d", v, ok, m)
						}
						return nil
					}
				}
				return failf("expected * 1 FETCH (... FLAGS (\\Flagged) MODSEQ (n)), got %s", describe(res.Untagged))
			}},
		{ID: "7162-unchangedsince-modified", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "STORE (UNCHANGEDSINCE m) on a message changed after m fails with OK [MODIFIED] and changes nothing",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				m, err := modseqOf(c, 1)
				if err != nil {
					return err
				}
				if err := t.OutsideStore(mb, uids[0], `+FLAGS (\Answered)`); err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf(`STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\Flagged)`, m))
				if err != nil {
					return err
				}
				set, ok, err := modifiedSet(res)
				if err != nil {
					return err
				}
				if !ok || !slices.Equal(set, []uint32{1}) {
					return failf("expected OK [MODIFIED 1], got %q", status(res))
				}
				return expectNotFlagged(c, 1)
			}},
		{ID: "7162-unchangedsince-partial", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "STORE (UNCHANGEDSINCE) changes the unmodified messages and lists only the others in MODIFIED",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				m, err := modseqs(c, "1:2")
				if err != nil {
					return err
				}
				m1, _ := m[1].Modseq()
				m2, _ := m[2].Modseq()
				if err := t.OutsideStore(mb, uids[1], `+FLAGS (\Answered)`); err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf(`STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\Flagged)`, max(m1, m2)))
				if err != nil {
					return err
				}
				set, ok, err := modifiedSet(res)
				if err != nil {
					return err
				}
				if !ok || !slices.Equal(set, []uint32{2}) {
					return failf("expected OK [MODIFIED 2], got %q", status(res))
				}
				if err := expectNotFlagged(c, 2); err != nil {
					return err
				}
				return expectFlagged(c, 1)
			}},
		{ID: "7162-unchangedsince-zero", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "STORE (UNCHANGEDSINCE 0) always fails for an existing message: OK [MODIFIED], no change",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				res, err := doOK(c, `STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\Flagged)`)
				if err != nil {
					return err
				}
				set, ok, err := modifiedSet(res)
				if err != nil {
					return err
				}
				if !ok || !slices.Equal(set, []uint32{1}) {
					return failf("expected OK [MODIFIED 1], got %q", status(res))
				}
				return expectNotFlagged(c, 1)
			}},
		{ID: "7162-uid-store-modified-uids", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "UID STORE (UNCHANGEDSINCE) lists UIDs, not sequence numbers, in MODIFIED",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 1 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				if err := mustOK(c, "EXPUNGE"); err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf(`UID STORE %d (UNCHANGEDSINCE 0) +FLAGS (\Flagged)`, uids[2]))
				if err != nil {
					return err
				}
				set, ok, err := modifiedSet(res)
				if err != nil {
					return err
				}
				if !ok || !slices.Equal(set, []uint32{uids[2]}) {
					return failf("expected OK [MODIFIED %d] (the UID), got %q", uids[2], status(res))
				}
				return nil
			}},
		{ID: "7162-search-modseq", RFC: 7162, Section: "3.1.5", Level: Must, Caps: cs,
			Summary: "SEARCH MODSEQ m finds the messages changed since m and ends with (MODSEQ highest-of-them)",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2:3 +FLAGS.SILENT (\Flagged)`); err != nil {
					return err
				}
				m, err := modseqs(c, "2:3")
				if err != nil {
					return err
				}
				m2, _ := m[2].Modseq()
				m3, _ := m[3].Modseq()
				res, err := doOK(c, fmt.Sprintf("SEARCH MODSEQ %d", h+1))
				if err != nil {
					return err
				}
				s, err := search(res.Untagged)
				if err != nil {
					return err
				}
				if !sameSet(s.Nums, []uint32{2, 3}) || !s.HasModseq || s.Modseq != max(m2, m3) {
					return failf("expected * SEARCH 2 3 (MODSEQ %d), got %s", max(m2, m3), describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-search-modseq-empty", RFC: 7162, Section: "3.1.6", Level: MustNot, Caps: cs,
			Summary: "an empty SEARCH MODSEQ result carries no (MODSEQ n)",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf("SEARCH MODSEQ %d", h+1))
				if err != nil {
					return err
				}
				s, err := search(res.Untagged)
				if err != nil {
					return err
				}
				if len(s.Nums) != 0 || s.HasModseq {
					return failf("expected an empty * SEARCH, got %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-uid-search-modseq", RFC: 7162, Section: "3.1.5", Level: Must, Caps: cs,
			Summary: "UID SEARCH MODSEQ returns UIDs followed by (MODSEQ n)",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Flagged)`); err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf("UID SEARCH MODSEQ %d", h+1))
				if err != nil {
					return err
				}
				s, err := search(res.Untagged)
				if err != nil {
					return err
				}
				if !sameSet(s.Nums, []uint32{uids[1]}) || !s.HasModseq {
					return failf("expected * SEARCH %d (MODSEQ n), got %s", uids[1], describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-status-highestmodseq", RFC: 7162, Section: "3.1.7", Level: Must, Caps: cs,
			Summary: "STATUS (HIGHESTMODSEQ) equals the HIGHESTMODSEQ that SELECT reports",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "EXAMINE", mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				c2, err := t.Login()
				if err != nil {
					return err
				}
				return expectStatus(c2, mb, "HIGHESTMODSEQ", h)
			}},
		{ID: "7162-status-highestmodseq-grows", RFC: 7162, Section: "3.1.7", Level: Must, Caps: cs,
			Summary: "STATUS (HIGHESTMODSEQ) grows after a change",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				h1, err := statusNumber(c, mb, "HIGHESTMODSEQ")
				if err != nil {
					return err
				}
				if err := t.OutsideStore(mb, uids[0], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				h2, err := statusNumber(c, mb, "HIGHESTMODSEQ")
				if err != nil {
					return err
				}
				if h1 == 0 || h2 <= h1 {
					return failf("HIGHESTMODSEQ went from %d to %d across a flag change", h1, h2)
				}
				return nil
			}},
		{ID: "7162-changedsince-zero-bad", RFC: 7162, Section: "3.1.4.1", Level: Must, Caps: cs,
			Summary: "CHANGEDSINCE 0 is a syntax error (mod-sequences are positive): BAD",
			Run: func(t *T) error {
				return selectedBAD(t, "(CONDSTORE)", "FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
			}},
		{ID: "7162-changedsince-syntax-bad", RFC: 7162, Section: "3.1.4.1", Level: Must, Caps: cs,
			Summary: "CHANGEDSINCE with a non-number is answered BAD",
			Run: func(t *T) error {
				return selectedBAD(t, "(CONDSTORE)", "FETCH 1:* (FLAGS) (CHANGEDSINCE abc)")
			}},
		{ID: "7162-unchangedsince-syntax-bad", RFC: 7162, Section: "3.1.3", Level: Must, Caps: cs,
			Summary: "UNCHANGEDSINCE with a non-number is answered BAD",
			Run: func(t *T) error {
				return selectedBAD(t, "(CONDSTORE)", `STORE 1 (UNCHANGEDSINCE abc) +FLAGS (\Flagged)`)
			}},
		{ID: "7162-enabling-enable", RFC: 7162, Section: "3.1", Level: Must, Caps: csEnable,
			Summary: "after ENABLE CONDSTORE, unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "ENABLE CONDSTORE", "SELECT", "", "") }},
		{ID: "7162-enabling-select", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after SELECT (CONDSTORE), unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "", "SELECT", "(CONDSTORE)", "") }},
		{ID: "7162-enabling-examine", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after EXAMINE (CONDSTORE), unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "", "EXAMINE", "(CONDSTORE)", "") }},
		{ID: "7162-enabling-fetch-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after FETCH (MODSEQ), unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "", "SELECT", "", "FETCH 1 (MODSEQ)") }},
		{ID: "7162-enabling-changedsince", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after FETCH (CHANGEDSINCE), unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "", "SELECT", "", "FETCH 1 (FLAGS) (CHANGEDSINCE 1)") }},
		{ID: "7162-enabling-unchangedsince", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after STORE (UNCHANGEDSINCE), unsolicited FETCH responses carry UID and MODSEQ",
			Run: func(t *T) error {
				return enabling(t, "", "SELECT", "", `STORE 1 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\Seen)`)
			}},
		{ID: "7162-enabling-search-modseq", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after SEARCH MODSEQ, unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "", "SELECT", "", "SEARCH MODSEQ 1") }},
		{ID: "7162-enabling-status", RFC: 7162, Section: "3.1", Level: Must, Caps: cs,
			Summary: "after STATUS (HIGHESTMODSEQ), unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "STATUS MBOX (HIGHESTMODSEQ)", "SELECT", "", "") }},
		{ID: "7162-enabling-enable-qresync", RFC: 7162, Section: "3.2.3", Level: Must, Caps: []string{"QRESYNC", "ENABLE"},
			Summary: "after ENABLE QRESYNC, unsolicited FETCH responses carry UID and MODSEQ",
			Run:     func(t *T) error { return enabling(t, "ENABLE QRESYNC", "SELECT", "", "") }},
	}
}

// fetchHasUIDModseq checks the FETCH for seq among rs for UID and MODSEQ.
func fetchHasUIDModseq(rs []*Response, seq uint32, after string) error {
	for _, r := range rs {
		f, ok := r.Fetch()
		if !ok || f.Seq != seq {
			continue
		}
		_, hasUID := f.UID()
		_, hasMod := f.Modseq()
		if !hasUID || !hasMod {
			return failf("FETCH after %s lacks UID or MODSEQ: %q", after, r.Line)
		}
		return nil
	}
	return failf("no FETCH for message %d after %s: %s", seq, after, describe(rs))
}

// expectNotFlagged / expectFlagged check \Flagged on message seq.
func expectNotFlagged(c *Client, seq uint32) error { return expectFlag(c, seq, false) }
func expectFlagged(c *Client, seq uint32) error    { return expectFlag(c, seq, true) }

func expectFlag(c *Client, seq uint32, want bool) error {
	res, err := doOK(c, fmt.Sprintf("FETCH %d (FLAGS)", seq))
	if err != nil {
		return err
	}
	for _, f := range fetches(res.Untagged) {
		if f.Seq == seq && f.Has("FLAGS") {
			if f.HasFlag(`\Flagged`) != want {
				return failf("message %d: \\Flagged is %v, expected %v (%s)", seq, !want, want, describe(res.Untagged))
			}
			return nil
		}
	}
	return failf("FETCH %d (FLAGS): no FLAGS in %s", seq, describe(res.Untagged))
}

// statusNumber asks STATUS for one item.
func statusNumber(c *Client, mailbox, item string) (uint64, error) {
	res, err := doOK(c, "STATUS "+quote(mailbox)+" ("+item+")")
	if err != nil {
		return 0, err
	}
	st := find(res.Untagged, "STATUS")
	if st == nil {
		return 0, failf("STATUS: no untagged STATUS; got %s", describe(res.Untagged))
	}
	_, items, err := st.statusItems()
	if err != nil {
		return 0, err
	}
	v, ok := items[item]
	if !ok {
		return 0, failf("STATUS without %s: %q", item, st.Line)
	}
	return v, nil
}

// selectedBAD selects a fresh two-message mailbox and requires cmd to be
// answered BAD.
func selectedBAD(t *T, selectParams, cmd string) error {
	mb, _, err := t.Mailbox(2)
	if err != nil {
		return err
	}
	c, _, err := t.loginSelect(mb, selectParams)
	if err != nil {
		return err
	}
	return expectBAD(c, cmd)
}
