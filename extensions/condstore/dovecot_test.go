package condstore_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestDovecotLongSets: conditional commands on a mailbox of 12,000
// messages with a gap between each two UIDs (1, 3, ..., 23999), over
// Dovecot without CONDSTORE. The proxy answers CHANGEDSINCE and
// UNCHANGEDSINCE from its own mod-sequences and sends Dovecot a UID FETCH
// or STORE of the messages concerned; written as single UIDs those sets
// are 67 KB, past Dovecot's 64 KiB line, and Dovecot answered BAD for the
// client's short command. As runs over the expunged UIDs they are one
// range here.
func TestDovecotLongSets(t *testing.T) {
	const n = 12000
	srv := dovecottest.Start(t, dovecottest.Legacy)
	srv.FillWithGaps(t, "alice", "alicepass", "Big", n, func(i int) []byte {
		return fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i+1, i+1)
	})
	p := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	highest := func(lines []string) string {
		t.Helper()
		for _, l := range lines {
			if m := regexp.MustCompile(`HIGHESTMODSEQ (\d+)`).FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
		t.Fatalf("no HIGHESTMODSEQ in %.300q", lines)
		return ""
	}
	h0 := highest(c.MustOK("SELECT Big (CONDSTORE)"))

	// Another device marks everything read, directly on Dovecot.
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	d.MustOK("SELECT Big")
	d.MustOK(`UID STORE 1:* +FLAGS.SILENT (\Seen)`)
	d.MustOK("LOGOUT")
	// The proxy learns of the change from its watcher; the client hears
	// of it unsolicited.
	told := 0
	for deadline := time.Now().Add(30 * time.Second); told < n && time.Now().Before(deadline); {
		for _, l := range c.MustOK("NOOP") {
			if strings.Contains(l, `\Seen`) {
				told++
			}
		}
	}
	if told != n {
		t.Fatalf("told of %d changes, want %d", told, n)
	}

	lines := c.Do("f", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE "+h0+")")
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "f OK") {
		t.Fatalf("UID FETCH CHANGEDSINCE: %q", got)
	}
	seen := map[string]bool{}
	for _, l := range lines {
		if m := regexp.MustCompile(`^\* \d+ FETCH \(.*UID (\d+).*\\Seen`).FindStringSubmatch(l); m != nil {
			seen[m[1]] = true
		}
	}
	if len(seen) != n {
		t.Errorf("%d messages reported with \\Seen, want %d", len(seen), n)
	}

	h1 := highest(c.MustOK("STATUS Big (HIGHESTMODSEQ)"))
	lines = c.Do("s", `UID STORE 1:* (UNCHANGEDSINCE `+h1+`) +FLAGS.SILENT (\Flagged)`)
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "s OK") || strings.Contains(got, "MODIFIED") {
		t.Fatalf("UID STORE UNCHANGEDSINCE: %q", got)
	}
	if got := c.MustOK("UID SEARCH UNFLAGGED"); len(got) != 2 || got[0] != "* SEARCH" {
		t.Errorf("messages left without \\Flagged: %.300q", got)
	}
}
