package conformance

import (
	"fmt"
	"strconv"
	"strings"
)

// i18nMessages is i18nSetup's mailbox: the same words in different case,
// canonical and compatibility forms (RFC 5051's canonical form is the
// simple titlecase, decomposed by NFKD), in encoded words and in bodies
// of several transfer encodings and charsets. A server that compares with
// Unicode lower case alone (go-imap's) finds "ÉTÉ" in none of them:
// message 1 spells é as e + COMBINING ACUTE, message 3 writes FULL in
// fullwidth letters.
var i18nMessages = []string{
	// 1: encoded word, decomposed é, then precomposed é.
	"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.org>\r\nSubject: =?UTF-8?Q?e=CC=81t=C3=A9_report?=\r\n\r\nweather\r\n",
	// 2: quoted-printable ISO-8859-1 body.
	"From: anna@example.org\r\nSubject: greetings\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe aus K=F6ln, sch=F6nes =C9t=E9\r\n",
	// 3: base64 UTF-8 body: "ＦＵＬＬ width, Straße".
	"From: bob@example.org\r\nSubject: plain\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n77ym77y177ys77ysIHdpZHRoLCBTdHJhw59lCg==\r\n",
	// 4: ASCII only.
	"From: carl@example.org\r\nSubject: STRASSE\r\n\r\nnothing else\r\n",
}

// i18nSetup makes a mailbox of i18nMessages, the first one seen, and
// selects it.
func (t *T) i18nSetup() (*Client, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return nil, err
	}
	if err := createFresh(c, name); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	for i, m := range i18nMessages {
		flags := ""
		if i == 0 {
			flags = `\Seen`
		}
		res, err := c.Append(name, flags, []byte(m))
		if err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
		if !res.OK() {
			return nil, fmt.Errorf("setup: APPEND refused: %s", status(res))
		}
	}
	uids, err := t.uids(c, name)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	if len(uids) != len(i18nMessages) {
		return nil, fmt.Errorf("setup: appended %d messages, mailbox holds %d", len(i18nMessages), len(uids))
	}
	sel, _, err := t.loginSelect(name, "")
	return sel, err
}

// doLiterals sends cmd with each "%s" replaced by a synchronising literal
// of the matching string (the way a client sends non-ASCII search
// strings), waiting for each continuation request, and collects the
// answer.
func doLiterals(c *Client, cmd string, strs ...string) (*Reply, error) {
	pieces := strings.Split(cmd, "%s")
	if len(pieces) != len(strs)+1 {
		return nil, fmt.Errorf("doLiterals: %d strings for %q", len(strs), cmd)
	}
	tag := c.NextTag()
	shown := cmd
	for _, s := range strs {
		shown = strings.Replace(shown, "%s", strconv.Quote(s), 1)
	}
	res := &Reply{Cmd: shown, Tag: tag}
	line := tag + " " + pieces[0]
	for i, s := range strs {
		if err := c.writeLine(line + "{" + strconv.Itoa(len(s)) + "}"); err != nil {
			return res, err
		}
		for {
			r, err := c.Next(c.timeout)
			if err != nil {
				return res, fmt.Errorf("%s: no continuation request: %w", shown, err)
			}
			if r.Tag == tag {
				res.Status = r // refused before the literal
				return res, nil
			}
			if r.Tag == "+" {
				break
			}
			res.Untagged = append(res.Untagged, r)
		}
		c.tr.add(c.name, "C: ", fmt.Sprintf("(literal %q)", s))
		if err := c.write([]byte(s)); err != nil {
			return res, err
		}
		line = pieces[i+1]
	}
	if err := c.write([]byte(line + "\r\n")); err != nil {
		return res, err
	}
	more, err := c.Wait(tag, shown)
	res.Status = more.Status
	res.Untagged = append(res.Untagged, more.Untagged...)
	return res, err
}

// i18nStep runs a search whose strings go as literals and checks the
// numbers it answers.
func i18nStep(c *Client, cmd string, want []uint32, strs ...string) error {
	res, err := doLiterals(c, cmd, strs...)
	if err != nil {
		return err
	}
	if !res.OK() {
		return failf("%s: expected OK, got %q", res.Cmd, status(res))
	}
	s, err := search(res.Untagged)
	if err != nil {
		return failf("%s: %v", res.Cmd, err)
	}
	if !sameSet(s.Nums, want) {
		return failf("%s answered %v, expected %v", res.Cmd, s.Nums, want)
	}
	return nil
}

// i18nCase is one search of i18nSetup's mailbox.
type i18nCase struct {
	cmd  string
	strs []string
	want []uint32
}

// i18nRun runs the cases in a fresh mailbox.
func (t *T) i18nRun(cases []i18nCase) error {
	c, err := t.i18nSetup()
	if err != nil {
		return err
	}
	for _, tc := range cases {
		if err := i18nStep(c, tc.cmd, tc.want, tc.strs...); err != nil {
			return err
		}
	}
	return nil
}

func i18nLevel5255() []*Scenario {
	return []*Scenario{
		{ID: "5255-casemap-search-header", RFC: 5255, Section: "4.3", Level: Must, Caps: []string{"I18NLEVEL=1"},
			Summary: "with I18NLEVEL=1, SEARCH SUBJECT and FROM match decoded header text with i;unicode-casemap (case, canonical decomposition)",
			Run: func(t *T) error {
				return t.i18nRun([]i18nCase{
					{"SEARCH CHARSET UTF-8 SUBJECT %s", []string{"ÉTÉ"}, u32s(1)},
					{"SEARCH CHARSET UTF-8 SUBJECT %s", []string{"e\u0301te\u0301 REPORT"}, u32s(1)},
					{"SEARCH CHARSET UTF-8 SUBJECT %s", []string{"ete"}, nil},
					{"SEARCH CHARSET UTF-8 FROM %s", []string{"JÖRG MÜLLER"}, u32s(1)},
					{"SEARCH CHARSET UTF-8 SUBJECT %s", []string{"strasse"}, u32s(4)},
					{"SEARCH CHARSET UTF-8 HEADER Subject %s", []string{"éTÉ rePORT"}, u32s(1)},
				})
			}},
		{ID: "5255-casemap-search-body", RFC: 5255, Section: "4.3", Level: Must, Caps: []string{"I18NLEVEL=1"},
			Summary: "with I18NLEVEL=1, SEARCH BODY matches the decoded text (quoted-printable ISO-8859-1, base64 UTF-8) with i;unicode-casemap (case, compatibility forms; ß is not ss)",
			Run: func(t *T) error {
				return t.i18nRun([]i18nCase{
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"GRÜßE AUS KÖLN"}, u32s(2)},
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"grüsse"}, nil},
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"full WIDTH"}, u32s(3)},
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"STRASSE"}, nil},
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"STRAßE"}, u32s(3)},
					{"SEARCH CHARSET UTF-8 BODY %s", []string{"été"}, u32s(2)},
				})
			}},
		{ID: "5255-casemap-search-text", RFC: 5255, Section: "4.3", Level: Must, Caps: []string{"I18NLEVEL=1"},
			Summary: "with I18NLEVEL=1, SEARCH TEXT matches header and body text alike with i;unicode-casemap",
			Run: func(t *T) error {
				return t.i18nRun([]i18nCase{
					{"SEARCH CHARSET UTF-8 TEXT %s", []string{"ÉTÉ"}, u32s(1, 2)},
					{"SEARCH CHARSET UTF-8 TEXT %s", []string{"ＳＴＲＡＳＳＥ"}, u32s(4)},
				})
			}},
		{ID: "5255-casemap-search-combined", RFC: 5255, Section: "4.3", Level: Must, Caps: []string{"I18NLEVEL=1"},
			Summary: "with I18NLEVEL=1, NOT, OR, flags and UID SEARCH combine with i;unicode-casemap substring keys",
			Run: func(t *T) error {
				c, err := t.i18nSetup()
				if err != nil {
					return err
				}
				for _, tc := range []i18nCase{
					{"SEARCH CHARSET UTF-8 NOT TEXT %s", []string{"ÉTÉ"}, u32s(3, 4)},
					{"SEARCH CHARSET UTF-8 OR SUBJECT %s BODY %s", []string{"ÉTÉ", "full"}, u32s(1, 3)},
					{"SEARCH CHARSET UTF-8 UNSEEN TEXT %s", []string{"ÉTÉ"}, u32s(2)},
					{"SEARCH CHARSET UTF-8 NOT (SEEN NOT BODY %s)", []string{"ＦＵＬＬ"}, u32s(2, 3, 4)},
				} {
					if err := i18nStep(c, tc.cmd, tc.want, tc.strs...); err != nil {
						return err
					}
				}
				// The UID form answers UIDs.
				res, err := doLiterals(c, "UID SEARCH CHARSET UTF-8 BODY %s", "ＦＵＬＬ")
				if err != nil {
					return err
				}
				want, err := doOK(c, "FETCH 3 (UID)")
				if err != nil {
					return err
				}
				f := fetches(want.Untagged)
				var uid uint32
				ok := len(f) == 1
				if ok {
					uid, ok = f[0].UID()
				}
				s, serr := search(res.Untagged)
				if !res.OK() || serr != nil || !ok || !sameSet(s.Nums, u32s(uid)) {
					return failf("%s: expected * SEARCH %d (message 3's UID), got %s / %q", res.Cmd, uid, describe(res.Untagged), status(res))
				}
				return nil
			}},
	}
}
