package conformance

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// catBoundary is RFC 4469 4's MIME boundary line; the example's TEXT
// parts are the CRLF-delimited boundary (42 bytes) and the closing one
// (44 bytes).
const catBoundary = "--------------030308070208000400050907"

// catDraft is the message the RFC 4469 4 example catenates from: a
// multipart whose header and first part are kept.
var catDraft = "From: Fred Foobar <foobar@example.com>\r\n" +
	"Subject: afternoon meeting\r\n" +
	"To: mooch@example.net\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"" + catBoundary[2:] + "\"\r\n" +
	"\r\n" +
	catBoundary + "\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n" +
	"\r\n" +
	catBoundary + "\r\n" +
	"Content-Type: application/octet-stream\r\n" +
	"Content-Transfer-Encoding: base64\r\n" +
	"\r\n" +
	"AAECAwQFBgcICQ==\r\n" +
	catBoundary + "--\r\n"

// catForwarded is the example's message attached whole.
var catForwarded = "From: Joe Mooch <mooch@example.net>\r\n" +
	"Subject: Re: afternoon meeting\r\n" +
	"Message-ID: <re-meeting@example.net>\r\n" +
	"\r\n" +
	"3:30 is fine with me.\r\n"

// catSetup makes a mailbox holding catDraft and catForwarded and returns
// its name, UIDVALIDITY and the two UIDs.
func (t *T) catSetup() (string, uint32, []uint32, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return "", 0, nil, err
	}
	if err := createFresh(c, name); err != nil {
		return "", 0, nil, fmt.Errorf("setup: %w", err)
	}
	for _, m := range []string{catDraft, catForwarded} {
		res, err := c.Append(name, "", []byte(m))
		if err != nil {
			return "", 0, nil, fmt.Errorf("setup: %w", err)
		}
		if !res.OK() {
			return "", 0, nil, fmt.Errorf("setup: APPEND refused: %s", status(res))
		}
	}
	uids, err := t.uids(c, name)
	if err != nil {
		return "", 0, nil, fmt.Errorf("setup: %w", err)
	}
	if len(uids) != 2 {
		return "", 0, nil, fmt.Errorf("setup: appended 2 messages, mailbox holds %d", len(uids))
	}
	v, err := uidValidityOf(c, name)
	if err != nil {
		return "", 0, nil, fmt.Errorf("setup: %w", err)
	}
	return name, v, uids, nil
}

// uidValidityOf asks STATUS for a mailbox's UIDVALIDITY.
func uidValidityOf(c *Client, mailbox string) (uint32, error) {
	res, err := doOK(c, "STATUS "+quote(mailbox)+" (UIDVALIDITY)")
	if err != nil {
		return 0, err
	}
	r := find(res.Untagged, "STATUS")
	if r == nil {
		return 0, failf("STATUS %s: no STATUS response", mailbox)
	}
	_, items, err := r.statusItems()
	if err != nil {
		return 0, failf("STATUS %s: %v", mailbox, err)
	}
	return uint32(items["UIDVALIDITY"]), nil
}

// fetchSection returns BODY.PEEK[section] of uid in the selected mailbox.
func fetchSection(c *Client, uid uint32, section string) (string, error) {
	cmd := fmt.Sprintf("UID FETCH %d (BODY.PEEK[%s])", uid, section)
	res, err := doOK(c, cmd)
	if err != nil {
		return "", err
	}
	for _, f := range fetches(res.Untagged) {
		if u, ok := f.UID(); ok && u == uid {
			b, ok := f.Bytes("BODY[" + section + "]")
			if !ok {
				return "", failf("%s: no BODY[%s] in %s", cmd, section, describe(res.Untagged))
			}
			return string(b), nil
		}
	}
	return "", failf("%s: no FETCH for UID %d: %s", cmd, uid, describe(res.Untagged))
}

// catCommand sends an APPEND made of text lines and literals in turn
// (lines[0] literal[0] lines[1] ...), each literal synchronising: it
// waits for each continuation request. It returns the reply; a tagged
// answer instead of a continuation request ends it early.
func catCommand(c *Client, lines []string, literals []string) (*Reply, error) {
	tag := c.NextTag()
	cmd := lines[0]
	if err := c.WriteLine(tag + " " + lines[0]); err != nil {
		return nil, err
	}
	res := &Reply{Cmd: cmd, Tag: tag}
	for i, lit := range literals {
		deadline := time.Now().Add(c.timeout)
		for {
			r, err := c.Next(time.Until(deadline))
			if err != nil {
				return res, fmt.Errorf("APPEND: waiting for a continuation request: %w", err)
			}
			if r.Tag == tag {
				res.Status = r
				return res, nil
			}
			if r.Tag == "+" {
				break
			}
			res.Untagged = append(res.Untagged, r)
		}
		c.tr.add(c.name, "C: ", fmt.Sprintf("(%d bytes of literal)", len(lit)))
		if err := c.write([]byte(lit)); err != nil {
			return res, err
		}
		if err := c.WriteLine(lines[i+1]); err != nil {
			return res, err
		}
	}
	more, err := c.Wait(tag, cmd)
	res.Status = more.Status
	res.Untagged = append(res.Untagged, more.Untagged...)
	return res, err
}

// hostOf is the host part of an address, as an absolute URL names it.
func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

// expectBadURL checks that res is NO [BADURL url].
func expectBadURL(res *Reply, url string) error {
	if res.Status == nil || res.Status.Name != "NO" || res.Status.Code != "BADURL" || res.Status.CodeArg != url {
		return failf("APPEND with URL %s: expected NO [BADURL %s], got %q", url, url, status(res))
	}
	return nil
}

// expectCount checks how many messages a mailbox holds.
func expectCount(c *Client, mailbox string, n uint64) error {
	return expectStatus(c, mailbox, "MESSAGES", n)
}

func catenate4469() []*Scenario {
	return []*Scenario{
		{ID: "4469-rfc-example", RFC: 4469, Section: "4", Level: Must, Caps: []string{"CATENATE"},
			Summary: "the RFC's example: header and part of one message, a whole other message and TEXT parts make one new message, byte for byte",
			Run: func(t *T) error {
				name, v, uids, err := t.catSetup()
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				url := func(uid uint32, sec string) string {
					u := fmt.Sprintf("/%s;UIDVALIDITY=%d/;UID=%d", name, v, uid)
					if sec != "" {
						u += "/;section=" + sec
					}
					return u
				}
				sep := "\r\n" + catBoundary + "\r\n"
				end := "\r\n" + catBoundary + "--\r\n"
				res, err := catCommand(c, []string{
					`APPEND ` + quote(name) + ` (\Seen \Draft $MDNSent) CATENATE (URL "` + url(uids[0], "HEADER") + `" TEXT {42}`,
					` URL "` + url(uids[0], "1.MIME") + `" URL "` + url(uids[0], "1") + `" TEXT {42}`,
					` URL "` + url(uids[1], "") + `" TEXT {44}`,
					`)`,
				}, []string{sep, sep, end})
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("APPEND CATENATE: expected OK, got %q", status(res))
				}
				all, err := t.uids(c, name)
				if err != nil {
					return err
				}
				if len(all) != 3 {
					return failf("mailbox holds %d messages after the APPEND, expected 3", len(all))
				}
				if _, err := selectOK(c, "EXAMINE", name, ""); err != nil {
					return err
				}
				var parts []string
				for _, p := range []struct {
					uid uint32
					sec string
				}{{uids[0], "HEADER"}, {uids[0], "1.MIME"}, {uids[0], "1"}, {uids[1], ""}} {
					s, err := fetchSection(c, p.uid, p.sec)
					if err != nil {
						return err
					}
					parts = append(parts, s)
				}
				want := parts[0] + sep + parts[1] + parts[2] + sep + parts[3] + end
				got, err := fetchSection(c, all[2], "")
				if err != nil {
					return err
				}
				if got != want {
					return failf("the message made is %q, expected %q", shorten(got), shorten(want))
				}
				return nil
			}},
		{ID: "4469-badurl", RFC: 4469, Section: "5", Level: Must, Caps: []string{"CATENATE"},
			Summary: "a URL naming no message (no such UID, a UIDVALIDITY that is not the mailbox's) fails the APPEND with NO [BADURL url] and appends nothing",
			Run: func(t *T) error {
				name, v, uids, err := t.catSetup()
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				for _, url := range []string{
					fmt.Sprintf("/%s/;UID=%d", name, uids[1]+100),
					fmt.Sprintf("/%s;UIDVALIDITY=%d/;UID=%d", name, v+1, uids[0]),
					fmt.Sprintf("/%s-nowhere/;UID=1", name),
				} {
					res, err := c.Do(`APPEND ` + quote(name) + ` CATENATE (URL "` + url + `")`)
					if err != nil {
						return err
					}
					if err := expectBadURL(res, url); err != nil {
						return err
					}
				}
				return expectCount(c, name, 2)
			}},
		{ID: "4469-badurl-not-invited", RFC: 4469, Section: "5", Level: Should, Caps: []string{"CATENATE"},
			Summary: "a bad URL before a synchronising TEXT literal is answered NO [BADURL] without inviting the literal",
			Run: func(t *T) error {
				name, _, uids, err := t.catSetup()
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				url := fmt.Sprintf("/%s/;UID=%d", name, uids[1]+100)
				tag := c.NextTag()
				if err := c.WriteLine(tag + ` APPEND ` + quote(name) + ` CATENATE (URL "` + url + `" TEXT {5}`); err != nil {
					return err
				}
				r, err := c.Next(c.timeout)
				if err != nil {
					return err
				}
				if r.Tag == "+" {
					// Invited after all: finish the command.
					c.write([]byte("hello"))
					c.WriteLine(")")
					c.Wait(tag, "APPEND")
					return failf("APPEND with bad URL %s: expected NO [BADURL] before the literal, got a continuation request %q", url, r.Line)
				}
				if err := expectBadURL(&Reply{Status: r}, url); err != nil {
					return err
				}
				if err := mustOK(c, "NOOP"); err != nil {
					return err
				}
				return expectCount(c, name, 2)
			}},
		{ID: "4469-other-account", RFC: 4469, Section: "3", Level: Must, Caps: []string{"CATENATE"},
			Summary: "a URL naming a message of another account is refused (NO [BADURL]): its data never reaches this account",
			Run: func(t *T) error {
				name, _, _, err := t.catSetup()
				if err != nil {
					return err
				}
				c2, err := t.Second()
				if err != nil {
					return err
				}
				other := t.Name2()
				if err := createFresh(c2, other); err != nil {
					return err
				}
				secret := "Subject: secret of the second account\r\n\r\nnot for the first\r\n"
				if res, err := c2.Append(other, "", []byte(secret)); err != nil || !res.OK() {
					return failf("setup: APPEND in the second account: %v %s", err, status(res))
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				host := hostOf(t.cfg.Target.Addr)
				for _, url := range []string{
					fmt.Sprintf("imap://%s@%s/%s/;UID=1", t.cfg.User2, host, other),
					fmt.Sprintf("imap://%s@%s/INBOX/;UID=1", t.cfg.User2, host),
				} {
					res, err := c.Do(`APPEND ` + quote(name) + ` CATENATE (URL "` + url + `")`)
					if err != nil {
						return err
					}
					if res.Status.Name != "NO" || res.Status.Code != "BADURL" {
						return failf("APPEND with the second account's URL %s: expected NO [BADURL], got %q", url, status(res))
					}
				}
				return expectCount(c, name, 2)
			}},
		{ID: "4469-appenduid", RFC: 4469, Section: "3", Level: Must, Caps: []string{"CATENATE", "UIDPLUS"},
			Summary: "APPEND with CATENATE answers APPENDUID (RFC 4315) naming the message it made",
			Run: func(t *T) error {
				name, v, uids, err := t.catSetup()
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := catCommand(c, []string{
					`APPEND ` + quote(name) + ` CATENATE (URL "/` + name + `/;UID=` + strconv.FormatUint(uint64(uids[1]), 10) + `/;SECTION=HEADER" TEXT {10}`,
					`)`,
				}, []string{"appended\r\n"})
				if err != nil {
					return err
				}
				if !res.OK() || res.Status.Code != "APPENDUID" {
					return failf("APPEND CATENATE: expected OK [APPENDUID ...], got %q", status(res))
				}
				m := regexp.MustCompile(`^(\d+) (\d+)$`).FindStringSubmatch(res.Status.CodeArg)
				if m == nil || m[1] != strconv.FormatUint(uint64(v), 10) {
					return failf("APPEND CATENATE: APPENDUID %q, expected UIDVALIDITY %d and a UID", res.Status.CodeArg, v)
				}
				uid, _ := strconv.ParseUint(m[2], 10, 32)
				if _, err := selectOK(c, "EXAMINE", name, ""); err != nil {
					return err
				}
				header, err := fetchSection(c, uids[1], "HEADER")
				if err != nil {
					return err
				}
				got, err := fetchSection(c, uint32(uid), "")
				if err != nil {
					return err
				}
				if got != header+"appended\r\n" {
					return failf("APPENDUID's message is %q, expected %q", shorten(got), shorten(header+"appended\r\n"))
				}
				return nil
			}},
	}
}
