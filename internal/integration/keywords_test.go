package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

// A FETCH response may show a keyword only after a FLAGS response has
// named it (RFC 3501 7.2.6). Where the proxy shows the state's flags
// rather than the leased connection's answer, a keyword another session
// has just created can be in them and not in any FLAGS the client got
// from the upstream. Found by imaptest's stress in session 19 ("Keyword
// used without being in FLAGS").

// startKeywordRace starts a proxy with CONDSTORE over a faultnet relay to
// Dovecot, whose INBOX has one message, and logs in b, which has INBOX
// selected (the mailbox's watcher runs) and will create the keyword.
func startKeywordRace(t *testing.T, p dovecottest.Profile) (fn *faultnet.Relay, addr string, b *imaptest.Client) {
	t.Helper()
	dc, d := startDovecotUser(t, p)
	mustOK(t, d.Cmd(`APPEND INBOX (\Seen) {7+}`+"\r\nSubj: 1"))
	fn = faultnet.Start(t, dc.Addr)
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() }) // after the proxy's shutdown
	addr, _ = startProxy(t, fn.Addr(), func(c *proxy.Config) {
		c.Extensions = []proxy.Extension{condstore.New()}
		c.Hub.Store = store
	})
	b = dialRaw(t, addr)
	mustOK(t, b.Cmd("LOGIN u pw"))
	mustOK(t, b.Cmd("SELECT INBOX"))
	return fn, addr, b
}

// keywordWhileHeld sends command on c, holds the upstream's answer to it
// (from the first match of held on) until b has created the keyword
// $Fresh on message 1, and returns c's answer.
func keywordWhileHeld(t *testing.T, fn *faultnet.Relay, b, c *imaptest.Client, held, command string) []string {
	t.Helper()
	h := fn.Add(faultnet.Fault{Match: []byte(held), MatchDir: faultnet.ToClient, Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	c.Send("k " + command)
	select {
	case <-h.Fired():
	case <-time.After(10 * time.Second):
		t.Fatalf("no answer to %s reached the relay", command)
	}
	mustOK(t, b.Cmd("STORE 1 +FLAGS ($Fresh)"))
	h.Release()
	r := c.ReadUntilTagged("k")
	if !strings.HasPrefix(r[len(r)-1], "k OK") {
		t.Fatalf("%s: %q", command, r)
	}
	return r
}

// checkAnnounced fails unless r has a FETCH showing $Fresh, and a FLAGS
// response naming it before that.
func checkAnnounced(t *testing.T, r []string) {
	t.Helper()
	told, shown := false, false
	for _, l := range r {
		switch {
		case strings.HasPrefix(l, "* FLAGS "):
			told = strings.Contains(l, "$Fresh")
		case strings.Contains(l, " FETCH ") && strings.Contains(l, "$Fresh"):
			shown = true
			if !told {
				t.Errorf("%q names $Fresh before any FLAGS response does: %q", l, r)
			}
		}
	}
	if !shown {
		t.Errorf("no FETCH shows $Fresh: %q", r)
	}
}

// TestKeywordOfStateAnnounced: a FETCH of FLAGS with CONDSTORE enabled,
// whose upstream answer was on its way while b created the keyword (the
// proxy then shows the state's flags beside the state's MODSEQ).
func TestKeywordOfStateAnnounced(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			fn, addr, b := startKeywordRace(t, p)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX (CONDSTORE)"))
			// RFC822.SIZE: only c's FETCH has it.
			r := keywordWhileHeld(t, fn, b, c, "RFC822.SIZE", "FETCH 1 (FLAGS RFC822.SIZE)")
			checkAnnounced(t, r)
		})
	}
}

var highestModSeqRE = regexp.MustCompile(`\[HIGHESTMODSEQ (\d+)\]`)

// TestKeywordOfResyncAnnounced: a QRESYNC SELECT reports the messages
// changed since the client's mod-sequence from the state; the keyword b
// created after the upstream answered the SELECT's FLAGS is announced
// before the FETCH that shows it.
func TestKeywordOfResyncAnnounced(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			fn, addr, b := startKeywordRace(t, p)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("ENABLE QRESYNC"))
			r := mustOK(t, c.Cmd("SELECT INBOX"))
			var uv, highest string
			for _, l := range r {
				if m := highestModSeqRE.FindStringSubmatch(l); m != nil {
					highest = m[1]
				}
				if v, ok := strings.CutPrefix(l, "* OK [UIDVALIDITY "); ok {
					uv, _, _ = strings.Cut(v, "]")
				}
			}
			if uv == "" || highest == "" {
				t.Fatalf("SELECT without UIDVALIDITY or HIGHESTMODSEQ: %q", r)
			}
			mustOK(t, c.Cmd("UNSELECT"))
			// "* FLAGS": the answer to c's SELECT is held from its
			// FLAGS response on (b's connection is idle meanwhile).
			r = keywordWhileHeld(t, fn, b, c, "* FLAGS", fmt.Sprintf("SELECT INBOX (QRESYNC (%s %s))", uv, highest))
			checkAnnounced(t, r)
		})
	}
}
