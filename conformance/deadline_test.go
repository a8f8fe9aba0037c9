package conformance

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// silentServer is an IMAP server that answers its first connection (the
// suite's probe: LOGIN, CAPABILITY, LOGOUT) and then stops answering: every
// later connection is greeted and never hears another word, as from a
// server that hangs.
type silentServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startSilentServer(t *testing.T) *silentServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentServer{ln: ln}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *silentServer) accept() {
	defer s.wg.Done()
	for first := true; ; first = false {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c, first)
	}
}

func (s *silentServer) serve(c net.Conn, answer bool) {
	defer s.wg.Done()
	defer c.Close()
	c.Write([]byte("* OK silent test server\r\n"))
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if !answer {
			continue
		}
		tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb, _, _ := strings.Cut(strings.ToUpper(cmd), " ")
		switch verb {
		case "CAPABILITY":
			c.Write([]byte("* CAPABILITY IMAP4rev1\r\n" + tag + " OK done\r\n"))
		case "LOGOUT":
			c.Write([]byte("* BYE bye\r\n" + tag + " OK done\r\n"))
			return
		default:
			c.Write([]byte(tag + " OK done\r\n"))
		}
	}
}

// TestDeadlineEndsASilentRun runs the RFC 3501 scenarios (36 of them, each
// of which would wait its 5 s timeout at least once) against a server that
// stops answering after the probe, with a 2 s deadline. The run must end
// within the deadline and a small margin, the scenario under way cut (its
// connections closed), every other one reported not run, and the JUnit
// report must show them as errors.
func TestDeadlineEndsASilentRun(t *testing.T) {
	srv := startSilentServer(t)
	cfg := Target(srv.ln.Addr().String(), "u", "p")
	cfg.Only = regexp.MustCompile(`^3501-`)
	cfg.Timeout = 5 * time.Second
	cfg.Deadline = 2 * time.Second
	start := time.Now()
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > cfg.Deadline+time.Second {
		t.Errorf("the run took %v with a deadline of %v", took, cfg.Deadline)
	}
	// 3501-greeting needs nothing but the greeting and passes; the next
	// scenario waits for its LOGIN until the deadline cuts it.
	if !rep.DeadlinePassed || rep.Failed != 0 || rep.Passed != 1 || rep.NotRun != len(rep.Results)-1 || rep.NotRun < 30 {
		t.Errorf("DeadlinePassed %v, %s of %d; want 3501-greeting passed, the others not run", rep.DeadlinePassed, rep.CountLine(), len(rep.Results))
	}
	cut := -1
	for i, res := range rep.Results {
		switch {
		case i == 0:
			if res.ID != "3501-greeting" || res.Outcome != Pass {
				t.Errorf("%s: %s %q, want 3501-greeting passed", res.ID, res.Outcome, res.Reason)
			}
		case res.Cut:
			cut = i
			if res.Outcome != Skip || !strings.HasPrefix(res.Reason, "cut: the run's deadline of 2s passed while it ran") {
				t.Errorf("%s cut: %s %q", res.ID, res.Outcome, res.Reason)
			}
			if res.Cleanup != "" && !strings.HasPrefix(res.Cleanup, "not done (the run's deadline of 2s passed)") {
				t.Errorf("%s cut: cleanup %q", res.ID, res.Cleanup)
			}
		case res.Outcome != Skip || res.Reason != "not run: the run's deadline of 2s passed":
			t.Errorf("%s: %s %q, want not run", res.ID, res.Outcome, res.Reason)
		}
	}
	if cut != 1 {
		t.Errorf("scenario %d was cut, want the second, the one under way at the deadline", cut)
	}
	if n := len(rep.Results) - 1; !strings.HasPrefix(rep.CountLine(), "1 passed, 0 failed, "+strconv.Itoa(n)+" skipped") || !strings.HasSuffix(rep.CountLine(), "; deadline of 2s passed, "+strconv.Itoa(n)+" not run") {
		t.Errorf("count line %q", rep.CountLine())
	}
	var junit bytes.Buffer
	if err := rep.WriteJUnit(&junit); err != nil {
		t.Fatal(err)
	}
	x := junit.String()
	if n := strings.Count(x, `<error message=`); n != rep.NotRun || !strings.Contains(x, `type="deadline"`) || strings.Contains(x, "<skipped") {
		t.Errorf("JUnit report has %d <error> for %d scenarios not run (want all, type deadline, none skipped):\n%s", n, rep.NotRun, x)
	}
	if !strings.Contains(x, `<testsuites name="lemonproxy conformance `+rep.Target+`" tests="`+strconv.Itoa(len(rep.Results))+`" failures="0" errors="`+strconv.Itoa(rep.NotRun)+`" skipped="0"`) {
		t.Errorf("JUnit report does not count %d errors:\n%s", rep.NotRun, x)
	}
}

// TestDeadlineFlag runs the same through the command line: -deadline cuts
// the run, the text report says why, and the exit status is 1.
func TestDeadlineFlag(t *testing.T) {
	srv := startSilentServer(t)
	var out, errOut bytes.Buffer
	start := time.Now()
	code := Main([]string{"-target", srv.ln.Addr().String(), "-user", "u", "-pass", "p", "-only", "^3501-", "-timeout", "5s", "-deadline", "1500ms"}, &out, &errOut)
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("the run took %v with -deadline 1500ms", took)
	}
	if code != 1 {
		t.Errorf("exit status %d, want 1; stderr %s", code, errOut.String())
	}
	for _, want := range []string{"not run: the run's deadline of 1.5s passed", "cut: the run's deadline of 1.5s passed while it ran", "The run's deadline of 1.5s (-deadline) passed", "; deadline of 1.5s passed, "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the text report lacks %q:\n%s", want, out.String())
		}
	}
}
