package proxy_test

import (
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// pooledProxy starts memupstream with alice (one message) and bob (none)
// behind a counting forwarder, and a proxy with the given pool bounds.
func pooledProxy(t *testing.T, pool upstream.PoolConfig) (*forwarder, *imaptest.Proxy) {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret", "bob", "hunter2")
	if err := up.Append("alice", "INBOX", nil, testMessage("for alice", 100)); err != nil {
		t.Fatal(err)
	}
	fw := startForwarder(t, up.Addr)
	cfg := baseConfig(fw.addr())
	cfg.Pool = pool
	// Each login opens a connection of its own here, as these tests
	// count them: a login answered from the login cache takes a pooled
	// one instead (logincache_test.go).
	cfg.LoginCacheWindow = -1
	return fw, startProxy(t, cfg)
}

func checkPool(t *testing.T, p *imaptest.Proxy, fw *forwarder, idle int, dials int64) {
	t.Helper()
	if n := p.Srv.Pool().Idle(); n != idle {
		t.Errorf("pool has %d idle connections, want %d", n, idle)
	}
	if n := fw.dials.Load(); n != dials {
		t.Errorf("the proxy opened %d upstream connections, want %d", n, dials)
	}
}

func TestPoolReturnsConnection(t *testing.T) {
	t.Parallel()
	fw, p := pooledProxy(t, upstream.PoolConfig{})
	c := imaptest.Dial(t, p.Addr)
	checkPool(t, p, fw, 0, 0)
	c.LoginTagged("alice", "secret")
	checkPool(t, p, fw, 1, 1)
	c.ExpectDo("a", `LIST "" *`, `* LIST () "/" INBOX`, "a OK LIST completed")
	checkPool(t, p, fw, 1, 1)
	c.ExpectDo("b", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "b OK STATUS completed")
	checkPool(t, p, fw, 1, 1)
	// In the selected state the session holds no connection between
	// commands either; the mailbox's watcher has one of its own, outside
	// the pool.
	c.ExpectDo("c", "EXAMINE INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "c OK [READ-ONLY] *")
	checkPool(t, p, fw, 1, 2)
	c.ExpectDo("d", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "d OK FETCH completed")
	checkPool(t, p, fw, 1, 2)
	c.ExpectDo("e", "UNSELECT", "e OK Unselect completed.")
	checkPool(t, p, fw, 1, 2)
	c.ExpectDo("f", "SELECT INBOX", "* 1 EXISTS", "*", "*", "*", "*", "*", "*", "f OK [READ-WRITE] *")
	c.ExpectDo("g", "FETCH 1 (FLAGS)", "* 1 FETCH (FLAGS ())", "g OK FETCH completed")
	c.ExpectDo("z", "LOGOUT", "* BYE Logging out", "z OK Logout completed.")
	c.ExpectClosed()
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })
	if n := p.Srv.Pool().Idle(); n != 1 {
		t.Errorf("pool has %d idle connections after LOGOUT, want 1", n)
	}
	// The next session's commands use it (after its own login).
	dials := fw.dials.Load()
	c2 := imaptest.Dial(t, p.Addr)
	c2.LoginTagged("alice", "secret")
	checkPool(t, p, fw, 2, dials+1)
	c2.ExpectDo("a", "FETCH 1 (FLAGS)", "a BAD No mailbox selected.")
	c2.ExpectDo("b", `LIST "" *`, `* LIST () "/" INBOX`, "b OK LIST completed")
	checkPool(t, p, fw, 2, dials+1)
}

// TestPoolSharedBetweenSessions: with room for one idle connection per
// account, the second login's connection replaces the first's in the pool,
// and the first session's later commands run on it: no new dial.
func TestPoolSharedBetweenSessions(t *testing.T) {
	t.Parallel()
	fw, p := pooledProxy(t, upstream.PoolConfig{MaxIdlePerAccount: 1, SurplusGrace: -1})
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	checkPool(t, p, fw, 1, 2)
	for i := range 3 {
		a.ExpectDo("a", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "a OK STATUS completed")
		b.ExpectDo("b", `LIST "" INBOX`, `* LIST () "/" INBOX`, "b OK LIST completed")
		checkPool(t, p, fw, 1, 2)
		if t.Failed() {
			t.Fatalf("round %d", i)
		}
	}
}

// TestPoolKeepsSurplusForParallelSessions: two sessions of one account
// busy at once give back two connections where the account may keep one;
// the surplus stays for SurplusGrace, so both sessions' next commands
// run without dialling and logging in again.
func TestPoolKeepsSurplusForParallelSessions(t *testing.T) {
	t.Parallel()
	fw, p := pooledProxy(t, upstream.PoolConfig{MaxIdlePerAccount: 1, SurplusGrace: time.Minute})
	a := imaptest.Dial(t, p.Addr)
	a.LoginTagged("alice", "secret")
	b := imaptest.Dial(t, p.Addr)
	b.LoginTagged("alice", "secret")
	checkPool(t, p, fw, 2, 2)
	// a holds one connection (waiting for its APPEND's literal) while b
	// runs commands on the other.
	for i := range 3 {
		a.Send("a APPEND INBOX {10}")
		a.Expect("+ *")
		b.ExpectDo("b", `LIST "" INBOX`, `* LIST () "/" INBOX`, "b OK LIST completed")
		a.Send("0123456789")
		a.Expect("a OK [APPENDUID 1 *")
		checkPool(t, p, fw, 2, 2)
		if t.Failed() {
			t.Fatalf("round %d", i)
		}
	}
}

// TestPoolNeverAcrossAccounts: when bob's session needs a connection and
// the pool holds only alice's, the proxy dials a new one for bob.
func TestPoolNeverAcrossAccounts(t *testing.T) {
	t.Parallel()
	fw, p := pooledProxy(t, upstream.PoolConfig{MaxIdlePerAccount: 1, SurplusGrace: -1})
	alice := imaptest.Dial(t, p.Addr)
	alice.LoginTagged("alice", "secret")
	b1 := imaptest.Dial(t, p.Addr)
	b1.LoginTagged("bob", "hunter2")
	b2 := imaptest.Dial(t, p.Addr)
	b2.LoginTagged("bob", "hunter2")
	checkPool(t, p, fw, 2, 3) // one each; b1's login connection was dropped
	// b1 takes bob's only pooled connection and holds it while it waits
	// for its APPEND's literal.
	b1.Send("a APPEND INBOX {10}")
	b1.Expect("+ *")
	checkPool(t, p, fw, 1, 3)
	// Only alice's is left: b2 must not get it.
	b2.ExpectDo("a", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 0)", "a OK STATUS completed")
	checkPool(t, p, fw, 2, 4)
	if n := p.Srv.Pool().IdleFor(fw.addr() + "\x00alice"); n != 1 {
		t.Errorf("alice has %d idle connections, want 1", n)
	}
	b1.Send("0123456789")
	b1.Expect("a OK [APPENDUID 1 1] APPEND completed")
	alice.ExpectDo("a", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "a OK STATUS completed")
	b2.ExpectDo("b", "STATUS INBOX (MESSAGES)", "* STATUS INBOX (MESSAGES 1)", "b OK STATUS completed")
	checkPool(t, p, fw, 2, 4)
	// Wrong password for an account with pooled connections: refused.
	bad := imaptest.Dial(t, p.Addr)
	bad.ExpectDo("l", "LOGIN alice hunter2", "l NO [AUTHENTICATIONFAILED] Authentication failed.")
}
