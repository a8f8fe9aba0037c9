package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestMadeUpNamesWaitForFailureDelay: a login routes, and so writes its
// account's lp_owners row, before the upstream checks the password. The
// route came before the failed-login delays of the client's address, so a
// client with many connections, each logging in as another made-up name
// at once, had its rows written at the node's full login rate, the delays
// holding back only the answers (session 18's notes). The route now waits
// its turn behind them: after a failure from the address, one login at a
// time is routed, each a failure delay after the last. It is so at the
// node that routes whether it serves the account or hands the login to
// another node (the owner's refusal counts there as a failure of the
// address).
func TestMadeUpNamesWaitForFailureDelay(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	const delay = 100 * time.Millisecond
	for _, forwarded := range []bool{false, true} {
		t.Run(fmt.Sprintf("forwarded=%v", forwarded), func(t *testing.T) {
			nodes := 1
			if forwarded {
				nodes = 2
			}
			c := startClusterWith(t, dc, nodes, 2*time.Second, func(cfg *proxy.Config) { cfg.AuthFailureDelay = delay })
			n1 := c.node("n1")
			if forwarded {
				// A draining n1 takes no account: every login it routes
				// goes to n2.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := cluster.Drain(ctx, c.db, "n1"); err != nil {
					t.Fatal(err)
				}
				waitUntil(t, 10*time.Second, "n1 to know it drains", func() bool { return n1.node.Stats().Draining })
			}
			first := imaptest.Dial(t, n1.addr)
			first.MustGreetOK()
			if got := imaptest.Tagged(first.Cmd("LOGIN madeup0 wrong")); !strings.HasPrefix(got, "NO [AUTHENTICATIONFAILED]") {
				t.Fatalf("LOGIN madeup0: %q", got)
			}
			// Four connections log in as four more names at once.
			var burst []*imaptest.Client
			for i := 1; i <= 4; i++ {
				cl := imaptest.Dial(t, n1.addr)
				cl.MustGreetOK()
				burst = append(burst, cl)
			}
			for i, cl := range burst {
				cl.Write(fmt.Sprintf("a LOGIN madeup%d wrong\r\n", i+1))
			}
			for i, cl := range burst {
				if got := imaptest.Tagged(cl.ReadUntilTagged("a")); !strings.HasPrefix(got, "NO [AUTHENTICATIONFAILED]") {
					t.Fatalf("LOGIN madeup%d: %q", i+1, got)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rows, err := n1.node.Pool().Query(ctx, `SELECT node, EXTRACT(EPOCH FROM since)::float8 FROM lp_owners ORDER BY since`)
			if err != nil {
				t.Fatal(err)
			}
			var since []float64
			for rows.Next() {
				var node string
				var at float64
				if err := rows.Scan(&node, &at); err != nil {
					t.Fatal(err)
				}
				if want := map[bool]string{false: "n1", true: "n2"}[forwarded]; node != want {
					t.Errorf("a row names %s, want %s", node, want)
				}
				since = append(since, at)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if len(since) != 5 {
				t.Fatalf("%d rows, want 5", len(since))
			}
			// Each was written at least a failure delay after the one
			// before, less the moments between a login's admission and its
			// row (half the delay is plenty).
			for i := 1; i < len(since); i++ {
				if gap := time.Duration((since[i] - since[i-1]) * float64(time.Second)); gap < delay/2 {
					t.Errorf("row %d written %v after row %d: the rows went at the login rate, not the failure delay's", i+1, gap, i)
				}
			}
		})
	}
}
