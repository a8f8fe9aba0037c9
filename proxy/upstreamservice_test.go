package proxy_test

import (
	"context"
	"errors"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// credsExt keeps what an extension can learn of the login: the services
// it was provisioned with and the account of the session that ran XCREDS.
type credsExt struct {
	svc  proxy.Services
	acct proxy.Account
}

func (e *credsExt) Name() string                       { return "creds" }
func (e *credsExt) Provision(svc proxy.Services) error { e.svc = svc; return nil }
func (e *credsExt) Commands() []string                 { return []string{"XCREDS"} }
func (e *credsExt) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	e.acct = x.Session().UpstreamAccount()
	return x.Reply("OK", "", "done")
}

// TestUpstreamService: an extension reads the session's credentials from
// its Account, and logs in without a session through
// Services.Upstream with a login of its own, counted in the account's
// budget, into an Account of NewAccount that the hub can watch with.
func TestUpstreamService(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "Alice", "alicepass")
	ext := &credsExt{}
	cfg := baseConfig(up.Addr)
	cfg.Extensions = append(cfg.Extensions, ext)
	p := startProxy(t, cfg)
	c := imaptest.Login(t, p.Addr, "Alice", "alicepass")
	c.MustOK("XCREDS")
	user, pass, ok := ext.acct.Credentials()
	if !ok || user != "Alice" || pass != "alicepass" {
		t.Fatalf("Credentials() = %q, %q, %v", user, pass, ok)
	}
	u := ext.svc.Upstream
	key := u.AccountOf("Alice")
	if key != ext.acct.Name {
		t.Fatalf("AccountOf(Alice) = %q; the session's account is %q", key, ext.acct.Name)
	}
	if name, ok := u.UserOf(key); !ok || name != "alice" {
		t.Fatalf("UserOf(%q) = %q, %v; want the lower-cased user", key, name, ok)
	}
	if _, ok := u.UserOf("elsewhere:143\x00alice"); ok {
		t.Fatal("UserOf accepted another upstream's key")
	}

	ctx := context.Background()
	budget := p.Srv.Pool().Budget()
	before := budget.Used(key)
	conn, err := u.Dial(ctx, key, func(ctx context.Context, c *upstream.Conn) error {
		_, err := c.Login(ctx, user, pass)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := budget.Used(key); got != before+1 {
		t.Errorf("budget used %d after Dial; want %d", got, before+1)
	}
	conn.Logout()
	conn.Close()
	if got := budget.Used(key); got != before {
		t.Errorf("budget used %d after Close; want %d", got, before)
	}
	if _, err := u.Dial(ctx, key, func(ctx context.Context, c *upstream.Conn) error {
		_, err := c.Login(ctx, user, "wrong")
		return err
	}); !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("Dial with a wrong password: %v", err)
	}
	if got := budget.Used(key); got != before {
		t.Errorf("a failed login kept its count: %d, want %d", got, before)
	}

	// An account of the extension's own: the hub watches INBOX with it.
	a := proxy.NewAccount(key, func(ctx context.Context) (*upstream.Conn, error) {
		return u.Dial(ctx, key, func(ctx context.Context, c *upstream.Conn) error {
			_, err := c.Login(ctx, user, pass)
			return err
		})
	})
	if _, _, ok := a.Credentials(); ok {
		t.Error("an account of NewAccount has credentials")
	}
	st, release, err := ext.svc.Mailboxes.Watch(ctx, a, "INBOX", func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if st == nil {
		t.Fatal("no state")
	}
}
