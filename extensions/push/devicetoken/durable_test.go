package devicetoken_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// openStores opens the data directory's account data and state stores.
func openStores(t *testing.T, dir string) (*accountdata.Bolt, *statestore.Bolt) {
	t.Helper()
	data, err := accountdata.OpenBolt(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	state, err := statestore.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	return data, state
}

func closeAll(t *testing.T, s *setup, data *accountdata.Bolt, state *statestore.Bolt) {
	t.Helper()
	if err := s.p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := data.Close(); err != nil {
		t.Fatal(err)
	}
	if err := state.Close(); err != nil {
		t.Fatal(err)
	}
}

// copyDir copies the data directory's files as they are at this moment:
// what a crash (kill -9, power loss) would leave on disk.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	for _, name := range []string{accountdata.FileName, "state.db"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// wantPending checks that the data directory holds a pending push of
// account.
func wantPending(t *testing.T, dir, account string) {
	t.Helper()
	data, err := accountdata.OpenBolt(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	if n, err := accountdata.Count(data, account, push.Prefix+"q/"); err != nil || n == 0 {
		t.Fatalf("%d pending pushes on disk (%v)", n, err)
	}
}

// appendUntilTried appends to alice's INBOX every half second until the
// gateway (answering failures) has been tried (the push's record is
// written meanwhile, not necessarily yet). The first APPEND may come
// before push set its cursor, so it may be no news.
func appendUntilTried(t *testing.T, dc *dovecottest.Server, g *gateway) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for g.failures() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the gateway was never tried")
		}
		dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("while the gateway is down"))
		for range 50 {
			if g.failures() > 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestDeviceTokenRestart: registrations and pending pushes are in the
// data directory: a pending push undelivered at a crash (the data
// directory as it was on disk then, reopened without a clean shutdown)
// is delivered after the restart, the registration is still there, and
// mail that came while the proxy was stopped is announced when it starts.
func TestDeviceTokenRestart(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	dir := t.TempDir()

	data, state := openStores(t, dir)
	s := start(t, dc, g, options{data: data, state: state})
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")
	g.setStatus(http.StatusServiceUnavailable)
	appendUntilTried(t, dc, g)
	// The push goes to the gateway while its record is written (queue.go),
	// so the record may lag the first attempt: the crash image is taken
	// once it is in the store.
	imaptest.WaitFor(t, "the pending push in the store", func() bool {
		n, err := accountdata.Count(data, dc.Addr+"\x00alice", push.Prefix+"q/")
		return err == nil && n > 0
	})
	crashed := copyDir(t, dir)
	closeAll(t, s, data, state)
	if n := len(g.bodies()); n != 0 {
		t.Fatalf("%d POSTs accepted while the gateway was down", n)
	}

	// The crash image holds the push; it is delivered once the gateway
	// is back.
	wantPending(t, crashed, dc.Addr+"\x00alice")
	g.setStatus(0)
	data, state = openStores(t, crashed)
	s = start(t, dc, g, options{data: data, state: state})
	imaptest.WaitFor(t, "the pending push", func() bool { return len(g.bodies()) > 0 })
	time.Sleep(quiet)
	for _, b := range g.bodies() {
		if b != "tok-alice" {
			t.Fatalf("POSTs %q", g.bodies())
		}
	}
	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.ExpectDo("g", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken "tok-alice")`, "g OK *")
	c.Close()
	s.waitWatched(t, "alice")
	closeAll(t, s, data, state)

	// Mail while the proxy is stopped is announced at its start.
	before := len(g.bodies())
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("while stopped"))
	data, state = openStores(t, crashed)
	s = start(t, dc, g, options{data: data, state: state})
	g.expect(t, before, []string{"tok-alice"}, 10*time.Second, quiet)
	closeAll(t, s, data, state)
}

// TestDeviceTokenGatewayDown: while the gateway answers 503, the push is
// retried with backoff; when it answers again, the push (one, however
// many messages came meanwhile: they coalesce) is delivered.
func TestDeviceTokenGatewayDown(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{cfg: push.Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}})
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")
	g.setStatus(http.StatusServiceUnavailable)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("one"))
	imaptest.WaitFor(t, "three tries", func() bool { return g.failures() >= 3 })
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("two"))
	time.Sleep(time.Second)
	g.setStatus(0)
	g.expect(t, 0, []string{"tok-alice"}, 10*time.Second, quiet)
	st := s.push.Stats()
	if st.Sent["devicetoken"] != 1 || st.Retried["devicetoken"] < 3 || st.GivenUp["devicetoken"] != 0 || st.Pending != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestDeviceTokenGiveUpGoneRejected: a push the gateway keeps failing is
// given up after GiveUp and counted; one it refuses for good (400) at
// once; a token it says is gone (410) is removed.
func TestDeviceTokenGiveUpGoneRejected(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{cfg: push.Config{GiveUp: 500 * time.Millisecond}})
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")

	g.setStatus(http.StatusBadGateway)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("given up"))
	imaptest.WaitFor(t, "the push given up", func() bool { return s.push.Stats().GivenUp["devicetoken"] == 1 })
	if st := s.push.Stats(); st.Pending != 0 || st.Retried["devicetoken"] == 0 {
		t.Fatalf("stats: %+v", st)
	}

	g.setStatus(http.StatusBadRequest)
	tries := g.failures()
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("refused"))
	imaptest.WaitFor(t, "the refused push given up", func() bool { return s.push.Stats().GivenUp["devicetoken"] == 2 })
	if g.failures() != tries+1 {
		t.Fatalf("a refused push was tried %d times", g.failures()-tries)
	}

	g.setStatus(http.StatusGone)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("gone"))
	imaptest.WaitFor(t, "the gone registration removed", func() bool { return s.push.Stats().Gone["devicetoken"] == 1 })
	if st := s.push.Stats(); st.Registrations["devicetoken"] != 0 || st.Pending != 0 {
		t.Fatalf("stats: %+v", st)
	}
	imaptest.WaitFor(t, "alice's records removed", func() bool { return countRecords(t, s.data, s.account("alice")) == 0 })
}

// TestDeviceTokenPolled: beyond the live watchers' cap, accounts are
// polled in rotation: bob (the second) is polled, alice live; both are
// announced.
func TestDeviceTokenPolled(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{cfg: push.Config{LiveWatchers: 1, PollInterval: 300 * time.Millisecond, PollConns: 1}})
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")
	s.register(t, "bob", "bobpass", "tok-bob")
	s.waitWatched(t, "bob")
	if st := s.push.Stats(); st.LiveAccounts != 1 || st.PolledAccounts != 1 {
		t.Fatalf("stats: %+v", st)
	}
	dc.Append(t, "bob", "bobpass", "INBOX", nil, msg("polled"))
	g.expect(t, 0, []string{"tok-bob"}, 5*time.Second, quiet)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("live"))
	g.expect(t, 1, []string{"tok-alice"}, 5*time.Second, quiet)

	// alice leaves: bob takes the live slot.
	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK(`SETMETADATA "" (/private/devicetoken NIL)`)
	c.Close()
	imaptest.WaitFor(t, "bob live", func() bool {
		st := s.push.Stats()
		return st.LiveAccounts == 1 && st.PolledAccounts == 0
	})
	dc.Append(t, "bob", "bobpass", "INBOX", nil, msg("live now"))
	g.expect(t, 2, []string{"tok-bob"}, 5*time.Second, quiet)
}

// TestDeviceTokenPolledNoIdle: over an upstream without IDLE the live
// watcher polls (the hub's NOOP), and push still announces.
func TestDeviceTokenNoIdle(t *testing.T) {
	dc := startDovecot(t, dovecottest.LegacyNoIdle)
	g := newGateway(t, nil)
	s := start(t, dc, g, options{})
	s.register(t, "alice", "alicepass", "tok-alice")
	s.waitWatched(t, "alice")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg("one"))
	// The hub polls every PollInterval (30 s by default): ask it sooner
	// by logging in and selecting, as a client would.
	c := imaptest.Login(t, s.p.Addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	c.MustOK("NOOP")
	g.expect(t, 0, []string{"tok-alice"}, 5*time.Second, quiet)
}

// childSpec is what the child process of TestDeviceTokenKill9 serves.
type childSpec struct {
	Upstream, Gateway, Dir string
}

const childEnv = "LEMONPROXY_PUSH_CHILD"

// helperMain runs the child process of the kill test when the test binary
// is started as one; it reports whether it was. The child serves a proxy
// with METADATA and push over the data directory until it is killed.
func helperMain() bool {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return false
	}
	var cs childSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		panic(err)
	}
	data, err := accountdata.OpenBolt(cs.Dir, nil)
	if err != nil {
		panic(err)
	}
	state, err := statestore.OpenBolt(cs.Dir)
	if err != nil {
		panic(err)
	}
	pe, err := push.New(push.Config{MasterUser: masterUser, MasterPassword: masterPass, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: imaptest.Logger()})
	if err != nil {
		panic(err)
	}
	dt, err := devicetoken.New(pe, devicetoken.Config{Gateway: cs.Gateway})
	if err != nil {
		panic(err)
	}
	pe.AddChannel(dt)
	meta := metadata.New(metadata.Config{Owned: map[string]metadata.EntryOwner{devicetoken.Entry: dt}})
	cfg := proxy.Config{Extensions: []proxy.Extension{meta, pe}, AccountData: data, Logger: imaptest.Logger(),
		Upstream: upstream.Config{Addr: cs.Upstream, Timeout: 5 * time.Second}}
	cfg.Hub.Store = state
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	os.Stdout.WriteString("ADDR " + ln.Addr().String() + "\n")
	srv.Serve(ln, false) // until killed
	return true
}

// startChild starts the test binary as a proxy process over dir.
func startChild(t *testing.T, dc *dovecottest.Server, g *gateway, dir string) (*exec.Cmd, string) {
	t.Helper()
	spec, _ := json.Marshal(childSpec{Upstream: dc.Addr, Gateway: g.url(), Dir: dir})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	go io.Copy(io.Discard, out)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if !ok {
		t.Fatalf("child said %q", line)
	}
	return cmd, addr
}

// TestDeviceTokenKill9: a proxy process killed with SIGKILL while a push
// waits for the gateway delivers it after it is started again on the same
// data directory, and the registration is still there.
func TestDeviceTokenKill9(t *testing.T) {
	dc := startDovecot(t, dovecottest.Legacy)
	g := newGateway(t, nil)
	dir := t.TempDir()
	cmd, addr := startChild(t, dc, g, dir)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK(`SETMETADATA "" (/private/devicetoken "tok-alice")`)
	c.Close()
	g.setStatus(http.StatusServiceUnavailable)
	appendUntilTried(t, dc, g)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	// The push was handed to the gateway while its record was being
	// written (queue.go): killed between the two, the record may be
	// missing, and then the cursor was not advanced either, so the
	// restarted proxy finds the mail again. Either way the push must come
	// (TestDeviceTokenRestart checks the record itself).
	g.setStatus(0)
	_, addr = startChild(t, dc, g, dir)
	imaptest.WaitFor(t, "the pending push", func() bool { return len(g.bodies()) > 0 })
	c = imaptest.Login(t, addr, "alice", "alicepass")
	c.ExpectDo("g", `GETMETADATA "" /private/devicetoken`, `* METADATA "" (/private/devicetoken "tok-alice")`, "g OK *")
	c.Close()
	for _, b := range g.bodies() {
		if b != "tok-alice" {
			t.Fatalf("POSTs %q", g.bodies())
		}
	}
}
