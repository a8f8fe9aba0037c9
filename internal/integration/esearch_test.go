package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"reflect"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestESearchImapFlow: ImapFlow searches with ESEARCH result options
// through the proxy in front of Dovecot's legacy profile, which advertises
// no ESEARCH: the proxy advertises it, ImapFlow uses it, and the answers
// the proxy synthesizes are what ImapFlow's parser makes the right results
// of (the same as Dovecot's own ESEARCH gives it directly, Full profile).
func TestESearchImapFlow(t *testing.T) {
	node := requireImapFlow(t)
	want := map[string]any{}
	for _, profile := range []dovecottest.Profile{dovecottest.Full, dovecottest.Legacy} {
		dc := dovecottest.Start(t, profile)
		for i := 1; i <= 8; i++ {
			var flags []string
			if i%3 == 0 {
				flags = []string{`\Flagged`}
			}
			if i <= 2 {
				flags = append(flags, `\Seen`)
			}
			dc.Append(t, "alice", "alicepass", "INBOX", flags, sampleMessage(i, fmt.Sprintf("body %d", i)))
		}
		addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) {
			c.Extensions = []proxy.Extension{idle.New(), esearch.New(), condstore.New()}
		})
		got := imapflowESearch(t, node, addr)
		if got["esearch"] != true {
			t.Fatalf("%s: ImapFlow saw no ESEARCH through the proxy", profile)
		}
		if profile == dovecottest.Full {
			want = imapflowESearch(t, node, dc.Addr)
			flagged := map[string]any{"min": 3.0, "max": 6.0, "count": 2.0, "all": "3,6"}
			if !reflect.DeepEqual(want["flagged"], flagged) {
				t.Fatalf("Dovecot directly: %v, want %v", want["flagged"], flagged)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: through the proxy %v\ndirectly on Full %v", profile, got, want)
		}
	}
}

func imapflowESearch(t *testing.T, node, addr string) map[string]any {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(node, "imapflow_esearch.mjs", host, port, "alice", "alicepass")
	cmd.Dir = "testdata/node"
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("imapflow: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("imapflow output: %v: %.300s", err, out)
	}
	return res
}
