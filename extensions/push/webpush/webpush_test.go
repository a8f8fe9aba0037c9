package webpush

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush/webpushtest"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// registrar is a push.Registrar in memory with the contract's semantics
// (the real one is the push core's): registrations per account, one per
// channel and ID (registering again replaces), at most max per account.
type registrar struct {
	mu   sync.Mutex
	regs map[string][]push.Registration // by account
	max  int
}

func newRegistrar() *registrar { return &registrar{regs: map[string][]push.Registration{}, max: 5} }

func (r *registrar) Register(_ context.Context, s *proxy.Session, reg push.Registration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := s.Account()
	for i, old := range r.regs[a] {
		if old.Channel == reg.Channel && old.ID == reg.ID {
			r.regs[a][i] = reg
			return nil
		}
	}
	if len(r.regs[a]) >= r.max {
		return push.ErrTooMany
	}
	r.regs[a] = append(r.regs[a], reg)
	return nil
}

func (r *registrar) Unregister(_ context.Context, account, channel, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	regs := r.regs[account]
	for i, old := range regs {
		if old.Channel == channel && old.ID == id {
			r.regs[account] = append(regs[:i:i], regs[i+1:]...)
		}
	}
	return nil
}

func (r *registrar) Registrations(_ context.Context, account, channel string) ([]push.Registration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []push.Registration
	for _, reg := range r.regs[account] {
		if reg.Channel == channel {
			out = append(out, reg)
		}
	}
	return out, nil
}

// deliver plays the push core for one event: every registration of the
// account gets it, and the ones whose service answered gone are removed.
func (r *registrar) deliver(t *testing.T, ch push.Channel, account string, ev push.Event) []error {
	t.Helper()
	regs, _ := r.Registrations(context.Background(), account, ch.Name())
	var errs []error
	for _, reg := range regs {
		err := ch.Deliver(context.Background(), account, reg, ev)
		if errors.Is(err, push.ErrGone) {
			r.Unregister(context.Background(), account, reg.Channel, reg.ID)
		}
		errs = append(errs, err)
	}
	return errs
}

func (r *registrar) count(account string) int {
	regs, _ := r.Registrations(context.Background(), account, ChannelName)
	return len(regs)
}

// env is a proxy with the extension, a push service and the registrar.
type env struct {
	svc    *webpushtest.Service
	sender *Sender
	reg    *registrar
	data   *accountdata.Memory
	ext    *Extension
	p      *imaptest.Proxy
	up     string
}

// acct is the account key of user, as the proxy names accounts (the
// upstream's address and the user name).
func (e *env) acct(user string) string { return e.up + "\x00" + user }

func newEnv(t *testing.T, upAddr string, edit func(*Config)) *env {
	t.Helper()
	e := &env{svc: webpushtest.New(t, true), reg: newRegistrar(), data: accountdata.NewMemory(), up: upAddr}
	e.sender = newSender(t, e.svc, nil)
	cfg := Config{Sender: e.sender, Registrar: e.reg}
	if edit != nil {
		edit(&cfg)
	}
	var err error
	if e.ext, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	e.p = imaptest.StartProxy(t, upAddr, proxy.Config{Extensions: []proxy.Extension{e.ext}, AccountData: e.data})
	return e
}

func memServer(t *testing.T) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	for _, u := range []string{"alice", "bob"} {
		if err := up.AddUser(u, u+"pass"); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// webpushCmd is the WEBPUSH command registering sub under id.
func webpushCmd(id string, sub *webpushtest.Subscription) string {
	return fmt.Sprintf(`WEBPUSH %q %q %q %q`, id, sub.Endpoint, sub.P256dh, sub.Auth)
}

// validation returns the code of the n-th push, a validation push for id.
func (e *env) validation(t *testing.T, n int, id string) string {
	t.Helper()
	m := e.svc.Wait(t, n, 5*time.Second)
	var v struct {
		ID         string `json:"id"`
		Validation string `json:"validation"`
	}
	if err := json.Unmarshal(m.Plaintext, &v); err != nil || v.ID != id || len(v.Validation) != 22 {
		t.Fatalf("validation push %s: %v", m.Plaintext, err)
	}
	if m.Urgency != "high" || m.TTL != "300" || m.Topic != "" || m.VAPIDKey != e.sender.PublicKey() {
		t.Fatalf("validation push headers %+v", m)
	}
	return v.Validation
}

func (e *env) pendingCount(t *testing.T) int {
	t.Helper()
	n := 0
	e.data.Accounts(PendingPrefix, func(a string) bool {
		c, _ := accountdata.Count(e.data, a, PendingPrefix)
		n += c
		return true
	})
	return n
}

// script is the draft's life of a subscription, the same over every
// upstream: capability, GETVAPID, WEBPUSH, the validation push,
// ACKWEBPUSH, a push of new mail, update, delete.
func script(t *testing.T, e *env) {
	pre := imaptest.Dial(t, e.p.Addr)
	if caps := pre.MustOK("CAPABILITY")[0]; strings.Contains(caps, "WEBPUSH") {
		t.Fatalf("WEBPUSH before login: %s", caps)
	}
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0]; !strings.Contains(caps, " WEBPUSH") {
		t.Fatalf("capabilities: %s", caps)
	}
	key := e.sender.PublicKey()
	c.ExpectDo("a1", "GETVAPID", `* VAPID "`+key+`"`, "a1 OK GETVAPID completed.")

	sub := e.svc.Subscribe(t, key)
	c.ExpectDo("a2", webpushCmd("phone-1", sub),
		`* WEBPUSH "phone-1" INACTIVE`, `* VAPID "`+key+`"`, "a2 OK WEBPUSH completed.")
	code := e.validation(t, 1, "phone-1")
	if n := e.reg.count(e.acct("alice")); n != 0 {
		t.Fatalf("%d registrations before ACKWEBPUSH", n)
	}
	// Nothing is pushed to an inactive subscription.
	e.reg.deliver(t, e.sender, e.acct("alice"), push.Event{Mailbox: "INBOX", Messages: 1, New: 1, UIDNext: 2})
	c.ExpectDo("a3", "ACKWEBPUSH phone-1 "+strings.Repeat("A", 22), "a3 NO Wrong validation code.")
	c.ExpectDo("a4", "ACKWEBPUSH phone-2 "+code, "a4 NO [NONEXISTENT] No subscription with this ID waits for confirmation.")
	// Another account cannot confirm (or see) alice's subscription.
	bob := imaptest.Login(t, e.p.Addr, "bob", "bobpass")
	bob.ExpectDo("b1", "ACKWEBPUSH phone-1 "+code, "b1 NO [NONEXISTENT] No subscription with this ID waits for confirmation.")
	c.ExpectDo("a5", "ACKWEBPUSH phone-1 "+code, "a5 OK ACKWEBPUSH completed.")
	if n := e.reg.count(e.acct("alice")); n != 1 || e.reg.count(e.acct("bob")) != 0 || e.pendingCount(t) != 0 {
		t.Fatalf("registrations: alice %d, bob %d; pending %d", n, e.reg.count(e.acct("bob")), e.pendingCount(t))
	}
	// Confirming again is harmless.
	c.ExpectDo("a6", "ACKWEBPUSH phone-1 "+code, "a6 OK ACKWEBPUSH completed: the subscription is active.")

	// New mail: the push carries the counts, no content.
	if errs := e.reg.deliver(t, e.sender, e.acct("alice"), push.Event{Mailbox: "INBOX", Messages: 3, New: 1, UIDNext: 4}); len(errs) != 1 || errs[0] != nil {
		t.Fatal(errs)
	}
	if m := e.svc.Wait(t, 2, 5*time.Second); string(m.Plaintext) != `{"id":"phone-1","mailbox":"INBOX","messages":3,"new":1,"uidnext":4}` {
		t.Fatalf("mail push %s", m.Plaintext)
	}
	if n := len(e.reg.deliver(t, e.sender, e.acct("bob"), push.Event{Mailbox: "INBOX"})); n != 0 {
		t.Fatalf("bob has %d registrations", n)
	}

	// The same subscription again, in the selected state: still active,
	// no new validation.
	c.MustOK("SELECT INBOX")
	c.ExpectDo("a7", webpushCmd("phone-1", sub), "a7 OK WEBPUSH completed.")
	c.ExpectDo("a8", "GETVAPID", `* VAPID "`+key+`"`, "a8 OK GETVAPID completed.")

	// Changed keys: inactive until confirmed anew.
	sub2 := e.svc.Subscribe(t, key)
	c.ExpectDo("a9", webpushCmd("phone-1", sub2), `* WEBPUSH "phone-1" INACTIVE`, `* VAPID "`+key+`"`, "a9 OK WEBPUSH completed.")
	code2 := e.validation(t, 3, "phone-1")
	if e.reg.count(e.acct("alice")) != 0 {
		t.Fatal("an updated subscription stayed active")
	}
	// The old code confirms nothing.
	c.ExpectDo("a10", "ACKWEBPUSH phone-1 "+code, "a10 NO Wrong validation code.")
	c.ExpectDo("a11", "ACKWEBPUSH phone-1 "+code2, "a11 OK ACKWEBPUSH completed.")
	e.reg.deliver(t, e.sender, e.acct("alice"), push.Event{Mailbox: "INBOX", Messages: 4, New: 1, UIDNext: 5})
	if m := e.svc.Wait(t, 4, 5*time.Second); m.Subscription != sub2 {
		t.Fatal("pushed to the old subscription")
	}

	// Delete; deleting what does not exist is OK too.
	c.ExpectDo("a12", `WEBPUSH "phone-1" NIL`, "a12 OK WEBPUSH completed.")
	c.ExpectDo("a13", `WEBPUSH nosuch NIL`, "a13 OK WEBPUSH completed.")
	if e.reg.count(e.acct("alice")) != 0 || e.pendingCount(t) != 0 {
		t.Fatal("left after delete")
	}
	if r := e.svc.Rejected(); len(r) != 0 {
		t.Fatalf("the push service rejected: %v", r)
	}
	if n := len(e.svc.Messages()); n != 4 {
		t.Fatalf("%d pushes", n)
	}
}

func TestScript(t *testing.T) {
	script(t, newEnv(t, memServer(t).Addr, nil))
}

// TestDovecotLegacy: the same script in front of Dovecot's Legacy profile
// (plain IMAP4rev1, no WEBPUSH), and the commands in the selected state.
func TestDovecotLegacy(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	script(t, newEnv(t, dc.Addr, nil))
}

// TestGone: a subscription the push service answers 410 for is removed
// by the first push, and is then as if deleted.
func TestGone(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, nil)
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, "")
	c.MustOK(webpushCmd("s", sub))
	c.MustOK("ACKWEBPUSH s " + e.validation(t, 1, "s"))
	e.svc.SetStatus(sub, 410)
	if errs := e.reg.deliver(t, e.sender, e.acct("alice"), push.Event{Mailbox: "INBOX"}); len(errs) != 1 || !errors.Is(errs[0], push.ErrGone) {
		t.Fatal(errs)
	}
	if e.reg.count(e.acct("alice")) != 0 {
		t.Fatal("a gone subscription stayed")
	}
	c.ExpectDo("a", "ACKWEBPUSH s x", "a NO [NONEXISTENT] No subscription with this ID waits for confirmation.")
}

// TestRefusedValidation: when the validation push fails, WEBPUSH is NO
// and nothing is stored.
func TestRefusedValidation(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, nil)
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, "")
	e.svc.SetStatus(sub, 410)
	c.ExpectDo("a", webpushCmd("s", sub), "a NO The push service refused the subscription: 410 Gone.")
	// A subscription restricted to another VAPID key refuses the push.
	other := e.svc.Subscribe(t, "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4")
	c.ExpectDo("b", webpushCmd("s", other), "b NO The push service refused the subscription: 403 Forbidden.")
	// An endpoint nobody listens on.
	dead := *sub
	dead.Endpoint = "https://127.0.0.1:1/push/x"
	c.ExpectDo("c", webpushCmd("s", &dead), "c NO [UNAVAILABLE] Cannot reach the push service.")
	if e.pendingCount(t) != 0 || e.reg.count(e.acct("alice")) != 0 {
		t.Fatal("stored after a refused validation")
	}
	// A refused update leaves the active subscription as it was.
	good := e.svc.Subscribe(t, "")
	c.MustOK(webpushCmd("s", good))
	c.MustOK("ACKWEBPUSH s " + e.validation(t, 1, "s"))
	c.ExpectDo("d", webpushCmd("s", sub), "d NO The push service refused the subscription: 410 Gone.")
	if e.reg.count(e.acct("alice")) != 1 || e.pendingCount(t) != 0 {
		t.Fatal("a refused update changed the subscription")
	}
}

// TestMalformed: arguments that are not what the draft calls for are BAD,
// refused values NO; either way nothing is stored and nothing pushed.
func TestMalformed(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, nil)
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, "")
	ep, key, auth := sub.Endpoint, sub.P256dh, sub.Auth
	httpEP := strings.Replace(ep, "https:", "http:", 1)
	long := strings.Repeat("a", 129)
	for _, tc := range []struct{ cmd, want string }{
		{"GETVAPID x", "BAD Error in IMAP command GETVAPID: unexpected arguments."},
		{"WEBPUSH", "BAD Error in IMAP command WEBPUSH: expected a subscription ID."},
		{"WEBPUSH id", "BAD Error in IMAP command WEBPUSH: expected a push endpoint or NIL."},
		{`WEBPUSH id "` + ep + `"`, "BAD Error in IMAP command WEBPUSH: expected a ECDH public key."},
		{`WEBPUSH id "` + ep + `" ` + key, "BAD Error in IMAP command WEBPUSH: expected a authentication secret."},
		{`WEBPUSH id "` + ep + `" ` + key + " " + auth + " x", "BAD Error in IMAP command WEBPUSH: unexpected arguments."},
		{`WEBPUSH id NIL x`, "BAD Error in IMAP command WEBPUSH: unexpected arguments."},
		{`WEBPUSH id (a) ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: expected a push endpoint or NIL."},
		{`WEBPUSH "" "` + ep + `" ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: the subscription ID must be 1 to 128 bytes."},
		{`WEBPUSH ` + long + ` "` + ep + `" ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: the subscription ID must be 1 to 128 bytes."},
		{`WEBPUSH id "/push/x" ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: the push endpoint is not an absolute URL with a host."},
		{`WEBPUSH id "https://user:pw@push.example/x" ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: the push endpoint may not hold user information or a fragment."},
		{`WEBPUSH id "https://` + strings.Repeat("a", 2048) + `" ` + key + " " + auth, "BAD Error in IMAP command WEBPUSH: the push endpoint is longer than 2048 bytes."},
		{`WEBPUSH id "` + httpEP + `" ` + key + " " + auth, "NO Cannot create the subscription: the push endpoint must be an https URL."},
		{`WEBPUSH id "ftp://push.example/x" ` + key + " " + auth, "NO Cannot create the subscription: the push endpoint must be an https URL."},
		{`WEBPUSH id "` + ep + `" "not base64!" ` + auth, "BAD Error in IMAP command WEBPUSH: the ECDH public key is not base64url."},
		{`WEBPUSH id "` + ep + `" ` + key[:43] + " " + auth, "BAD Error in IMAP command WEBPUSH: the ECDH public key is not an uncompressed P-256 point."},
		// A point not on the curve: the last byte of y changed.
		{`WEBPUSH id "` + ep + `" ` + offCurve(t, key) + " " + auth, "BAD Error in IMAP command WEBPUSH: the ECDH public key is not an uncompressed P-256 point."},
		{`WEBPUSH id "` + ep + `" ` + key + " " + auth[:20], "BAD Error in IMAP command WEBPUSH: the authentication secret must be 16 bytes, not 15."},
		{`WEBPUSH id "` + ep + `" ` + key + " " + strings.Repeat("A", 200), "BAD Error in IMAP command WEBPUSH: the authentication secret must be 1 to 128 bytes."},
		{"ACKWEBPUSH id", "BAD Error in IMAP command ACKWEBPUSH: expected a validation code."},
		{"ACKWEBPUSH id " + strings.Repeat("c", 65), "BAD Error in IMAP command ACKWEBPUSH: the validation code must be 1 to 64 bytes."},
	} {
		got := c.Cmd(tc.cmd)
		if len(got) != 1 || !strings.HasSuffix(got[0], " "+tc.want) {
			t.Errorf("%.80s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
	if e.pendingCount(t) != 0 || e.reg.count(e.acct("alice")) != 0 || len(e.svc.Messages()) != 0 || len(e.svc.Rejected()) != 0 {
		t.Fatal("a malformed command stored or pushed something")
	}
	// Arguments as literals are arguments like any other.
	c.ExpectDo("l", fmt.Sprintf("WEBPUSH {2+}\r\nid {%d+}\r\n%s %s %s", len(ep), ep, key, auth),
		`* WEBPUSH "id" INACTIVE`, `* VAPID "`+e.sender.PublicKey()+`"`, "l OK WEBPUSH completed.")
}

// offCurve returns key (an uncompressed point, base64url) moved off the
// curve.
func offCurve(t *testing.T, key string) string {
	b := unb64(t, key)
	b[64] ^= 1
	return b64url(b)
}

// TestHTTPLoopback: with AllowHTTP, http endpoints on loopback are taken
// (tests' push services), others still not.
func TestHTTPLoopback(t *testing.T) {
	up := memServer(t)
	plain := webpushtest.New(t, false)
	e := newEnv(t, up.Addr, func(c *Config) { c.AllowHTTP = true })
	e.sender.client = plain.Client()
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := plain.Subscribe(t, "")
	c.MustOK(webpushCmd("h", sub))
	plain.Wait(t, 1, 5*time.Second)
	other := *sub
	other.Endpoint = "http://push.example/x"
	c.ExpectDo("a", webpushCmd("h2", &other), "a NO Cannot create the subscription: the push endpoint must be an https URL.")
}

// TestLimits: pending subscriptions per account and validation pushes per
// session are bounded; the registrar's own limit is NO [LIMIT].
func TestLimits(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, func(c *Config) { c.MaxPending, c.MaxValidations = 2, 4 })
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, "")
	c.MustOK(webpushCmd("p1", sub))
	c.MustOK(webpushCmd("p2", sub))
	c.ExpectDo("a", webpushCmd("p3", sub), "a NO [LIMIT] Too many subscriptions wait for ACKWEBPUSH.")
	// Sending a pending one again is no new one: its code is pushed again.
	c.ExpectDo("b", webpushCmd("p1", sub), `* WEBPUSH "p1" INACTIVE`, `* VAPID "`+e.sender.PublicKey()+`"`, "b OK WEBPUSH completed.")
	if e.validation(t, 1, "p1") != e.validation(t, 3, "p1") {
		t.Fatal("a new code for the same pending subscription")
	}
	c.MustOK(`WEBPUSH p2 NIL`)
	c.MustOK(webpushCmd("p3", sub)) // the fourth validation push of the session
	c.ExpectDo("d", webpushCmd("p4", sub), "d NO [LIMIT] Too many subscriptions wait for ACKWEBPUSH.")
	c.MustOK(`WEBPUSH p3 NIL`)
	c.ExpectDo("e", webpushCmd("p4", sub), "e NO [LIMIT] Too many WEBPUSH commands in this session.")
	if n := len(e.svc.Messages()); n != 4 {
		t.Fatalf("%d validation pushes", n)
	}
	// A new session has a budget of its own; pending ones expire.
	c2 := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	e.ext.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
	c2.MustOK(webpushCmd("p5", sub))
	if n := e.pendingCount(t); n != 1 {
		t.Fatalf("%d pending after expiry", n)
	}
	c2.ExpectDo("f", "ACKWEBPUSH p1 "+e.validation(t, 1, "p1"), "f NO [NONEXISTENT] No subscription with this ID waits for confirmation.")
	c2.MustOK("ACKWEBPUSH p5 " + e.validation(t, 5, "p5"))

	// The registrar's limit.
	e.reg.max = 1
	c3 := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	c3.MustOK(webpushCmd("p6", sub))
	c3.ExpectDo("g", "ACKWEBPUSH p6 "+e.validation(t, 6, "p6"), "g NO [LIMIT] Too many push registrations for this account.")
}

// TestVAPIDRotation: a subscription confirmed under another VAPID key
// (the key file was replaced) is deactivated by the next WEBPUSH and
// confirmed anew, as the draft requires.
func TestVAPIDRotation(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, nil)
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, "")
	c.MustOK(webpushCmd("r", sub))
	c.MustOK("ACKWEBPUSH r " + e.validation(t, 1, "r"))
	old := e.sender.PublicKey()
	rotated := newSender(t, e.svc, nil)
	e.ext.sender, e.sender = rotated, rotated
	key := rotated.PublicKey()
	if key == old {
		t.Fatal("same key")
	}
	c.ExpectDo("a", webpushCmd("r", sub), `* WEBPUSH "r" INACTIVE`, `* VAPID "`+key+`"`, "a OK WEBPUSH completed.")
	if e.reg.count(e.acct("alice")) != 0 {
		t.Fatal("still active under the old key")
	}
	if m := e.svc.Wait(t, 2, 5*time.Second); m.VAPIDKey != key {
		t.Fatal("validation signed with the old key")
	}
	c.MustOK("ACKWEBPUSH r " + e.validation(t, 2, "r"))
}

// TestNotAuthenticated: before login the commands are not the extension's.
func TestNotAuthenticated(t *testing.T) {
	e := newEnv(t, memServer(t).Addr, nil)
	c := imaptest.Dial(t, e.p.Addr)
	for _, cmd := range []string{"GETVAPID", "WEBPUSH a NIL", "ACKWEBPUSH a b"} {
		name, _, _ := strings.Cut(cmd, " ")
		if got := c.Cmd(cmd); len(got) != 1 || !strings.HasSuffix(got[0], " BAD Unknown command "+name+".") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
}
