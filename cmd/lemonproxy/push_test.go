package main

import (
	"bytes"
	"crypto/hmac"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// testGateway records the POSTs it accepts; while down it answers 503.
type testGateway struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
	sigOK  bool
	down   bool
	tries  int
}

func newTestGateway(t *testing.T, secret []byte) *testGateway {
	g := &testGateway{sigOK: true}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.down {
			g.tries++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		want := devicetoken.Sign(secret, r.Header.Get(devicetoken.HeaderTimestamp), b)
		g.sigOK = g.sigOK && hmac.Equal([]byte(want), []byte(r.Header.Get(devicetoken.HeaderSignature)))
		g.bodies = append(g.bodies, string(b))
	}))
	t.Cleanup(g.Close)
	return g
}

func (g *testGateway) got() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.bodies...)
}

func (g *testGateway) setDown(down bool) {
	g.mu.Lock()
	g.down = down
	g.mu.Unlock()
}

func (g *testGateway) failures() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tries
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPushServe: lemonproxy serve with a device-token gateway, a master
// user and a signing secret pushes a registered account's new mail with
// no session connected; killed with SIGKILL while a push waits for the
// gateway, it delivers the push after it is started again; push list
// shows the registration.
func TestPushServe(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
	secret := []byte("0123456789abcdef-gateway")
	g := newTestGateway(t, secret)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	data := filepath.Join(dir, "data")
	args := []string{"serve", "-listen", "127.0.0.1:0", "-upstream", dc.Addr, "-data", data,
		"-push-gateway", g.URL + "/notify", "-push-gateway-secret", write("gw.secret", append(secret, '\n')),
		"-upstream-master-user", "pushmaster", "-upstream-master-password-file", write("master.pass", []byte("masterpass\n"))}
	p := start(t, args...)
	c := dialIMAP(t, p.listenAddr(t, false))
	c.ok("a", "LOGIN alice alicepass")
	c.ok("b", `SETMETADATA "" (/private/devicetoken "tok-alice")`)
	c.ok("c", "LOGOUT")
	p.waitFor(t, p.stderr, 0, `msg=registered ext=push account=alice channel=devicetoken`)
	// Appended until pushed: the first may come before push set its
	// cursor.
	waitUntil(t, "the push", func() bool {
		if len(g.got()) > 0 {
			return true
		}
		dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: hi\r\n\r\nhi\r\n"))
		time.Sleep(500 * time.Millisecond)
		return len(g.got()) > 0
	})

	// The gateway goes down; a push waits; the process is killed.
	g.setDown(true)
	before := len(g.got())
	waitUntil(t, "a failed attempt", func() bool {
		dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: hi\r\n\r\nhi\r\n"))
		time.Sleep(300 * time.Millisecond)
		return g.failures() > 0
	})
	p.signal(t, syscall.SIGKILL)
	<-p.done
	g.setDown(false)
	p = start(t, args...)
	waitUntil(t, "the push after the restart", func() bool { return len(g.got()) > before })
	p.stop(t, syscall.SIGTERM)
	for _, b := range g.got() {
		if b != "tok-alice" {
			t.Fatalf("gateway got %q", g.got())
		}
	}
	if !g.sigOK {
		t.Error("a POST with a bad signature")
	}

	code, out, errOut := runLP(t, "push", "list", "-data", data)
	if code != 0 || !strings.Contains(out, `"alice"`) || !strings.Contains(out, "devicetoken") || strings.Contains(out, "tok-alice") {
		t.Fatalf("push list: %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runLP(t, "push", "list", "-data", data, "-show-data")
	if code != 0 || !strings.Contains(out, `"tok-alice"`) {
		t.Fatalf("push list -show-data: %d\n%s", code, out)
	}
	if code, _, errOut := runLP(t, "push", "list", "-data", filepath.Join(dir, "nosuch")); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("push list of a missing directory: %d %s", code, errOut)
	}
}

// TestPushServeConfigErrors: push settings that cannot work stop the start.
func TestPushServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	os.WriteFile(key, []byte("too short"), 0o600)
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("masterpass"), 0o644)
	key32 := filepath.Join(dir, "key32")
	os.WriteFile(key32, bytes.Repeat([]byte{7}, 32), 0o600)
	cluster := []string{"-cluster-db", "postgres://127.0.0.1:1/x", "-node", "n1", "-cluster-listen", "127.0.0.1:0", "-cluster-secret", key32}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-push-gateway", "https://g.example/n"}, "push needs a way to log in"},
		{[]string{"-push-gateway", "https://g.example/n", "-push-credentials-key", key}, "credentials key is 32 bytes"},
		{[]string{"-push-gateway", "https://g.example/n", "-upstream-master-user", "m", "-upstream-master-password-file", open}, "others may use it"},
		{[]string{"-push-gateway", "http://g.example/n", "-upstream-master-user", "m", "-upstream-master-password-file", key}, "not https"},
		// One VAPID key for the cluster: a node does not make its own.
		{append([]string{"-push-webpush", "-push-credentials-key", key32}, cluster...), "must be the same file on every node"},
	} {
		args := append([]string{"serve", "-listen", "127.0.0.1:0", "-upstream", "127.0.0.1:1"}, tc.args...)
		code, _, errOut := runLP(t, args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %s; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// TestWebPushServe: with -push-webpush, `lemonproxy serve` offers IMAP
// WEBPUSH after login, makes its VAPID key on first start in the data
// directory (readable by the proxy only), answers GETVAPID with it, and
// keeps the same key across a restart (a new one would void every
// subscription).
func TestWebPushServe(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "creds.key")
	if err := os.WriteFile(keyFile, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	args := []string{"serve", "-listen", "127.0.0.1:0", "-upstream", dc.Addr, "-data", data,
		"-push-webpush", "-push-credentials-key", keyFile}
	vapid := func() string {
		p := start(t, args...)
		defer p.stop(t, syscall.SIGTERM)
		c := dialIMAP(t, p.listenAddr(t, false))
		caps := strings.Join(c.ok("a", "CAPABILITY"), " ")
		if strings.Contains(caps, "WEBPUSH") {
			t.Fatalf("WEBPUSH advertised before login: %s", caps)
		}
		c.ok("b", "LOGIN alice alicepass")
		if caps := strings.Join(c.ok("c", "CAPABILITY"), " "); !strings.Contains(caps, " WEBPUSH") {
			t.Fatalf("no WEBPUSH after login: %s", caps)
		}
		got := c.ok("d", "GETVAPID")
		if len(got) != 1 || !strings.HasPrefix(got[0], `* VAPID "`) {
			t.Fatalf("GETVAPID answered %q", got)
		}
		c.ok("e", "LOGOUT")
		return got[0]
	}
	first := vapid()
	fi, err := os.Stat(filepath.Join(data, webpush.KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("VAPID key file mode %v, want 0600", fi.Mode().Perm())
	}
	if second := vapid(); second != first {
		t.Errorf("VAPID key changed across a restart: %s, then %s", first, second)
	}
}

// TestPushClusterServe: lemonproxy serve processes in cluster mode with
// push (a device-token gateway, a master user): a token registered
// through one node is pushed with no session connected, by the node that
// holds the account; after SIGKILL of that node the other takes the
// account over and pushes new mail; push list -cluster-db lists the
// registration while the nodes run.
func TestPushClusterServe(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
	g := newTestGateway(t, nil)
	pass := filepath.Join(t.TempDir(), "master.pass")
	if err := os.WriteFile(pass, []byte("masterpass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startLPClusterWith(t, dc, []string{"-push-gateway", g.URL + "/notify",
		"-upstream-master-user", "pushmaster", "-upstream-master-password-file", pass}, "n1", "n2")
	c.waitRenewal("n1")
	cl := dialIMAP(t, c.nodes["n1"].addr)
	cl.ok("a", "LOGIN alice alicepass")
	cl.ok("b", `SETMETADATA "" (/private/devicetoken "tok-alice")`)
	cl.ok("c", "LOGOUT")
	cursor := func() bool {
		var n int
		if err := c.query(`SELECT count(*) FROM lp_accountdata WHERE account = $1 AND key = $2`,
			c.accountKey("alice"), []byte("push/m/INBOX")).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	waitUntil(t, "alice's INBOX watched", cursor)
	owner := c.liveOwner("alice")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: one\r\n\r\nhi\r\n"))
	waitUntil(t, "the push", func() bool { return len(g.got()) == 1 })

	code, out, errOut := runLP(t, "push", "list", "-cluster-db", c.db)
	if code != 0 || !strings.Contains(out, "alice") || !strings.Contains(out, "devicetoken") || strings.Contains(out, "tok-alice") {
		t.Fatalf("push list -cluster-db: %d\n%s\n%s", code, out, errOut)
	}

	owner.kill(t)
	other := c.nodes["n1"]
	if owner == other {
		other = c.nodes["n2"]
	}
	waitUntil(t, "the other node to hold alice's account", func() bool {
		node, _, live := c.owner("alice")
		return node == other.name && live
	})
	other.p.waitFor(t, other.p.stderr, 0, `msg="holding a registered account on this node" ext=push account=alice`)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: two\r\n\r\nhi\r\n"))
	waitUntil(t, "the push after the takeover", func() bool { return len(g.got()) == 2 })
	if got := g.got(); got[0] != "tok-alice" || got[1] != "tok-alice" {
		t.Fatalf("gateway got %q", got)
	}
}
