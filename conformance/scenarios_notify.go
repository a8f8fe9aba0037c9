package conformance

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// statusFor matches an untagged STATUS response about mailbox.
func statusFor(mailbox string) func(*Response) bool {
	return func(r *Response) bool {
		if !r.Untagged("STATUS") {
			return false
		}
		name, _, err := r.statusItems()
		return err == nil && name == mailbox
	}
}

// statusWhere matches an untagged STATUS about mailbox whose items satisfy
// ok. A scenario waiting for the STATUS that announces a change uses it: a
// server may first send another STATUS of the mailbox (one that does not
// show the change yet, say because the server saw the mailbox appear in the
// same poll), which is not the announcement asked for.
func statusWhere(mailbox string, ok func(items map[string]uint64) bool) func(*Response) bool {
	return func(r *Response) bool {
		if !r.Untagged("STATUS") {
			return false
		}
		name, items, err := r.statusItems()
		return err == nil && name == mailbox && ok(items)
	}
}

// messagesIs is a statusWhere condition: MESSAGES is n.
func messagesIs(n uint64) func(map[string]uint64) bool {
	return func(items map[string]uint64) bool {
		v, ok := items["MESSAGES"]
		return ok && v == n
	}
}

// listFor matches an untagged LIST response naming mailbox that satisfies
// ok.
func listFor(mailbox string, ok func(listData) bool) func(*Response) bool {
	return func(r *Response) bool {
		if !r.Untagged("LIST") {
			return false
		}
		d, err := r.list()
		return err == nil && d.Name == mailbox && ok(d)
	}
}

// notifyTimeoutError is the failure of a NOTIFY scenario whose event did
// not come within EventWait. Its text says what most often causes it: a
// server that polls for changes in other mailboxes (lemonproxy's NOTIFY
// account watcher polls LIST, LSUB and STATUS every notify-poll-interval,
// 30 s by default) less often than the suite waits.
type notifyTimeoutError struct {
	msg  string
	wait time.Duration
}

func (e *notifyTimeoutError) Error() string {
	return fmt.Sprintf("%s. A server that polls for these events must poll at least every %v to meet -event-wait %v (lemonproxy polls mailboxes other than the selected one and INBOX every notify-poll-interval, 30s by default: run it with -notify-poll-interval %v, or this suite with an -event-wait longer than its interval)",
		e.msg, NeededPollInterval(e.wait), e.wait, NeededPollInterval(e.wait))
}

// notifyTimeout fails a NOTIFY scenario whose event did not come in time.
func (t *T) notifyTimeout(format string, args ...any) error {
	return &notifyTimeoutError{msg: fmt.Sprintf(format, args...), wait: t.cfg.EventWait}
}

// NeededPollInterval is the longest poll interval with which a server that
// polls for changes reports them within eventWait: half of it, leaving
// the other half for the poll itself and a loaded machine.
func NeededPollInterval(eventWait time.Duration) time.Duration {
	return (eventWait / 2).Round(100 * time.Millisecond)
}

// notifyEvent sets up NOTIFY with spec (MBOX replaced by the quoted
// mailbox name; "" when the caller did already) on a logged-in connection, makes a change from outside and
// waits, sending nothing, for the event match accepts. It returns the
// matching response.
func notifyEvent(t *T, c *Client, spec, mb string, change func() error, what string, match func(*Response) bool) (*Response, error) {
	if spec != "" {
		if err := mustOK(c, "NOTIFY SET "+strings.ReplaceAll(spec, "MBOX", quote(mb))); err != nil {
			return nil, err
		}
	}
	if err := change(); err != nil {
		return nil, err
	}
	got, found, err := t.waitEvent(c, match)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, t.notifyTimeout("expected %s within %v of the outside change, with no command running; got %s", what, t.cfg.EventWait, describe(got))
	}
	return got[len(got)-1], nil
}

// delimiter asks LIST for the hierarchy delimiter.
func delimiter(c *Client) (string, error) {
	res, err := doOK(c, `LIST "" ""`)
	if err != nil {
		return "", err
	}
	r := find(res.Untagged, "LIST")
	if r == nil {
		return "", failf(`LIST "" "": no LIST response`)
	}
	d, err := r.list()
	if err != nil {
		return "", err
	}
	if d.Delim == "" {
		return "", skipf("the server has no hierarchy delimiter")
	}
	return d.Delim, nil
}

func notify5465() []*Scenario {
	nt := []string{"NOTIFY"}
	messages := "(MessageNew MessageExpunge)"
	return []*Scenario{
		{ID: "5465-notify-set-and-none", RFC: 5465, Section: "3.1", Level: Must, Caps: nt,
			Summary: "NOTIFY SET with a valid event list and NOTIFY NONE both succeed",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+messages+")"); err != nil {
					return err
				}
				return mustOK(c, "NOTIFY NONE")
			}},
		{ID: "5465-badevent", RFC: 5465, Section: "3.1", Level: Must, Caps: nt,
			Summary: "an unsupported event is refused with NO [BADEVENT (supported events)]",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := c.Do("NOTIFY SET (personal (MessageNew MessageExpunge XLpconfEvent))")
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" || res.Status.Code != "BADEVENT" {
					return failf("expected NO [BADEVENT (...)], got %q", status(res))
				}
				if arg := strings.TrimSpace(res.Status.CodeArg); !strings.HasPrefix(arg, "(") || !strings.HasSuffix(arg, ")") {
					return failf("BADEVENT must list the supported events in parentheses, got %q", status(res))
				}
				return nil
			}},
		{ID: "5465-messagenew-alone-bad", RFC: 5465, Section: "5.2", Level: Must, Caps: nt,
			Summary: "MessageNew without MessageExpunge is answered BAD",
			Run:     func(t *T) error { return notifyBAD(t, "(MessageNew)") }},
		{ID: "5465-messageexpunge-alone-bad", RFC: 5465, Section: "5.3", Level: Must, Caps: nt,
			Summary: "MessageExpunge without MessageNew is answered BAD",
			Run:     func(t *T) error { return notifyBAD(t, "(MessageExpunge)") }},
		{ID: "5465-flagchange-alone-bad", RFC: 5465, Section: "5.1", Level: Must, Caps: nt,
			Summary: "FlagChange without MessageNew and MessageExpunge is answered BAD",
			Run:     func(t *T) error { return notifyBAD(t, "(FlagChange)") }},
		{ID: "5465-status-indicator", RFC: 5465, Section: "3.1", Level: Must, Caps: nt,
			Summary: "NOTIFY SET STATUS sends a STATUS for each named mailbox at once",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := doOK(c, "NOTIFY SET STATUS (mailboxes "+quote(mb)+" "+messages+")")
				if err != nil {
					return err
				}
				if indexOf(res.Untagged, statusFor(mb)) < 0 {
					return failf("expected * STATUS %s (...) before the tagged OK, got %s", mb, describe(res.Untagged))
				}
				return nil
			}},
		{ID: "5465-selected-messagenew", RFC: 5465, Section: "5.2", Level: Must, Caps: nt,
			Summary: "with (selected (MessageNew MessageExpunge)), new mail is announced with EXISTS between commands",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(selected "+messages+")", mb, func() error { return t.OutsideAppend(mb) },
					"* 2 EXISTS", func(r *Response) bool { return r.Untagged("EXISTS") && r.Num == 2 })
				return err
			}},
		{ID: "5465-selected-messageexpunge", RFC: 5465, Section: "5.3", Level: Must, Caps: nt,
			Summary: "with (selected (MessageNew MessageExpunge)), an expunge is announced with EXPUNGE between commands",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(selected "+messages+")", mb, func() error { return t.OutsideExpunge(mb, uids[0]) },
					"* 1 EXPUNGE", func(r *Response) bool { return isExpunge(r) && r.Num == 1 })
				return err
			}},
		{ID: "5465-selected-flagchange", RFC: 5465, Section: "5.1", Level: Must, Caps: nt,
			Summary: "with FlagChange on the selected mailbox, a flag change is announced with FETCH between commands",
			Run: func(t *T) error {
				_, err := flagChangeEvent(t, false)
				return err
			}},
		{ID: "5465-flagchange-has-uid", RFC: 5465, Section: "5.1", Level: Must, Caps: nt,
			Summary: "the FETCH announcing a flag change carries the message's UID",
			Run: func(t *T) error {
				r, err := flagChangeEvent(t, true)
				if err != nil {
					return err
				}
				if f, _ := r.Fetch(); !f.Has("UID") {
					return failf("the FlagChange FETCH has no UID: %q", r.Line)
				}
				return nil
			}},
		{ID: "5465-other-messagenew", RFC: 5465, Section: "5.2", Level: Must, Caps: nt,
			Summary: "new mail in a watched, non-selected mailbox is announced with STATUS (MESSAGES, UIDNEXT)",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				r, err := notifyEvent(t, c, "(mailboxes MBOX "+messages+")", mb, func() error { return t.OutsideAppend(mb) },
					"* STATUS "+mb+" (MESSAGES 1 UIDNEXT n)", statusWhere(mb, messagesIs(1)))
				if err != nil {
					return err
				}
				_, items, _ := r.statusItems()
				if items["MESSAGES"] != 1 || items["UIDNEXT"] == 0 {
					return failf("expected MESSAGES 1 and UIDNEXT in %q", r.Line)
				}
				return nil
			}},
		{ID: "5465-other-messageexpunge", RFC: 5465, Section: "5.3", Level: Must, Caps: nt,
			Summary: "an expunge in a watched, non-selected mailbox is announced with STATUS (MESSAGES)",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				r, err := notifyEvent(t, c, "(mailboxes MBOX "+messages+")", mb, func() error { return t.OutsideExpunge(mb, uids[0]) },
					"* STATUS "+mb+" (MESSAGES 1 ...)", statusWhere(mb, messagesIs(1)))
				if err != nil {
					return err
				}
				if _, items, _ := r.statusItems(); items["MESSAGES"] != 1 {
					return failf("expected MESSAGES 1 in %q", r.Line)
				}
				return nil
			}},
		{ID: "5465-other-highestmodseq", RFC: 5465, Section: "5.2", Level: Must, Caps: []string{"NOTIFY", "CONDSTORE", "ENABLE"},
			Summary: "with CONDSTORE enabled, the STATUS announcing new mail also carries HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "ENABLE CONDSTORE"); err != nil {
					return err
				}
				r, err := notifyEvent(t, c, "(mailboxes MBOX "+messages+")", mb, func() error { return t.OutsideAppend(mb) },
					"* STATUS "+mb+" (MESSAGES 1 ... HIGHESTMODSEQ n)", statusWhere(mb, messagesIs(1)))
				if err != nil {
					return err
				}
				if _, items, _ := r.statusItems(); items["HIGHESTMODSEQ"] == 0 {
					return failf("expected a non-zero HIGHESTMODSEQ in %q", r.Line)
				}
				return nil
			}},
		{ID: "5465-mailboxname-create", RFC: 5465, Section: "5.4", Level: Must, Caps: nt,
			Summary: "with MailboxName, a mailbox created elsewhere is announced with LIST",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				mb := t.Name()
				_, err = notifyEvent(t, c, "(personal (MailboxName))", mb, func() error { return t.OutsideCreate(mb) },
					"* LIST () delim "+mb, listFor(mb, func(d listData) bool { return !d.has(`\NonExistent`) }))
				return err
			}},
		{ID: "5465-mailboxname-delete", RFC: 5465, Section: "5.4", Level: Must, Caps: nt,
			Summary: "with MailboxName, a mailbox deleted elsewhere is announced with LIST (\\NonExistent)",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(personal (MailboxName))", mb, func() error { return t.OutsideDo("DELETE " + quote(mb)) },
					"* LIST (\\NonExistent) delim "+mb, listFor(mb, func(d listData) bool { return d.has(`\NonExistent`) }))
				return err
			}},
		{ID: "5465-mailboxname-rename", RFC: 5465, Section: "5.4", Level: Must, Caps: nt,
			Summary: "with MailboxName, a rename elsewhere is announced with LIST of the new name carrying OLDNAME",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				dst := t.Name()
				_, err = notifyEvent(t, c, "(personal (MailboxName))", mb, func() error { return t.OutsideDo("RENAME " + quote(mb) + " " + quote(dst)) },
					fmt.Sprintf("* LIST () delim %s (\"OLDNAME\" (%s))", dst, mb), listFor(dst, func(d listData) bool { return d.OldName == mb }))
				return err
			}},
		{ID: "5465-subscription-change", RFC: 5465, Section: "5.5", Level: Must, Caps: nt,
			Summary: "with SubscriptionChange, a subscription made elsewhere is announced with LIST (\\Subscribed)",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				t.Subscribed(mb)
				_, err = notifyEvent(t, c, "(personal (SubscriptionChange))", mb, func() error { return t.OutsideDo("SUBSCRIBE " + quote(mb)) },
					"* LIST (\\Subscribed) delim "+mb, listFor(mb, func(d listData) bool { return d.has(`\Subscribed`) }))
				return err
			}},
		{ID: "5465-events-during-idle", RFC: 5465, Section: "4", Level: Must, Caps: []string{"NOTIFY", "IDLE"},
			Summary: "NOTIFY events are delivered during IDLE",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+messages+")"); err != nil {
					return err
				}
				tag, _, err := startIdle(c)
				if err != nil {
					return err
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				got, found, err := t.waitEvent(c, statusFor(mb))
				if err != nil {
					return err
				}
				if !found {
					return t.notifyTimeout("expected * STATUS %s during IDLE within %v, got %s", mb, t.cfg.EventWait, describe(got))
				}
				_, err = endIdle(c, tag)
				return err
			}},
		{ID: "5465-notify-none-stops", RFC: 5465, Section: "3.1", Level: MustNot, Caps: nt,
			Summary: "after NOTIFY NONE no more events are sent",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+messages+")"); err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY NONE"); err != nil {
					return err
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				got, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				res, err := doOK(c, "NOOP")
				if err != nil {
					return err
				}
				got = append(got, res.Untagged...)
				if i := indexOf(got, statusFor(mb)); i >= 0 {
					return failf("event sent after NOTIFY NONE: %q", got[i].Line)
				}
				return nil
			}},
		{ID: "5465-second-notify-set", RFC: 5465, Section: "3.1", Level: Must, Caps: nt,
			Summary: "a second NOTIFY SET replaces the first and events keep coming",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+messages+")"); err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(mailboxes MBOX "+messages+")", mb, func() error { return t.OutsideAppend(mb) },
					"* STATUS "+mb+" (MESSAGES 1 ...) after the second NOTIFY SET", statusWhere(mb, messagesIs(1)))
				return err
			}},
		{ID: "5465-subtree", RFC: 5465, Section: "6.5", Level: Must, Caps: nt,
			Summary: "(subtree X ...) covers mailboxes below X",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				sc, err := t.setupClient()
				if err != nil {
					return err
				}
				delim, err := delimiter(sc)
				if err != nil {
					return err
				}
				child := mb + delim + "child"
				t.mailboxes = append(t.mailboxes, child)
				if err := createFresh(sc, child); err != nil {
					return fmt.Errorf("setup: %w", err)
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(subtree MBOX "+messages+")", mb, func() error { return t.OutsideAppend(child) },
					"* STATUS "+child+" (...)", statusFor(child))
				return err
			}},
		{ID: "5465-mailboxes-filter", RFC: 5465, Section: "6.6", Level: MustNot, Caps: nt,
			Summary: "(mailboxes X ...) sends no events about other mailboxes",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				other, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+messages+")"); err != nil {
					return err
				}
				if err := t.OutsideAppend(other); err != nil {
					return err
				}
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				got, found, err := t.waitEvent(c, statusFor(mb))
				if err != nil {
					return err
				}
				if !found {
					return t.notifyTimeout("expected * STATUS %s within %v (to show events flow at all), got %s", mb, t.cfg.EventWait, describe(got))
				}
				more, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				got = append(got, more...)
				if i := indexOf(got, statusFor(other)); i >= 0 {
					return failf("event for an unwatched mailbox: %q", got[i].Line)
				}
				return nil
			}},
	}
}

// notifyBAD requires NOTIFY SET with the given event list to be BAD.
func notifyBAD(t *T, events string) error {
	mb, _, err := t.Mailbox(0)
	if err != nil {
		return err
	}
	c, err := t.Login()
	if err != nil {
		return err
	}
	return expectBAD(c, "NOTIFY SET (mailboxes "+quote(mb)+" "+events+")")
}

// flagChangeEvent waits for the FETCH announcing an outside flag change
// under NOTIFY FlagChange on the selected mailbox. With orNoop, a FETCH
// that only comes with the next NOOP is accepted too, so that a check of
// the FETCH's content does not fail for lack of timely delivery (which
// 5465-selected-flagchange checks).
func flagChangeEvent(t *T, orNoop bool) (*Response, error) {
	mb, uids, err := t.Mailbox(2)
	if err != nil {
		return nil, err
	}
	c, _, err := t.loginSelect(mb, "")
	if err != nil {
		return nil, err
	}
	isChange := func(r *Response) bool {
		f, ok := r.Fetch()
		return ok && f.Seq == 2 && f.HasFlag(`\Flagged`)
	}
	what := "* 2 FETCH (FLAGS (\\Flagged) ...)"
	if err := mustOK(c, "NOTIFY SET (selected (MessageNew MessageExpunge FlagChange))"); err != nil {
		return nil, err
	}
	r, err := notifyEvent(t, c, "", mb,
		func() error { return t.OutsideStore(mb, uids[1], `+FLAGS (\Flagged)`) }, what, isChange)
	if err == nil || !orNoop {
		return r, err
	}
	got, ok, err := t.pollNoop(c, func(rs []*Response) bool { return slices.ContainsFunc(rs, isChange) })
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, failf("expected %s, not even after NOOP; got %s", what, describe(got))
	}
	return got[indexOf(got, isChange)], nil
}

// lemonadeExtensions are the IMAP extensions the Lemonade profile asks a
// server to offer, by capability word.
var lemonadeExtensions = []string{
	"UIDPLUS", "CATENATE", "URLAUTH", "BINARY", "IDLE", "NAMESPACE", "LITERAL+", "SASL-IR",
	"CONDSTORE", "QRESYNC", "ENABLE", "ESEARCH", "SEARCHRES", "SORT", "ESORT", "CONTEXT=SEARCH",
	"CONTEXT=SORT", "I18NLEVEL=1", "LANGUAGE", "WITHIN", "NOTIFY", "FILTERS", "CONVERT", "COMPRESS=DEFLATE",
}

func lemonade5550() []*Scenario {
	return []*Scenario{
		{ID: "5550-profile-report", RFC: 5550, Section: "3", Level: Info,
			Summary: "reports which IMAP extensions of the Lemonade profile the server advertises",
			Run: func(t *T) error {
				var have, lack []string
				for _, e := range lemonadeExtensions {
					if t.Has(e) || (e == "I18NLEVEL=1" && t.Has("I18NLEVEL=2")) {
						have = append(have, e)
					} else {
						lack = append(lack, e)
					}
				}
				slices.Sort(lack)
				note := fmt.Sprintf("%d of %d advertised; missing: %s", len(have), len(lemonadeExtensions), strings.Join(lack, " "))
				// Behind a proxy (-outside names another server, its
				// upstream), what the target advertises and its upstream
				// does not is the target's own work (what both advertise
				// the target may relay or still answer itself: IDLE).
				if t.cfg.Outside.Addr != "" && t.cfg.Outside.Addr != t.cfg.Target.Addr {
					if up, err := t.Outside(); err == nil {
						if upCaps, err := capabilities(up); err == nil {
							var own []string
							for _, e := range have {
								if !upCaps[e] && !(e == "I18NLEVEL=1" && upCaps["I18NLEVEL=2"]) {
									own = append(own, e)
								}
							}
							note += fmt.Sprintf("; %d also advertised by the upstream (-outside), %d by the target only: %s", len(have)-len(own), len(own), strings.Join(own, " "))
						}
					}
				}
				t.Note(note)
				return nil
			}},
	}
}
