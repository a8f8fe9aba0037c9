package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestSeqFetchPipelined: a client that pipelines FETCHes by sequence
// numbers (headers of many messages at once, as imaptest's stress and
// most clients' downloads do) gets through the proxy, which sends them
// upstream ahead of their turn (proxy/ahead.go), exactly Dovecot's own
// answers: every message's data once, under its sequence number, whichever
// command's turn it came in (Dovecot runs such FETCHes at once and may
// interleave their answers), each command answered OK in order. With the
// whole extension chain, whose FETCH handlers must let them go ahead.
func TestSeqFetchPipelined(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc, d := startDovecotUser(t, p)
			const n = 30
			for i := range n {
				mustOK(t, d.Cmd(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(sampleMessage(i, "body")), sampleMessage(i, "body"))))
			}
			mustOK(t, d.Cmd("SELECT INBOX"))
			mustOK(t, d.Cmd("STORE 3:9 +FLAGS (\\Flagged)"))
			addr, srv := startProxy(t, dc.Addr, func(c *proxy.Config) { c.Extensions = chain.Extensions(chain.Config{}) })
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX"))

			for _, items := range []string{
				"(UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])",
				"(FLAGS RFC822.SIZE ENVELOPE)",
			} {
				var batch strings.Builder
				for i := range n {
					fmt.Fprintf(&batch, "f%d FETCH %d:%d %s\r\n", i, i+1, min(i+2, n), items)
				}
				before := srv.Stats().CommandsAhead
				direct, proxied := pipelinedFetches(t, d, batch.String(), n), pipelinedFetches(t, c, batch.String(), n)
				if !slices.Equal(direct, proxied) {
					t.Fatalf("%s: FETCH answers through the proxy differ from Dovecot's own:\n proxy %q\nDovecot %q", items, proxied, direct)
				}
				if len(direct) != 2*n-1 {
					t.Fatalf("%s: %d FETCH responses, want %d", items, len(direct), 2*n-1)
				}
				if srv.Stats().CommandsAhead == before {
					t.Errorf("%s: no FETCH went upstream ahead of its turn", items)
				}
			}
		})
	}
}

// pipelinedFetches writes batch, n FETCH commands tagged f0..f(n-1), reads
// every answer (each tagged OK, in order) and returns the FETCH responses
// of all of them, sorted, without \Recent (the proxy's is its own, and the
// direct client selected the mailbox first).
func pipelinedFetches(t *testing.T, c *imaptest.Client, batch string, n int) []string {
	t.Helper()
	c.WriteBytes([]byte(batch))
	var fetches []string
	for i := range n {
		got := c.ReadUntilTagged(fmt.Sprintf("f%d", i))
		if tagged := imaptest.Tagged(got); !strings.HasPrefix(tagged, "OK") {
			t.Fatalf("f%d: %q", i, got)
		}
		for _, l := range got {
			if strings.HasPrefix(l, "* ") && strings.Contains(l, " FETCH (") {
				l = strings.NewReplacer(` \Recent`, "", `\Recent `, "", `\Recent`, "").Replace(l)
				fetches = append(fetches, l)
			}
		}
	}
	slices.Sort(fetches)
	return fetches
}
