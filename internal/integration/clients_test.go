package integration

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// TestPythonImaplib runs a whole imaplib session through the proxy in each
// Dovecot profile.
func TestPythonImaplib(t *testing.T) {
	py := requireTool(t, "python3")
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			addr, _ := startProxy(t, dc.Addr)
			host, port, _ := net.SplitHostPort(addr)
			out, err := exec.Command(py, "testdata/imaplib_session.py", host, port, "alice", "alicepass").CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("PASS")) {
				t.Fatalf("imaplib session failed: %v\n%s", err, out)
			}
		})
	}
}

// TestMbsync syncs a seeded mailbox through the proxy with mbsync (isync) and
// checks that every message arrives byte for byte, then that a message
// created locally is uploaded.
func TestMbsync(t *testing.T) {
	mbsync := requireTool(t, "mbsync")
	for _, p := range []dovecottest.Profile{dovecottest.Full, dovecottest.Legacy} {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			want := map[string][]byte{}
			for i := 1; i <= 20; i++ {
				m := sampleMessage(i, strings.Repeat(fmt.Sprintf("line %d of message %d\r\n", i, i), i*10))
				dc.Append(t, "alice", "alicepass", "INBOX", nil, m)
				want[fmt.Sprintf("<m%d@example.org>", i)] = m
			}
			m := sampleMessage(100, "in a folder")
			dc.Append(t, "alice", "alicepass", "Work", []string{`\Seen`}, m)
			want["<m100@example.org>"] = m

			addr, _ := startProxy(t, dc.Addr)
			sync := newMbsync(t, mbsync, addr, mbsyncOpts{folder: "*"})
			sync.run()
			sync.checkSynced(want)

			// Upload: a message created locally reaches the server.
			sync.upload(sampleMessage(200, "written on the phone"))
			sync.run()
			c := dialRaw(t, dc.Addr)
			mustOK(t, c.Cmd("LOGIN alice alicepass"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			lines := mustOK(t, c.Cmd(`UID SEARCH HEADER Message-ID "<m200@example.org>"`))
			if lines[0] == "* SEARCH" {
				t.Fatalf("uploaded message not on the server: %q", lines)
			}
		})
	}
}
