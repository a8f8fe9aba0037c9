package esearch_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestDovecot runs the RFC examples through the proxy in front of Dovecot:
// the Legacy profile advertises no ESEARCH (though Dovecot would execute
// it), so the proxy synthesizes; the Full profile has ESEARCH, which the
// proxy relays, and SEARCHRES, which it does not (the saved result of a
// pooled connection is not the session's), so "$" is the proxy's on both.
func TestDovecot(t *testing.T) {
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, profile)
			for i, m := range rfcMailbox {
				var flags []string
				for _, f := range m.flags {
					flags = append(flags, string(f))
				}
				dc.Append(t, "alice", "alicepass", "INBOX", flags,
					fmt.Appendf(nil, "From: %s\r\nSubject: message %d\r\n\r\nbody %d\r\n", m.from, i+1, i+1))
			}
			p := imaptest.StartProxy(t, dc.Addr, proxy.Config{
				Extensions: []proxy.Extension{esearch.New(), condstore.New()},
			})
			c := imaptest.Login(t, p.Addr, "alice", "alicepass")
			caps := c.MustOK("CAPABILITY")[0]
			if !strings.Contains(caps, " ESEARCH") || !strings.Contains(caps, " SEARCHRES") {
				t.Fatalf("capabilities: %q", caps)
			}
			c.MustOK("SELECT INBOX")
			for _, tc := range []struct{ tag, cmd, want string }{
				{"A282", `SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`, `* ESEARCH (TAG "A282") MIN 2 COUNT 3`},
				{"A283", `SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`, `* ESEARCH (TAG "A283") ALL 2,10:11`},
				{"A284", `SEARCH RETURN (MIN) UNSEEN`, `* ESEARCH (TAG "A284") MIN 4`},
				{"A285", `UID SEARCH RETURN (MIN MAX) 1:5000`, `* ESEARCH (TAG "A285") UID MIN 1 MAX 11`},
				{"t1", "SEARCH RETURN (COUNT) 1000", `* ESEARCH (TAG "t1") COUNT 0`},
				{"t2", "UID SEARCH RETURN (MIN) 1000", `* ESEARCH (TAG "t2") UID`},
				{"t3", "SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED", `* ESEARCH (TAG "t3") MIN 1 MAX 11 COUNT 5 ALL 1:2,5,10:11`},
			} {
				got := c.Do(tc.tag, tc.cmd)
				if len(got) != 2 || items(got[0]) != items(tc.want) || !strings.HasPrefix(got[1], tc.tag+" OK") {
					t.Errorf("%s:\n got  %q\n want %q", tc.cmd, got, tc.want)
				}
			}
			c.ExpectDo("s1", `SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"`, "s1 OK *")
			c.ExpectDo("s2", "FETCH $ (UID)", "* 2 FETCH (UID 2)", "* 10 FETCH (UID 10)", "* 11 FETCH (UID 11)", "s2 OK *")
			c.ExpectDo("s3", "SEARCH RETURN (MIN MAX SAVE) FLAGGED", `* ESEARCH (TAG "s3") MIN 1 MAX 11`, "s3 OK *")
			c.ExpectDo("s4", "UID SEARCH $", "* SEARCH 1 11", "s4 OK *")
			c.ExpectDo("s5", "SEARCH RETURN (SAVE) CHARSET X-NO-SUCH-CHARSET ALL", "s5 NO *")
			c.ExpectDo("s6", "FETCH $ (UID)", "s6 OK FETCH completed, no messages.")
		})
	}
}

// items puts an ESEARCH response's result items in a fixed order: RFC
// 4731 does not order them, and Dovecot's order need not be the proxy's.
func items(line string) string {
	f := strings.Fields(line)
	i := 0
	for i < len(f) && !slices.Contains([]string{"MIN", "MAX", "COUNT", "ALL", "MODSEQ"}, f[i]) {
		i++
	}
	var pairs []string
	for j := i; j+1 < len(f); j += 2 {
		pairs = append(pairs, f[j]+" "+f[j+1])
	}
	slices.Sort(pairs)
	return strings.Join(f[:i], " ") + " | " + strings.Join(pairs, ", ")
}

// TestDovecotSavedResultWithGaps: a result saved on a mailbox of 12,000
// messages with a gap between each two UIDs (1, 3, ..., 23999) is used as
// "$". It names every message, and as single UIDs its set is 67 KB, past
// Dovecot's 64 KiB line (BAD Too long argument); the saved spans run over
// the expunged UIDs, so "$" goes upstream as one range.
func TestDovecotSavedResultWithGaps(t *testing.T) {
	srv := dovecottest.Start(t, dovecottest.Legacy)
	srv.FillWithGaps(t, "alice", "alicepass", "Big", 12000, func(i int) []byte {
		return fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i+1, i+1)
	})
	p := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{esearch.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("SELECT Big")
	c.MustOK("UID SEARCH RETURN (SAVE) ALL")
	if got := imaptest.Tagged(c.Cmd(`UID STORE $ +FLAGS.SILENT (\Flagged)`)); !strings.HasPrefix(got, "OK") {
		t.Fatalf("UID STORE $: %q", got)
	}
	if got := c.MustOK("UID SEARCH UNFLAGGED"); len(got) != 2 || got[0] != "* SEARCH" {
		t.Errorf("messages left without \\Flagged: %.300q", got)
	}
	if got := c.MustOK("SEARCH $ FLAGGED"); len(got) != 2 || !strings.HasPrefix(got[0], "* SEARCH 1 2 3 ") || !strings.HasSuffix(got[0], " 12000") {
		t.Errorf("SEARCH $ FLAGGED: %.100q", got)
	}
}
