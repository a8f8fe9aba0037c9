package devicetoken_test

import (
	"crypto/hmac"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	goleak.VerifyTestMain(m)
}

// gateway is a notification gateway for the tests, on loopback: it
// records every POST and answers with status().
type gateway struct {
	srv    *httptest.Server
	secret []byte

	mu     sync.Mutex
	posts  []post
	status int // 0: 200
	tries  int // requests answered with a failure
}

type post struct {
	body   string
	header http.Header
	at     time.Time
}

func newGateway(t testing.TB, secret []byte) *gateway {
	g := &gateway{secret: secret}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		st := g.status
		if r.Method != http.MethodPost || r.URL.Path != "/notify" {
			st = http.StatusMethodNotAllowed
		}
		if st == 0 || st == http.StatusOK {
			g.posts = append(g.posts, post{string(body), r.Header.Clone(), time.Now()})
		} else {
			g.tries++
		}
		g.mu.Unlock()
		if st != 0 {
			w.WriteHeader(st)
		}
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) url() string { return g.srv.URL + "/notify" }

func (g *gateway) setStatus(st int) {
	g.mu.Lock()
	g.status = st
	g.mu.Unlock()
}

func (g *gateway) failures() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tries
}

// bodies returns the bodies received so far.
func (g *gateway) bodies() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, p := range g.posts {
		out = append(out, p.body)
	}
	return out
}

// waitBodies waits until the gateway received want (in any order after
// what it had), failing after timeout; then it checks that nothing more
// comes for quiet.
func (g *gateway) expect(t *testing.T, before int, want []string, timeout, quiet time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := g.bodies()[before:]
		if len(got) >= len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway got %q after %v; want %q", got, timeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(quiet)
	got := g.bodies()[before:]
	if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
		t.Fatalf("gateway got %q; want %q", got, want)
	}
	if g.secret != nil {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, p := range g.posts[before:] {
			ts := p.header.Get(devicetoken.HeaderTimestamp)
			want := devicetoken.Sign(g.secret, ts, []byte(p.body))
			if ts == "" || !hmac.Equal([]byte(p.header.Get(devicetoken.HeaderSignature)), []byte(want)) {
				t.Fatalf("POST of %q: signature %q at %q, want %q", p.body, p.header.Get(devicetoken.HeaderSignature), ts, want)
			}
		}
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// setup is a proxy with METADATA and push (device tokens) in front of dc.
type setup struct {
	p    *imaptest.Proxy
	push *push.Extension
	data accountdata.Store
	dc   *dovecottest.Server
}

// options of start.
type options struct {
	cfg    push.Config
	data   accountdata.Store // nil: Memory
	state  statestore.Store
	secret []byte
}

func start(t *testing.T, dc *dovecottest.Server, g *gateway, o options) *setup {
	t.Helper()
	if o.data == nil {
		o.data = accountdata.NewMemory()
	}
	if o.cfg.MasterUser == "" && o.cfg.CredentialsKey == nil {
		o.cfg.MasterUser, o.cfg.MasterPassword = masterUser, masterPass
	}
	if o.cfg.MinBackoff == 0 {
		o.cfg.MinBackoff = 50 * time.Millisecond
		o.cfg.MaxBackoff = 200 * time.Millisecond
	}
	o.cfg.Logger = imaptest.Logger()
	pe, err := push.New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	dt, err := devicetoken.New(pe, devicetoken.Config{Gateway: g.url(), Secret: g.secret})
	if err != nil {
		t.Fatal(err)
	}
	pe.AddChannel(dt)
	meta := metadata.New(metadata.Config{Owned: map[string]metadata.EntryOwner{devicetoken.Entry: dt}})
	cfg := proxy.Config{Extensions: []proxy.Extension{meta, pe}, AccountData: o.data}
	cfg.Hub.Store = o.state
	p := imaptest.StartProxy(t, dc.Addr, cfg)
	return &setup{p: p, push: pe, data: o.data, dc: dc}
}

const (
	masterUser = "pushmaster"
	masterPass = "masterpass"
)

func startDovecot(t *testing.T, p dovecottest.Profile) *dovecottest.Server {
	return dovecottest.StartWith(t, p, dovecottest.Options{MasterUser: masterUser, MasterPassword: masterPass})
}

// account is the proxy's account key of user (lower case, as the
// default username format).
func (s *setup) account(user string) string { return s.dc.Addr + "\x00" + strings.ToLower(user) }

// register sets user's device token through the proxy and logs out.
func (s *setup) register(t *testing.T, user, pass, token string) {
	t.Helper()
	c := imaptest.Login(t, s.p.Addr, user, pass)
	c.MustOK(`SETMETADATA "" (/private/devicetoken "` + token + `")`)
	c.MustOK("LOGOUT")
	c.Close()
}

// waitWatched waits until push has looked at user's INBOX (its cursor is
// stored): mail appended from then on is announced.
func (s *setup) waitWatched(t *testing.T, user string) {
	t.Helper()
	waitCursor(t, s.data, s.account(user), "INBOX")
}

func waitCursor(t *testing.T, data accountdata.Store, account, mailbox string) {
	t.Helper()
	imaptest.WaitFor(t, "push's cursor of "+mailbox, func() bool {
		_, err := data.Get(account, push.Prefix+"m/"+mailbox)
		return err == nil
	})
}

// msg is a message for APPENDs from outside.
func msg(subject string) []byte {
	return []byte("From: someone@example.org\r\nSubject: " + subject + "\r\n\r\nhello\r\n")
}

// multiAppend appends n messages to user's INBOX in one APPEND command
// (RFC 3502; Dovecot runs it unadvertised), directly on Dovecot: one
// upstream transaction, one batch.
func multiAppend(t *testing.T, dc *dovecottest.Server, user, pass string, n int) {
	t.Helper()
	c := imaptest.Login(t, dc.Addr, user, pass)
	defer c.Close()
	m := string(msg("burst"))
	parts := []string{fmt.Sprintf("APPEND INBOX {%d+}", len(m))}
	for i := 1; i < n; i++ {
		parts = append(parts, fmt.Sprintf("%s {%d+}", m, len(m)))
	}
	parts = append(parts, m)
	c.MustOK(parts[0], parts[1:]...)
}

// countRecords counts every record of account, whoever wrote it.
func countRecords(t *testing.T, data accountdata.Store, account string) int {
	t.Helper()
	n, err := accountdata.Count(data, account, "")
	if err != nil {
		t.Fatal(err)
	}
	return n
}
