package proxy_test

import (
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// cachedProxy starts memupstream with alice and bob behind a forwarder
// that counts the proxy's upstream connections, and a proxy whose login
// cache runs on a fake clock.
func cachedProxy(t *testing.T, cfg func(*proxy.Config)) (*memupstream.Server, *forwarder, *imaptest.Proxy, *fakeClock) {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret", "bob", "hunter2")
	fw := startForwarder(t, up.Addr)
	c := baseConfig(fw.addr())
	if cfg != nil {
		cfg(&c)
	}
	p := startProxy(t, c)
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	proxy.SetLoginClock(p.Srv, clock.Now)
	return up, fw, p, clock
}

// login logs in as user on a new connection and returns the client.
func login(t *testing.T, p *imaptest.Proxy, user, pass string) *client {
	t.Helper()
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged(user, pass)
	return c
}

func checkDials(t *testing.T, fw *forwarder, want int64, when string) {
	t.Helper()
	if n := fw.dials.Load(); n != want {
		t.Errorf("%s: the proxy opened %d upstream connections, want %d", when, n, want)
	}
}

// TestLoginCacheAnswersRepeatedLogin: a second login with the credentials
// the upstream accepted a moment ago takes the pooled connection the first
// left, without dialling or logging in again; it works as any session.
func TestLoginCacheAnswersRepeatedLogin(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, nil)
	a := login(t, p, "alice", "secret")
	checkDials(t, fw, 1, "first login")
	b := login(t, p, "alice", "secret")
	checkDials(t, fw, 1, "second login")
	b.ExpectDo("s", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 0)", "s OK STATUS completed")
	a.ExpectDo("s", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 0)", "s OK STATUS completed")
	checkDials(t, fw, 1, "two sessions' commands")
	// AUTHENTICATE PLAIN is the same login.
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "AUTHENTICATE PLAIN "+plainIR("", "alice", "secret"), "a "+loggedIn)
	checkDials(t, fw, 1, "AUTHENTICATE PLAIN")
}

// TestLoginCacheWrongPassword: a wrong password after a right one is
// checked upstream and refused; it also ends the cache's entry, so the
// right password is then checked upstream again.
func TestLoginCacheWrongPassword(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN alice wrong", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	checkDials(t, fw, 2, "a wrong password")
	c.ExpectDo("b", "LOGIN alice secret", "b "+loggedIn)
	checkDials(t, fw, 3, "the right password after an upstream rejection")
	login(t, p, "alice", "secret")
	checkDials(t, fw, 3, "the right password again")
}

// TestLoginCacheWindow: the cache answers only within the window after
// the upstream last accepted the credentials; a login it answered does
// not renew it, an upstream login does.
func TestLoginCacheWindow(t *testing.T) {
	t.Parallel()
	_, fw, p, clock := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	clock.Add(proxy.DefaultLoginCacheWindow - time.Second)
	login(t, p, "alice", "secret")
	checkDials(t, fw, 1, "within the window")
	clock.Add(time.Second)
	login(t, p, "alice", "secret")
	checkDials(t, fw, 2, "at the end of the window")
	clock.Add(proxy.DefaultLoginCacheWindow - time.Second)
	login(t, p, "alice", "secret")
	checkDials(t, fw, 2, "within the window of the upstream's second verdict")
}

// TestLoginCacheAccounts: one account's cached credentials admit nobody
// else: another user with the same password, or with a password of its
// own, is checked upstream.
func TestLoginCacheAccounts(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN bob secret", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	checkDials(t, fw, 2, "bob with alice's password")
	c.ExpectDo("b", "LOGIN bob hunter2", "b "+loggedIn)
	checkDials(t, fw, 3, "bob's own first login")
	login(t, p, "bob", "hunter2")
	login(t, p, "alice", "secret")
	checkDials(t, fw, 3, "both again")
	// The user name as typed is part of what was accepted: ALICE is
	// alice's account here (UsernameLower), but the upstream (case
	// sensitive) is asked, and refuses.
	d := imaptest.Dial(t, p.Addr)
	d.ExpectDo("c", "LOGIN ALICE secret", "c NO [AUTHENTICATIONFAILED] Authentication failed.")
	checkDials(t, fw, 4, "another spelling of alice")
}

// TestLoginCachePasswordChange: after the upstream's password changes, the
// old one is still let in within the window (the documented cost), until
// the new one logs in: from then on only the new one is remembered, and
// the old one is checked upstream and refused.
func TestLoginCachePasswordChange(t *testing.T) {
	t.Parallel()
	up, fw, p, _ := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	if err := up.AddUser("alice", "changed"); err != nil {
		t.Fatal(err)
	}
	login(t, p, "alice", "secret")
	checkDials(t, fw, 1, "the old password within the window")
	login(t, p, "alice", "changed")
	checkDials(t, fw, 2, "the new password")
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN alice secret", "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	checkDials(t, fw, 3, "the old password after the new one")
}

// TestLoginCacheUpstreamRejectsLease: a connection the proxy dials with a
// session's credentials (here a lease) that the upstream refuses ends the
// account's entry: the password changed, and the next login with the old
// one is checked upstream and refused.
func TestLoginCacheUpstreamRejectsLease(t *testing.T) {
	t.Parallel()
	up, fw, p, _ := cachedProxy(t, nil)
	a := login(t, p, "alice", "secret")
	if err := up.AddUser("alice", "changed"); err != nil {
		t.Fatal(err)
	}
	// A second session holds the pooled connection (waiting for its
	// APPEND's literal), so a's next command dials with the old password.
	b := login(t, p, "alice", "secret")
	b.Send("b APPEND INBOX {10}")
	b.Expect("+ *")
	a.ExpectDo("s", "STATUS INBOX (MESSAGES)", "s NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	checkDials(t, fw, 2, "a's lease")
	b.Send("0123456789")
	b.Expect("b OK *")
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("c", "LOGIN alice secret", "c NO [AUTHENTICATIONFAILED] Authentication failed.")
	checkDials(t, fw, 3, "the old password after the upstream refused it")
}

// TestLoginCacheBusyAccount: with every connection of the account's budget
// busy, a cached login is answered without one (its first command waits
// for one to come back) rather than dialling past the budget; with room in
// the budget and nothing idle it logs in upstream, opening the connection
// its first command would have opened anyway.
func TestLoginCacheBusyAccount(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, func(c *proxy.Config) { c.Pool.MaxConnsPerAccount = 1 })
	a := login(t, p, "alice", "secret")
	a.Send("a APPEND INBOX {10}")
	a.Expect("+ *")
	b := login(t, p, "alice", "secret")
	checkDials(t, fw, 1, "a login while the only connection is busy")
	b.Send("s STATUS INBOX (MESSAGES)")
	a.Send("0123456789")
	a.Expect("a OK *")
	b.Expect("* STATUS INBOX (MESSAGES 1)", "s OK STATUS completed")
	checkDials(t, fw, 1, "b's command on the connection a gave back")

	_, fw, p, _ = cachedProxy(t, nil)
	a = login(t, p, "alice", "secret")
	a.Send("a APPEND INBOX {10}")
	a.Expect("+ *")
	login(t, p, "alice", "secret")
	checkDials(t, fw, 2, "a login with room in the budget and nothing idle")
	a.Send("0123456789")
	a.Expect("a OK *")
}

// TestLoginCacheUpstreamDown: a login is not answered from the cache when
// the account's connections are gone (the upstream went down): it is
// checked upstream, and fails as NO [UNAVAILABLE].
func TestLoginCacheUpstreamDown(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	fw.refuse.Store(true)
	fw.cut()
	imaptest.WaitFor(t, "the pooled connection to close", func() bool {
		return p.Srv.Pool().Budget().Used(fw.addr()+"\x00alice") == 0 || p.Srv.Pool().Idle() == 1
	})
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("l", "LOGIN alice secret", "l NO [UNAVAILABLE] The upstream server is unavailable; try again later.")
	fw.refuse.Store(false)
	c.ExpectDo("m", "LOGIN alice secret", "m "+loggedIn)
}

// TestLoginCacheOff: a negative window turns the cache off: every login
// goes upstream.
func TestLoginCacheOff(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, func(c *proxy.Config) { c.LoginCacheWindow = -1 })
	login(t, p, "alice", "secret")
	login(t, p, "alice", "secret")
	checkDials(t, fw, 2, "two logins without the cache")
}

// TestLoginCacheEvict: evicting an account (cluster mode: it moved to
// another node) forgets its cached credentials.
func TestLoginCacheEvict(t *testing.T) {
	t.Parallel()
	_, fw, p, _ := cachedProxy(t, nil)
	login(t, p, "alice", "secret")
	if err := p.Srv.Evict(t.Context(), fw.addr()+"\x00alice", "Moved."); err != nil {
		t.Fatal(err)
	}
	login(t, p, "alice", "secret")
	checkDials(t, fw, 2, "a login after the account was evicted")
}
