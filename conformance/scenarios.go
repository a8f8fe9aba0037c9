package conformance

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scenarios returns every scenario, grouped by RFC, in a stable order.
func Scenarios() []*Scenario {
	var all []*Scenario
	for _, group := range [][]*Scenario{
		base3501(), recent3501(), enable5161(), idle2177(), compress4978(),
		condstore7162(), qresync7162(), notify5465(), notifyFilters5465(),
		uidplus4315(), move6851(), namespace2342(), literal7888(), esearch4731(), searchres5182(),
		within5032(), listext5258(),
		context5267(),
		binary3516(),
		metadata5464(), filters5466(),
		convert5259(),
		catenate4469(), urlauth4467(), multiappend3502(),
		sort5256(), sortDisplay5957(), esort5267(), contextSort5267(), i18n5255(), i18nLevel5255(), thread5256(),
		lemonade5550(),
	} {
		all = append(all, group...)
	}
	return all
}

// RFC is an RFC the suite covers.
type RFC struct {
	Number int
	Title  string
}

// RFCs lists the RFCs the suite covers, in report order, with their
// titles. The per-RFC table and the JUnit report follow it; a scenario of
// an RFC missing here still gets its own group there (reportRFCs), with
// the number for a title.
var RFCs = []RFC{
	{3501, "IMAP4rev1 (base behaviours)"},
	{5161, "ENABLE"},
	{2177, "IDLE"},
	{4978, "COMPRESS"},
	{7162, "CONDSTORE and QRESYNC"},
	{5465, "NOTIFY"},
	{4315, "UIDPLUS"},
	{6851, "MOVE"},
	{2342, "NAMESPACE"},
	{7888, "LITERAL+ (non-synchronising literals)"},
	{4731, "ESEARCH"},
	{5182, "SEARCHRES"},
	{5032, "WITHIN"},
	{5258, "LIST-EXTENDED"},
	{5267, "CONTEXT=SEARCH, CONTEXT=SORT, ESORT"},
	{3516, "BINARY"},
	{5464, "METADATA"},
	{5466, "FILTERS"},
	{5259, "CONVERT"},
	{4469, "CATENATE"},
	{4467, "URLAUTH"},
	{3502, "MULTIAPPEND"},
	{5256, "SORT and THREAD"},
	{5957, "SORT=DISPLAY"},
	{5255, "I18NLEVEL and LANGUAGE"},
	{5550, "Lemonade profile (report)"},
}

// pollNoop sends NOOP until done accepts everything received so far or
// EventWait passes. A server is allowed to notice outside changes a little
// late (polling proxies, delayed notifications), but it must notice them.
func (t *T) pollNoop(c *Client, done func(all []*Response) bool) ([]*Response, bool, error) {
	var all []*Response
	deadline := time.Now().Add(t.cfg.EventWait)
	for {
		res, err := c.Do("NOOP")
		if err != nil {
			return all, false, err
		}
		all = append(all, res.Untagged...)
		if done(all) {
			return all, true, nil
		}
		if time.Now().After(deadline) {
			return all, false, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitEvent waits, without sending anything, for a response accepted by
// match; it returns everything read.
func (t *T) waitEvent(c *Client, match func(*Response) bool) ([]*Response, bool, error) {
	return c.WaitFor(t.cfg.EventWait, match)
}

// selectOK selects mailbox (SELECT or EXAMINE with optional parameters)
// and requires OK.
func selectOK(c *Client, verb, mailbox, params string) (*Reply, error) {
	cmd := verb + " " + quote(mailbox)
	if params != "" {
		cmd += " " + params
	}
	return doOK(c, cmd)
}

// loginSelect logs in to the target and selects mailbox.
func (t *T) loginSelect(mailbox, params string) (*Client, *Reply, error) {
	c, err := t.Login()
	if err != nil {
		return nil, nil, err
	}
	res, err := selectOK(c, "SELECT", mailbox, params)
	return c, res, err
}

func isExpunge(r *Response) bool { return r.Tag == "*" && r.Name == "EXPUNGE" && r.HasNum }

func base3501() []*Scenario {
	return []*Scenario{
		{ID: "3501-greeting", RFC: 3501, Section: "7.1", Level: Must,
			Summary: "the server greets with an untagged OK or PREAUTH",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				if g := c.Greeting; g.Tag != "*" || (g.Name != "OK" && g.Name != "PREAUTH") {
					return failf("expected an untagged OK or PREAUTH greeting, got %q", g.Line)
				}
				return nil
			}},
		{ID: "3501-capability", RFC: 3501, Section: "6.1.1", Level: Must,
			Summary: "CAPABILITY answers an untagged CAPABILITY listing IMAP4rev1, then OK",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				caps, err := capabilities(c)
				if err != nil {
					return err
				}
				if !caps["IMAP4REV1"] {
					return failf("CAPABILITY does not list IMAP4rev1")
				}
				return nil
			}},
		{ID: "3501-login-wrong-password", RFC: 3501, Section: "6.2.3", Level: Must,
			Summary: "LOGIN with a wrong password fails with NO and leaves the session unauthenticated",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				res, err := c.Do("LOGIN " + quote(t.cfg.User) + " " + quote(t.cfg.Pass+"-wrong"))
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" {
					return failf("expected NO for a wrong password, got %q", status(res))
				}
				res, err = c.Do("SELECT INBOX")
				if err != nil {
					return err
				}
				if res.OK() {
					return failf("SELECT succeeded after a failed LOGIN")
				}
				return nil
			}},
		// SHOULD, not MUST NOT: RFC 3501 section 3 has no RFC 2119
		// keyword for it, "It is a protocol error for the client to
		// attempt a command while the connection is in an inappropriate
		// state, and the server will respond with a BAD or NO (depending
		// upon server implementation) command completion result." The
		// grammar does not encode states, so a SELECT before login
		// parses.
		{ID: "3501-select-before-login", RFC: 3501, Section: "3", Level: Should,
			Summary: "SELECT is refused in the not-authenticated state",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				res, err := c.Do("SELECT INBOX")
				if err != nil {
					return err
				}
				if res.OK() {
					return failf("SELECT before login was accepted: %q", status(res))
				}
				return nil
			}},
		{ID: "3501-select-responses", RFC: 3501, Section: "6.3.1", Level: Must,
			Summary: "SELECT sends FLAGS, EXISTS, RECENT, UIDVALIDITY, UIDNEXT, PERMANENTFLAGS and OK [READ-WRITE]",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				_, res, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				var missing []string
				if find(res.Untagged, "FLAGS") == nil {
					missing = append(missing, "FLAGS")
				}
				if e := find(res.Untagged, "EXISTS"); e == nil {
					missing = append(missing, "EXISTS")
				} else if e.Num != 2 {
					return failf("EXISTS says %d messages, the mailbox holds 2", e.Num)
				}
				if find(res.Untagged, "RECENT") == nil {
					missing = append(missing, "RECENT")
				}
				for _, code := range []string{"UIDVALIDITY", "UIDNEXT", "PERMANENTFLAGS"} {
					if findCode(res.Untagged, code) == nil {
						missing = append(missing, "OK ["+code+"]")
					}
				}
				if res.Status.Code != "READ-WRITE" {
					missing = append(missing, "tagged OK [READ-WRITE]")
				}
				if len(missing) > 0 {
					return failf("SELECT lacks %s; got %s / %s", strings.Join(missing, ", "), describe(res.Untagged), status(res))
				}
				return nil
			}},
		{ID: "3501-examine-read-only", RFC: 3501, Section: "6.3.2", Level: Must,
			Summary: "EXAMINE completes with OK [READ-ONLY]",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := selectOK(c, "EXAMINE", mb, "")
				if err != nil {
					return err
				}
				if res.Status.Code != "READ-ONLY" {
					return failf("expected OK [READ-ONLY], got %q", status(res))
				}
				return nil
			}},
		{ID: "3501-fetch-body", RFC: 3501, Section: "6.4.5", Level: Must,
			Summary: "FETCH BODY.PEEK[] returns the stored message byte for byte, RFC822.SIZE its length",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
				if err != nil {
					return err
				}
				want := testMessage(mb, 1, 0)
				for _, f := range fetches(res.Untagged) {
					body, ok := f.Bytes("BODY[]")
					if !ok {
						continue
					}
					if string(body) != string(want) {
						return failf("BODY[] differs from the appended message (%d bytes, expected %d)", len(body), len(want))
					}
					if size, ok := f.Number("RFC822.SIZE"); !ok || size != uint64(len(want)) {
						return failf("RFC822.SIZE is %d (present: %v), expected %d", size, ok, len(want))
					}
					return nil
				}
				return failf("no FETCH response with BODY[]; got %s", describe(res.Untagged))
			}},
		{ID: "3501-fetch-sets-seen", RFC: 3501, Section: "6.4.5", Level: Must,
			Summary: "FETCH BODY[] sets \\Seen on a read-write mailbox",
			Run:     func(t *T) error { return fetchSeen(t, "BODY[]", true) }},
		{ID: "3501-fetch-peek-keeps-unseen", RFC: 3501, Section: "6.4.5", Level: MustNot,
			Summary: "FETCH BODY.PEEK[] does not set \\Seen",
			Run:     func(t *T) error { return fetchSeen(t, "BODY.PEEK[]", false) }},
		{ID: "3501-store-returns-flags", RFC: 3501, Section: "6.4.6", Level: Must,
			Summary: "STORE +FLAGS answers an untagged FETCH with the new flags",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, `STORE 2 +FLAGS (\Flagged)`)
				if err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if f.Seq == 2 && f.HasFlag(`\Flagged`) {
						return nil
					}
				}
				return failf("expected * 2 FETCH (FLAGS (... \\Flagged ...)), got %s", describe(res.Untagged))
			}},
		{ID: "3501-store-silent", RFC: 3501, Section: "6.4.6", Level: Should,
			Summary: "STORE +FLAGS.SILENT does not answer with the new flags",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, `STORE 2 +FLAGS.SILENT (\Flagged)`)
				if err != nil {
					return err
				}
				if fs := fetches(res.Untagged); len(fs) > 0 {
					return failf("STORE .SILENT was answered with %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "3501-search-flags", RFC: 3501, Section: "6.4.4", Level: Must,
			Summary: "SEARCH FLAGGED and UNFLAGGED return exactly the matching sequence numbers",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(4)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2,4 +FLAGS.SILENT (\Flagged)`); err != nil {
					return err
				}
				for _, q := range []struct {
					key  string
					want []uint32
				}{{"FLAGGED", []uint32{2, 4}}, {"UNFLAGGED", []uint32{1, 3}}} {
					res, err := doOK(c, "SEARCH "+q.key)
					if err != nil {
						return err
					}
					s, err := search(res.Untagged)
					if err != nil {
						return err
					}
					if !sameSet(s.Nums, q.want) {
						return failf("SEARCH %s returned %v, expected %v", q.key, s.Nums, q.want)
					}
				}
				return nil
			}},
		{ID: "3501-uid-fetch-includes-uid", RFC: 3501, Section: "6.4.8", Level: Must,
			Summary: "every FETCH answering UID FETCH carries the UID item, asked for or not",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, "UID FETCH 1:* (FLAGS)")
				if err != nil {
					return err
				}
				var got []uint32
				for _, f := range fetches(res.Untagged) {
					u, ok := f.UID()
					if !ok {
						return failf("FETCH response without UID: %s", describe(res.Untagged))
					}
					got = append(got, u)
				}
				if !sameSet(got, uids) {
					return failf("UID FETCH 1:* returned UIDs %v, expected %v", got, uids)
				}
				return nil
			}},
		{ID: "3501-uid-search", RFC: 3501, Section: "6.4.8", Level: Must,
			Summary: "UID SEARCH returns UIDs, not sequence numbers",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				// Expunge the first message so that sequence numbers and
				// UIDs differ even on a server numbering UIDs from 1.
				if err := mustOK(c, `STORE 1 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				if err := mustOK(c, "EXPUNGE"); err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Flagged)`); err != nil {
					return err
				}
				res, err := doOK(c, "UID SEARCH FLAGGED")
				if err != nil {
					return err
				}
				s, err := search(res.Untagged)
				if err != nil {
					return err
				}
				if !sameSet(s.Nums, []uint32{uids[2]}) {
					return failf("UID SEARCH FLAGGED returned %v, expected the UID %d", s.Nums, uids[2])
				}
				return nil
			}},
		{ID: "3501-uid-range-star", RFC: 3501, Section: "6.4.8", Level: Must,
			Summary: "a UID range n:* with n above every UID still matches the last message",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, fmt.Sprintf("UID FETCH %d:* (UID)", uids[1]+1000))
				if err != nil {
					return err
				}
				fs := fetches(res.Untagged)
				if len(fs) != 1 {
					return failf("expected one FETCH for the last message, got %s", describe(res.Untagged))
				}
				if u, _ := fs[0].UID(); u != uids[1] {
					return failf("expected UID %d, got %s", uids[1], describe(res.Untagged))
				}
				return nil
			}},
		{ID: "3501-expunge-sequence", RFC: 3501, Section: "7.4.1", Level: Must,
			Summary: "EXPUNGE responses renumber as they go: applied in order they remove exactly the deleted messages",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(4)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2:3 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				res, err := doOK(c, "EXPUNGE")
				if err != nil {
					return err
				}
				view := slices.Clone(uids)
				n := 0
				for _, r := range res.Untagged {
					if !isExpunge(r) {
						continue
					}
					n++
					if r.Num < 1 || int(r.Num) > len(view) {
						return failf("EXPUNGE %d is out of range for %d messages; got %s", r.Num, len(view), describe(res.Untagged))
					}
					view = slices.Delete(view, int(r.Num-1), int(r.Num))
				}
				if want := []uint32{uids[0], uids[3]}; !slices.Equal(view, want) {
					return failf("after applying %d EXPUNGE responses the client would hold UIDs %v, expected %v; got %s", n, view, want, describe(res.Untagged))
				}
				return nil
			}},
		{ID: "3501-no-expunge-during-fetch", RFC: 3501, Section: "7.4.1", Level: MustNot,
			Summary: "no EXPUNGE is sent while a FETCH runs; the outside expunge is reported later",
			Run:     func(t *T) error { return noExpungeDuring(t, "FETCH 1:* (FLAGS)", "EXPUNGE") }},
		{ID: "3501-no-expunge-during-store", RFC: 3501, Section: "7.4.1", Level: MustNot,
			Summary: "no EXPUNGE is sent while a STORE runs; the outside expunge is reported later",
			Run:     func(t *T) error { return noExpungeDuring(t, `STORE 1 +FLAGS (\Answered)`, "EXPUNGE") }},
		{ID: "3501-no-expunge-during-search", RFC: 3501, Section: "7.4.1", Level: MustNot,
			Summary: "no EXPUNGE is sent while a SEARCH runs; the outside expunge is reported later",
			Run:     func(t *T) error { return noExpungeDuring(t, "SEARCH ALL", "EXPUNGE") }},
		{ID: "3501-noop-new-mail", RFC: 3501, Section: "6.1.2", Level: Must,
			Summary: "NOOP reports a message appended by another connection with EXISTS",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				got, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
				})
				if err != nil {
					return err
				}
				if !ok {
					return failf("expected * 2 EXISTS after an outside APPEND, NOOP for %v gave %s", t.cfg.EventWait, describe(got))
				}
				return nil
			}},
		{ID: "3501-noop-expunge", RFC: 3501, Section: "7.4.1", Level: Must,
			Summary: "NOOP reports a message expunged by another connection with EXPUNGE",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := t.OutsideExpunge(mb, uids[0]); err != nil {
					return err
				}
				got, ok, err := t.pollNoop(c, func(rs []*Response) bool { return slices.ContainsFunc(rs, isExpunge) })
				if err != nil {
					return err
				}
				if !ok {
					return failf("expected * 1 EXPUNGE after an outside expunge, NOOP for %v gave %s", t.cfg.EventWait, describe(got))
				}
				if e := got[indexOf(got, isExpunge)]; e.Num != 1 {
					return failf("expected * 1 EXPUNGE, got %q", e.Line)
				}
				return nil
			}},
		{ID: "3501-noop-flag-change", RFC: 3501, Section: "7.4.2", Level: Should,
			Summary: "NOOP reports flags changed by another connection with FETCH",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := t.OutsideStore(mb, uids[1], `+FLAGS (\Flagged)`); err != nil {
					return err
				}
				got, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(fetches(rs), func(f FetchData) bool { return f.Seq == 2 && f.HasFlag(`\Flagged`) })
				})
				if err != nil {
					return err
				}
				if !ok {
					return failf("expected * 2 FETCH (FLAGS (\\Flagged)) after an outside STORE, NOOP for %v gave %s", t.cfg.EventWait, describe(got))
				}
				return nil
			}},
		{ID: "3501-append-literal", RFC: 3501, Section: "6.3.11", Level: Must,
			Summary: "APPEND with a synchronising literal gets a continuation request, then OK, and stores the message",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Append(mb, `\Seen`, testMessage(mb, 1, 3000))
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("APPEND: expected OK, got %q", status(res))
				}
				return expectStatus(c, mb, "MESSAGES", 1)
			}},
		{ID: "3501-append-missing-mailbox", RFC: 3501, Section: "6.3.11", Level: Must,
			Summary: "APPEND to a missing mailbox fails and does not create it",
			Run: func(t *T) error {
				mb := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Append(mb, "", testMessage(mb, 1, 0))
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" {
					return failf("expected NO, got %q", status(res))
				}
				return expectMissing(c, mb)
			}},
		{ID: "3501-append-trycreate", RFC: 3501, Section: "6.3.11", Level: Should,
			Summary: "APPEND to a missing mailbox answers NO [TRYCREATE]",
			Run: func(t *T) error {
				mb := t.Name()
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Append(mb, "", testMessage(mb, 1, 0))
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" || res.Status.Code != "TRYCREATE" {
					return failf("expected NO [TRYCREATE], got %q", status(res))
				}
				return nil
			}},
		{ID: "3501-copy-missing-mailbox", RFC: 3501, Section: "6.4.7", Level: Should,
			Summary: "COPY to a missing mailbox fails and does not create it",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				dst := t.Name()
				res, err := c.Do("COPY 1 " + quote(dst))
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" {
					return failf("expected NO, got %q", status(res))
				}
				return expectMissing(c, dst)
			}},
		{ID: "3501-close-silent-expunge", RFC: 3501, Section: "6.4.2", Level: Must,
			Summary: "CLOSE removes \\Deleted messages without sending EXPUNGE responses",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := mustOK(c, `STORE 2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				res, err := doOK(c, "CLOSE")
				if err != nil {
					return err
				}
				if i := indexOf(res.Untagged, func(r *Response) bool { return isExpunge(r) || r.Untagged("VANISHED") }); i >= 0 {
					return failf("CLOSE sent %q", res.Untagged[i].Line)
				}
				return expectStatus(c, mb, "MESSAGES", 2)
			}},
		{ID: "3501-status", RFC: 3501, Section: "6.3.10", Level: Must,
			Summary: "STATUS reports MESSAGES, UNSEEN and a UIDNEXT above every UID",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				if err := t.SetupStore(mb, "1 +FLAGS.SILENT (\\Seen)"); err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "STATUS "+quote(mb)+" (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
				if err != nil {
					return err
				}
				st := find(res.Untagged, "STATUS")
				if st == nil {
					return failf("no untagged STATUS; got %s", describe(res.Untagged))
				}
				_, items, err := st.statusItems()
				if err != nil {
					return err
				}
				if items["MESSAGES"] != 3 || items["UNSEEN"] != 2 || items["UIDNEXT"] <= uint64(uids[2]) || items["UIDVALIDITY"] == 0 {
					return failf("expected MESSAGES 3, UNSEEN 2, UIDNEXT > %d, UIDVALIDITY > 0; got %q", uids[2], st.Line)
				}
				return nil
			}},
		{ID: "3501-create-existing", RFC: 3501, Section: "6.3.3", Level: Must,
			Summary: "CREATE of an existing mailbox fails with NO",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("CREATE " + quote(mb))
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" {
					return failf("expected NO, got %q", status(res))
				}
				return nil
			}},
		{ID: "3501-delete", RFC: 3501, Section: "6.3.4", Level: Must,
			Summary: "DELETE removes a mailbox: LIST no longer shows it",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "DELETE "+quote(mb)); err != nil {
					return err
				}
				return expectMissing(c, mb)
			}},
		{ID: "3501-rename", RFC: 3501, Section: "6.3.5", Level: Must,
			Summary: "RENAME moves a mailbox and its messages to the new name",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				dst := t.Name()
				if err := mustOK(c, "RENAME "+quote(mb)+" "+quote(dst)); err != nil {
					return err
				}
				if err := expectStatus(c, dst, "MESSAGES", 2); err != nil {
					return err
				}
				return expectMissing(c, mb)
			}},
		{ID: "3501-logout-bye", RFC: 3501, Section: "6.1.3", Level: Must,
			Summary: "LOGOUT sends an untagged BYE before its tagged OK",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("LOGOUT")
				if err != nil {
					return err
				}
				if !res.OK() || find(res.Untagged, "BYE") == nil {
					return failf("expected * BYE then OK, got %s / %s", describe(res.Untagged), status(res))
				}
				return nil
			}},
		{ID: "3501-unknown-command", RFC: 3501, Section: "7.1.3", Level: Must,
			Summary: "an unknown command is answered BAD and the session goes on",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("XLPCONFNOSUCHCOMMAND arg")
				if err != nil {
					return err
				}
				if res.Status.Name != "BAD" {
					return failf("expected BAD, got %q", status(res))
				}
				return mustOK(c, "NOOP")
			}},
	}
}

// fetchSeen fetches message 1 with item and checks \Seen afterwards.
func fetchSeen(t *T, item string, wantSeen bool) error {
	mb, _, err := t.Mailbox(1)
	if err != nil {
		return err
	}
	c, _, err := t.loginSelect(mb, "")
	if err != nil {
		return err
	}
	if err := mustOK(c, "FETCH 1 ("+item+")"); err != nil {
		return err
	}
	res, err := doOK(c, "FETCH 1 (FLAGS)")
	if err != nil {
		return err
	}
	fs := fetches(res.Untagged)
	if len(fs) == 0 {
		return failf("FETCH 1 (FLAGS): no FETCH response")
	}
	f := fs[len(fs)-1]
	if f.HasFlag(`\Seen`) != wantSeen {
		return failf("after FETCH %s, \\Seen set is %v, expected %v; got %s", item, !wantSeen, wantSeen, describe(res.Untagged))
	}
	return nil
}

// noExpungeDuring checks that cmd's answer holds no expunge notice (name
// EXPUNGE or VANISHED) for a message expunged from outside just before,
// and that the expunge is reported by a later NOOP.
func noExpungeDuring(t *T, cmd, name string) error {
	return noExpungeDuringWith(t, cmd, name, "", "")
}

func noExpungeDuringWith(t *T, cmd, name, enable, selectParams string) error {
	mb, uids, err := t.Mailbox(3)
	if err != nil {
		return err
	}
	c, err := t.Login()
	if err != nil {
		return err
	}
	if enable != "" {
		if err := mustOK(c, "ENABLE "+enable); err != nil {
			return err
		}
	}
	if _, err := selectOK(c, "SELECT", mb, selectParams); err != nil {
		return err
	}
	if err := t.OutsideExpunge(mb, uids[1]); err != nil {
		return err
	}
	isGone := func(r *Response) bool {
		if name == "VANISHED" {
			if !r.Untagged("VANISHED") {
				return false
			}
			earlier, _, _ := r.vanished()
			return !earlier
		}
		return isExpunge(r)
	}
	res, err := doOK(c, cmd)
	if err != nil {
		return err
	}
	if i := indexOf(res.Untagged, isGone); i >= 0 {
		return failf("%s was answered with %q while it ran", firstWord(cmd), res.Untagged[i].Line)
	}
	got, ok, err := t.pollNoop(c, func(rs []*Response) bool { return slices.ContainsFunc(rs, isGone) })
	if err != nil {
		return err
	}
	if !ok {
		return failf("the outside expunge was never reported (%s after %v of NOOPs: %s), so the check proves nothing", name, t.cfg.EventWait, describe(got))
	}
	return nil
}

// expectStatus checks one STATUS item of mailbox.
func expectStatus(c *Client, mailbox, item string, want uint64) error {
	res, err := doOK(c, "STATUS "+quote(mailbox)+" ("+item+")")
	if err != nil {
		return err
	}
	st := find(res.Untagged, "STATUS")
	if st == nil {
		return failf("STATUS: no untagged STATUS; got %s", describe(res.Untagged))
	}
	_, items, err := st.statusItems()
	if err != nil {
		return err
	}
	if got, ok := items[item]; !ok || got != want {
		return failf("STATUS %s: expected %s %d, got %q", mailbox, item, want, st.Line)
	}
	return nil
}

// expectMissing checks that mailbox does not exist.
func expectMissing(c *Client, mailbox string) error {
	res, err := c.Do("LIST \"\" " + quote(mailbox))
	if err != nil {
		return err
	}
	for _, r := range findAll(res.Untagged, "LIST") {
		if d, err := r.list(); err == nil && d.Name == mailbox && !d.has(`\NonExistent`) {
			return failf("mailbox %s exists: %q", mailbox, r.Line)
		}
	}
	return nil
}

// sameSet reports whether a and b hold the same numbers, in any order.
// SEARCH results are compared with it: RFC 3501 (7.2.5) gives the numbers
// of a SEARCH response no order, and a sequence set (ESEARCH ALL, RFC
// 4731) is a set, so a server that answers "* SEARCH 4 2" is as right as
// one that answers "* SEARCH 2 4".
func sameSet(a, b []uint32) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
