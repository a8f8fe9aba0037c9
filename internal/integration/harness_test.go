// Package integration tests lemonproxy end to end against real Dovecot
// servers (internal/dovecottest) and real clients (Python's imaplib, mbsync).
package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

var profiles = []dovecottest.Profile{dovecottest.Full, dovecottest.Legacy, dovecottest.LegacyNoIdle}

// startProxy runs a proxy in front of upstreamAddr and returns its address.
// It wraps imaptest.StartProxy with this package's defaults, which the
// tests rely on: IDLE, a 10 s upstream timeout (Dovecot under a loaded CI
// machine is slow) and a 300 ms poll interval, so that polling upstreams
// are noticed within a test's patience; opts edit the result.
func startProxy(t testing.TB, upstreamAddr string, opts ...func(*proxy.Config)) (string, *proxy.Server) {
	t.Helper()
	cfg := proxy.Config{
		Upstream:   upstream.Config{Timeout: 10 * time.Second},
		Extensions: []proxy.Extension{idle.New()},
	}
	cfg.Hub.PollInterval = 300 * time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	p := imaptest.StartProxy(t, upstreamAddr, cfg)
	return p.Addr, p.Srv
}

// requireImapFlow returns the Node.js that runs the ImapFlow scripts of
// testdata/node: the one npm ci installs there with imapflow (the "node"
// package pinned by package-lock.json), not the system's, because
// imapflow needs Node 20 and Debian 12's is 18 (docs/hardening.md,
// "Test machine"). Missing in CI is a failure, elsewhere a skip.
func requireImapFlow(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs ImapFlow; skipped under -short")
	}
	node, err := filepath.Abs("testdata/node/node_modules/.bin/node")
	if err == nil {
		_, err = os.Stat("testdata/node/node_modules/imapflow")
	}
	if err == nil {
		_, err = os.Stat(node)
	}
	if err != nil {
		if os.Getenv(dovecottest.RequireEnv) == "1" {
			t.Fatalf("imapflow or its Node.js not installed (scripts/test.sh runs npm ci in testdata/node): %v", err)
		}
		t.Skip("imapflow not installed: run npm ci in internal/integration/testdata/node")
	}
	return node
}

// requireTool finds a client program; missing in CI (where the test script
// installs it) is a failure, elsewhere a skip. Under -short it always skips:
// external clients belong to the full tier.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s; skipped under -short", name)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(dovecottest.RequireEnv) == "1" {
			t.Fatalf("%s not installed (scripts/test.sh installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// dialRaw connects a scripted client to addr. Reads wait up to 20 s rather
// than the harness's 10: Dovecot with the race detector on a small CI
// machine can take that long over a big FETCH.
func dialRaw(t testing.TB, addr string) *imaptest.Client {
	t.Helper()
	c := imaptest.Dial(t, addr)
	c.Timeout = 20 * time.Second
	return c
}

// startDovecotUser starts Dovecot in profile p with the user u
// (password pw) and returns it with a client logged in as u directly on
// it: "another client" beside the proxy's.
func startDovecotUser(t testing.TB, p dovecottest.Profile) (*dovecottest.Server, *imaptest.Client) {
	t.Helper()
	dc := dovecottest.Start(t, p)
	dc.AddUser(t, "u", "pw")
	d := dialRaw(t, dc.Addr)
	mustOK(t, d.Cmd("LOGIN u pw"))
	return dc, d
}

// mustOK fails the test unless a response ends in a tagged OK.
func mustOK(t testing.TB, lines []string) []string {
	t.Helper()
	if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		t.Fatalf("want OK, got %q", lines)
	}
	return lines
}

func sampleMessage(i int, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender %d <s%d@example.org>\r\nTo: rcpt@example.org\r\nSubject: message %d\r\nDate: Mon, 2 Nov 2026 10:%02d:00 +0000\r\nMessage-ID: <m%d@example.org>\r\n\r\n%s\r\n", i, i, i, i%60, i, body)
	return b.Bytes()
}
