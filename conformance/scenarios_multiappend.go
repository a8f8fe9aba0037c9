package conformance

import (
	"fmt"
	"strings"
)

// The messages of RFC 3502 6's example.
var (
	maFirst = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n" +
		"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n" +
		"Subject: afternoon meeting\r\n" +
		"To: mooch@owatagu.siam.edu\r\n" +
		"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n" +
		"\r\n" +
		"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
	maSecond = "Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n" +
		"From: Joe Mooch <mooch@OWaTaGu.siam.EDU>\r\n" +
		"Subject: Re: afternoon meeting\r\n" +
		"To: foobar@blurdybloop.example.com\r\n" +
		"Message-Id: <a0434793874930@OWaTaGu.siam.EDU>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n" +
		"\r\n" +
		"3:30 is fine with me.\r\n"
)

// maFresh makes the scenario's empty mailbox and returns its name and a
// logged-in client.
func (t *T) maFresh() (string, *Client, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return "", nil, err
	}
	if err := createFresh(c, name); err != nil {
		return "", nil, fmt.Errorf("setup: %w", err)
	}
	c, err = t.Login()
	return name, c, err
}

func multiappend3502() []*Scenario {
	return []*Scenario{
		{ID: "3502-rfc-example", RFC: 3502, Section: "6", Level: Must, Caps: []string{"MULTIAPPEND"},
			Summary: "the RFC's example: two messages, with flags and a date, in one APPEND; both appended byte for byte, in order",
			Run: func(t *T) error {
				name, c, err := t.maFresh()
				if err != nil {
					return err
				}
				res, err := catCommand(c, []string{
					`APPEND ` + quote(name) + fmt.Sprintf(` (\Seen) {%d}`, len(maFirst)),
					fmt.Sprintf(` (\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}`, len(maSecond)),
					``,
				}, []string{maFirst, maSecond})
				if err != nil {
					return failf("MULTIAPPEND of two messages: expected each literal invited and a tagged answer: %v", err)
				}
				if !res.OK() {
					return failf("MULTIAPPEND of two messages: expected OK, got %q", status(res))
				}
				uids, err := t.uids(c, name)
				if err != nil {
					return err
				}
				if len(uids) != 2 {
					return failf("mailbox holds %d messages after the MULTIAPPEND, expected 2", len(uids))
				}
				if strings.EqualFold(res.Status.Code, "APPENDUID") {
					// RFC 4315 3: the uid-set names the messages in order.
					if f := strings.Fields(res.Status.CodeArg); len(f) != 2 || f[1] != fmt.Sprintf("%d:%d", uids[0], uids[1]) {
						return failf("APPENDUID %q does not name UIDs %d:%d", res.Status.CodeArg, uids[0], uids[1])
					}
				}
				if _, err := selectOK(c, "EXAMINE", name, ""); err != nil {
					return err
				}
				for i, want := range []string{maFirst, maSecond} {
					got, err := fetchSection(c, uids[i], "")
					if err != nil {
						return err
					}
					if got != want {
						return failf("message %d reads %q, expected %q", i+1, got, want)
					}
				}
				return nil
			}},
		{ID: "3502-all-or-nothing", RFC: 3502, Section: "3", Level: Must, Caps: []string{"MULTIAPPEND"},
			Summary: "a MULTIAPPEND whose last message is empty (which many servers refuse) appends either all its messages or none",
			Run: func(t *T) error {
				name, c, err := t.maFresh()
				if err != nil {
					return err
				}
				res, err := catCommand(c, []string{`APPEND ` + quote(name) + ` {5}`, ` {5}`, ` {0}`, ``},
					[]string{"hello", "world", ""})
				if err != nil {
					return failf("MULTIAPPEND of three messages: expected each literal invited and a tagged answer: %v", err)
				}
				uids, err := t.uids(c, name)
				if err != nil {
					return err
				}
				switch {
				case res.OK() && len(uids) != 3:
					return failf("MULTIAPPEND of three messages answered OK, mailbox holds %d, expected 3", len(uids))
				case !res.OK() && len(uids) != 0:
					return failf("MULTIAPPEND answered %q, mailbox holds %d messages, expected none", status(res), len(uids))
				}
				return nil
			}},
		{ID: "3502-trycreate", RFC: 3502, Section: "6", Level: Should, Caps: []string{"MULTIAPPEND"},
			Summary: "an APPEND to a mailbox that does not exist is refused NO [TRYCREATE] before its literal is invited",
			Run: func(t *T) error {
				name, c, err := t.maFresh()
				if err != nil {
					return err
				}
				missing := name + "-missing"
				res, err := catCommand(c, []string{`APPEND ` + quote(missing) + ` (\Flagged) {1023}`, ``},
					[]string{strings.Repeat("x", 1023)})
				if err != nil {
					return err
				}
				if res.Status == nil || res.Status.Name != "NO" || !strings.EqualFold(res.Status.Code, "TRYCREATE") {
					return failf("APPEND to a missing mailbox: expected NO [TRYCREATE] before the literal, got %q", status(res))
				}
				return nil
			}},
	}
}
