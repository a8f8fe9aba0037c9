package integration

import (
	"bufio"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// buildLemonproxy builds cmd/lemonproxy into a temporary directory.
func buildLemonproxy(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "lemonproxy")
	out, err := exec.Command(goBin, "build", "-o", bin, "../../cmd/lemonproxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lemonproxyProc is a running "lemonproxy serve".
type lemonproxyProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	done chan struct{}

	mu  sync.Mutex
	log []string
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startLemonproxy runs "lemonproxy serve" in front of upstream with its
// state in data, on a free loopback port, and returns once it listens.
func startLemonproxy(t *testing.T, bin, upstream, data string) *lemonproxyProc {
	t.Helper()
	cmd := exec.Command(bin, "serve",
		"-listen", "127.0.0.1:0",
		"-upstream", upstream,
		"-data", data,
		"-log-level", "debug",
		"-auth-failure-delay", "10ms",
		"-poll-interval", "300ms",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &lemonproxyProc{t: t, cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log = append(p.log, line)
			p.mu.Unlock()
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			tail := p.log[max(0, len(p.log)-60):]
			p.mu.Unlock()
			t.Logf("lemonproxy (pid %d) log tail:\n%s", cmd.Process.Pid, strings.Join(tail, "\n"))
		}
	})
	select {
	case p.addr = <-addr:
	case <-p.done:
		t.Fatalf("lemonproxy exited: %v\n%s", cmd.ProcessState, strings.Join(p.log, "\n"))
	case <-time.After(10 * time.Second):
		t.Fatal("lemonproxy did not start listening within 10s")
	}
	return p
}

// kill sends SIGKILL: no shutdown, no flush, as a crash or the OOM killer.
func (p *lemonproxyProc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	<-p.done
}

// TestKillRestartQResync: the proxy is killed with SIGKILL after it
// recorded outside changes (and a client heard of them) and right after
// more outside changes it may or may not have seen; more are made while
// it is down. Restarted with the
// same -data, it must answer a QRESYNC SELECT from the client's old
// mod-sequence with exactly the delta (RFC 7162 3.2.5): every expunged UID
// in VANISHED (EARLIER), no other; every changed or new message in a
// FETCH, no other; a HIGHESTMODSEQ above every one handed out before the
// kill. Resyncing from the new HIGHESTMODSEQ, or after a restart with no
// change, then gives nothing.
func TestKillRestartQResync(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	u := csSeed(t, dc, "INBOX", 6)
	// Gap: a mailbox with a UID expunged before the proxy ever saw it.
	g := csSeed(t, dc, "Gap", 3)
	dg := csDirect(t, dc, "Gap")
	dg.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, g[1]))
	dg.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, g[1]))
	bin := buildLemonproxy(t)
	data := t.TempDir()

	p1 := startLemonproxy(t, bin, dc.Addr, data)
	c := csLogin(t, p1.addr, "QRESYNC")
	r := c.selectMailbox("SELECT INBOX", u)
	h0 := r.highestModSeq(t)
	uv := r.codes["UIDVALIDITY"][0]

	// Outside changes the running proxy records: its client hears of them
	// at NOOP, so they are on disk (a change is durable before any client
	// is told).
	d := csDirect(t, dc, "INBOX")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[1]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[2]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[2]))
	added := csAppend(t, d, "INBOX", 1)
	r = c.mustRun("NOOP")
	csWantUIDs(t, "NOOP before the kill: VANISHED", r.vanished, u[2])
	if want := []uint32{u[0], u[1], u[3], u[4], u[5], added[0]}; len(c.view) != len(want) {
		t.Fatalf("NOOP before the kill: view %v, want %v (%q)", c.view, want, r.lines)
	}
	seen := false
	for _, f := range r.fetches {
		if f.uid == u[1] {
			seen = true
			csWantFlags(t, f.line, f.flags, `\Seen`)
		}
	}
	if !seen {
		t.Fatalf("NOOP before the kill: no FETCH for UID %d: %q", u[1], r.lines)
	}
	// In Gap every message changes after the client's mod-sequence,
	// one twice: no entry of the saved change log is as old as it.
	cg := csLogin(t, p1.addr, "QRESYNC")
	rg := cg.selectMailbox("SELECT Gap", []uint32{g[0], g[2]})
	hg0, uvg := rg.highestModSeq(t), rg.codes["UIDVALIDITY"][0]
	for _, ch := range []struct {
		uid  uint32
		flag string
	}{{g[0], `\Seen`}, {g[2], `\Seen`}, {g[0], `$Twice`}} {
		dg.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (%s)`, ch.uid, ch.flag))
		// One watcher round each, so each gets its own mod-sequence.
		if r := cg.mustRun("NOOP"); len(r.fetches) != 1 || r.fetches[0].uid != ch.uid {
			t.Fatalf("Gap: NOOP: %q", r.lines)
		}
	}

	s := csLogin(t, p1.addr, "")
	hPre := csStatusItems(t, s, "STATUS INBOX (HIGHESTMODSEQ)")["HIGHESTMODSEQ"]
	if hPre <= h0 {
		t.Fatalf("HIGHESTMODSEQ %d after changes, was %d", hPre, h0)
	}

	// More outside changes, and the kill at once: Dovecot tells an IDLE
	// connection about half a second later, so the watcher has most
	// likely not recorded them; either way the answer must be the same.
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[3]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[4]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[4]))
	added2 := csAppend(t, d, "INBOX", 1)
	p1.kill()
	d.Close()

	// And changes while no proxy runs: only the reconciliation after the
	// restart can find these.
	d = csDirect(t, dc, "INBOX")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS ($Down)`, u[0]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[5]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[5]))

	p2 := startLemonproxy(t, bin, dc.Addr, data)
	now := []uint32{u[0], u[1], u[3], added[0], added2[0]}
	flags := map[uint32][]string{u[0]: {`$Down`}, u[1]: {`\Seen`}, u[3]: {`\Flagged`}, added[0]: nil, added2[0]: nil}
	resync := func(c *csClient, from uint64, vanished, fetched []uint32) uint64 {
		t.Helper()
		cmd := fmt.Sprintf("SELECT INBOX (QRESYNC (%s %d))", uv, from)
		r := c.selectMailbox(cmd, now)
		h := r.highestModSeq(t)
		csWantUIDs(t, cmd+": VANISHED (EARLIER)", r.earlier, vanished...)
		csWantUIDs(t, cmd+": FETCH", r.fetchUIDs(), fetched...)
		if len(r.vanished) != 0 || len(r.expunges) != 0 {
			t.Errorf("%s: VANISHED without EARLIER or EXPUNGE: %q", cmd, r.lines)
		}
		if r.firstFetch >= 0 && r.lastEarlier > r.firstFetch {
			t.Errorf("%s: VANISHED (EARLIER) after FETCH: %q", cmd, r.lines)
		}
		for uid, f := range r.byUID(t) {
			if !f.hasFlags || !f.hasModSeq || f.modseq <= from || f.modseq > h {
				t.Errorf("%s: %q: want UID, FLAGS and a MODSEQ in %d..%d", cmd, f.line, from+1, h)
			}
			csWantFlags(t, f.line, f.flags, flags[uid]...)
		}
		return h
	}
	c2 := csLogin(t, p2.addr, "QRESYNC")
	h2 := resync(c2, h0, []uint32{u[2], u[4], u[5]}, []uint32{u[0], u[1], u[3], added[0], added2[0]})
	if h2 <= hPre {
		t.Errorf("HIGHESTMODSEQ %d after the restart, %d before the kill", h2, hPre)
	}
	// From what the proxy had handed out before the kill: exactly the
	// changes made around it.
	resync(c2, hPre, []uint32{u[4], u[5]}, []uint32{u[0], u[3], added2[0]})

	// Gap: exactly its two changed messages; its UID expunged before the
	// proxy knew the mailbox is no news to this client.
	cmd := fmt.Sprintf("SELECT Gap (QRESYNC (%s %d))", uvg, hg0)
	r = c2.selectMailbox(cmd, []uint32{g[0], g[2]})
	csWantUIDs(t, cmd+": VANISHED (EARLIER)", r.earlier)
	csWantUIDs(t, cmd+": FETCH", r.fetchUIDs(), g[0], g[2])
	for _, f := range r.fetches {
		want := map[uint32][]string{g[0]: {`\Seen`, `$Twice`}, g[2]: {`\Seen`}}[f.uid]
		csWantFlags(t, f.line, f.flags, want...)
	}

	// A second reconnect, from the new HIGHESTMODSEQ: nothing.
	c3 := csLogin(t, p2.addr, "QRESYNC")
	if h := resync(c3, h2, nil, nil); h != h2 {
		t.Errorf("HIGHESTMODSEQ %d, was %d with nothing changed", h, h2)
	}

	// Killed again with nothing changed: the restarted proxy reconciles
	// the mailbox and finds nothing new.
	p2.kill()
	p3 := startLemonproxy(t, bin, dc.Addr, data)
	c4 := csLogin(t, p3.addr, "QRESYNC")
	if h := resync(c4, h2, nil, nil); h != h2 {
		t.Errorf("after a restart with nothing changed: HIGHESTMODSEQ %d, was %d", h, h2)
	}
	resync(c4, h0, []uint32{u[2], u[4], u[5]}, []uint32{u[0], u[1], u[3], added[0], added2[0]})
}
