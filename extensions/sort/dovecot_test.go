package sort

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// dovecotMailbox is testMailbox and messages whose keys need more of RFC
// 5256's rules: subject leaders and wrappers, encoded words, zones.
var dovecotMailbox = append(append([]testMessage{}, testMailbox...),
	testMessage{"02-Jan-2024 12:00:00 +0100", "Date: Tue, 2 Jan 2024 09:00:00 EST\r\nFrom: \"Quinn, Q.\" <q@x.example>\r\nTo: \"Anna\" <zed@x.example>\r\nSubject: [Fwd: Re: [list] Banana (fwd)]\r\n", "b"},
	testMessage{"02-Jan-2024 12:00:00 +0000", "Date: 2 Jan 2024 13:00 +0000\r\nFrom: =?ISO-8859-1?Q?=C5sa?= <asa@x.example>\r\nCc: Bea <bea@x.example>, amy@x.example\r\nSubject: RE: Re[3]: =?UTF-8?B?w4RwZmVs?=\r\n", "c"},
	testMessage{"31-Dec-2023 23:59:59 -0100", "Date: Sun, 31 Dec 2023 23:59:59 -0100\r\nFrom: <MIXED@Case.Example>\r\nTo: Ünal <u@x.example>\r\nSubject: re:   spaced\t out  \r\n", "d"},
	testMessage{"01-Jan-2024 00:00:00 +0000", "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: [a] [b]\r\n", "e"},
	// RFC 5322's leap second and military zones, which Dovecot takes;
	// arrived long after they were sent, so that falling back to
	// INTERNALDATE shows.
	testMessage{"01-Jan-2030 00:00:00 +0000", "Date: Sun, 31 Dec 2023 23:59:60 -0100\r\nSubject: leap\r\n", "f"},
	testMessage{"01-Jan-2040 00:00:00 +0000", "Date: Mon, 1 Jan 2024 00:00:01 Z\r\nSubject: zulu\r\n", "g"},
)

var dovecotCriteria = []string{
	"ARRIVAL", "REVERSE ARRIVAL", "DATE", "REVERSE DATE", "SIZE", "SUBJECT", "FROM", "TO", "CC",
	"DISPLAYFROM", "DISPLAYTO", "SUBJECT DATE", "FROM REVERSE SUBJECT", "REVERSE TO ARRIVAL",
}

// fillDovecot appends dovecotMailbox to alice's INBOX directly.
func fillDovecot(t *testing.T, dc *dovecottest.Server) {
	c := imaptest.Dial(t, dc.Addr)
	c.MustGreetOK()
	c.MustOK("LOGIN alice alicepass")
	for _, m := range dovecotMailbox {
		appendMessage(c, m)
	}
	c.Close()
}

func sortAll(c *imaptest.Client, prefix string) map[string][]string {
	out := map[string][]string{}
	for _, crit := range dovecotCriteria {
		out[crit] = c.Cmd(prefix + "SORT (" + crit + ") UTF-8 ALL")
	}
	return out
}

// TestDovecot compares the proxy's SORT over the legacy profile (no SORT:
// synthesized) with Dovecot's own SORT, directly and relayed by the proxy
// over the full profile, on the same messages: they must agree on every
// key. It also checks ESORT both ways.
func TestDovecot(t *testing.T) {
	full := dovecottest.Start(t, dovecottest.Full)
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	fillDovecot(t, full)
	fillDovecot(t, legacy)

	direct := imaptest.Dial(t, full.Addr)
	direct.MustGreetOK()
	direct.MustOK("LOGIN alice alicepass")
	direct.MustOK("SELECT INBOX")
	want := sortAll(direct, "")
	wantUID := sortAll(direct, "UID ")

	for _, tc := range []struct {
		name string
		dc   *dovecottest.Server
	}{{"legacy", legacy}, {"full", full}} {
		t.Run(tc.name, func(t *testing.T) {
			p := imaptest.StartProxy(t, tc.dc.Addr, proxy.Config{
				Extensions: []proxy.Extension{New(Config{}), condstore.New()},
			})
			c := imaptest.Login(t, p.Addr, "alice", "alicepass")
			caps := " " + c.MustOK("CAPABILITY")[0] + " "
			for _, w := range []string{" SORT ", " ESORT ", " SORT=DISPLAY "} {
				if !strings.Contains(caps, w) {
					t.Errorf("capabilities lack %s: %q", w, caps)
				}
			}
			c.MustOK("SELECT INBOX")
			got, gotUID := sortAll(c, ""), sortAll(c, "UID ")
			for _, crit := range dovecotCriteria {
				if g, w := got[crit][0], want[crit][0]; g != w {
					t.Errorf("SORT (%s): proxy %q, Dovecot %q", crit, g, w)
				}
				if g, w := gotUID[crit][0], wantUID[crit][0]; g != w {
					t.Errorf("UID SORT (%s): proxy %q, Dovecot %q", crit, g, w)
				}
			}
			for i, cmd := range []string{
				"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL",
				"UID SORT RETURN (ALL) (REVERSE SUBJECT) UTF-8 ALL",
				"SORT RETURN (COUNT) (ARRIVAL) UTF-8 FROM x.example",
				"SORT RETURN (MIN) (ARRIVAL) UTF-8 FROM nobody",
			} {
				tag := fmt.Sprintf("e%d", i)
				g, w := c.Do(tag, cmd), direct.Do(tag, cmd)
				if esortItems(g[0]) != esortItems(w[0]) {
					t.Errorf("%s: proxy %q, Dovecot %q", cmd, g[0], w[0])
				}
			}
		})
	}
}

// esortItems puts an ESEARCH response's items in a fixed order (RFC 4731
// does not order them: Dovecot writes COUNT last) and writes ALL's set as
// the plain list of numbers in its order (5:7 is 5,6,7), for comparison.
func esortItems(line string) string {
	f := strings.Fields(line)
	i := 0
	for i < len(f) && !slices.Contains([]string{"MIN", "MAX", "COUNT", "ALL"}, f[i]) {
		i++
	}
	var pairs []string
	for j := i; j+1 < len(f); j += 2 {
		v := f[j+1]
		if f[j] == "ALL" {
			var nums []string
			for _, el := range strings.Split(v, ",") {
				lo, hi, _ := strings.Cut(el, ":")
				a, _ := strconv.Atoi(lo)
				b := a
				if hi != "" {
					b, _ = strconv.Atoi(hi)
				}
				for n := a; n <= b; n++ {
					nums = append(nums, strconv.Itoa(n))
				}
			}
			v = strings.Join(nums, ",")
		}
		pairs = append(pairs, f[j]+" "+v)
	}
	slices.Sort(pairs)
	return strings.Join(f[:i], " ") + " | " + strings.Join(pairs, ", ")
}

// TestDovecotSortWithoutESort: over an upstream with SORT but neither
// ESORT nor SORT=DISPLAY, a SORT is relayed, a SORT RETURN goes upstream
// without RETURN and its answer becomes ESEARCH, and a DISPLAY sort is the
// proxy's; all agree with Dovecot's full profile on the same messages.
func TestDovecotSortWithoutESort(t *testing.T) {
	full := dovecottest.Start(t, dovecottest.Full)
	sortOnly := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{ExtraCaps: []string{"SORT"}})
	fillDovecot(t, full)
	fillDovecot(t, sortOnly)
	direct := imaptest.Dial(t, full.Addr)
	direct.MustGreetOK()
	direct.MustOK("LOGIN alice alicepass")
	direct.MustOK("SELECT INBOX")

	ext := New(Config{})
	p := imaptest.StartProxy(t, sortOnly.Addr, proxy.Config{Extensions: []proxy.Extension{ext, condstore.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	caps := " " + c.MustOK("CAPABILITY")[0] + " "
	for _, w := range []string{" SORT ", " ESORT ", " SORT=DISPLAY "} {
		if strings.Count(caps, w) != 1 {
			t.Errorf("capabilities should have %s once: %q", w, caps)
		}
	}
	c.MustOK("SELECT INBOX")
	for i, cmd := range []string{
		"SORT (SUBJECT) UTF-8 ALL",
		"UID SORT (REVERSE DATE) UTF-8 ALL",
		"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL",
		"UID SORT RETURN (ALL) (REVERSE SUBJECT) UTF-8 ALL",
		"SORT RETURN (MIN) (ARRIVAL) UTF-8 FROM nobody",
		"SORT (DISPLAYFROM) UTF-8 ALL",
		"UID SORT RETURN (ALL) (DISPLAYTO) UTF-8 ALL",
	} {
		tag := fmt.Sprintf("w%d", i)
		g, w := c.Do(tag, cmd), direct.Do(tag, cmd)
		if esortItems(g[0]) != esortItems(w[0]) || !strings.HasPrefix(g[len(g)-1], tag+" OK") {
			t.Errorf("%s: proxy %q, Dovecot %q", cmd, g, w[0])
		}
	}
	// Only the DISPLAY sorts were the proxy's: it fetched keys for them.
	if n := ext.cache.fetched.Load(); n != int64(len(dovecotMailbox)) {
		t.Errorf("fetched %d messages' keys, want %d (for the DISPLAY sorts only)", n, len(dovecotMailbox))
	}
}
