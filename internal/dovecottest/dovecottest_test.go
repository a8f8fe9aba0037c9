package dovecottest

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// rawConn speaks IMAP line by line, so that tests see exactly what Dovecot
// sends rather than go-imap's interpretation of it.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t testing.TB, s *Server) *rawConn {
	t.Helper()
	conn := s.Dial(t)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *rawConn) readLine() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, line)
	}
	return strings.TrimRight(line, "\r\n")
}

// command sends "tag line" and returns the response lines, the tagged
// status line last. It fails the test unless the status is OK.
func (c *rawConn) command(tag, line string) []string {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(tag + " " + line + "\r\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	var lines []string
	for {
		l := c.readLine()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l, tag+" OK") {
				c.t.Fatalf("%s %s: %q", tag, line, lines)
			}
			return lines
		}
	}
}

// capsAfterLogin logs in as alice and returns the capabilities from an
// explicit CAPABILITY command.
func capsAfterLogin(t *testing.T, s *Server) (greeting string, caps []string) {
	c := dialRaw(t, s)
	greeting = c.readLine()
	c.command("a1", "LOGIN alice alicepass")
	for _, l := range c.command("a2", "CAPABILITY") {
		if rest, ok := strings.CutPrefix(l, "* CAPABILITY "); ok {
			caps = strings.Fields(rest)
		}
	}
	c.command("a3", "LOGOUT")
	return greeting, caps
}

func TestProfiles(t *testing.T) {
	tests := []struct {
		profile Profile
		want    []string
		// exact, when set, is the complete expected list.
		exact   bool
		notWant []string
	}{
		{
			profile: Full,
			want:    []string{"IMAP4rev1", "IDLE", "CONDSTORE", "QRESYNC", "NOTIFY", "COMPRESS=DEFLATE", "LITERAL+", "UIDPLUS", "MOVE", "ENABLE"},
		},
		{
			profile: Legacy,
			want:    strings.Fields("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS"),
			exact:   true,
		},
		{
			profile: LegacyNoIdle,
			want:    strings.Fields("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE NAMESPACE UIDPLUS"),
			exact:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.profile.String(), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			s := Start(t, tt.profile)
			t.Logf("started %v on %s in %v", tt.profile, s.Addr, time.Since(start))

			greeting, caps := capsAfterLogin(t, s)
			if !strings.HasPrefix(greeting, "* OK ") {
				t.Errorf("greeting = %q", greeting)
			}
			for _, c := range tt.want {
				if !slices.Contains(caps, c) {
					t.Errorf("capability %s missing from %q", c, caps)
				}
			}
			if tt.exact && len(caps) != len(tt.want) {
				t.Errorf("capabilities = %q, want exactly %q", caps, tt.want)
			}
			if tt.profile != Full {
				for _, c := range []string{"CONDSTORE", "QRESYNC", "NOTIFY", "COMPRESS=DEFLATE"} {
					if slices.Contains(caps, c) {
						t.Errorf("capability %s advertised by %v", c, tt.profile)
					}
				}
			}

			testAppendFetch(t, s)
		})
	}
}

// testAppendFetch appends messages through Append and reads them back
// through a separate client, byte for byte.
func testAppendFetch(t *testing.T, s *Server) {
	msg := []byte("From: Bob <bob@example.org>\r\n" +
		"To: Alice <alice@example.org>\r\n" +
		"Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\n" +
		"Message-ID: <1@example.org>\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße aus dem Test.\r\n" +
		"  leading spaces and a trailing tab\t\r\n" +
		strings.Repeat("x", 990) + "\r\n" +
		".\r\n")
	uid1 := s.Append(t, "alice", "alicepass", "Lists", []string{string(imap.FlagSeen), "$Label1"}, msg)
	// A second append to the now existing mailbox exercises the
	// ALREADYEXISTS path.
	uid2 := s.Append(t, "alice", "alicepass", "Lists", nil, []byte("Subject: two\r\n\r\nsecond\r\n"))
	if uid2 <= uid1 {
		t.Errorf("UIDs %d then %d, want increasing", uid1, uid2)
	}
	if uid := s.Append(t, "alice", "alicepass", "INBOX", nil, msg); uid == 0 {
		t.Errorf("INBOX append returned UID 0")
	}

	c := s.Login(t, "alice", "alicepass")
	if _, err := c.Select("Lists", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(imap.UID(uid1)), &imap.FetchOptions{
		Flags:       true,
		BodySection: []*imap.FetchItemBodySection{body},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("fetched %d messages, want 1", len(msgs))
	}
	if got := msgs[0].FindBodySection(body); !bytes.Equal(got, msg) {
		t.Errorf("fetched message differs:\n got %q\nwant %q", got, msg)
	}
	if !slices.Contains(msgs[0].Flags, imap.FlagSeen) || !slices.Contains(msgs[0].Flags, imap.Flag("$Label1")) {
		t.Errorf("flags = %v, want \\Seen and $Label1", msgs[0].Flags)
	}
}

func TestAddUser(t *testing.T) {
	t.Parallel()
	s := Start(t, Full)
	// Log in first so that Dovecot has just read the passwd file: the new
	// user must still be usable at once.
	s.Login(t, "bob", "bobpass")
	start := time.Now()
	s.AddUser(t, "carol", "carolpass")
	t.Logf("AddUser took %v", time.Since(start))
	s.Login(t, "carol", "carolpass")
	s.AddUser(t, "dave", "davepass")
	s.Append(t, "dave", "davepass", "INBOX", nil, []byte("Subject: hi\r\n\r\nhi\r\n"))

	for _, up := range [][2]string{{"carol", "wrong"}, {"nobody", "x"}} {
		if c, err := s.login(up[0], up[1]); err == nil {
			c.Close()
			t.Errorf("login as %q with password %q succeeded", up[0], up[1])
		}
	}
}

// TestConcurrentServers checks that servers started side by side are
// independent of each other.
func TestConcurrentServers(t *testing.T) {
	t.Parallel()
	const n = 4
	servers := make([]*Server, n)
	for i := range servers {
		servers[i] = Start(t, Profile(i%3))
	}
	for i, s := range servers {
		s.Append(t, "bob", "bobpass", "INBOX", nil, []byte("Subject: only here\r\n\r\n"))
		for j, other := range servers[:i] {
			if other.Addr == s.Addr || other.Dir == s.Dir {
				t.Fatalf("servers %d and %d share %s / %s", j, i, s.Addr, s.Dir)
			}
		}
	}
	for i, s := range servers {
		c := s.Login(t, "bob", "bobpass")
		data, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatalf("server %d: select: %v", i, err)
		}
		if data.NumMessages != 1 {
			t.Errorf("server %d: INBOX has %d messages, want 1", i, data.NumMessages)
		}
	}
}

// TestStop checks that Stop leaves no Dovecot process behind, including
// the per-connection imap processes running as another user.
func TestStop(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("needs /proc")
	}
	t.Parallel()
	s := Start(t, Full)
	c := s.Login(t, "alice", "alicepass")
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if procs := dovecotProcs(t, s); len(procs) < 3 {
		t.Fatalf("found only %d processes of the server: %q", len(procs), procs)
	}

	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if procs := dovecotProcs(t, s); len(procs) > 0 {
		t.Errorf("processes left after Stop: %q", procs)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		t.Errorf("server still accepts connections after Stop")
	}
}

// dovecotProcs returns the command lines of the processes belonging to s:
// the master's names the config file, the children's contain the instance
// name in their process title.
func dovecotProcs(t *testing.T, s *Server) []string {
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		if strings.Contains(cmdline, s.instance) || strings.Contains(cmdline, s.Dir) {
			procs = append(procs, cmdline)
		}
	}
	return procs
}
