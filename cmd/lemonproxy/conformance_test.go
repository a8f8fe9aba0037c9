package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/conformance"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// startConformanceTarget runs go-imap's in-memory server with one user, a
// server the conformance subcommand can be pointed at without Dovecot.
func startConformanceTarget(t *testing.T) string {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	return up.Addr
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestConformanceUsage(t *testing.T) {
	for _, args := range [][]string{
		{"conformance"}, // no target
		{"conformance", "-target", "127.0.0.1:1"}, // no user
		{"conformance", "-target", "x:1", "-user", "u", "-pass", "p", "-tls", "-starttls"},
		{"conformance", "-target", "x:1", "-user", "u", "-format", "xml"},
		{"conformance", "-target", "x:1", "-user", "u", "-only", "("},
		{"conformance", "-target", "x:1", "-user", "u", "stray"},
		{"conformance", "-no-such-flag"},
		{"conformance", "-target", "x:1", "-user", "u", "-only", "^no-such-scenario$"},
		{"conformance", "-target", "x:1", "-user", "u", "-deadline", "-1s"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "Usage") && !strings.Contains(stderr.String(), "flag provided but not defined") {
			t.Errorf("%q: no usage on stderr: %q", args, stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"conformance", "-h"}, &stdout, &stderr); code != 0 {
		t.Errorf("-h: exit %d, want 0", code)
	}
	if !strings.Contains(stderr.String(), "-target") {
		t.Errorf("-h does not document -target: %q", stderr.String())
	}
}

func TestConformanceList(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"conformance", "-list"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if n := strings.Count(stdout.String(), "\n"); n < 80 {
		t.Errorf("-list shows %d scenarios, want at least 80", n)
	}
}

func TestConformancePassAndSkip(t *testing.T) {
	addr := startConformanceTarget(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p",
		"-only", `^(3501-greeting|3501-capability|7162-select-highestmodseq)$`}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if got := lastLine(out); got != "2 passed, 0 failed, 1 skipped" {
		t.Errorf("last line %q, want \"2 passed, 0 failed, 1 skipped\"\n%s", got, out)
	}
	if !strings.Contains(out, "capability CONDSTORE not advertised") {
		t.Errorf("skip reason missing:\n%s", out)
	}
	for _, want := range []string{"PASS", "3501-greeting", "RFC 3501 §7.1", "SKIP", "Passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
}

// TestConformanceFailureExitStatus runs the built binary, so the exit
// status is the process's own: 1 when a scenario fails.
func TestConformanceFailureExitStatus(t *testing.T) {
	addr := startConformanceTarget(t)
	out := filepath.Join(t.TempDir(), "report.xml")
	cmd := exec.Command(binary, "conformance", "-target", addr, "-user", "u", "-pass", "p",
		"-force-caps", "CONDSTORE", "-only", `^7162-(select-highestmodseq|fetch-modseq)$`,
		"-format", "junit", "-out", out, "-timeout", "5s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if got := lastLine(stdout.String()); got != "0 passed, 2 failed" {
		t.Errorf("stdout's last line %q, want \"0 passed, 2 failed\"", got)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &suites); err != nil {
		t.Fatalf("JUnit output does not parse: %v\n%s", err, data)
	}
	if suites.Tests != 2 || suites.Failures != 2 || len(suites.Suites) != 1 || len(suites.Suites[0].Cases) != 2 {
		t.Fatalf("unexpected JUnit report:\n%s", data)
	}
	for _, c := range suites.Suites[0].Cases {
		if c.Failure == nil || c.Failure.Message == "" {
			t.Errorf("%s: no failure message in the JUnit report", c.Name)
		}
	}
}

func TestConformanceUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p", "-timeout", "2s"}, &stdout, &stderr); code != 1 {
		t.Errorf("exit %d, want 1 for an unreachable target", code)
	}
	if !strings.Contains(stderr.String(), "connecting") {
		t.Errorf("stderr does not say what went wrong: %q", stderr.String())
	}
}

// TestConformanceOnlyMatchesNothing: an -only that selects no scenario is
// a usage error, not a run of nothing that exits 0.
func TestConformanceOnlyMatchesNothing(t *testing.T) {
	addr := startConformanceTarget(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p", "-only", "^3501-greting$"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), `-only "^3501-greting$" matches no scenario`) {
		t.Errorf("exit %d, stderr %q; want 2 and the pattern named", code, stderr.String())
	}
}

// timedWriter records when each write happened.
type timedWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes []timedWrite
}

type timedWrite struct {
	at   time.Time
	text string
}

func (w *timedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, timedWrite{time.Now(), string(p)})
	return w.buf.Write(p)
}

// when returns the time of the first write containing s.
func (w *timedWriter) when(t *testing.T, s string) time.Time {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wr := range w.writes {
		if strings.Contains(wr.text, s) {
			return wr.at
		}
	}
	t.Fatalf("%q never written:\n%s", s, w.buf.String())
	return time.Time{}
}

// TestConformanceStreams: each scenario's line is printed when the
// scenario ends, not with the report at the end of the run.
func TestConformanceStreams(t *testing.T) {
	addr := startConformanceTarget(t)
	var stdout timedWriter
	var stderr bytes.Buffer
	// The IDLE scenario listens 1.5 s for a completion that must not come.
	code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p",
		"-only", `^(3501-greeting|2177-no-completion-before-done)$`}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.buf.String(), stderr.String())
	}
	first, last := stdout.when(t, "3501-greeting"), stdout.when(t, "2 passed, 0 failed")
	if gap := last.Sub(first); gap < time.Second {
		t.Errorf("the first scenario's line came %v before the end; want it as soon as the scenario ended (over a second before)", gap)
	}
	if n := strings.Count(stdout.buf.String(), "3501-greeting"); n != 1 {
		t.Errorf("3501-greeting printed %d times:\n%s", n, stdout.buf.String())
	}
	for _, want := range []string{"PASS  2177-no-completion-before-done", "RFC 3501 §7.1", "Passed"} {
		if !strings.Contains(stdout.buf.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.buf.String())
		}
	}

	// With the JSON report on standard output, the lines go to standard
	// error.
	var jout, jerr bytes.Buffer
	if code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p", "-only", `^3501-greeting$`, "-format", "json"}, &jout, &jerr); code != 0 {
		t.Fatalf("json: exit %d: %s", code, jerr.String())
	}
	if !strings.HasPrefix(jerr.String(), "PASS  3501-greeting") || !strings.HasPrefix(jout.String(), "{") {
		t.Errorf("json: stdout %q, stderr %q; want the report on stdout and the line on stderr", jout.String(), jerr.String())
	}
}

// TestConformanceNotifyPollHint runs a NOTIFY scenario against lemonproxy
// on its default settings: its NOTIFY polls other mailboxes every 30 s, so
// the event does not come within -event-wait, and the failure and the
// report say which poll interval the suite needed.
func TestConformanceNotifyPollHint(t *testing.T) {
	up := startUpstream(t, "u", "p", 0)
	p := start(t, "serve", "-listen", "127.0.0.1:0", "-upstream", up.Addr)
	addr := p.listenAddr(t, false)
	var stdout, stderr bytes.Buffer
	code := run([]string{"conformance", "-target", addr, "-user", "u", "-pass", "p", "-outside", up.Addr,
		"-only", `^5465-other-messagenew$`, "-event-wait", "2s"}, &stdout, &stderr)
	out := stdout.String()
	if code != 1 || !strings.Contains(out, "FAIL  5465-other-messagenew") {
		t.Fatalf("exit %d, want 1 and the scenario failed\nstdout:\n%s\nstderr:\n%s", code, out, stderr.String())
	}
	for _, want := range []string{
		"must poll at least every 1s to meet -event-wait 2s",
		"run it with -notify-poll-interval 1s",
		"1 NOTIFY scenario(s) failed waiting 2s for an event. A server that polls for them needs a poll interval of at most 1s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var help bytes.Buffer
	run([]string{"conformance", "-h"}, &help, &help)
	if !strings.Contains(help.String(), "notify-poll-interval") {
		t.Errorf("-h does not explain the NOTIFY poll interval:\n%s", help.String())
	}
}

// confMailboxes lists the mailboxes the conformance suite made (lpconf-…)
// in the account u on addr.
func confMailboxes(t *testing.T, addr string) []string {
	t.Helper()
	c, err := conformance.Dial(conformance.Endpoint{Addr: addr}, 5*time.Second, nil, "check")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if res, err := c.Do(`LOGIN u p`); err != nil || !res.OK() {
		t.Fatalf("LOGIN: %v", err)
	}
	res, err := c.Do(`LIST "" "lpconf*"`)
	if err != nil || !res.OK() {
		t.Fatalf("LIST: %v", err)
	}
	var names []string
	for _, r := range res.Untagged {
		if r.Name == "LIST" {
			names = append(names, r.Line)
		}
	}
	return names
}

// TestConformanceSIGTERM: SIGTERM, what a CI runner or a container stop
// sends, ends the run as Ctrl-C does. The scenario under way finishes and
// deletes its mailbox, the report is written, and the run, incomplete,
// exits 1 and says so. Killed by the signal, the suite left its mailboxes
// on the server and gave CI no report.
func TestConformanceSIGTERM(t *testing.T) {
	addr := startConformanceTarget(t)
	cmd := exec.Command(binary, "conformance", "-target", addr, "-user", "u", "-pass", "p", "-only", `^2177-`, "-timeout", "5s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal while a scenario has a mailbox of its own on the server.
	deadline := time.Now().Add(20 * time.Second)
	for len(confMailboxes(t, addr)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no scenario created a mailbox within 20 s\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("after SIGTERM: %v, want exit status 1\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if got := lastLine(stdout.String()); !strings.Contains(got, "; interrupted, ") || !strings.HasSuffix(got, " not run") {
		t.Errorf("last line %q, want the counts and \"; interrupted, N not run\"\n%s", got, stdout.String())
	}
	if left := confMailboxes(t, addr); len(left) > 0 {
		t.Errorf("mailboxes left on the server after SIGTERM: %q", left)
	}
}

// TestConformanceNotIMAP points the suite at a server that is not IMAP
// (an SMTP greeting, as on a wrong port): it must stop at the greeting,
// at once, without sending the LOGIN command and its password there.
func TestConformanceNotIMAP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- ""
			return
		}
		defer c.Close()
		c.Write([]byte("220 mail.example.org ESMTP ready\r\n"))
		// Answer every line as SMTP would, and report what came.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var b bytes.Buffer
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			b.Write(buf[:n])
			if n > 0 {
				c.Write([]byte("500 5.5.2 Error: command not recognized\r\n"))
			}
			if err != nil {
				got <- b.String()
				return
			}
		}
	}()
	start := time.Now()
	var stdout, stderr bytes.Buffer
	code := run([]string{"conformance", "-target", ln.Addr().String(), "-user", "u", "-pass", "secret-pass", "-timeout", "3s"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "is not an IMAP server") || !strings.Contains(stderr.String(), "220 mail.example.org") {
		t.Errorf("exit %d, stderr %q; want 1 and the greeting named", code, stderr.String())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the run took %v, want it to stop at the greeting", d)
	}
	if sent := <-got; strings.Contains(sent, "secret-pass") {
		t.Errorf("the password was sent to a server that is not IMAP: %q", sent)
	}
}
