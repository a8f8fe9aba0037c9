package push

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// xreg is a test extension whose command XREG registers the session's
// device "dev" with the test channel, and XUNREG removes it: a channel's
// command as it uses the Registrar.
type xreg struct{ r Registrar }

func (x *xreg) Name() string       { return "xreg" }
func (x *xreg) Commands() []string { return []string{"XREG", "XUNREG"} }
func (x *xreg) ServeCommand(ctx context.Context, ex *proxy.Exchange, next proxy.Next) error {
	s := ex.Session()
	var err error
	if ex.Name == "XREG" {
		err = x.r.Register(ctx, s, Registration{Channel: "test", ID: "dev", Data: []byte("device data")})
	} else {
		err = x.r.Unregister(ctx, s.Account(), "test", "dev")
	}
	if err != nil {
		return ex.Reply("NO", "", err.Error())
	}
	return ex.Reply("OK", "", "done")
}

func startWith(t *testing.T, addr string, cfg Config, ch *testChannel, data accountdata.Store, opts ...imaptest.Option) (*imaptest.Proxy, *Extension) {
	t.Helper()
	cfg.Logger = imaptest.Logger()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.AddChannel(ch)
	p := imaptest.StartProxy(t, addr, proxy.Config{Extensions: []proxy.Extension{&xreg{e}, e}, AccountData: data}, opts...)
	return p, e
}

// TestSealedCredentials: without a master user, the proxy logs in for a
// registered account with the user's own credentials, sealed in the store
// (never in plain text on disk); credentials the upstream refuses are
// dropped and the account parked until its user logs in through the
// proxy again, which keeps the new ones and watches it again; the last
// registration takes them away.
func TestSealedCredentials(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	key := make([]byte, KeySize)
	rand.Read(key)
	dir := t.TempDir()
	data, err := accountdata.OpenBolt(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	account := dc.Addr + "\x00alice"
	ch := &testChannel{}
	p, e := startWith(t, dc.Addr, Config{CredentialsKey: key}, ch, data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("XREG")
	c.MustOK("LOGOUT")
	c.Close()
	sealed, err := data.Get(account, credKey)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("alicepass")) {
		t.Fatal("the password is in the sealed record")
	}
	waitCursorOf(t, data, account, "INBOX")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n"))
	imaptest.WaitFor(t, "the push", func() bool { return len(ch.deliveries()) == 1 })
	d := ch.deliveries()[0]
	if d.account != account || d.ev.Mailbox != "INBOX" || d.ev.New != 1 || d.ev.Messages != 1 || string(d.reg.Data) != "device data" {
		t.Fatalf("delivery %+v", d)
	}
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, accountdata.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("alicepass")) {
		t.Fatal("the password is in accountdata.db")
	}

	// Credentials the upstream refuses (the password changed, say).
	wrong, _ := e.seal.seal(account, "alice", "oldpass")
	if err := accountdata.Put(data, account, credKey, wrong); err != nil {
		t.Fatal(err)
	}
	ch2 := &testChannel{}
	p, e = startWith(t, dc.Addr, Config{CredentialsKey: key}, ch2, data)
	imaptest.WaitFor(t, "the account parked", func() bool { return e.Stats().ParkedAccounts == 1 })
	if _, err := data.Get(account, credKey); err != accountdata.ErrNotFound {
		t.Fatalf("refused credentials kept: %v", err)
	}
	// Its user logs in: the credentials are kept again, the account watched.
	c = imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("LOGOUT")
	c.Close()
	imaptest.WaitFor(t, "the account watched", func() bool {
		st := e.Stats()
		return st.ParkedAccounts == 0 && st.LiveAccounts == 1
	})
	if _, err := data.Get(account, credKey); err != nil {
		t.Fatalf("credentials after the login: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // the first look
	dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: y\r\n\r\ny\r\n"))
	imaptest.WaitFor(t, "the push", func() bool { return len(ch2.deliveries()) == 1 })

	// The last registration goes: so do the credentials and cursors.
	c = imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("XUNREG")
	c.Close()
	if n, _ := accountdata.Count(data, account, ""); n != 0 {
		t.Fatalf("%d records left", n)
	}
	imaptest.WaitFor(t, "nothing watched", func() bool {
		st := e.Stats()
		return st.LiveAccounts == 0 && st.Registrations["test"] == 0
	})
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
}

// TestMasterUserRefused: an account the master user cannot log in to is
// parked, not retried in a loop, and watched again once its user logs in.
func TestMasterUserRefused(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
	data := accountdata.NewMemory()
	ch := &testChannel{}
	p, e := startWith(t, dc.Addr, Config{MasterUser: "pushmaster", MasterPassword: "wrong"}, ch, data)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.MustOK("XREG")
	c.Close()
	imaptest.WaitFor(t, "the account parked", func() bool { return e.Stats().ParkedAccounts == 1 })
	if n, _ := accountdata.Count(data, dc.Addr+"\x00alice", regPrefix); n != 1 {
		t.Fatal("the registration went with the parking")
	}
}

func waitCursorOf(t *testing.T, data accountdata.Store, account, mailbox string) {
	t.Helper()
	imaptest.WaitFor(t, "the cursor of "+mailbox, func() bool {
		_, err := data.Get(account, cursorKey(mailbox))
		return err == nil
	})
}
