package conformance

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// urlauthSetup makes a mailbox holding catDraft and returns a client
// logged in as the user, the mailbox's name and the draft's UID.
func (t *T) urlauthSetup() (*Client, string, uint32, error) {
	name, _, uids, err := t.catSetup()
	if err != nil {
		return nil, "", 0, err
	}
	c, err := t.Login()
	if err != nil {
		return nil, "", 0, err
	}
	return c, name, uids[0], nil
}

// rump is an absolute URL of the user's message with a URLAUTH rump.
func (t *T) rump(user, mailbox string, uid uint32, rest string) string {
	return fmt.Sprintf("imap://%s@%s/%s/;UID=%d%s", user, hostOf(t.cfg.Target.Addr), mailbox, uid, rest)
}

// genURLAuth runs GENURLAUTH for one rump with INTERNAL and returns the
// authorized URL, checking that it is the rump with ":INTERNAL:" and a
// token of 32 or more hex digits after it (RFC 4467 6.1, 7).
func genURLAuth(c *Client, rump string) (string, error) {
	cmd := "GENURLAUTH " + quote(rump) + " INTERNAL"
	res, err := doOK(c, cmd)
	if err != nil {
		return "", err
	}
	r := find(res.Untagged, "GENURLAUTH")
	if r == nil || len(r.Fields) != 1 {
		return "", failf("%s: expected one * GENURLAUTH url, got %s", shorten(cmd), describe(res.Untagged))
	}
	url, ok := imapcodec.AsString(r.Fields[0])
	if !ok {
		return "", failf("%s: * GENURLAUTH without a URL: %s", shorten(cmd), r.Line)
	}
	if !strings.HasPrefix(url, rump) || !regexp.MustCompile(`(?i)^:INTERNAL:[0-9a-f]{32,}$`).MatchString(url[len(rump):]) {
		return "", failf("%s: expected the URL with :INTERNAL:token appended, got %q", shorten(cmd), url)
	}
	return url, nil
}

// urlFetch runs URLFETCH for one URL and returns its data, or nil for
// NIL.
func urlFetch(c *Client, url string) ([]byte, error) {
	cmd := "URLFETCH " + quote(url)
	res, err := doOK(c, cmd)
	if err != nil {
		return nil, err
	}
	r := find(res.Untagged, "URLFETCH")
	if r == nil || len(r.Fields) != 2 {
		return nil, failf("%s: expected one * URLFETCH url data, got %s", shorten(cmd), describe(res.Untagged))
	}
	if got, _ := imapcodec.AsString(r.Fields[0]); got != url {
		return nil, failf("%s: * URLFETCH names %q", shorten(cmd), got)
	}
	if isAtom(r.Fields[1], "NIL") {
		return nil, nil
	}
	s, ok := r.Fields[1].(imapcodec.String)
	if !ok {
		return nil, failf("%s: * URLFETCH data is neither a string nor NIL: %s", shorten(cmd), r.Line)
	}
	return s.Data, nil
}

func urlauth4467() []*Scenario {
	return []*Scenario{
		{ID: "4467-genurlauth-urlfetch", RFC: 4467, Section: "6.1, 6.3", Level: Must, Caps: []string{"URLAUTH"},
			Summary: "GENURLAUTH appends :INTERNAL:token to the rump, and URLFETCH of the result answers exactly the section it names",
			Run: func(t *T) error {
				c, name, uid, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				url, err := genURLAuth(c, t.rump(t.cfg.User, name, uid, "/;SECTION=1;URLAUTH=user+"+t.cfg.User))
				if err != nil {
					return err
				}
				got, err := urlFetch(c, url)
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "EXAMINE", name, ""); err != nil {
					return err
				}
				want, err := fetchSection(c, uid, "1")
				if err != nil {
					return err
				}
				if got == nil || string(got) != want {
					return failf("URLFETCH %s answered %q, expected %q", url, shorten(string(got)), shorten(want))
				}
				return nil
			}},
		{ID: "4467-urlfetch-nil", RFC: 4467, Section: "6.3", Level: Must, Caps: []string{"URLAUTH"},
			Summary: "URLFETCH answers NIL for a URL without URLAUTH, with a changed token or with a changed rump, and completes OK",
			Run: func(t *T) error {
				c, name, uid, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				url, err := genURLAuth(c, t.rump(t.cfg.User, name, uid, ";URLAUTH=user+"+t.cfg.User))
				if err != nil {
					return err
				}
				i := strings.LastIndexByte(url, ':') + 1
				flip := "0"
				if url[i] == '0' {
					flip = "1"
				}
				for _, bad := range []string{
					t.rump(t.cfg.User, name, uid, ""),
					url[:i] + flip + url[i+1:],
					strings.Replace(url, fmt.Sprintf(";UID=%d;", uid), fmt.Sprintf(";UID=%d;", uid+1), 1),
				} {
					got, err := urlFetch(c, bad)
					if err != nil {
						return err
					}
					if got != nil {
						return failf("URLFETCH %s: expected NIL, got %q", bad, shorten(string(got)))
					}
				}
				return nil
			}},
		{ID: "4467-resetkey", RFC: 4467, Section: "6.2", Level: Must, Caps: []string{"URLAUTH"},
			Summary: "RESETKEY of a mailbox voids the URLs authorized before it",
			Run: func(t *T) error {
				c, name, uid, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				url, err := genURLAuth(c, t.rump(t.cfg.User, name, uid, ";URLAUTH=user+"+t.cfg.User))
				if err != nil {
					return err
				}
				if got, err := urlFetch(c, url); err != nil || got == nil {
					return failf("URLFETCH before RESETKEY: expected data, got %q (%v)", got, err)
				}
				if err := mustOK(c, "RESETKEY "+quote(name)); err != nil {
					return err
				}
				got, err := urlFetch(c, url)
				if err != nil {
					return err
				}
				if got != nil {
					return failf("URLFETCH after RESETKEY %s: expected NIL, got %q", name, shorten(string(got)))
				}
				return nil
			}},
		{ID: "4467-other-account", RFC: 4467, Section: "3", Level: Must, Caps: []string{"URLAUTH"},
			Summary: "a URL the second account authorized for itself alone (user+) answers NIL to the first account",
			Run: func(t *T) error {
				c2, err := t.Second()
				if err != nil {
					return err
				}
				other := t.Name2()
				if err := createFresh(c2, other); err != nil {
					return err
				}
				if res, err := c2.Append(other, "", []byte(catForwarded)); err != nil || !res.OK() {
					return failf("setup: APPEND in the second account: %v %s", err, status(res))
				}
				url, err := genURLAuth(c2, t.rump(t.cfg.User2, other, 1, ";URLAUTH=user+"+t.cfg.User2))
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				got, err := urlFetch(c, url)
				if err != nil {
					return err
				}
				if got != nil {
					return failf("URLFETCH of the second account's user+%s URL by %s: expected NIL, got %q", t.cfg.User2, t.cfg.User, shorten(string(got)))
				}
				return nil
			}},
		{ID: "4467-expired", RFC: 4467, Section: "3", Level: Must, Caps: []string{"URLAUTH"},
			Summary: "a URL whose ;EXPIRE= time has passed is refused by GENURLAUTH or answers NIL",
			Run: func(t *T) error {
				c, name, uid, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				rump := t.rump(t.cfg.User, name, uid, ";EXPIRE=2006-01-01T00:00:00Z;URLAUTH=user+"+t.cfg.User)
				res, err := c.Do("GENURLAUTH " + quote(rump) + " INTERNAL")
				if err != nil {
					return err
				}
				switch {
				case res.Status.Name == "NO":
					return nil // refused: as good as NIL
				case !res.OK():
					return failf("GENURLAUTH of an expired URL: expected OK or NO, got %q", status(res))
				}
				url, err := genURLAuth(c, rump)
				if err != nil {
					return err
				}
				got, err := urlFetch(c, url)
				if err != nil {
					return err
				}
				if got != nil {
					return failf("URLFETCH of an expired URL: expected NIL, got %q", shorten(string(got)))
				}
				return nil
			}},
		{ID: "4467-urlmech", RFC: 4467, Section: "4", Level: Should, Caps: []string{"URLAUTH"},
			Summary: "SELECT announces the mailbox's URLAUTH mechanisms: * OK [URLMECH INTERNAL ...]",
			Run: func(t *T) error {
				_, name, _, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				res, err := selectOK(c, "SELECT", name, "")
				if err != nil {
					return err
				}
				r := findCode(res.Untagged, "URLMECH")
				if r == nil || !strings.HasPrefix(strings.ToUpper(r.CodeArg), "INTERNAL") {
					return failf("SELECT %s: expected * OK [URLMECH INTERNAL], got %s", name, describe(res.Untagged))
				}
				return nil
			}},
		{ID: "4467-catenate", RFC: 4467, Section: "1", Level: Must, Caps: []string{"URLAUTH", "CATENATE"},
			Summary: "a URLAUTH-authorized URL is a valid URL part of APPEND CATENATE",
			Run: func(t *T) error {
				c, name, uid, err := t.urlauthSetup()
				if err != nil {
					return err
				}
				url, err := genURLAuth(c, t.rump(t.cfg.User, name, uid, "/;SECTION=1;URLAUTH=user+"+t.cfg.User))
				if err != nil {
					return err
				}
				head := "Subject: forwarded part\r\n\r\n"
				res, err := catCommand(c, []string{
					"APPEND " + quote(name) + " CATENATE (TEXT {" + fmt.Sprint(len(head)) + "}",
					` URL "` + url + `")`,
				}, []string{head})
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("APPEND CATENATE with a URLAUTH URL: expected OK, got %q", status(res))
				}
				all, err := t.uids(c, name)
				if err != nil {
					return err
				}
				if _, err := selectOK(c, "EXAMINE", name, ""); err != nil {
					return err
				}
				part, err := fetchSection(c, uid, "1")
				if err != nil {
					return err
				}
				got, err := fetchSection(c, all[len(all)-1], "")
				if err != nil {
					return err
				}
				if got != head+part {
					return failf("the message made is %q, expected %q", shorten(got), shorten(head+part))
				}
				return nil
			}},
	}
}
