package conformance

import (
	"slices"
	"strings"
)

// enabledList returns the names in the untagged ENABLED responses among rs
// (upper-cased) and whether there was any ENABLED response at all.
func enabledList(rs []*Response) ([]string, bool) {
	var names []string
	seen := false
	for _, r := range findAll(rs, "ENABLED") {
		seen = true
		for _, v := range r.Fields {
			if a, ok := asAtom(v); ok {
				names = append(names, strings.ToUpper(a))
			}
		}
	}
	return names, seen
}

func enable5161() []*Scenario {
	return []*Scenario{
		{ID: "5161-enable-enabled", RFC: 5161, Section: "3.2", Level: Must, Caps: []string{"ENABLE", "CONDSTORE"},
			Summary: "ENABLE CONDSTORE answers an untagged ENABLED naming CONDSTORE",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "ENABLE CONDSTORE")
				if err != nil {
					return err
				}
				if names, _ := enabledList(res.Untagged); !slices.Contains(names, "CONDSTORE") {
					return failf("expected * ENABLED CONDSTORE, got %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "5161-enable-unknown-ignored", RFC: 5161, Section: "3.1", Level: Must, Caps: []string{"ENABLE"},
			Summary: "ENABLE of an unknown extension succeeds and does not list it as enabled",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("ENABLE XLPCONF-UNKNOWN")
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("expected OK (unknown names are ignored), got %q", status(res))
				}
				if names, _ := enabledList(res.Untagged); slices.Contains(names, "XLPCONF-UNKNOWN") {
					return failf("the unknown extension was reported as enabled: %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "5161-enabled-always-sent", RFC: 5161, Section: "3.1", Level: Must, Caps: []string{"ENABLE"},
			Summary: "a successful ENABLE always sends an untagged ENABLED, empty when nothing was enabled",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "ENABLE XLPCONF-UNKNOWN")
				if err != nil {
					return err
				}
				if _, seen := enabledList(res.Untagged); !seen {
					return failf("expected an untagged ENABLED (with no names), got %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "5161-enable-mixed", RFC: 5161, Section: "3.1", Level: Must, Caps: []string{"ENABLE", "CONDSTORE"},
			Summary: "ENABLE of a known and an unknown name enables the known one only",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "ENABLE XLPCONF-UNKNOWN CONDSTORE")
				if err != nil {
					return err
				}
				names, _ := enabledList(res.Untagged)
				if !slices.Contains(names, "CONDSTORE") || slices.Contains(names, "XLPCONF-UNKNOWN") {
					return failf("expected * ENABLED CONDSTORE only, got %s", describe(res.Untagged))
				}
				return nil
			}},
		// SHOULD, not MUST: RFC 5161 3.1 states the rule without an RFC
		// 2119 keyword for the server, "The ENABLE command is only valid
		// in the authenticated state (see [RFC3501]), before any mailbox
		// is selected. Clients MUST NOT issue ENABLE once they
		// SELECT/EXAMINE a mailbox; however, server implementations don't
		// have to check that no mailbox is selected or was previously
		// selected during the duration of a connection." The MUST NOT
		// binds clients; its grammar (section 4) even puts ENABLE in
		// command-any. What a server does with a command in the wrong
		// state is RFC 3501 section 3's "the server will respond with a
		// BAD or NO (depending upon server implementation)", no keyword
		// either: an expectation, checked at SHOULD.
		{ID: "5161-enable-before-login", RFC: 5161, Section: "3.1", Level: Should, Caps: []string{"ENABLE"},
			Summary: "ENABLE before authentication is refused and enables nothing",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				res, err := c.Do("ENABLE CONDSTORE")
				if err != nil {
					return err
				}
				if res.OK() {
					return failf("ENABLE before login was accepted: %s / %s", describe(res.Untagged), status(res))
				}
				if _, seen := enabledList(res.Untagged); seen {
					return failf("ENABLE before login sent %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "5161-enable-needs-argument", RFC: 5161, Section: "4", Level: Must, Caps: []string{"ENABLE"},
			Summary: "ENABLE without an extension name is a syntax error (BAD)",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("ENABLE")
				if err != nil {
					return err
				}
				if res.Status.Name != "BAD" {
					return failf("expected BAD, got %q", status(res))
				}
				return nil
			}},
		{ID: "5161-capability-unchanged", RFC: 5161, Section: "3.1", Level: MustNot, Caps: []string{"ENABLE"},
			Summary: "ENABLE does not change what CAPABILITY lists",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				before, err := capabilities(c)
				if err != nil {
					return err
				}
				ext := "XLPCONF-UNKNOWN"
				for _, e := range []string{"QRESYNC", "CONDSTORE", "UTF8=ACCEPT"} {
					if t.Has(e) {
						ext = e
						break
					}
				}
				if err := mustOK(c, "ENABLE "+ext); err != nil {
					return err
				}
				after, err := capabilities(c)
				if err != nil {
					return err
				}
				var diff []string
				for k := range before {
					if !after[k] {
						diff = append(diff, "-"+k)
					}
				}
				for k := range after {
					if !before[k] {
						diff = append(diff, "+"+k)
					}
				}
				if len(diff) > 0 {
					slices.Sort(diff)
					return failf("CAPABILITY changed after ENABLE %s: %s", ext, strings.Join(diff, " "))
				}
				return nil
			}},
	}
}

// startIdle sends IDLE and waits for the continuation request. Untagged
// responses that arrive first are returned.
func startIdle(c *Client) (string, []*Response, error) {
	tag := c.NextTag()
	if err := c.WriteLine(tag + " IDLE"); err != nil {
		return tag, nil, err
	}
	got, found, err := c.WaitFor(c.timeout, func(r *Response) bool { return r.Tag == "+" || r.Tag == tag })
	if err != nil {
		return tag, got, err
	}
	if !found {
		return tag, got, failf("IDLE: no continuation request within %v (got %s)", c.timeout, describe(got))
	}
	if last := got[len(got)-1]; last.Tag == tag {
		return tag, got, failf("IDLE was answered %q instead of a continuation request", last.Line)
	}
	return tag, got[:len(got)-1], nil
}

// endIdle sends DONE and waits for the tagged completion.
func endIdle(c *Client, tag string) (*Reply, error) {
	if err := c.WriteLine("DONE"); err != nil {
		return nil, err
	}
	res, err := c.Wait(tag, "IDLE")
	if err != nil {
		return res, err
	}
	if !res.OK() {
		return res, failf("IDLE ended with %q, expected OK", status(res))
	}
	return res, nil
}

// idleEvent selects a fresh mailbox, idles, makes an outside change and
// waits for the event match accepts.
func idleEvent(t *T, msgs int, change func(mb string, uids []uint32) error, what string, match func(*Response) bool) error {
	mb, uids, err := t.Mailbox(msgs)
	if err != nil {
		return err
	}
	c, _, err := t.loginSelect(mb, "")
	if err != nil {
		return err
	}
	return idleEventOn(t, c, mb, uids, change, what, match)
}

func idleEventOn(t *T, c *Client, mb string, uids []uint32, change func(mb string, uids []uint32) error, what string, match func(*Response) bool) error {
	tag, _, err := startIdle(c)
	if err != nil {
		return err
	}
	if err := change(mb, uids); err != nil {
		return err
	}
	got, found, err := t.waitEvent(c, func(r *Response) bool { return match(r) || r.Tag == tag })
	if err != nil {
		return err
	}
	if !found || got[len(got)-1].Tag == tag {
		return failf("expected %s during IDLE within %v of the outside change, got %s", what, t.cfg.EventWait, describe(got))
	}
	_, err = endIdle(c, tag)
	return err
}

func idle2177() []*Scenario {
	idle := []string{"IDLE"}
	return []*Scenario{
		{ID: "2177-idle-continuation", RFC: 2177, Section: "3", Level: Must, Caps: idle,
			Summary: "IDLE is answered with a continuation request, and DONE ends it with OK",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				tag, _, err := startIdle(c)
				if err != nil {
					return err
				}
				_, err = endIdle(c, tag)
				return err
			}},
		{ID: "2177-no-completion-before-done", RFC: 2177, Section: "3", Level: MustNot,
			Caps:    idle,
			Summary: "IDLE is not completed by the server before the client sends DONE",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				tag, _, err := startIdle(c)
				if err != nil {
					return err
				}
				got, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				if i := indexOf(got, func(r *Response) bool { return r.Tag == tag }); i >= 0 {
					return failf("IDLE completed without DONE: %q", got[i].Line)
				}
				_, err = endIdle(c, tag)
				return err
			}},
		{ID: "2177-idle-new-mail", RFC: 2177, Section: "3", Level: Should, Caps: idle,
			Summary: "during IDLE, a message appended elsewhere is reported with EXISTS",
			Run: func(t *T) error {
				return idleEvent(t, 1, func(mb string, _ []uint32) error { return t.OutsideAppend(mb) },
					"* 2 EXISTS", func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
			}},
		{ID: "2177-idle-expunge", RFC: 2177, Section: "3", Level: Should, Caps: idle,
			Summary: "during IDLE, a message expunged elsewhere is reported with EXPUNGE",
			Run: func(t *T) error {
				return idleEvent(t, 2, func(mb string, uids []uint32) error { return t.OutsideExpunge(mb, uids[0]) },
					"* 1 EXPUNGE", func(r *Response) bool { return isExpunge(r) && r.Num == 1 })
			}},
		{ID: "2177-idle-flag-change", RFC: 2177, Section: "3", Level: Should, Caps: idle,
			Summary: "during IDLE, flags changed elsewhere are reported with FETCH",
			Run: func(t *T) error {
				return idleEvent(t, 2, func(mb string, uids []uint32) error { return t.OutsideStore(mb, uids[1], `+FLAGS (\Flagged)`) },
					"* 2 FETCH (FLAGS (\\Flagged))", func(r *Response) bool {
						f, ok := r.Fetch()
						return ok && f.Seq == 2 && f.HasFlag(`\Flagged`)
					})
			}},
		{ID: "2177-idle-again", RFC: 2177, Section: "3", Level: Should, Caps: idle,
			Summary: "a second IDLE after DONE still reports new mail",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				tag, _, err := startIdle(c)
				if err != nil {
					return err
				}
				if _, err := endIdle(c, tag); err != nil {
					return err
				}
				return idleEventOn(t, c, mb, uids, func(mb string, _ []uint32) error { return t.OutsideAppend(mb) },
					"* 2 EXISTS", func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
			}},
		{ID: "2177-idle-state-after-done", RFC: 2177, Section: "3", Level: Must, Caps: idle,
			Summary: "after IDLE and DONE the session is in the selected state and answers commands",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				tag, _, err := startIdle(c)
				if err != nil {
					return err
				}
				if _, err := endIdle(c, tag); err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 2 (UID)")
				if err != nil {
					return err
				}
				if len(fetches(res.Untagged)) != 1 {
					return failf("FETCH after IDLE: expected one FETCH, got %s", describe(res.Untagged))
				}
				return nil
			}},
	}
}

func compress4978() []*Scenario {
	deflate := []string{"COMPRESS=DEFLATE"}
	return []*Scenario{
		// SHOULD, not MUST: RFC 4978 puts COMPRESS in the authenticated
		// state only through its grammar ("command-auth =/ compress",
		// section 5), and its text sets no keyword for a COMPRESS before
		// login. A command in the wrong state gets RFC 3501 section 3's
		// "the server will respond with a BAD or NO (depending upon server
		// implementation)", no keyword either.
		{ID: "4978-compress-before-login", RFC: 4978, Section: "3", Level: Should, Caps: deflate,
			Summary: "COMPRESS is refused before authentication",
			Run: func(t *T) error {
				c, err := t.Connect()
				if err != nil {
					return err
				}
				res, err := c.Compress()
				if err != nil {
					return err
				}
				if res.OK() {
					return failf("COMPRESS DEFLATE before login was accepted: %q", status(res))
				}
				return nil
			}},
		{ID: "4978-compressed-session", RFC: 4978, Section: "3", Level: Must, Caps: deflate,
			Summary: "after OK, responses arrive as raw DEFLATE and commands sent compressed are understood",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doCompress(c); err != nil {
					return err
				}
				if _, err := capabilities(c); err != nil {
					return failf("after COMPRESS: %v", err)
				}
				res, err := selectOK(c, "SELECT", mb, "")
				if err != nil {
					return failf("after COMPRESS: %v", err)
				}
				if e := find(res.Untagged, "EXISTS"); e == nil || e.Num != 2 {
					return failf("after COMPRESS, SELECT gave %s", describe(res.Untagged))
				}
				return nil
			}},
		{ID: "4978-second-compress", RFC: 4978, Section: "3", Level: Must, Caps: deflate,
			Summary: "a second COMPRESS gets NO [COMPRESSIONACTIVE] or BAD and the session goes on",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doCompress(c); err != nil {
					return err
				}
				res, err := c.Compress()
				if err != nil {
					return err
				}
				st := res.Status
				if !(st.Name == "BAD" || (st.Name == "NO" && st.Code == "COMPRESSIONACTIVE")) {
					return failf("expected NO [COMPRESSIONACTIVE] or BAD, got %q", st.Line)
				}
				return mustOK(c, "NOOP")
			}},
		{ID: "4978-unknown-mechanism", RFC: 4978, Section: "3", Level: Must, Caps: deflate,
			Summary: "COMPRESS with an unknown mechanism is refused and the session stays uncompressed",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.compress("XLPCONFZIP")
				if err != nil {
					return err
				}
				if res.OK() {
					return failf("COMPRESS XLPCONFZIP was accepted")
				}
				return mustOK(c, "NOOP")
			}},
		{ID: "4978-append-literal", RFC: 4978, Section: "3", Level: Must, Caps: deflate,
			Summary: "under compression the continuation request for an APPEND literal is flushed at once",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doCompress(c); err != nil {
					return err
				}
				res, err := c.Append(mb, "", testMessage(mb, 1, 5000))
				if err != nil {
					return failf("compressed APPEND: %v (a server that does not flush its continuation request stalls here)", err)
				}
				if !res.OK() {
					return failf("compressed APPEND: expected OK, got %q", status(res))
				}
				return expectStatus(c, mb, "MESSAGES", 1)
			}},
		{ID: "4978-large-fetch", RFC: 4978, Section: "3", Level: Must, Caps: deflate,
			Summary: "a 200 KB message fetched under compression arrives intact",
			Run: func(t *T) error {
				mb := t.Name()
				sc, err := t.setupClient()
				if err != nil {
					return err
				}
				if err := createFresh(sc, mb); err != nil {
					return err
				}
				msg := testMessage(mb, 1, 200*1024)
				if res, err := sc.Append(mb, "", msg); err != nil || !res.OK() {
					return failf("setup: APPEND of 200 KB: %v %s", err, status(res))
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doCompress(c); err != nil {
					return err
				}
				if _, err := selectOK(c, "EXAMINE", mb, ""); err != nil {
					return err
				}
				res, err := doOK(c, "FETCH 1 (BODY.PEEK[])")
				if err != nil {
					return err
				}
				for _, f := range fetches(res.Untagged) {
					if b, ok := f.Bytes("BODY[]"); ok {
						if string(b) != string(msg) {
							return failf("BODY[] differs from the stored message (%d bytes, expected %d)", len(b), len(msg))
						}
						return nil
					}
				}
				return failf("no BODY[] in %s", describe(res.Untagged))
			}},
		{ID: "4978-idle-flushed", RFC: 4978, Section: "3", Level: Must, Caps: []string{"COMPRESS=DEFLATE", "IDLE"},
			Summary: "under compression, responses sent during IDLE are flushed without waiting for more",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doCompress(c); err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", mb, ""); err != nil {
					return err
				}
				return idleEventOn(t, c, mb, uids, func(mb string, _ []uint32) error { return t.OutsideAppend(mb) },
					"* 2 EXISTS", func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
			}},
	}
}

// doCompress turns on COMPRESS DEFLATE and requires OK.
func doCompress(c *Client) (*Reply, error) {
	res, err := c.Compress()
	if err != nil {
		return res, err
	}
	if !res.OK() {
		return res, failf("COMPRESS DEFLATE: expected OK, got %q", status(res))
	}
	return res, nil
}
