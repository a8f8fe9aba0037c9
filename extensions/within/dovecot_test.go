package within

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// dovecotMailbox are ages in seconds, a few apart so that the second a
// search takes cannot change its answer, at the boundaries searched below.
var dovecotMailbox = []int{864000, 172800, 3700, 3500, 60, 3800, 86500, 86300}

// dovecotSearches are the searches TestDovecot compares.
var dovecotSearches = []string{
	"SEARCH YOUNGER 3600",
	"SEARCH OLDER 3600",
	"UID SEARCH OLDER 86400",
	"SEARCH YOUNGER 86400",
	"SEARCH OR YOUNGER 120 OLDER 100000",
	"SEARCH NOT YOUNGER 3600",
	"SEARCH YOUNGER 1",
	"SEARCH OLDER 1",
	"SEARCH UNSEEN YOUNGER 259200",
	"SEARCH RETURN (MIN MAX COUNT) YOUNGER 3600",
	"UID SEARCH RETURN (ALL) OLDER 3600",
	"SEARCH RETURN (COUNT) YOUNGER 1",
}

// TestDovecot compares the proxy's synthesized WITHIN, in front of
// Dovecot's Legacy profile, with Dovecot's own, in its Full profile
// directly, for the same mailbox; and checks that the proxy relays the
// Full profile's WITHIN (the answers through it are Dovecot's).
func TestDovecot(t *testing.T) {
	now := time.Now()
	answers := map[string][]string{}
	for _, target := range []string{"full-direct", "legacy-proxy", "full-proxy"} {
		t.Run(target, func(t *testing.T) {
			profile := dovecottest.Legacy
			if strings.HasPrefix(target, "full") {
				profile = dovecottest.Full
			}
			dc := dovecottest.Start(t, profile)
			addr := dc.Addr
			if strings.HasSuffix(target, "proxy") {
				addr = imaptest.StartProxy(t, dc.Addr, proxy.Config{
					Extensions: []proxy.Extension{New(), esearch.New(), condstore.New()},
				}).Addr
			}
			c := imaptest.Login(t, addr, "alice", "alicepass")
			if caps := c.MustOK("CAPABILITY")[0]; !strings.Contains(caps, " WITHIN") {
				t.Fatalf("capabilities: %q", caps)
			}
			for i, age := range dovecotMailbox {
				msg := fmt.Sprintf("Subject: message %d\r\n\r\nbody %d\r\n", i+1, i+1)
				flags := "()"
				if i == 3 {
					flags = `(\Seen)`
				}
				c.MustOK(fmt.Sprintf(`APPEND INBOX %s "%s" {%d}`, flags, internalDate(now, age, []string{"+0000", "-1100", "+1400", "+0200"}[i%4]), len(msg)), msg)
			}
			c.MustOK("SELECT INBOX")
			for _, cmd := range dovecotSearches {
				got := c.Do("w", cmd)
				if !strings.HasPrefix(got[len(got)-1], "w OK") {
					t.Errorf("%s: %q", cmd, got)
				}
				got = got[:len(got)-1]
				want, ok := answers[cmd]
				if !ok {
					answers[cmd] = got
					continue
				}
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("%s: got %q, Dovecot's own %q", cmd, got, want)
				}
			}
		})
	}
	if len(answers) == 0 {
		return // every subtest skipped: no Dovecot here, or -short
	}
	if got := answers["SEARCH YOUNGER 3600"]; len(got) != 1 || got[0] != "* SEARCH 4 5" {
		t.Errorf("Dovecot's YOUNGER 3600: %q", got)
	}
}
