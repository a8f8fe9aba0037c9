package conformance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// More NOTIFY (RFC 5465) scenarios: the selected-delayed, inboxes and
// subscribed filters, suppression of the client's own events, isolation
// between accounts, HIGHESTMODSEQ in the STATUS events once CONDSTORE or
// QRESYNC is on, and NOTIFICATIONOVERFLOW.

// overflowEvents is how many MailboxName events the overflow scenario
// makes while a command of the tested connection is in progress.
const overflowEvents = 24

// isExpungeOrVanished matches an EXPUNGE or VANISHED response.
func isExpungeOrVanished(r *Response) bool { return isExpunge(r) || r.Untagged("VANISHED") }

// mentions reports whether r is a LIST or STATUS response about mailbox.
func mentions(r *Response, mailbox string) bool {
	return statusFor(mailbox)(r) || listFor(mailbox, func(listData) bool { return true })(r)
}

// requireItems checks that a STATUS response carries every item, and that
// those that cannot be 0 are not.
func requireItems(r *Response, items ...string) error {
	_, got, err := r.statusItems()
	if err != nil {
		return err
	}
	for _, it := range items {
		n, ok := got[it]
		if !ok {
			return failf("the STATUS lacks %s: %q", it, r.Line)
		}
		if n == 0 && (it == "UIDVALIDITY" || it == "HIGHESTMODSEQ" || it == "UIDNEXT") {
			return failf("the STATUS has %s 0, which is not a valid value: %q", it, r.Line)
		}
	}
	return nil
}

func notifyFilters5465() []*Scenario {
	nt := []string{"NOTIFY"}
	messages := "(MessageNew MessageExpunge)"
	return []*Scenario{
		{ID: "5465-selected-delayed-expunge", RFC: 5465, Section: "6.1.2", Level: Must, Caps: nt,
			Summary: "with selected-delayed, an expunge is held while no command runs and reported by the next NOOP",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (selected-delayed "+messages+")"); err != nil {
					return err
				}
				if err := t.OutsideExpunge(mb, uids[0]); err != nil {
					return err
				}
				// New mail after the expunge: a server may announce it at
				// once (selected-delayed only holds expunges), and then
				// the expunged message still counts.
				if err := t.OutsideAppend(mb); err != nil {
					return err
				}
				got, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				if i := indexOf(got, isExpungeOrVanished); i >= 0 {
					return failf("expunge reported with no command running under selected-delayed: %q", got[i].Line)
				}
				if i := indexOf(got, func(r *Response) bool { return r.Untagged("EXISTS") && r.Num != 3 }); i >= 0 {
					return failf("with the expunge held, the new message is number 3; got %q", got[i].Line)
				}
				all, ok, err := t.pollNoop(c, func(rs []*Response) bool {
					return slices.ContainsFunc(rs, func(r *Response) bool { return (isExpunge(r) && r.Num == 1) || r.Untagged("VANISHED") })
				})
				if err != nil {
					return err
				}
				if !ok {
					return failf("the held expunge was never reported: expected * 1 EXPUNGE in answer to NOOP within %v, got %s", t.cfg.EventWait, describe(all))
				}
				return nil
			}},
		{ID: "5465-inboxes", RFC: 5465, Section: "6.3", Level: Must, Caps: nt,
			Summary: "(inboxes ...) covers INBOX: new mail there is announced with STATUS",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "(inboxes "+messages+")", "", t.OutsideAppendInbox,
					"* STATUS INBOX (...)", func(r *Response) bool {
						if !r.Untagged("STATUS") {
							return false
						}
						name, _, err := r.statusItems()
						return err == nil && strings.EqualFold(name, "INBOX")
					})
				return err
			}},
		{ID: "5465-subscribed-filter", RFC: 5465, Section: "6.4", Level: MustNot, Caps: nt,
			Summary: "(subscribed ...) announces new mail in subscribed mailboxes and sends nothing about others",
			Run: func(t *T) error {
				sub, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				other, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				sc, err := t.setupClient()
				if err != nil {
					return err
				}
				t.Subscribed(sub)
				if err := mustOK(sc, "SUBSCRIBE "+quote(sub)); err != nil {
					return fmt.Errorf("setup: %w", err)
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (subscribed "+messages+")"); err != nil {
					return err
				}
				if err := t.OutsideAppend(other); err != nil {
					return err
				}
				if err := t.OutsideAppend(sub); err != nil {
					return err
				}
				got, found, err := t.waitEvent(c, statusFor(sub))
				if err != nil {
					return err
				}
				if !found {
					return t.notifyTimeout("expected * STATUS %s (...) for the subscribed mailbox within %v, got %s", sub, t.cfg.EventWait, describe(got))
				}
				more, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				got = append(got, more...)
				if i := indexOf(got, statusFor(other)); i >= 0 {
					return failf("event for a mailbox that is not subscribed: %q", got[i].Line)
				}
				return nil
			}},
		{ID: "5465-subscribed-reevaluated", RFC: 5465, Section: "6.4", Level: Must, Caps: nt,
			Summary: "(subscribed ...) is re-evaluated after SUBSCRIBE: the newly subscribed mailbox's new mail is announced",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (subscribed "+messages+")"); err != nil {
					return err
				}
				t.Subscribed(mb)
				if err := mustOK(c, "SUBSCRIBE "+quote(mb)); err != nil {
					return err
				}
				_, err = notifyEvent(t, c, "", mb, func() error { return t.OutsideAppend(mb) },
					"* STATUS "+mb+" (MESSAGES 1 ...) after SUBSCRIBE", statusWhere(mb, messagesIs(1)))
				return err
			}},
		{ID: "5465-own-mailboxname-suppressed", RFC: 5465, Section: "5", Level: Should, Caps: nt,
			Summary: "a mailbox the client creates itself is not announced to it with MailboxName",
			Run: func(t *T) error {
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "NOTIFY SET (personal (MailboxName))"); err != nil {
					return err
				}
				own := t.Name()
				res, err := c.Do("CREATE " + quote(own))
				if err != nil {
					return err
				}
				if !res.OK() && res.Status.Code != "ALREADYEXISTS" { // see createFresh
					return failf("CREATE %s: expected OK, got %q", own, status(res))
				}
				got := res.Untagged
				// Someone else's CREATE shows that events flow at all.
				ctrl := t.Name()
				if err := t.OutsideCreate(ctrl); err != nil {
					return err
				}
				more, found, err := t.waitEvent(c, listFor(ctrl, func(listData) bool { return true }))
				if err != nil {
					return err
				}
				got = append(got, more...)
				if !found {
					return t.notifyTimeout("expected * LIST () delim %s for the mailbox created elsewhere within %v (to show events flow at all), got %s", ctrl, t.cfg.EventWait, describe(got))
				}
				more, err = c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				got = append(got, more...)
				if i := indexOf(got, listFor(own, func(listData) bool { return true })); i >= 0 {
					return failf("the client's own CREATE was announced to it: %q", got[i].Line)
				}
				return nil
			}},
		{ID: "5465-personal-isolation", RFC: 5465, Section: "6.2", Level: MustNot, Caps: nt,
			Summary: "(personal ...) sends nothing about another account's mailboxes, and that account hears nothing of ours (needs -user2)",
			Run: func(t *T) error {
				mine, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				other, err := t.Second()
				if err != nil {
					return err
				}
				if ok, err := exists(other, mine); err != nil {
					return err
				} else if ok {
					return skipf("-user2 sees the mailboxes of -user: the isolation check needs a different account")
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				events := "(personal (MessageNew MessageExpunge MailboxName SubscriptionChange))"
				if err := mustOK(c, "NOTIFY SET "+events); err != nil {
					return err
				}
				if err := mustOK(other, "NOTIFY SET "+events); err != nil {
					return fmt.Errorf("-user2: %w", err)
				}
				// Changes in the second account.
				theirs := t.Name2()
				if err := createFresh(other, theirs); err != nil {
					return fmt.Errorf("-user2: %w", err)
				}
				if res, err := other.Append(theirs, "", testMessage(theirs, 1, 0)); err != nil || !res.OK() {
					return failf("-user2: APPEND: %v %s", err, status(res))
				}
				t.Subscribed2(theirs)
				if err := mustOK(other, "SUBSCRIBE "+quote(theirs)); err != nil {
					return fmt.Errorf("-user2: %w", err)
				}
				// A change in ours, to show events flow at all.
				ctrl := t.Name()
				if err := t.OutsideCreate(ctrl); err != nil {
					return err
				}
				got, found, err := t.waitEvent(c, listFor(ctrl, func(listData) bool { return true }))
				if err != nil {
					return err
				}
				if !found {
					return t.notifyTimeout("expected * LIST () delim %s within %v (to show events flow at all), got %s", ctrl, t.cfg.EventWait, describe(got))
				}
				more, err := c.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				got = append(got, more...)
				if i := indexOf(got, func(r *Response) bool { return mentions(r, theirs) }); i >= 0 {
					return failf("told about a mailbox of another account: %q", got[i].Line)
				}
				theirGot, err := other.Collect(t.cfg.QuietWait)
				if err != nil {
					return err
				}
				if i := indexOf(theirGot, func(r *Response) bool { return mentions(r, ctrl) || mentions(r, mine) }); i >= 0 {
					return failf("the other account was told about our mailbox: %q", theirGot[i].Line)
				}
				return nil
			}},
		{ID: "5465-status-indicator-highestmodseq", RFC: 5465, Section: "3.1", Level: Must, Caps: []string{"NOTIFY", "CONDSTORE", "ENABLE"},
			Summary: "with CONDSTORE on, NOTIFY SET STATUS with FlagChange sends STATUS with MESSAGES, UIDNEXT, UIDVALIDITY and HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, _, err := t.Mailbox(1)
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
				res, err := doOK(c, "NOTIFY SET STATUS (mailboxes "+quote(mb)+" (MessageNew MessageExpunge FlagChange))")
				if err != nil {
					return err
				}
				i := indexOf(res.Untagged, statusFor(mb))
				if i < 0 {
					return failf("expected * STATUS %s (...) before the tagged OK, got %s", mb, describe(res.Untagged))
				}
				return requireItems(res.Untagged[i], "MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")
			}},
		{ID: "5465-other-flagchange", RFC: 5465, Section: "5.1", Level: Must, Caps: []string{"NOTIFY", "CONDSTORE", "ENABLE"},
			Summary: "with CONDSTORE on, a flag change in a watched, non-selected mailbox is announced with STATUS (UIDVALIDITY, a higher HIGHESTMODSEQ)",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(1)
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
				before, err := statusNumber(c, mb, "HIGHESTMODSEQ")
				if err != nil {
					return err
				}
				r, err := notifyEvent(t, c, "(mailboxes MBOX (MessageNew MessageExpunge FlagChange))", mb,
					func() error { return t.OutsideStore(mb, uids[0], `+FLAGS (\Flagged)`) },
					fmt.Sprintf("* STATUS %s (UIDVALIDITY n HIGHESTMODSEQ n), n above %d", mb, before),
					statusWhere(mb, func(items map[string]uint64) bool { return items["HIGHESTMODSEQ"] > before }))
				if err != nil {
					return err
				}
				return requireItems(r, "UIDVALIDITY", "HIGHESTMODSEQ")
			}},
		{ID: "5465-other-expunge-highestmodseq", RFC: 5465, Section: "5.3", Level: Must, Caps: []string{"NOTIFY", "QRESYNC", "ENABLE"},
			Summary: "with QRESYNC on, the STATUS announcing an expunge in a non-selected mailbox carries HIGHESTMODSEQ",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if err := mustOK(c, "ENABLE QRESYNC"); err != nil {
					return err
				}
				r, err := notifyEvent(t, c, "(mailboxes MBOX "+messages+")", mb, func() error { return t.OutsideExpunge(mb, uids[0]) },
					"* STATUS "+mb+" (MESSAGES 1 ... HIGHESTMODSEQ n)", statusWhere(mb, messagesIs(1)))
				if err != nil {
					return err
				}
				return requireItems(r, "MESSAGES", "HIGHESTMODSEQ")
			}},
		{ID: "5465-notificationoverflow", RFC: 5465, Section: "5.8", Level: Must, Caps: nt,
			Summary: "a server that gives up on events says OK [NOTIFICATIONOVERFLOW] and then sends none, as after NOTIFY NONE",
			Run:     notificationOverflow},
	}
}

// notificationOverflow tries to make the server give up: it keeps a
// command (an APPEND waiting for its literal) in progress while
// overflowEvents mailboxes are created elsewhere, so that the events
// accumulate. When and whether a server overflows is its own choice
// (§5.8: "If the server is unable or unwilling to deliver as many
// notifications as it is being asked to"), so no overflow is a skip, not a
// failure; an overflow must be announced and must end the events.
func notificationOverflow(t *T) error {
	mb, _, err := t.Mailbox(0)
	if err != nil {
		return err
	}
	c, err := t.Login()
	if err != nil {
		return err
	}
	if err := mustOK(c, "NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))"); err != nil {
		return err
	}
	msg := testMessage(mb, 1, 0)
	tag := c.NextTag()
	cmd := "APPEND " + quote(mb) + " {" + strconv.Itoa(len(msg)) + "}"
	if err := c.WriteLine(tag + " " + cmd); err != nil {
		return err
	}
	got, found, err := c.WaitFor(t.cfg.Timeout, func(r *Response) bool { return r.Tag == "+" || r.Tag == tag })
	if err != nil {
		return err
	}
	if !found || got[len(got)-1].Tag != "+" {
		return failf("APPEND: expected a continuation request, got %s", describe(got))
	}
	got = got[:len(got)-1]
	var names []string
	for range overflowEvents {
		n := t.Name()
		names = append(names, n)
		if err := t.OutsideCreate(n); err != nil {
			return err
		}
	}
	// Give the server time to notice the changes while the command is
	// still in progress.
	time.Sleep(t.cfg.QuietWait)
	c.tr.add(c.name, "C: ", fmt.Sprintf("(%d bytes of message, after %d outside CREATEs)", len(msg), len(names)))
	if err := c.write(append(msg, '\r', '\n')); err != nil {
		return err
	}
	res, err := c.Wait(tag, cmd)
	if err != nil {
		return err
	}
	got = append(got, res.Untagged...)
	more, err := c.Collect(t.cfg.QuietWait)
	if err != nil {
		return err
	}
	got = append(got, more...)
	isOverflow := func(r *Response) bool { return r.Untagged("OK") && r.Code == "NOTIFICATIONOVERFLOW" }
	i := indexOf(got, isOverflow)
	if i < 0 {
		announced := 0
		for _, n := range names {
			if slices.ContainsFunc(got, listFor(n, func(listData) bool { return true })) {
				announced++
			}
		}
		return skipf("no NOTIFICATIONOVERFLOW: %d of the %d MailboxName events made during a command were delivered after it; when a server overflows is its own choice (§5.8), so it cannot be provoked portably", announced, len(names))
	}
	// From here on the server must behave as after NOTIFY NONE.
	after := got[i+1:]
	ctrl := t.Name()
	if err := t.OutsideCreate(ctrl); err != nil {
		return err
	}
	more, err = c.Collect(t.cfg.QuietWait)
	if err != nil {
		return err
	}
	after = append(after, more...)
	noop, err := doOK(c, "NOOP")
	if err != nil {
		return err
	}
	after = append(after, noop.Untagged...)
	if j := indexOf(after, func(r *Response) bool { return r.Untagged("LIST") }); j >= 0 {
		return failf("event after * OK [NOTIFICATIONOVERFLOW], which must end NOTIFY as NOTIFY NONE does: %q", after[j].Line)
	}
	t.Note("overflow announced, no events after it")
	return nil
}
