package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// binary is the lemonproxy command built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lemonproxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "lemonproxy")
	// -buildvcs=auto: the commit for TestVersion, whatever GOFLAGS says.
	args := []string{"build", "-buildvcs=auto", "-o", binary}
	if raceEnabled() {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building lemonproxy:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceEnabled reports whether this test binary was built with -race, so
// that the command under test is too.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// output is an io.Writer safe to read while a process writes to it.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func (o *output) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Len()
}

// proc is a running lemonproxy.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{}
	err            error // of Wait, once done is closed
}

// start runs lemonproxy with args in a fresh working directory (the default
// data directory is relative).
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), stdout: &output{}, stderr: &output{}, done: make(chan struct{})}
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("lemonproxy %q\nstdout:\n%s\nstderr:\n%s", args, p.stdout, p.stderr)
		}
	})
	return p
}

// runLP runs lemonproxy to completion and returns its exit code.
func runLP(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := start(t, args...)
	return p.wait(t, 10*time.Second), p.stdout.String(), p.stderr.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("lemonproxy still running after %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			t.Fatalf("lemonproxy killed by %v", st.Signal())
		}
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func (p *proc) signal(t *testing.T, s os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

// waitFor waits until o, from byte offset from on, matches re, and returns
// the submatches.
func (p *proc) waitFor(t *testing.T, o *output, from int, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := rx.FindStringSubmatch(o.String()[from:]); m != nil {
			return m
		}
		select {
		case <-p.done:
			if m := rx.FindStringSubmatch(o.String()[from:]); m != nil {
				return m
			}
			t.Fatalf("lemonproxy exited (%v) without printing %q", p.err, re)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lemonproxy did not print %q", re)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listenAddr waits for the "listening" log line of the plain (tls=false) or
// implicit-TLS listener and returns its address.
func (p *proc) listenAddr(t *testing.T, isTLS bool) string {
	t.Helper()
	return p.waitFor(t, p.stderr, 0, fmt.Sprintf(`msg=listening addr=(\S+) tls=%v`, isTLS))[1]
}

// stop sends sig and checks that the process exits 0 within a few seconds.
func (p *proc) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	mark := p.stderr.Len()
	p.signal(t, sig)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Errorf("exit code %d after %v; want 0", code, sig)
	}
	p.waitFor(t, p.stderr, mark, `msg="shutting down" signal=`+sig.String()+`\n(?s:.*)msg=stopped\n`)
}

// client is a raw IMAP client.
type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func newClient(t *testing.T, nc net.Conn) *client {
	t.Helper()
	c := &client{t: t, nc: nc, br: bufio.NewReader(nc)}
	t.Cleanup(func() { nc.Close() })
	if g := c.readLine(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func dialIMAP(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, nc)
}

func (c *client) readLine() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading from the proxy: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatal(err)
	}
}

// do sends "tag line" and returns the untagged responses and the tagged
// status line.
func (c *client) do(tag, line string) (untagged []string, status string) {
	c.t.Helper()
	c.send(tag + " " + line + "\r\n")
	for {
		l := c.readLine()
		if strings.HasPrefix(l, tag+" ") {
			return untagged, l
		}
		untagged = append(untagged, l)
	}
}

// ok is do that requires a tagged OK.
func (c *client) ok(tag, line string) []string {
	c.t.Helper()
	u, st := c.do(tag, line)
	if !strings.HasPrefix(st, tag+" OK") {
		c.t.Fatalf("%s %s: %q %q", tag, line, u, st)
	}
	return u
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

// startUpstream starts an in-memory upstream with user and n messages.
func startUpstream(t *testing.T, user, pass string, n int) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser(user, pass); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		msg := fmt.Sprintf("Subject: message %d\r\n\r\nhello\r\n", i)
		if err := up.Append(user, "INBOX", []imap.Flag{}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// TestVersion: the binary, built by go build in a Git checkout, names the
// commit it was built from.
func TestVersion(t *testing.T) {
	code, stdout, stderr := runLP(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "lemonproxy "+proxy.Version+" ") || stderr != "" {
		t.Errorf("lemonproxy version: exit %d, stdout %q, stderr %q; want 0 and %q first", code, stdout, stderr, "lemonproxy "+proxy.Version)
	}
	// The go command stamps the commit in a Git checkout whose .git is a
	// directory: not in a linked worktree, whose .git is a file.
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	top, err2 := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	var fi os.FileInfo
	if err == nil && err2 == nil {
		fi, err = os.Stat(filepath.Join(strings.TrimSpace(string(top)), ".git"))
	}
	switch {
	case err != nil || err2 != nil:
		t.Logf("no commit to compare with: %v %v", err, err2)
	case !fi.IsDir():
		if !strings.Contains(stdout, "(commit unknown: built without VCS information)") {
			t.Errorf("lemonproxy version in a worktree: %q; want the commit said to be unknown", stdout)
		}
	default:
		if want := "commit " + strings.TrimSpace(string(head)); !strings.Contains(stdout, want) {
			t.Errorf("lemonproxy version: %q; want %q", stdout, want)
		}
	}
	if code, _, stderr := runLP(t, "version", "extra"); code != 2 || !strings.Contains(stderr, `unexpected argument "extra"`) {
		t.Errorf("lemonproxy version extra: exit %d, stderr %q; want 2 and the argument named", code, stderr)
	}
}

func TestVersionLine(t *testing.T) {
	bi := &debug.BuildInfo{Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-11-27T14:09:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	want := "lemonproxy " + proxy.Version + " commit 0123456789abcdef0123456789abcdef01234567+modified (2026-11-27T14:09:00Z)"
	if got := versionLine(bi, true); got != want {
		t.Errorf("versionLine = %q, want %q", got, want)
	}
	bi.Settings[3].Value = "false"
	if got := versionLine(bi, true); strings.Contains(got, "modified") {
		t.Errorf("versionLine of a clean tree = %q", got)
	}
	want = "lemonproxy " + proxy.Version + " (commit unknown: built without VCS information)"
	if got := versionLine(&debug.BuildInfo{}, true); got != want {
		t.Errorf("versionLine without VCS = %q, want %q", got, want)
	}
	if got := versionLine(nil, false); got != want {
		t.Errorf("versionLine without build info = %q, want %q", got, want)
	}
}

// TestBadFlag: a bad flag or a stray argument is said once, with a hint
// to -h, not followed by every flag.
func TestBadFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "-bogus"}, "lemonproxy serve: flag provided but not defined: -bogus\nRun 'lemonproxy serve -h' for the flags.\n"},
		{[]string{"demo", "-bogus"}, "lemonproxy demo: flag provided but not defined: -bogus\nRun 'lemonproxy demo -h' for the flags.\n"},
		{[]string{"serve", "-upstream", "u:143", "stray"}, "lemonproxy serve: unexpected argument \"stray\" (every setting is a flag)\nRun 'lemonproxy serve -h' for the flags.\n"},
		{[]string{"conformance", "-bogus"}, "lemonproxy conformance: flag provided but not defined: -bogus\nRun 'lemonproxy conformance -h' for the flags.\n"},
		{[]string{"load", "idle", "-bogus"}, "lemonproxy load: flag provided but not defined: -bogus\nRun 'lemonproxy load -h' for the flags.\n"},
	} {
		code, stdout, stderr := runLP(t, tc.args...)
		if code != 2 || stdout != "" || stderr != tc.want {
			t.Errorf("lemonproxy %q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

func TestUsage(t *testing.T) {
	code, stdout, stderr := runLP(t, "frobnicate")
	if code != 2 || stdout != "" || !strings.HasPrefix(stderr, `lemonproxy: unknown command "frobnicate"`) || !strings.Contains(stderr, usage) {
		t.Errorf("unknown command: exit %d, stdout %q, stderr %q; want 2 with the usage on stderr", code, stdout, stderr)
	}
	code, stdout, stderr = runLP(t)
	if code != 2 || stdout != "" || stderr != usage {
		t.Errorf("no command: exit %d, stdout %q, stderr %q; want 2 with the usage on stderr", code, stdout, stderr)
	}
	code, stdout, stderr = runLP(t, "help")
	if code != 0 || stdout != usage || stderr != "" {
		t.Errorf("help: exit %d, stdout %q, stderr %q; want 0 with the usage on stdout", code, stdout, stderr)
	}
}

func TestServeUsageErrors(t *testing.T) {
	certFile, keyFile := writeCert(t, t.TempDir(), "a")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no upstream", []string{"serve"}, 2, "no upstream: set -upstream HOST:PORT"},
		{"unknown flag", []string{"serve", "-bogus"}, 2, "flag provided but not defined: -bogus"},
		{"bad duration", []string{"serve", "-upstream", "u:143", "-idle-timeout", "soon"}, 2, `invalid value "soon" for flag -idle-timeout`},
		{"bad log level", []string{"serve", "-upstream", "u:143", "-log-level", "loud"}, 2, `log-level "loud"`},
		{"bad security", []string{"serve", "-upstream", "u:143", "-upstream-security", "ssl"}, 2, `upstream security \"ssl\"`},
		{"missing config", []string{"serve", "-config", "/nonexistent/lemonproxy.toml"}, 2, "/nonexistent/lemonproxy.toml"},
		{"tls listener without certificate", []string{"serve", "-upstream", "u:143", "-listen", "", "-listen-tls", "127.0.0.1:0"}, 2, "-listen-tls needs -tls-cert and -tls-key"},
		{"no listener", []string{"serve", "-upstream", "u:143", "-listen", ""}, 2, "no listener"},
		{"missing key", []string{"serve", "-upstream", "u:143", "-tls-cert", certFile, "-tls-key", keyFile + ".missing"}, 1, "TLS certificate"},
		{"upstream without port", []string{"serve", "-upstream", "imap.example"}, 2, `upstream \"imap.example\": missing port in address; want HOST:PORT`},
		{"upstream port out of range", []string{"serve", "-upstream", "imap.example:99999"}, 2, `upstream \"imap.example:99999\": port \"99999\": want a number from 1 to 65535`},
		{"upstream without host", []string{"serve", "-upstream", ":143"}, 2, `upstream \":143\": no host; want HOST:PORT`},
		{"certificate without key", []string{"serve", "-upstream", "u:143", "-tls-cert", certFile}, 1, "tls-cert " + certFile + " is set without tls-key"},
		{"key without certificate", []string{"serve", "-upstream", "u:143", "-tls-key", keyFile}, 1, "tls-key " + keyFile + " is set without tls-cert"},
		{"compress level out of range", []string{"serve", "-upstream", "u:143", "-compress-level", "12"}, 2, "compress-level 12: want 1 (fastest) to 9 (smallest)"},
		{"spool below max-append", []string{"serve", "-upstream", "u:143", "-spool-max-bytes", "1000", "-max-append", "2000"}, 2, "spool-max-bytes 1000 is below max-append 2000"},
		{"user's spool below max-append", []string{"serve", "-upstream", "u:143", "-spool-max-bytes-per-user", "1000", "-max-append", "2000"}, 2, "spool-max-bytes-per-user 1000 is below max-append 2000"},
		{"user's spool above the total", []string{"serve", "-upstream", "u:143", "-spool-max-bytes", "3000", "-spool-max-bytes-per-user", "4000", "-max-append", "2000"}, 2, "spool-max-bytes-per-user 4000 is above spool-max-bytes 3000"},
		{"negative delay", []string{"serve", "-upstream", "u:143", "-auth-failure-delay", "-2s"}, 2, "auth-failure-delay -2s: must not be negative"},
		{"negative size", []string{"serve", "-upstream", "u:143", "-max-append", "-1"}, 2, "max-append -1: must not be negative"},
		{"help", []string{"serve", "-h"}, 0, "-upstream-security"},
		{"stray argument", []string{"serve", "-upstream", "u:143", "-listen", "127.0.0.1:0", "imap.example.com:143"}, 2, `unexpected argument "imap.example.com:143"`},
		{"stray argument in demo", []string{"demo", "-listen", "127.0.0.1:0", "now"}, 2, `unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runLP(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("lemonproxy %q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
			}
			if strings.Contains(stderr, "msg=listening") {
				t.Errorf("lemonproxy %q listened before failing", tc.args)
			}
		})
	}
}

// TestStartWarnings: a proxy whose upstream does not answer, or whose
// plain listener is open beyond loopback without a certificate (so no
// client there can log in), starts but says so at once.
func TestStartWarnings(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := start(t, "serve", "-listen", "0.0.0.0:0", "-upstream", dead)
	p.waitFor(t, p.stderr, 0, `level=WARN msg="listen 0\.0\.0\.0:0: plain listener on a non-loopback address without a certificate: clients not on loopback cannot log in \(LOGINDISABLED, no STARTTLS\); set tls-cert and tls-key, or allow-plaintext-auth behind a TLS terminator"`)
	p.waitFor(t, p.stderr, 0, `level=WARN msg="upstream does not answer; logins get NO \[UNAVAILABLE\] until it does" upstream=`+regexp.QuoteMeta(dead)+` err=`)
	p.listenAddr(t, false) // signals are handled from here on
	p.stop(t, syscall.SIGTERM)

	up := startUpstream(t, "alice", "secret", 0)
	q := start(t, "serve", "-listen", "127.0.0.1:0", "-upstream", up.Addr)
	q.waitFor(t, q.stderr, 0, `level=INFO msg="upstream answers" upstream=`+regexp.QuoteMeta(up.Addr))
	q.listenAddr(t, false)
	q.stop(t, syscall.SIGTERM)
	if strings.Contains(q.stderr.String(), "level=WARN") {
		t.Errorf("warnings for a loopback listener and a live upstream: %s", q.stderr)
	}
}

func TestDemo(t *testing.T) {
	p := start(t, "demo", "-listen", "127.0.0.1:0")
	addr := p.waitFor(t, p.stdout, 0, `proxy on (127\.0\.0\.1:\d+) in front of a built-in server`)[1]
	if !strings.Contains(p.stdout.String(), `Log in as "demo" with password "demo"`) {
		t.Errorf("demo output lacks the credentials: %q", p.stdout)
	}
	c := dialIMAP(t, addr)
	c.ok("a1", "LOGIN demo demo")
	if u := c.ok("a2", "SELECT INBOX"); !contains(u, "* 3 EXISTS") {
		t.Errorf("SELECT INBOX: %q; want * 3 EXISTS", u)
	}
	u := c.ok("a3", "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
	if !strings.Contains(strings.Join(u, "\n"), "Subject: Lunch?") {
		t.Errorf("FETCH: %q", u)
	}

	// The idle client is told the server is going away.
	begin := time.Now()
	p.signal(t, syscall.SIGTERM)
	if l := c.readLine(); !strings.HasPrefix(l, "* BYE ") {
		t.Errorf("after SIGTERM the client read %q; want * BYE", l)
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c.br); err != nil || len(rest) != 0 {
		t.Errorf("after BYE: %q, %v; want the connection closed", rest, err)
	}
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM; want 0", code)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	p.waitFor(t, p.stderr, 0, `msg="shutting down" signal=terminated`)
	p.waitFor(t, p.stderr, 0, `msg=stopped`)
}

// TestDemoUpstream: demo -upstream runs in front of that server and does
// not claim a built-in one or its demo account.
func TestDemoUpstream(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 1)
	p := start(t, "demo", "-listen", "127.0.0.1:0", "-upstream", up.Addr)
	addr := p.waitFor(t, p.stdout, 0, `proxy on (127\.0\.0\.1:\d+) in front of `+regexp.QuoteMeta(up.Addr)+` \(from -upstream; no built-in server\)`)[1]
	p.waitFor(t, p.stdout, 0, `Press Ctrl-C to stop`)
	if out := p.stdout.String(); strings.Contains(out, "built-in server on") || strings.Contains(out, `"demo"`) {
		t.Errorf("demo -upstream claims the built-in server or its account: %q", out)
	}
	c := dialIMAP(t, addr)
	c.ok("a1", "LOGIN alice secret")
	if u := c.ok("a2", "SELECT INBOX"); !contains(u, "* 1 EXISTS") {
		t.Errorf("SELECT INBOX through demo -upstream: %q; want the upstream's * 1 EXISTS", u)
	}
	p.stop(t, syscall.SIGTERM)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestServeConfigFile(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 1)
	dir := t.TempDir()
	conf := filepath.Join(dir, "lemonproxy.toml")
	// listen is invalid: it must be overridden by the flag. The other keys
	// must be kept.
	text := fmt.Sprintf("listen = \"256.0.0.1:1\"\nupstream = %q\nupstream-security = \"none\"\ndata = %q\nlog-level = \"debug\"\nauth-failure-delay = \"10ms\"\n",
		up.Addr, filepath.Join(dir, "data"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	listen := freePort(t)
	p := start(t, "serve", "-config", conf, "-listen", listen)
	p.waitFor(t, p.stderr, 0, `msg=listening addr=`+regexp.QuoteMeta(listen)+` tls=false upstream=`+regexp.QuoteMeta(up.Addr))

	c := dialIMAP(t, listen)
	c.ok("a1", `LOGIN alice "secret"`)
	if u := c.ok("a2", "SELECT INBOX"); !contains(u, "* 1 EXISTS") {
		t.Errorf("SELECT INBOX: %q; want * 1 EXISTS", u)
	}
	// log-level debug from the file is in force.
	p.waitFor(t, p.stderr, 0, `level=DEBUG`)
	if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
		t.Errorf("data directory from the file: %v", err)
	}
	// SIGHUP with the file unchanged changes nothing.
	mark := p.stderr.Len()
	p.signal(t, syscall.SIGHUP)
	p.waitFor(t, p.stderr, mark, `level=INFO msg="SIGHUP: configuration reloaded" changed=none needs-restart=none\n`)
	c.ok("a3", "NOOP")
	c.ok("a4", "LOGOUT")
	p.stop(t, syscall.SIGTERM)
}

func TestSIGHUPReloadsCertificate(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 0)
	dir := t.TempDir()
	certA, keyA := writeCert(t, filepath.Join(dir, "a"), "cert-a")
	certB, keyB := writeCert(t, filepath.Join(dir, "b"), "cert-b")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile(t, certA, certFile)
	copyFile(t, keyA, keyFile)

	p := start(t, "serve", "-listen", "", "-listen-tls", "127.0.0.1:0", "-tls-cert", certFile, "-tls-key", keyFile,
		"-upstream", up.Addr, "-data", filepath.Join(dir, "data"))
	addr := p.listenAddr(t, true)

	served := func() (string, *client) {
		t.Helper()
		nc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		cn := nc.ConnectionState().PeerCertificates[0].Subject.CommonName
		return cn, newClient(t, nc)
	}
	cn, old := served()
	if cn != "cert-a" {
		t.Fatalf("served %q; want cert-a", cn)
	}
	old.ok("a1", "LOGIN alice secret")

	// A broken file: the reload fails and the old certificate stays.
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mark := p.stderr.Len()
	p.signal(t, syscall.SIGHUP)
	p.waitFor(t, p.stderr, mark, `level=ERROR msg="SIGHUP: invalid configuration; keeping the old one" err=".*`+regexp.QuoteMeta(certFile))
	if cn, _ := served(); cn != "cert-a" {
		t.Errorf("after a failed reload: served %q; want cert-a", cn)
	}

	// New files: new connections get the new certificate.
	copyFile(t, certB, certFile)
	copyFile(t, keyB, keyFile)
	mark = p.stderr.Len()
	p.signal(t, syscall.SIGHUP)
	p.waitFor(t, p.stderr, mark, `msg="SIGHUP: certificate reloaded"`)
	cn, c := served()
	if cn != "cert-b" {
		t.Errorf("after reload: served %q; want cert-b", cn)
	}
	c.ok("b1", "LOGIN alice secret")

	// The connection made before the reloads is still up.
	old.ok("a2", "NOOP")
	if u := old.ok("a3", "SELECT INBOX"); !contains(u, "* 0 EXISTS") {
		t.Errorf("SELECT on the old connection: %q", u)
	}
	p.stop(t, syscall.SIGTERM)
}

// TestSIGHUPReloadsConfig: SIGHUP reads the file and the command line
// again. Changed limits apply to new sessions (and logins), the log level
// at once, the command line still wins over the file; an invalid file
// changes nothing; a changed listen address is reported as needing a
// restart and the old listener stays.
func TestSIGHUPReloadsConfig(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 0)
	dir := t.TempDir()
	conf := filepath.Join(dir, "lemonproxy.toml")
	listen := freePort(t)
	write := func(listen, extra string) {
		t.Helper()
		text := fmt.Sprintf("listen = %q\nupstream = %q\ndata = %q\nauth-failure-delay = \"5s\"\n%s",
			listen, up.Addr, filepath.Join(dir, "data"), extra)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(listen, "")
	// The flag overrides the file's auth-failure-delay, at start and at
	// every reload.
	p := start(t, "serve", "-config", conf, "-auth-failure-delay", "10ms")
	hup := func(want ...string) {
		t.Helper()
		mark := p.stderr.Len()
		p.signal(t, syscall.SIGHUP)
		for _, w := range want {
			p.waitFor(t, p.stderr, mark, w)
		}
	}
	p.waitFor(t, p.stderr, 0, `msg=listening addr=`+regexp.QuoteMeta(listen)+` `)
	a := dialIMAP(t, listen)
	a.ok("a1", "LOGIN alice secret")

	// Lower limits and a new log level.
	write(listen, "sessions-per-user = 1\npreauth-commands = 2\nlog-level = \"debug\"\n")
	hup(`level=INFO msg="SIGHUP: configuration reloaded" changed=log-level,sessions-per-user,preauth-commands needs-restart=none\n`)
	mark := p.stderr.Len()
	limited := func(tag string) {
		t.Helper()
		b := dialIMAP(t, listen)
		if _, st := b.do(tag+"1", "LOGIN alice secret"); st != tag+"1 NO [LIMIT] Too many sessions for this account; log out elsewhere first." {
			t.Errorf("second session of alice: %q; want NO [LIMIT]", st)
		}
		b.ok(tag+"2", "NOOP")
		b.send(tag + "3 NOOP\r\n")
		if l := b.readLine(); l != "* BYE Too many commands before login." {
			t.Errorf("third command before login: %q; want * BYE", l)
		}
	}
	limited("b")
	p.waitFor(t, p.stderr, mark, `level=DEBUG msg=command `)
	a.ok("a2", "NOOP") // the session opened before goes on

	// Invalid files: nothing changes.
	pushKey := filepath.Join(dir, "push.key")
	if err := os.WriteFile(pushKey, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ extra, err string }{
		{"sessions-per-user = \"many\"\n", `sessions-per-user`},
		{"sessions-per-user = 5\nupstream-security = \"ssl\"\n", `upstream security .*ssl`},
		// Settings that need a restart, checked all the same: a
		// reload that took them would leave a proxy that does not
		// start again.
		{"sessions-per-user = 5\ncompress-level = 12\n", `compress-level 12: want 1 \(fastest\) to 9 \(smallest\)`},
		{"sessions-per-user = 5\nspool-max-bytes = 1000\n", `spool-max-bytes 1000 is below max-append`},
		{"sessions-per-user = 5\nurlauth-submit-from = \"smtp.example\"\n", `urlauth-submit-from: .*smtp\.example`},
		{"sessions-per-user = 5\npush-gateway = \"https://push.example/\"\npush-credentials-key = \"/nonexistent/push.key\"\n", `push-credentials-key: .*/nonexistent/push\.key`},
		{"sessions-per-user = 5\npush-gateway = \"http://push.example/\"\npush-credentials-key = \"" + pushKey + "\"\n", `devicetoken: gateway: .*not https`},
		{"sessions-per-user = 5\ncluster-db = \"postgres://db.invalid/lp\"\nnode = \"n1\"\ncluster-listen = \"127.0.0.1:0\"\ncluster-secret = \"/nonexistent/cluster.secret\"\n", `cluster-secret: .*/nonexistent/cluster\.secret`},
	} {
		write(listen, tc.extra)
		hup(`level=ERROR msg="SIGHUP: invalid configuration; keeping the old one" err=".*` + tc.err)
		limited("c")
	}

	// A new listen address needs a restart: warned about, not applied; the
	// rest is applied.
	write(freePort(t), "sessions-per-user = 2\n")
	hup(`level=WARN msg="SIGHUP: setting changed; needs a restart" setting=listen\n`,
		`level=INFO msg="SIGHUP: configuration reloaded" changed=log-level,sessions-per-user,preauth-commands needs-restart=listen\n`)
	d := dialIMAP(t, listen)
	d.ok("d1", "LOGIN alice secret")
	p.stop(t, syscall.SIGTERM)
}

func TestLogsHideSecrets(t *testing.T) {
	const (
		user      = "carol"
		pass      = "Zq9-unique-P@ss-4242"
		wrongPass = "Wr0ng-unique-P@ss-7777"
		litPass   = "L1teral-unique-P@ss-5151"
	)
	up := startUpstream(t, user, pass, 1)
	if err := up.AddUser("dave", litPass); err != nil {
		t.Fatal(err)
	}
	p := start(t, "serve", "-listen", "127.0.0.1:0", "-upstream", up.Addr, "-log-level", "debug", "-auth-failure-delay", "10ms")
	addr := p.listenAddr(t, false)

	c := dialIMAP(t, addr)
	c.ok("a1", fmt.Sprintf("LOGIN %s %q", user, pass))
	c.ok("a2", "SELECT INBOX")
	c.ok("a3", "LOGOUT")

	c = dialIMAP(t, addr)
	if _, st := c.do("b1", fmt.Sprintf("LOGIN %s %q", user, wrongPass)); !strings.HasPrefix(st, "b1 NO") {
		t.Errorf("LOGIN with a wrong password: %q", st)
	}
	sasl := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	c.ok("b2", "AUTHENTICATE PLAIN "+sasl)
	c.ok("b3", "LOGOUT")

	// A password in a synchronising literal.
	c = dialIMAP(t, addr)
	c.send(fmt.Sprintf("c1 LOGIN dave {%d}\r\n", len(litPass)))
	if l := c.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("literal: %q; want a continuation request", l)
	}
	c.send(litPass + "\r\n")
	if l := c.readLine(); !strings.HasPrefix(l, "c1 OK") {
		t.Fatalf("LOGIN with a literal password: %q", l)
	}
	// AUTHENTICATE without an initial response, then a wrong one.
	wrongSASL := base64.StdEncoding.EncodeToString([]byte("\x00dave\x00" + wrongPass))
	c2 := dialIMAP(t, addr)
	c2.send("d1 AUTHENTICATE PLAIN\r\n")
	if l := c2.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("AUTHENTICATE: %q; want a continuation request", l)
	}
	c2.send(wrongSASL + "\r\n")
	if l := c2.readLine(); !strings.HasPrefix(l, "d1 NO") {
		t.Errorf("AUTHENTICATE with a wrong password: %q", l)
	}
	p.stop(t, syscall.SIGINT)

	logs := p.stderr.String()
	for _, secret := range []string{pass, wrongPass, litPass, sasl, wrongSASL} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains the secret %q:\n%s", secret, logs)
		}
	}
	// The log is not simply empty.
	for _, want := range []string{`msg="logged in"`, `msg="login failed"`, "user=carol", "level=DEBUG"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 with common name
// cn to base+"-cert.pem" and its key to base+"-key.pem".
func writeCert(t *testing.T, base, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = base+"-cert.pem", base+"-key.pem"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSIGHUPMaxAppendWithSpool: a file that raises max-append (applied at
// a reload) and spool-max-bytes (needs a restart) together is valid: the
// proxy starts with it. A reload took it before the extensions' checks
// ran at reload (session 19), and must still: those checks, run on the
// settings in force after the reload (the running spool with the new
// max-append), refused the whole file, certificate and log level
// included, citing a spool-max-bytes the file does not hold.
func TestSIGHUPMaxAppendWithSpool(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 0)
	dir := t.TempDir()
	conf := filepath.Join(dir, "lemonproxy.toml")
	listen := freePort(t)
	write := func(extra string) {
		t.Helper()
		text := fmt.Sprintf("listen = %q\nupstream = %q\ndata = %q\n%s", listen, up.Addr, filepath.Join(dir, "data"), extra)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	p := start(t, "serve", "-config", conf)
	p.waitFor(t, p.stderr, 0, `msg=listening addr=`+regexp.QuoteMeta(listen)+` `)
	c := dialIMAP(t, listen)
	c.ok("a1", "LOGIN alice secret")
	const size = 2 << 30 // above the default spool-max-bytes, 1 GiB
	c.send("a2 APPEND INBOX {" + strconv.Itoa(size) + "}\r\n")
	if l := c.readLine(); !strings.HasPrefix(l, "a2 NO [TOOBIG]") {
		t.Fatalf("APPEND of %d bytes before the reload: %q; want NO [TOOBIG]", size, l)
	}

	write(fmt.Sprintf("log-level = \"debug\"\nmax-append = %d\nspool-max-bytes = %d\n", size, 2*size))
	mark := p.stderr.Len()
	p.signal(t, syscall.SIGHUP)
	got := p.waitFor(t, p.stderr, mark, `level=(INFO|ERROR) msg="SIGHUP: (configuration reloaded|invalid configuration).*\n`)[0]
	if want := `level=INFO msg="SIGHUP: configuration reloaded" changed=log-level,max-append needs-restart=spool-max-bytes`; !strings.Contains(got, want) {
		t.Fatalf("reload of a valid file: %q; want %q", got, want)
	}
	// A reload's limits hold for the sessions that start after it.
	d := dialIMAP(t, listen)
	d.ok("d1", "LOGIN alice secret")
	d.send("d2 APPEND INBOX {" + strconv.Itoa(size) + "}\r\n")
	if l := d.readLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND of %d bytes after the reload: %q; want a continuation", size, l)
	}
	c.nc.Close()
	d.nc.Close()
	p.stop(t, syscall.SIGTERM)
}

// TestSIGHUPRefusesWhatStartRefuses: each file here stops a start (shown
// by starting with it), and a reload of a running proxy refuses it with
// the same error and keeps the configuration in force (the file's
// sessions-per-user = 1 is not applied). Each of these checks ran only
// where start builds push or joins the cluster, or listens: the reload
// took the file (its settings listed as needing a restart) and the next
// restart failed.
func TestSIGHUPRefusesWhatStartRefuses(t *testing.T) {
	up := startUpstream(t, "alice", "secret", 0)
	dir := t.TempDir()
	conf := filepath.Join(dir, "lemonproxy.toml")
	listen := freePort(t)
	write := func(listen, data, extra string) {
		t.Helper()
		text := fmt.Sprintf("listen = %q\nupstream = %q\ndata = %q\nauth-failure-delay = \"10ms\"\n%s",
			listen, up.Addr, data, extra)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := func(name, text string, mode os.FileMode) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // whatever the umask
			t.Fatal(err)
		}
		return path
	}
	running := filepath.Join(dir, "data")
	write(listen, running, "")
	p := start(t, "serve", "-config", conf)
	p.waitFor(t, p.stderr, 0, `msg=listening addr=`+regexp.QuoteMeta(listen)+` `)
	a := dialIMAP(t, listen)
	a.ok("a1", "LOGIN alice secret")

	key32 := file("push.key", strings.Repeat("k", 32), 0o600)
	secret := file("cluster.secret", strings.Repeat("s", 32), 0o600)
	emptyPass := file("master.pass", "\n", 0o600)
	webpush := fmt.Sprintf("push-webpush = true\npush-credentials-key = %q\n", key32)
	cluster := fmt.Sprintf("cluster-db = \"postgres://127.0.0.1:1/lp\"\nnode = \"n1\"\ncluster-listen = \"127.0.0.1:0\"\ncluster-secret = %q\n", secret)
	// A VAPID key in a data directory of its own per case.
	vapid := func(name, text string, mode os.FileMode) string {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		file(filepath.Join(name, "webpush-vapid.pem"), text, mode)
		return d
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	// Another data directory than the running proxy's, which it holds
	// locked: the start must fail on the setting under test.
	other := filepath.Join(dir, "other")
	for _, tc := range []struct {
		name, listen, data, extra string
		want                      string // a regular expression of the error, as start and reload log it
	}{
		{"VAPID key readable by others", "", vapid("open", keyPEM, 0o644), webpush,
			`push-webpush: webpush: VAPID key file \S+/open/webpush-vapid\.pem has mode -rw-r--r--: readable by others than its owner`},
		{"VAPID key not PEM", "", vapid("garbage", "not a key\n", 0o600), webpush,
			`push-webpush: webpush: \S+/garbage/webpush-vapid\.pem holds no PEM block`},
		{"VAPID key missing in cluster mode", "", filepath.Join(dir, "nokey"), webpush + cluster,
			`push-webpush in cluster mode: the VAPID key \S+/nokey/webpush-vapid\.pem must be the same file on every node`},
		{"push mailbox name too long", "", other, fmt.Sprintf("push-gateway = \"https://push.example/\"\npush-credentials-key = %q\npush-mailboxes = \"INBOX, %s\"\n", key32, strings.Repeat("x", 1025)),
			`push: mailbox name \\"x{1000}x{25}\\"`},
		{"master password empty", "", other, fmt.Sprintf("push-gateway = \"https://push.example/\"\nupstream-master-user = \"pushmaster\"\nupstream-master-password-file = %q\n", emptyPass),
			`push: a master user without a password`},
		{"node name not ASCII", "", other, strings.Replace(cluster, `"n1"`, `"nöde"`, 1),
			`cluster: node name \\"nöde\\": only printable ASCII without spaces`},
		{"cluster database URL", "", other, strings.Replace(cluster, "postgres://127.0.0.1:1/lp", "postgres://127.0.0.1:port/lp", 1),
			`cluster: database URL: cannot parse .*invalid port`},
		{"listen without port", "127.0.0.1", other, "", `config: listen \\"127\.0\.0\.1\\": missing port in address; want HOST:PORT`},
		{"metrics port", "", other, "metrics = \"127.0.0.1:99999\"\n", `config: metrics \\"127\.0\.0\.1:99999\\": port \\"99999\\": want a number from 0 to 65535 or a service name`},
		{"cluster-listen port", "", other, strings.Replace(cluster, `cluster-listen = "127.0.0.1:0"`, `cluster-listen = "127.0.0.1:imap-link"`, 1),
			`config: cluster-listen \\"127\.0\.0\.1:imap-link\\": port \\"imap-link\\": want a number from 0 to 65535 or a service name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := "sessions-per-user = 1\n" + tc.extra
			l := listen
			if tc.listen != "" {
				l = tc.listen
			}
			write(l, tc.data, extra)
			// Start refuses it.
			code, _, stderr := runLP(t, "serve", "-config", conf)
			if code == 0 || !regexp.MustCompile(`level=ERROR .*`+tc.want).MatchString(stderr) {
				t.Errorf("start: exit %d, stderr %s; want a failure with %s", code, stderr, tc.want)
			}
			// So does a reload, keeping the configuration in force.
			mark := p.stderr.Len()
			p.signal(t, syscall.SIGHUP)
			got := p.waitFor(t, p.stderr, mark, `level=(INFO|ERROR) msg="SIGHUP: (configuration reloaded|invalid configuration).*\n`)[0]
			if !regexp.MustCompile(`^level=ERROR msg="SIGHUP: invalid configuration; keeping the old one" err=".*` + tc.want).MatchString(got) {
				t.Errorf("reload: %s; want it refused with %s", got, tc.want)
			}
			b := dialIMAP(t, listen)
			b.ok("b1", "LOGIN alice secret") // sessions-per-user = 1 not in force
			b.ok("b2", "LOGOUT")
		})
	}
	write(listen, running, "")
	a.ok("a2", "NOOP")
	p.stop(t, syscall.SIGTERM)
}
