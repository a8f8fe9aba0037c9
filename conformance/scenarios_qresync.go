package conformance

import (
	"fmt"
	"slices"
)

// resync is the state a QRESYNC client keeps between sessions.
type resync struct {
	mb       string
	uids     []uint32
	validity uint64
	modseq   uint64
}

// qresyncFixture makes a mailbox of n messages and records the UIDVALIDITY
// and HIGHESTMODSEQ a client would have remembered, before any change.
func qresyncFixture(t *T, n int) (*resync, error) {
	mb, uids, err := t.Mailbox(n)
	if err != nil {
		return nil, err
	}
	c, err := t.setupClient()
	if err != nil {
		return nil, err
	}
	v, err := statusNumber(c, mb, "UIDVALIDITY")
	if err != nil {
		return nil, err
	}
	h, err := statusNumber(c, mb, "HIGHESTMODSEQ")
	if err != nil {
		return nil, err
	}
	if h == 0 {
		return nil, failf("STATUS HIGHESTMODSEQ of %s is 0: the mailbox keeps no mod-sequences", mb)
	}
	return &resync{mb: mb, uids: uids, validity: v, modseq: h}, nil
}

// loginQresync logs in and enables QRESYNC.
func (t *T) loginQresync() (*Client, error) {
	c, err := t.Login()
	if err != nil {
		return nil, err
	}
	res, err := doOK(c, "ENABLE QRESYNC")
	if err != nil {
		return nil, err
	}
	if names, _ := enabledList(res.Untagged); !slices.Contains(names, "QRESYNC") {
		return nil, failf("ENABLE QRESYNC: expected * ENABLED QRESYNC, got %s", describe(res.Untagged))
	}
	return c, nil
}

// qresyncSelect enables QRESYNC and selects with the given QRESYNC
// parameter list (inside "(QRESYNC (...))").
func (t *T) qresyncSelect(mb, params string) (*Reply, error) {
	c, err := t.loginQresync()
	if err != nil {
		return nil, err
	}
	return selectOK(c, "SELECT", mb, "(QRESYNC ("+params+"))")
}

// changeForResync expunges the message at index gone and flags the one at
// index flagged (-1 for none) from outside.
func (t *T) changeForResync(r *resync, flagged int, gone ...int) error {
	if flagged >= 0 {
		if err := t.OutsideStore(r.mb, r.uids[flagged], `+FLAGS (\Flagged)`); err != nil {
			return err
		}
	}
	var g []uint32
	for _, i := range gone {
		g = append(g, r.uids[i])
	}
	if len(g) > 0 {
		return t.OutsideExpunge(r.mb, g...)
	}
	return nil
}

// checkVanished requires every UID of want in the VANISHED (EARLIER)
// responses among rs and none of notWant.
func checkVanished(rs []*Response, want, notWant []uint32) error {
	got, err := vanishedUIDs(rs, true)
	if err != nil {
		return err
	}
	for _, u := range want {
		if !slices.Contains(got, u) {
			return failf("VANISHED (EARLIER) lacks the expunged UID %d; got %s", u, describe(findAll(rs, "VANISHED")))
		}
	}
	for _, u := range notWant {
		if slices.Contains(got, u) {
			return failf("VANISHED (EARLIER) lists UID %d, which was not expunged or not asked about; got %s", u, describe(findAll(rs, "VANISHED")))
		}
	}
	return nil
}

func isNewVanished(r *Response) bool {
	if !r.Untagged("VANISHED") {
		return false
	}
	earlier, _, _ := r.vanished()
	return !earlier
}

func qresync7162() []*Scenario {
	qr := []string{"QRESYNC", "ENABLE"}
	return []*Scenario{
		{ID: "7162-enable-qresync", RFC: 7162, Section: "3.2.3", Level: Must, Caps: qr,
			Summary: "ENABLE QRESYNC answers * ENABLED QRESYNC",
			Run: func(t *T) error {
				_, err := t.loginQresync()
				return err
			}},
		{ID: "7162-qresync-implies-condstore", RFC: 7162, Section: "3.2.3", Level: Must, Caps: qr,
			Summary: "ENABLE QRESYNC also enables CONDSTORE: plain SELECT has HIGHESTMODSEQ, STORE answers carry MODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				if _, _, err := selectHighest(c, "SELECT", mb, ""); err != nil {
					return err
				}
				res, err := doOK(c, `STORE 1 +FLAGS (\Flagged)`)
				if err != nil {
					return err
				}
				return fetchHasUIDModseq(res.Untagged, 1, "STORE")
			}},
		{ID: "7162-qresync-param-needs-enable", RFC: 7162, Section: "3.2.5", Level: Must, Caps: []string{"QRESYNC"},
			Summary: "SELECT with the QRESYNC parameter before ENABLE QRESYNC is answered BAD",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				return expectBAD(c, fmt.Sprintf("SELECT %s (QRESYNC (%d %d))", quote(r.mb), r.validity, r.modseq))
			}},
		{ID: "7162-qresync-vanished-earlier", RFC: 7162, Section: "3.2.5.1", Level: Must, Caps: qr,
			Summary: "SELECT (QRESYNC (uidvalidity modseq)) reports expunged UIDs in VANISHED (EARLIER), and only those",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 4)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, 2, 1); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d", r.validity, r.modseq))
				if err != nil {
					return err
				}
				return checkVanished(res.Untagged, []uint32{r.uids[1]}, []uint32{r.uids[0], r.uids[2], r.uids[3]})
			}},
		{ID: "7162-qresync-changed-fetch", RFC: 7162, Section: "3.2.5.1", Level: Must, Caps: qr,
			Summary: "SELECT (QRESYNC ...) sends FETCH with UID, FLAGS and MODSEQ for messages changed since",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 4)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, 2, 1); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d", r.validity, r.modseq))
				if err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if u, _ := f.UID(); u == r.uids[2] {
						if _, ok := f.Modseq(); !ok || !f.HasFlag(`\Flagged`) {
							return failf("the FETCH for the changed message lacks MODSEQ or the new flag: %s", describe(res.Untagged))
						}
						return nil
					}
				}
				return failf("no FETCH (UID %d ...) for the message flagged since; got %s", r.uids[2], describe(res.Untagged))
			}},
		{ID: "7162-qresync-vanished-last-uid", RFC: 7162, Section: "3.2.5.1", Level: Must, Caps: qr,
			Summary: "VANISHED (EARLIER) includes the highest UID when the last message was expunged",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 3)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, -1, 2); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d", r.validity, r.modseq))
				if err != nil {
					return err
				}
				return checkVanished(res.Untagged, []uint32{r.uids[2]}, []uint32{r.uids[0], r.uids[1]})
			}},
		{ID: "7162-qresync-uidvalidity-mismatch", RFC: 7162, Section: "3.2.5.1", Level: Must, Caps: qr,
			Summary: "with a wrong UIDVALIDITY the QRESYNC data is ignored: no VANISHED, no change FETCH",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 3)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, 2, 1); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d", r.validity+1, r.modseq))
				if err != nil {
					return err
				}
				if v := find(res.Untagged, "VANISHED"); v != nil {
					return failf("VANISHED sent for a mismatched UIDVALIDITY: %q", v.Line)
				}
				if fs := fetches(res.Untagged); len(fs) > 0 {
					return failf("FETCH sent for a mismatched UIDVALIDITY: %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-qresync-known-uids", RFC: 7162, Section: "3.2.5.1", Level: Should, Caps: qr,
			Summary: "with known-uids, VANISHED (EARLIER) reports the expunged known UIDs and no others",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 4)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, -1, 0, 1); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d %s", r.validity, r.modseq, uidList(r.uids[1:])))
				if err != nil {
					return err
				}
				return checkVanished(res.Untagged, []uint32{r.uids[1]}, []uint32{r.uids[0], r.uids[2], r.uids[3]})
			}},
		{ID: "7162-qresync-seq-match", RFC: 7162, Section: "3.2.5.2", Level: Must, Caps: qr,
			Summary: "SELECT with known-uids and sequence match data is accepted and still reports the expunge",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 4)
				if err != nil {
					return err
				}
				if err := t.changeForResync(r, -1, 1); err != nil {
					return err
				}
				res, err := t.qresyncSelect(r.mb, fmt.Sprintf("%d %d %s (1,2,3,4 %s)", r.validity, r.modseq, uidList(r.uids), uidList(r.uids)))
				if err != nil {
					return err
				}
				return checkVanished(res.Untagged, []uint32{r.uids[1]}, []uint32{r.uids[0], r.uids[2], r.uids[3]})
			}},
		{ID: "7162-closed-on-select", RFC: 7162, Section: "3.2.11", Level: Must, Caps: qr,
			Summary: "SELECT while a mailbox is selected sends OK [CLOSED] before the new mailbox's data",
			Run:     func(t *T) error { return closedOn(t, "SELECT") }},
		{ID: "7162-closed-on-examine", RFC: 7162, Section: "3.2.11", Level: Must, Caps: qr,
			Summary: "EXAMINE while a mailbox is selected sends OK [CLOSED] before the new mailbox's data",
			Run:     func(t *T) error { return closedOn(t, "EXAMINE") }},
		{ID: "7162-expunge-sends-vanished", RFC: 7162, Section: "3.2.7", Level: Must, Caps: qr,
			Summary: "with QRESYNC enabled, EXPUNGE answers VANISHED with the UIDs and no EXPUNGE",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				res, err := doOK(c, "EXPUNGE")
				if err != nil {
					return err
				}
				return vanishedNotExpunge(res.Untagged, uids[1])
			}},
		{ID: "7162-outside-expunge-vanished", RFC: 7162, Section: "3.2.10", Level: Must, Caps: qr,
			Summary: "with QRESYNC enabled, an expunge made elsewhere is reported as VANISHED, not EXPUNGE",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
					return err
				}
				if err := t.OutsideExpunge(mb, uids[0]); err != nil {
					return err
				}
				got, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return isExpunge(r) || isNewVanished(r) })
				})
				if err != nil {
					return err
				}
				if !ok {
					return failf("the outside expunge was never reported (NOOP for %v gave %s)", t.cfg.EventWait, describe(got))
				}
				return vanishedNotExpunge(got, uids[0])
			}},
		{ID: "7162-uid-fetch-vanished", RFC: 7162, Section: "3.2.6", Level: Must, Caps: qr,
			Summary: "UID FETCH (CHANGEDSINCE m VANISHED) reports expunged UIDs in VANISHED (EARLIER) and changed messages",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(4)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				_, h, err := selectHighest(c, "SELECT", mb, "")
				if err != nil {
					return err
				}
				if err := t.OutsideStore(mb, uids[2], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				if err := t.OutsideExpunge(mb, uids[1]); err != nil {
					return err
				}
				if _, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return isExpunge(r) || isNewVanished(r) })
				}); err != nil || !ok {
					return failf("the outside expunge was never reported (%v)", err)
				}
				res, err := doOK(c, fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", h))
				if err != nil {
					return err
				}
				if err := checkVanished(res.Untagged, []uint32{uids[1]}, []uint32{uids[0], uids[2], uids[3]}); err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if u, _ := f.UID(); u == uids[2] && f.HasFlag(`\Flagged`) {
						return nil
					}
				}
				return failf("no FETCH for the changed UID %d: %s", uids[2], describe(res.Untagged))
			}},
		{ID: "7162-vanished-needs-changedsince", RFC: 7162, Section: "3.2.6", Level: Must, Caps: qr,
			Summary: "the VANISHED modifier without CHANGEDSINCE is answered BAD",
			Run: func(t *T) error {
				return qresyncSelectedBAD(t, "UID FETCH 1:* (FLAGS) (VANISHED)")
			}},
		{ID: "7162-vanished-needs-uid-fetch", RFC: 7162, Section: "3.2.6", Level: Must, Caps: qr,
			Summary: "the VANISHED modifier on a non-UID FETCH is answered BAD",
			Run: func(t *T) error {
				return qresyncSelectedBAD(t, "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
			}},
		{ID: "7162-vanished-needs-enable", RFC: 7162, Section: "3.2.6", Level: Must, Caps: []string{"QRESYNC"},
			Summary: "the VANISHED modifier before ENABLE QRESYNC is answered BAD",
			Run: func(t *T) error {
				return selectedBAD(t, "(CONDSTORE)", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
			}},
		{ID: "7162-qresync-modseq-zero-bad", RFC: 7162, Section: "3.2.5", Level: Must, Caps: qr,
			Summary: "a QRESYNC parameter with mod-sequence 0 is a syntax error: BAD",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 1)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				return expectBAD(c, fmt.Sprintf("SELECT %s (QRESYNC (%d 0))", quote(r.mb), r.validity))
			}},
		{ID: "7162-qresync-syntax-bad", RFC: 7162, Section: "3.2.5", Level: Must, Caps: qr,
			Summary: "a malformed QRESYNC parameter is answered BAD",
			Run: func(t *T) error {
				r, err := qresyncFixture(t, 1)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				return expectBAD(c, fmt.Sprintf("SELECT %s (QRESYNC (abc))", quote(r.mb)))
			}},
		{ID: "7162-no-vanished-without-qresync", RFC: 7162, Section: "3.2.7", Level: MustNot, Caps: []string{"QRESYNC"},
			Summary: "a client that did not enable QRESYNC gets EXPUNGE, never VANISHED",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "(CONDSTORE)")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				res, err := doOK(c, "EXPUNGE")
				if err != nil {
					return err
				}
				if v := find(res.Untagged, "VANISHED"); v != nil {
					return failf("VANISHED sent to a client without QRESYNC: %q", v.Line)
				}
				if i := indexOf(res.Untagged, isExpunge); i < 0 {
					return failf("EXPUNGE sent no * 2 EXPUNGE: %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "7162-expunge-raises-highestmodseq", RFC: 7162, Section: "3.2.4", Level: Must, Caps: qr,
			Summary: "with QRESYNC, an expunge raises HIGHESTMODSEQ so that a later resync can find it",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, err := t.loginQresync()
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				c2, err := t.Login()
				if err != nil {
					return err
				}
				h1, err := statusNumber(c2, mb, "HIGHESTMODSEQ")
				if err != nil {
					return err
				}
				if err := mustOK(c, "EXPUNGE"); err != nil {
					return err
				}
				h2, err := statusNumber(c2, mb, "HIGHESTMODSEQ")
				if err != nil {
					return err
				}
				if h2 <= h1 {
					return failf("HIGHESTMODSEQ went from %d to %d across an EXPUNGE", h1, h2)
				}
				return nil
			}},
		{ID: "7162-no-vanished-during-fetch", RFC: 7162, Section: "3.2.10", Level: MustNot, Caps: qr,
			Summary: "no VANISHED is sent while a non-UID FETCH runs; the outside expunge is reported later",
			Run: func(t *T) error {
				return noExpungeDuringWith(t, "FETCH 1:* (FLAGS)", "VANISHED", "QRESYNC", "")
			}},
	}
}

// closedOn selects mailbox A, then verb mailbox B, and checks [CLOSED].
func closedOn(t *T, verb string) error {
	a, _, err := t.Mailbox(1)
	if err != nil {
		return err
	}
	b, _, err := t.Mailbox(2)
	if err != nil {
		return err
	}
	c, err := t.loginQresync()
	if err != nil {
		return err
	}
	if _, err := selectOK(c, "SELECT", a, ""); err != nil {
		return err
	}
	res, err := selectOK(c, verb, b, "")
	if err != nil {
		return err
	}
	closed := indexOf(res.Untagged, func(r *Response) bool { return r.Untagged("OK") && r.Code == "CLOSED" })
	if closed < 0 {
		return failf("no * OK [CLOSED] when %s replaced the selected mailbox; got %s", verb, describe(res.Untagged))
	}
	data := indexOf(res.Untagged, func(r *Response) bool { return r.Untagged("FLAGS") || r.Untagged("EXISTS") })
	if data >= 0 && data < closed {
		return failf("[CLOSED] came after the new mailbox's %q", res.Untagged[data].Line)
	}
	return nil
}

// vanishedNotExpunge requires uid in a VANISHED (not EARLIER) response
// and no EXPUNGE among rs.
func vanishedNotExpunge(rs []*Response, uid uint32) error {
	if i := indexOf(rs, isExpunge); i >= 0 {
		return failf("EXPUNGE sent to a QRESYNC client: %q", rs[i].Line)
	}
	got, err := vanishedUIDs(rs, false)
	if err != nil {
		return err
	}
	if !slices.Contains(got, uid) {
		return failf("expected * VANISHED %d, got %s", uid, describe(rs))
	}
	return nil
}

// qresyncSelectedBAD enables QRESYNC, selects a fresh mailbox and requires
// cmd to be answered BAD.
func qresyncSelectedBAD(t *T, cmd string) error {
	mb, _, err := t.Mailbox(2)
	if err != nil {
		return err
	}
	c, err := t.loginQresync()
	if err != nil {
		return err
	}
	if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
		return err
	}
	return expectBAD(c, cmd)
}
