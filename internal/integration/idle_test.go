package integration

import (
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestIdleRelay: a client idling through the proxy hears of a message
// delivered by another connection, also after the proxy has silently renewed
// the upstream IDLE, and ends the IDLE with DONE.
func TestIdleRelay(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			addr, _ := startProxy(t, dc.Addr, &idle.Extension{Reissue: 700 * time.Millisecond})
			c := dialRaw(t, addr)
			mustOK(t, c.cmd("LOGIN alice alicepass"))
			mustOK(t, c.cmd("SELECT INBOX"))
			if p == dovecottest.LegacyNoIdle {
				got := c.cmd("IDLE")
				if !strings.HasPrefix(last(got), "BAD") {
					t.Fatalf("IDLE without upstream IDLE: got %q, want BAD", got)
				}
				return
			}
			io.WriteString(c.nc, "i1 IDLE\r\n")
			if l := c.readLine(); l != "+ idling" {
				t.Fatalf("IDLE: got %q, want continuation", l)
			}
			exists := regexp.MustCompile(`^\* (\d+) EXISTS$`)
			for n := 1; n <= 2; n++ {
				if n == 2 {
					time.Sleep(1500 * time.Millisecond) // at least one renewal
				}
				dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(n, "pushed"))
				for {
					l := c.readLine()
					if m := exists.FindStringSubmatch(l); m != nil {
						if m[1] != string(rune('0'+n)) {
							t.Fatalf("got %q, want %d EXISTS", l, n)
						}
						break
					}
					if !strings.HasSuffix(l, "RECENT") {
						t.Fatalf("unexpected response during IDLE: %q", l)
					}
				}
			}
			io.WriteString(c.nc, "DONE\r\n")
			for {
				l := c.readLine()
				if strings.HasPrefix(l, "i1 ") {
					if !strings.HasPrefix(l, "i1 OK") {
						t.Fatalf("IDLE ended with %q", l)
					}
					break
				}
			}
			// The session goes on normally.
			got := mustOK(t, c.cmd("FETCH 1:* (FLAGS)"))
			if len(got) != 3 {
				t.Fatalf("FETCH after IDLE: %q", got)
			}
		})
	}
}

var _ proxy.Extension = (*idle.Extension)(nil)
