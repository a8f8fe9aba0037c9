// Package dovecottest runs private Dovecot IMAP servers for tests.
//
// The proxy has to interoperate with real servers, and hand-written fakes
// only ever agree with our own reading of the RFCs. Each call to Start
// therefore launches a separate Dovecot master process, configured from a
// generated file in a fresh temporary directory and listening on a free
// loopback port, so that tests can run many servers side by side without
// systemd, without the system-wide Dovecot and without root-owned state
// leaking between tests.
//
// Dovecot is found as "dovecot" on PATH or as /usr/sbin/dovecot. When it is
// missing the calling test is skipped, unless the environment variable
// LEMONPROXY_REQUIRE_DOVECOT is 1 (as scripts/test.sh sets it), in which case
// the test fails: CI must not go green by silently skipping these tests.
package dovecottest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// RequireEnv names the environment variable that turns a missing Dovecot
// binary into a test failure instead of a skip. It does not apply under
// -short, where Start always skips.
const RequireEnv = "LEMONPROXY_REQUIRE_DOVECOT"

// Timeouts. They are generous because CI machines are small and a test run
// may start dozens of servers in parallel.
const (
	startTimeout = 10 * time.Second // until the greeting arrives
	stopTimeout  = 5 * time.Second  // from SIGTERM to SIGKILL
	dialTimeout  = 5 * time.Second
	startTries   = 5 // attempts with a new port when the port was taken
)

// Profile selects what the server advertises, so that the proxy can be
// tested both against a modern server and against an old one whose missing
// extensions it has to cope with.
type Profile int

const (
	// Full is Dovecot's own capability list, which includes CONDSTORE,
	// QRESYNC and NOTIFY, plus COMPRESS=DEFLATE from the imap_zlib plugin and
	// METADATA (imap_metadata with a file dictionary per user).
	Full Profile = iota
	// Legacy advertises only IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE
	// NAMESPACE UIDPLUS after login.
	Legacy
	// LegacyNoIdle is Legacy without IDLE.
	LegacyNoIdle
	// Plain is Legacy without UIDPLUS: an IMAP4rev1 server over which
	// the proxy must find APPENDUID and COPYUID itself (Dovecot still
	// sends them, and executes UID EXPUNGE and MOVE, unadvertised).
	Plain
)

// String returns the profile's name, for use in subtest names.
func (p Profile) String() string {
	switch p {
	case Full:
		return "Full"
	case Legacy:
		return "Legacy"
	case LegacyNoIdle:
		return "LegacyNoIdle"
	case Plain:
		return "Plain"
	}
	return "Profile(" + strconv.Itoa(int(p)) + ")"
}

// Server is a running Dovecot instance owned by one test.
//
// Only the advertised capabilities differ between profiles: Dovecot still
// executes commands of extensions that a Legacy profile does not advertise
// (IDLE, CONDSTORE, ENABLE QRESYNC, ...) if a client sends them anyway.
type Server struct {
	// Addr is the host:port of the plain-text IMAP listener on 127.0.0.1.
	Addr string
	// Dir is the temporary directory holding the configuration, the log,
	// Dovecot's runtime state and the users' maildirs (Dir/home/USER).
	// It is removed when the test ends.
	Dir string
	// Profile is the profile the server was started with.
	Profile Profile

	instance string       // instance_name; unique, so it identifies our processes
	bin      string       // the dovecot binary, for Restart
	params   configParams // the configuration, for Restart

	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd has exited
	waitErr error         // cmd.Wait's result; valid after done is closed

	stopOnce sync.Once
	stopErr  error

	mu    sync.Mutex        // guards users and the passwd file
	users map[string]string // user name -> password
}

// Start starts a private Dovecot for the test and registers a cleanup that
// stops it and removes its directory. The server has the users "alice"
// (password "alicepass") and "bob" ("bobpass"); AddUser adds more.
//
// Under -short, Start skips the test even when RequireEnv is set: the short
// tier (go test -short ./...) is the quick one that needs no Dovecot, and
// every test that needs a server comes through here.
//
// Start must be called from the test's goroutine, as it may call t.Fatal
// or t.Skip.
func Start(t testing.TB, p Profile) *Server {
	t.Helper()
	return StartWith(t, p, Options{})
}

// Options change the configuration of a server started with StartWith.
type Options struct {
	// MaxUserIPConnections sets mail_max_userip_connections, the most
	// connections of one user from one address. 0 leaves the tests' 10000
	// (load tests); Dovecot's own default is 10.
	MaxUserIPConnections int
	// ExtraCaps are added to the capabilities a Legacy-style profile
	// advertises ("SORT", to test what a proxy does over an upstream with
	// SORT and without ESORT); Dovecot implements them all, whatever it
	// advertises. Ignored for Full, which advertises everything.
	ExtraCaps []string
	// MasterUser and MasterPassword configure a master user (a passdb
	// with master=yes) who logs in to any existing user's account with
	// AUTHENTICATE PLAIN, the user as authorization identity.
	MasterUser, MasterPassword string
	// HibernateAfter sets imap_hibernate_timeout: a connection idling in
	// IDLE this long moves to the imap-hibernate process, which watches
	// the mailbox for it and hands it back to an imap process when
	// something changes, so that idle clients cost no imap process each
	// (what providers with many idle clients run). 0 leaves it off.
	HibernateAfter time.Duration
	// IMAPClientLimit sets service imap's client_limit: connections one
	// imap process serves at once (Dovecot's default, and 0 here, is 1),
	// with service_count 0 (imap's default, 1, ends a process after its
	// first connection, whatever client_limit says). All the test users
	// share one UID, as a process with several clients needs.
	IMAPClientLimit int
	// SlashSeparator makes "/" the hierarchy delimiter, as on servers
	// with the file system's layout, instead of Maildir++'s ".": a name
	// may then hold a ".".
	SlashSeparator bool
	// CourierNamespace puts all mailboxes under the prefix "INBOX." with
	// the separator ".", INBOX itself included (Dovecot's namespace with
	// prefix INBOX. and inbox=yes), as on servers migrated from Courier,
	// where the names clients know all begin with "INBOX.". Not with
	// SlashSeparator.
	CourierNamespace bool
	// CommandEvents has Dovecot log every IMAP command it finishes, with
	// how long it took and how much of that it waited for locks (the
	// imap_command_finished event), for Server.CommandEvents: a benchmark
	// can then show Dovecot's own share of a command's latency. The
	// logging costs Dovecot CPU, so throughput measured with it is lower.
	CommandEvents bool
	// AuthPenalty keeps Dovecot's per-address authentication penalty
	// (anvil's auth-penalty socket), which the tests' servers otherwise
	// turn off: after failed logins from an address, every login from
	// it, successful ones too, waits up to 15 s.
	AuthPenalty bool
	// LoginTrustedNetworks sets login_trusted_networks (space-separated
	// CIDR prefixes): connections from there are exempt from the auth
	// penalty, as a proxy in front of Dovecot must be.
	LoginTrustedNetworks string
	// IndexLayout keeps each mailbox's files in a directory named after
	// its GUID (mail_location's LAYOUT=index) rather than its name, so
	// that a mailbox deleted and created again under a name has files
	// of its own. Under a name's directory, a Dovecot connection that
	// still has the old mailbox selected and syncs it after the new one
	// was created takes the new one's index for its own, corrupted, and
	// marks it so: other connections then get "NO Mailbox was deleted
	// under us" for the new mailbox, now and then (a race of Dovecot's,
	// not of the proxy's). Not with SlashSeparator or CourierNamespace.
	IndexLayout bool
}

// StartWith is Start with options.
func StartWith(t testing.TB, p Profile, o Options) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("dovecottest: needs Dovecot; skipped under -short")
	}
	bin, err := findDovecot()
	if err != nil {
		msg := fmt.Sprintf("dovecottest: dovecot not found (%v); install dovecot-imapd or run scripts/test.sh", err)
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s; failing because %s=1", msg, RequireEnv)
		}
		t.Skip(msg)
	}

	s := &Server{
		Profile: p,
		users:   map[string]string{"alice": "alicepass", "bob": "bobpass"},
	}
	params := configParams{MaxUserIPConnections: o.MaxUserIPConnections, MasterUser: o.MasterUser, MasterPassword: o.MasterPassword,
		HibernateSeconds: int((o.HibernateAfter + time.Second - 1) / time.Second), IMAPClientLimit: o.IMAPClientLimit, CommandEvents: o.CommandEvents,
		SlashSeparator: o.SlashSeparator, CourierNamespace: o.CourierNamespace, IndexLayout: o.IndexLayout, AuthPenalty: o.AuthPenalty, LoginTrustedNetworks: o.LoginTrustedNetworks}
	if o.SlashSeparator && o.CourierNamespace {
		t.Fatal("dovecottest: SlashSeparator and CourierNamespace are two different namespaces")
	}
	if o.IndexLayout && (o.SlashSeparator || o.CourierNamespace) {
		t.Fatal("dovecottest: IndexLayout is with the default namespace only")
	}
	if strings.ContainsAny(o.MasterUser+o.MasterPassword, ":\r\n") {
		t.Fatalf("dovecottest: master user %q: unsupported characters", o.MasterUser)
	}
	if p == Full {
		params.Compress = true
		params.Metadata = true
	} else {
		params.Capabilities = strings.Join(append([]string{p.capabilities()}, o.ExtraCaps...), " ")
	}
	if err := currentIDs(&params, os.Geteuid()); err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	// Registered before the stop cleanup so that it runs after it.
	dir, err := makeDir(params.MailUID, params.MailGID)
	if dir != "" {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	s.Dir = dir
	params.Dir = dir
	s.instance = "dovecottest-" + strings.TrimPrefix(filepath.Base(dir), "dovecottest-")
	params.Instance = s.instance
	if err := s.writePasswd(); err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	if o.MasterUser != "" {
		line := o.MasterUser + ":{PLAIN}" + o.MasterPassword + "\n"
		if err := os.WriteFile(filepath.Join(dir, "master-passwd"), []byte(line), 0o644); err != nil {
			t.Fatalf("dovecottest: %v", err)
		}
	}

	s.bin = bin
	for try := 1; ; try++ {
		err = s.start(bin, params, 0)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || try == startTries {
			t.Fatalf("dovecottest: starting %v server: %v", p, err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dovecottest: tail of %s server's log:\n%s", s.Profile, s.LogTail())
		}
		if err := s.Stop(); err != nil {
			t.Errorf("dovecottest: %v", err)
		}
	})
	return s
}

// findDovecot looks in /usr/sbin as well as on PATH because /usr/sbin is
// often not on an unprivileged user's PATH.
func findDovecot() (string, error) {
	bin, err := exec.LookPath("dovecot")
	if err == nil {
		return bin, nil
	}
	if _, serr := os.Stat("/usr/sbin/dovecot"); serr == nil {
		return "/usr/sbin/dovecot", nil
	}
	return "", err
}

// makeDir creates the server's directory. It is made world-searchable
// (0711), since Dovecot's unprivileged processes (auth as "dovecot", mail
// processes as the mail uid) need to reach files inside it. It is not
// created with t.TempDir: that directory is private to root and has a long
// name, while Dovecot's UNIX sockets live below it and socket paths are
// limited to about 100 bytes.
func makeDir(mailUID, mailGID int) (string, error) {
	dir, err := os.MkdirTemp("", "dovecottest-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return dir, err
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		return dir, err
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(home, mailUID, mailGID); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

// errPortInUse marks a start that failed because another process took the
// chosen port between freePort and Dovecot's bind; Start retries those.
var errPortInUse = errors.New("port already in use")

// start writes the configuration for port (a fresh one if 0) and starts
// Dovecot, returning once it has greeted a client.
func (s *Server) start(bin string, params configParams, port int) error {
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	}
	params.Port = port
	s.params = params
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	var conf bytes.Buffer
	if err := configTemplate.Execute(&conf, params); err != nil {
		return err
	}
	confPath := filepath.Join(s.Dir, "dovecot.conf")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o644); err != nil {
		return err
	}
	// Start each attempt with an empty log, so that the port-in-use check
	// below sees only this attempt's errors.
	if err := os.Remove(filepath.Join(s.Dir, "dovecot.log")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Errors that happen before Dovecot opens log_path, such as
	// configuration errors, go to stderr.
	stderr, err := os.Create(filepath.Join(s.Dir, "dovecot.stderr"))
	if err != nil {
		return err
	}
	defer stderr.Close()

	// -F keeps the master in the foreground, so the PID we get is the
	// master's and it stays our child, rather than a daemon we would have
	// to find through a pid file.
	cmd := exec.Command(bin, "-F", "-c", confPath)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	done := make(chan struct{})
	s.done = done
	go func() {
		s.waitErr = cmd.Wait()
		close(done)
	}()

	if err := s.waitReady(); err != nil {
		s.kill()
		tail := s.LogTail()
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return fmt.Errorf("%v; log tail:\n%s", err, tail)
	}
	return nil
}

// freePort asks the kernel for a free loopback port. It is free only until
// someone else takes it, hence the retries in Start.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits until the server sends its greeting. A listening socket
// alone is not enough: imap-login delays the greeting until the auth
// service is up. The greeting must also carry our instance name, so that a
// different server that grabbed the port cannot be mistaken for ours.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("dovecot exited during startup: %v", s.waitErr)
		default:
		}
		line, err := readGreeting(s.Addr, time.Until(deadline))
		if err == nil {
			if strings.HasPrefix(line, "* OK ") && strings.Contains(line, s.instance) {
				return nil
			}
			err = fmt.Errorf("unexpected greeting %q", line)
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no greeting within %v: %v", startTimeout, lastErr)
}

func readGreeting(addr string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, min(timeout, time.Second))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// Stop stops the server: SIGTERM to all of its processes, then SIGKILL if
// any is left after 5s. It returns once every process has gone. Stop is
// called automatically when the test ends; tests may call it earlier, for
// example to see how the proxy copes with a backend going away. It is safe
// to call more than once.
//
// The whole process group is signalled, not only the master: Dovecot's
// master exits about a second after SIGTERM without waiting for its
// children, and an imap process serving a client then lingers for up to
// another ten seconds, whereas a group-wide SIGTERM ends all of them within
// milliseconds. The signal is repeated because the master may still
// restart a child that died before the master itself got to handle its
// SIGTERM, and such a late child would otherwise keep running.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Server) stop() error {
	var errs []error
	select {
	case <-s.done:
		errs = append(errs, fmt.Errorf("dovecot (%s) exited before it was stopped: %v", s.Profile, s.waitErr))
	default:
	}
	if !s.signalUntilGone(syscall.SIGTERM, stopTimeout) {
		errs = append(errs, fmt.Errorf("dovecot (%s) did not exit within %v of SIGTERM; killed these:\n%s",
			s.Profile, stopTimeout, groupProcs(s.cmd.Process.Pid)))
		s.kill()
	}
	return errors.Join(errs...)
}

// kill SIGKILLs all of Dovecot's processes and waits for them to go.
func (s *Server) kill() {
	s.signalUntilGone(syscall.SIGKILL, stopTimeout)
}

// signalUntilGone sends sig to Dovecot's process group every 100ms until
// the master has been reaped and no process is left in the group, and
// reports whether that happened within timeout. Signalling the group after
// the master has been reaped is safe because a process group's ID cannot
// be reused while the group has members.
func (s *Server) signalUntilGone(sig syscall.Signal, timeout time.Duration) bool {
	const resend = 100 * time.Millisecond
	pgid := s.cmd.Process.Pid
	deadline := time.Now().Add(timeout)
	var sent time.Time
	for {
		select {
		case <-s.done:
			if !groupAlive(pgid) {
				return true
			}
		default:
		}
		now := time.Now()
		if now.After(deadline) {
			return false
		}
		if now.Sub(sent) >= resend {
			signalGroup(pgid, sig)
			sent = now
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Restart stops the server as Stop does (its clients are disconnected),
// calls whileDown, if not nil, while no Dovecot process is running (a test
// may change the users' maildirs below Dir/home there, as another mail
// program would), and starts it again on the same port with the same
// configuration and mail data, for tests of how clients reconnect. It
// returns once the server greets clients again. It must not be called
// after Stop.
func (s *Server) Restart(t testing.TB, whileDown func()) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("dovecottest: Restart: %v", err)
	}
	if whileDown != nil {
		whileDown()
	}
	_, portStr, _ := net.SplitHostPort(s.Addr)
	port, _ := strconv.Atoi(portStr)
	// Dovecot binds with SO_REUSEADDR, so connections of the old
	// instance lingering in TIME_WAIT do not keep the port; another
	// process grabbing it meanwhile would, hence the retries.
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start(s.bin, s.params, port)
		if err == nil {
			return
		}
		if !errors.Is(err, errPortInUse) || time.Now().After(deadline) {
			t.Fatalf("dovecottest: restarting %v server on port %d: %v", s.Profile, port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LogTail returns the last lines of Dovecot's log and anything it wrote to
// stderr, for diagnosing test failures.
func (s *Server) LogTail() string {
	const maxLines = 40
	var b strings.Builder
	for _, name := range []string{"dovecot.stderr", "dovecot.log"} {
		data, err := os.ReadFile(filepath.Join(s.Dir, name))
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > maxLines {
			lines = lines[len(lines)-maxLines:]
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", name, strings.Join(lines, "\n"))
	}
	return b.String()
}

// AddUser adds a user to the server, usable as soon as AddUser returns.
//
// Dovecot notices the change by itself: its passwd-file driver re-reads the
// file when the file's mtime or size has changed, which a new line always
// does. But it checks at most once per second, so a change made in the same
// second as an earlier login would go unseen until the next second; AddUser
// therefore sleeps into the next second, up to one second. Existing users
// cannot be changed, since a new password of the same length written in
// the same second as the old one would not be noticed at all.
func (s *Server) AddUser(t testing.TB, name, pass string) {
	t.Helper()
	if name == "" || strings.ContainsAny(name, ":\r\n@%/ ") || strings.ContainsAny(pass, ":\r\n") {
		t.Fatalf("dovecottest: AddUser(%q, %q): unsupported characters", name, pass)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[name]; ok {
		t.Fatalf("dovecottest: AddUser: user %q already exists", name)
	}
	s.users[name] = pass
	if err := s.writePasswdLocked(); err != nil {
		t.Fatalf("dovecottest: AddUser: %v", err)
	}
	next := time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)
	time.Sleep(time.Until(next))
}

// AddUsers adds many users at once, like AddUser but sleeping into the next
// second only once, for load tests with thousands of accounts.
func (s *Server) AddUsers(t testing.TB, users map[string]string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, pass := range users {
		if name == "" || strings.ContainsAny(name, ":\r\n@%/ ") || strings.ContainsAny(pass, ":\r\n") {
			t.Fatalf("dovecottest: AddUsers(%q, %q): unsupported characters", name, pass)
		}
		if _, ok := s.users[name]; ok {
			t.Fatalf("dovecottest: AddUsers: user %q already exists", name)
		}
		s.users[name] = pass
	}
	if err := s.writePasswdLocked(); err != nil {
		t.Fatalf("dovecottest: AddUsers: %v", err)
	}
	next := time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)
	time.Sleep(time.Until(next))
}

func (s *Server) writePasswd() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writePasswdLocked()
}

// writePasswdLocked replaces the passwd file atomically, so that Dovecot
// never reads a half-written file. It must be readable by the "dovecot"
// user, as which the auth process reads it.
func (s *Server) writePasswdLocked() error {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(s.users)) {
		fmt.Fprintf(&b, "%s:{PLAIN}%s\n", name, s.users[name])
	}
	path := filepath.Join(s.Dir, "passwd")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Dial returns a new connection to the server, closed when the test ends.
// The server's greeting has not been read yet.
func (s *Server) Dial(t testing.TB) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr, dialTimeout)
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Login returns a client that is logged in to the server as user, for
// setting up and checking mailboxes directly rather than through the
// proxy. The client is closed when the test ends.
func (s *Server) Login(t testing.TB, user, pass string) *imapclient.Client {
	t.Helper()
	c, err := s.login(user, pass)
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) login(user, pass string) (*imapclient.Client, error) {
	conn, err := net.DialTimeout("tcp", s.Addr, dialTimeout)
	if err != nil {
		return nil, err
	}
	c := imapclient.New(conn, nil)
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login as %q: %w", user, err)
	}
	return c, nil
}

// Append stores msg in the user's mailbox, creating the mailbox if needed,
// and returns the new message's UID. It uses a connection of its own, so
// the message arrives like mail delivered by someone else.
func (s *Server) Append(t testing.TB, user, pass, mailbox string, flags []string, msg []byte) uint32 {
	t.Helper()
	uid, err := s.appendMsg(user, pass, mailbox, flags, msg)
	if err != nil {
		t.Fatalf("dovecottest: Append to %s/%s: %v", user, mailbox, err)
	}
	return uid
}

func (s *Server) appendMsg(user, pass, mailbox string, flags []string, msg []byte) (uint32, error) {
	c, err := s.login(user, pass)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if !strings.EqualFold(mailbox, "INBOX") {
		err := c.Create(mailbox, nil).Wait()
		var imapErr *imap.Error
		if err != nil && !(errors.As(err, &imapErr) && imapErr.Code == imap.ResponseCodeAlreadyExists) {
			return 0, fmt.Errorf("create: %w", err)
		}
	}
	opts := &imap.AppendOptions{}
	for _, f := range flags {
		opts.Flags = append(opts.Flags, imap.Flag(f))
	}
	cmd := c.Append(mailbox, int64(len(msg)), opts)
	if _, err := cmd.Write(msg); err != nil {
		return 0, err
	}
	if err := cmd.Close(); err != nil {
		return 0, err
	}
	data, err := cmd.Wait()
	if err != nil {
		return 0, err
	}
	if data.UID == 0 {
		return 0, errors.New("server sent no APPENDUID")
	}
	if err := c.Logout().Wait(); err != nil {
		return 0, fmt.Errorf("logout: %w", err)
	}
	return uint32(data.UID), nil
}

// FillMailbox puts n messages, message(i) for i in [0, n), into user's
// mailbox as maildir files, without IMAP: Dovecot finds and indexes them
// at the mailbox's next sync. Load tests use it for mailboxes of 100,000
// messages, which one APPEND at a time (a server without LITERAL+ or
// MULTIAPPEND) would take an hour to fill, as each APPEND makes Dovecot
// sync the ever larger maildir. The mailbox must not be open in any
// session, and its name must be a plain one (no hierarchy).
func (s *Server) FillMailbox(t testing.TB, user, mailbox string, n int, message func(i int) []byte) {
	t.Helper()
	if mailbox == "" || strings.ContainsAny(mailbox, "/.\r\n") || strings.EqualFold(mailbox, "INBOX") {
		t.Fatalf("dovecottest: FillMailbox(%q): only plain mailbox names other than INBOX", mailbox)
	}
	s.mu.Lock()
	_, ok := s.users[user]
	s.mu.Unlock()
	if !ok {
		t.Fatalf("dovecottest: FillMailbox: no user %q", user)
	}
	home := filepath.Join(s.Dir, "home", user)
	box := filepath.Join(home, "Maildir", "."+mailbox) // Maildir++ layout
	var dirs []string
	for _, d := range []string{home, filepath.Join(home, "Maildir"), box, filepath.Join(box, "cur"), filepath.Join(box, "new"), filepath.Join(box, "tmp")} {
		if err := os.Mkdir(d, 0o700); err == nil {
			dirs = append(dirs, d)
		} else if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("dovecottest: FillMailbox: %v", err)
		}
	}
	files := []string{filepath.Join(box, "maildirfolder")}
	if err := os.WriteFile(files[0], nil, 0o600); err != nil {
		t.Fatalf("dovecottest: FillMailbox: %v", err)
	}
	for i := range n {
		// Unique names in Maildir's TIME.MUNIQUE.HOST form; Dovecot gives
		// UIDs in the order it reads them.
		path := filepath.Join(box, "cur", fmt.Sprintf("1764000000.M%dP%d.dovecottest:2,", i, os.Getpid()))
		if err := os.WriteFile(path, message(i), 0o600); err != nil {
			t.Fatalf("dovecottest: FillMailbox: %v", err)
		}
		files = append(files, path)
	}
	if os.Geteuid() == 0 {
		for _, p := range append(dirs, files...) {
			if err := os.Chown(p, s.params.MailUID, s.params.MailGID); err != nil {
				t.Fatalf("dovecottest: FillMailbox: %v", err)
			}
		}
	}
}

// FillWithGaps puts n messages into user's mailbox under the UIDs 1, 3,
// 5, ..., 2n-1, message(i) under 2i+1: FillMailbox of 2n and Thin of the
// even UIDs. Written out
// one by one, the UIDs of 12,000 such messages are 67 KB, past Dovecot's
// 64 KiB command line.
func (s *Server) FillWithGaps(t testing.TB, user, pass, mailbox string, n int, message func(i int) []byte) {
	t.Helper()
	s.FillMailbox(t, user, mailbox, 2*n, func(i int) []byte { return message(i / 2) })
	s.Thin(t, user, pass, mailbox, func(uid imap.UID) bool { return uid%2 == 0 })
}

// Thin expunges, directly on the server, the messages of user's mailbox
// whose UID drop selects: a mailbox with gaps between its UIDs, whose
// sets written out are long (FillMailbox then Thin of the even UIDs
// leaves 1,3,5,...). The UIDs are flagged a few thousand at a time, so
// that no command line of its own is long.
func (s *Server) Thin(t testing.TB, user, pass, mailbox string, drop func(uid imap.UID) bool) {
	t.Helper()
	c := s.Login(t, user, pass)
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		t.Fatalf("dovecottest: Thin: SELECT %s: %v", mailbox, err)
	}
	all, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatalf("dovecottest: Thin: %v", err)
	}
	var batch imap.UIDSet
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		store := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
		if err := c.Store(batch, store, nil).Close(); err != nil {
			t.Fatalf("dovecottest: Thin: STORE: %v", err)
		}
		batch, n = nil, 0
	}
	for _, uid := range all.AllUIDs() {
		if drop(uid) {
			batch.AddNum(uid)
			if n++; n == 1000 {
				flush()
			}
		}
	}
	flush()
	if err := c.Expunge().Close(); err != nil {
		t.Fatalf("dovecottest: Thin: EXPUNGE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("dovecottest: Thin: LOGOUT: %v", err)
	}
}
