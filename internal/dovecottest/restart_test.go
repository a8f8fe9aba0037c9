package dovecottest

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRestart: Restart disconnects clients, runs whileDown with no server
// listening, and serves the same port and mail data again, including a
// message a test dropped into the maildir meanwhile.
func TestRestart(t *testing.T) {
	s := Start(t, Legacy)
	addr := s.Addr
	s.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: one\r\n\r\nbody\r\n"))
	c := dialRaw(t, s)
	c.readLine() // greeting
	c.command("a", "LOGIN alice alicepass")

	s.Restart(t, func() {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			t.Error("the port accepted a connection while the server was down")
		}
		// Delivered by "another mail program".
		msg := "Subject: two\r\n\r\nbody\r\n"
		if err := os.WriteFile(filepath.Join(s.Dir, "home", "alice", "Maildir", "new", "1700000000.M1P1.restarttest"), []byte(msg), 0o644); err != nil {
			t.Error(err)
		}
	})
	if s.Addr != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr, addr)
	}
	// The old connection was closed (after a BYE, if any).
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c.r); err != nil || strings.Contains(string(rest), "OK") && !strings.Contains(string(rest), "BYE") {
		t.Fatalf("old connection: %q, %v", rest, err)
	}

	c = dialRaw(t, s)
	if g := c.readLine(); !strings.Contains(g, s.instance) {
		t.Fatalf("greeting %q is not from our server", g)
	}
	c.command("a", "LOGIN alice alicepass")
	got := c.command("b", "SELECT INBOX")
	if !containsLine(got, "* 2 EXISTS") {
		t.Fatalf("SELECT after restart: %q, want 2 messages", got)
	}
	// Stop still works after a restart (the test's cleanup calls it again).
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("the server still listens after Stop")
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}
