package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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
			host, port, _ := net.SplitHostPort(addr)
			dir := t.TempDir()
			local := filepath.Join(dir, "mail") + "/"
			cfg := fmt.Sprintf(`IMAPAccount proxy
Host %s
Port %s
User alice
Pass alicepass
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account proxy

MaildirStore local
Path %s
Inbox %sINBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
SyncState *
Sync All
`, host, port, local, local)
			if err := os.MkdirAll(local, 0o700); err != nil {
				t.Fatal(err)
			}
			rc := filepath.Join(dir, "mbsyncrc")
			if err := os.WriteFile(rc, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			run := func() {
				t.Helper()
				cmd := exec.Command(mbsync, "-c", rc, "-a")
				cmd.Env = append(os.Environ(), "HOME="+dir)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("mbsync: %v\n%s", err, out)
				}
			}
			run()
			got := map[string][]byte{}
			filepath.Walk(local, func(path string, info os.FileInfo, err error) error {
				if err != nil || info.IsDir() || !strings.Contains(path, "/cur/") && !strings.Contains(path, "/new/") {
					return nil
				}
				b, _ := os.ReadFile(path)
				for id := range want {
					if bytes.Contains(b, []byte("Message-ID: "+id)) {
						got[id] = b
					}
				}
				return nil
			})
			// mbsync stores messages with LF line ends and adds its own
			// X-TUID header while uploading; everything else must match.
			tuid := regexp.MustCompile(`(?m)^X-TUID: .*\n`)
			for id, m := range want {
				g := tuid.ReplaceAll(got[id], nil)
				if !bytes.Equal(g, bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))) {
					t.Errorf("message %s: synced copy differs (%d bytes, want %d)", id, len(got[id]), len(m))
				}
			}

			// Upload: a message created locally reaches the server.
			up := sampleMessage(200, "written on the phone")
			name := fmt.Sprintf("%d.local.lemon:2,S", time.Now().Unix())
			if err := os.WriteFile(filepath.Join(local, "INBOX", "cur", name), up, 0o600); err != nil {
				t.Fatal(err)
			}
			run()
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
