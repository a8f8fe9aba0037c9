package push_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush/webpushtest"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// webpushEnv is a proxy with the push core and the Web Push channel over
// Dovecot, the channel POSTing through the core's endpoint client.
type webpushEnv struct {
	svc    *webpushtest.Service
	sender *webpush.Sender
	core   *push.Extension
	data   *accountdata.Memory
	p      *imaptest.Proxy
}

func newWebpushEnv(t *testing.T, dc *dovecottest.Server, policy push.EndpointPolicy) *webpushEnv {
	t.Helper()
	e := &webpushEnv{svc: webpushtest.New(t, false), data: accountdata.NewMemory()}
	var err error
	e.core, err = push.New(push.Config{MasterUser: "pushmaster", MasterPassword: "masterpass", Endpoints: policy,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: imaptest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	e.sender, err = webpush.NewSender(webpush.SenderConfig{KeyFile: filepath.Join(t.TempDir(), webpush.KeyFileName),
		HTTPClient: e.core.EndpointClient().HTTPClient(), Subject: "mailto:ops@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	e.core.AddChannel(e.sender)
	wp, err := webpush.New(webpush.Config{Sender: e.sender, Registrar: e.core, AllowHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	e.p = imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: []proxy.Extension{wp, e.core}, AccountData: e.data})
	return e
}

// TestWebPushThroughCore: a Web Push subscription confirmed through the
// proxy is a registration of the push core, which watches the account
// with no session connected and delivers, through the Web Push channel
// and the core's HTTP client, a push of new mail appended directly to
// Dovecot's legacy profile; the test push service decrypts it and checks
// its VAPID token. When the service says the subscription is gone, the
// core removes it.
func TestWebPushThroughCore(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
	e := newWebpushEnv(t, dc, push.EndpointPolicy{AllowPrivate: true})
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	key := e.sender.PublicKey()
	sub := e.svc.Subscribe(t, key)
	c.ExpectDo("a", fmt.Sprintf(`WEBPUSH "phone-1" %q %q %q`, sub.Endpoint, sub.P256dh, sub.Auth),
		`* WEBPUSH "phone-1" INACTIVE`, `* VAPID "`+key+`"`, "a OK WEBPUSH completed.")
	var v struct{ Validation string }
	if err := json.Unmarshal(e.svc.Wait(t, 1, 5*time.Second).Plaintext, &v); err != nil {
		t.Fatal(err)
	}
	c.ExpectDo("b", "ACKWEBPUSH phone-1 "+v.Validation, "b OK ACKWEBPUSH completed.")
	c.MustOK("LOGOUT")
	c.Close()
	if n := e.core.Stats().Registrations["webpush"]; n != 1 {
		t.Fatalf("%d webpush registrations in the core", n)
	}
	account := dc.Addr + "\x00alice"
	imaptest.WaitFor(t, "the cursor", func() bool {
		_, err := e.data.Get(account, push.Prefix+"m/INBOX")
		return err == nil
	})
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n"))
	m := e.svc.Wait(t, 2, 10*time.Second)
	if string(m.Plaintext) != `{"id":"phone-1","mailbox":"INBOX","messages":1,"new":1,"uidnext":2}` {
		t.Fatalf("push %s", m.Plaintext)
	}
	if m.VAPIDKey != key {
		t.Fatalf("signed with %q", m.VAPIDKey)
	}

	e.svc.SetStatus(sub, http.StatusGone)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: y\r\n\r\ny\r\n"))
	imaptest.WaitFor(t, "the gone subscription removed", func() bool {
		st := e.core.Stats()
		return st.Gone["webpush"] == 1 && st.Registrations["webpush"] == 0
	})
}

// TestWebPushSSRF: under the production policy, the core's client will not
// connect to a push endpoint on this machine (nor any private address),
// whatever the channel accepted: the validation push fails, the client is
// told, and nothing is registered.
func TestWebPushSSRF(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
	e := newWebpushEnv(t, dc, push.EndpointPolicy{})
	c := imaptest.Login(t, e.p.Addr, "alice", "alicepass")
	sub := e.svc.Subscribe(t, e.sender.PublicKey())
	c.ExpectDo("a", fmt.Sprintf(`WEBPUSH "phone-1" %q %q %q`, sub.Endpoint, sub.P256dh, sub.Auth), "a NO [UNAVAILABLE] *")
	if n := len(e.svc.Messages()); n != 0 {
		t.Fatalf("the loopback push service got %d pushes", n)
	}
	if n := e.core.Stats().Registrations["webpush"]; n != 0 {
		t.Fatalf("%d registrations", n)
	}
}
