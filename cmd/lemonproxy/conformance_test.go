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
	"testing"

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
