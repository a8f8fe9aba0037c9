package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestIdle: a client idling through the proxy hears of a message delivered
// by another connection, also after the hub has renewed its upstream IDLE
// (or, without upstream IDLE, by polling), and ends the IDLE with DONE.
func TestIdle(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) { c.Hub.IdleRenew = 700 * time.Millisecond })
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN alice alicepass"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			c.Write("i1 IDLE\r\n")
			if l := c.ReadLine(); l != "+ idling" {
				t.Fatalf("IDLE: got %q, want continuation", l)
			}
			exists := regexp.MustCompile(`^\* (\d+) EXISTS$`)
			for n := 1; n <= 2; n++ {
				if n == 2 {
					time.Sleep(1500 * time.Millisecond) // at least one renewal
				}
				dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(n, "pushed"))
				for {
					l := c.ReadLine()
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
			c.Write("DONE\r\n")
			for {
				l := c.ReadLine()
				if strings.HasPrefix(l, "i1 ") {
					if !strings.HasPrefix(l, "i1 OK") {
						t.Fatalf("IDLE ended with %q", l)
					}
					break
				}
			}
			// The session goes on normally.
			got := mustOK(t, c.Cmd("FETCH 1:* (FLAGS)"))
			if len(got) != 3 {
				t.Fatalf("FETCH after IDLE: %q", got)
			}
		})
	}
}
