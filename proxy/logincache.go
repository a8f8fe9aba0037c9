package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// The login cache: a LOGIN (or AUTHENTICATE PLAIN) whose user name and
// password the upstream accepted for the same account a moment ago is
// answered without a new upstream login. Every login through the proxy
// used to dial, log in to the upstream and hand the connection to the
// pool, where it joined the account's other idle connections: a phone on a
// flaky link that reconnects every few seconds, or a client that opens a
// connection per folder, paid a TCP handshake and an upstream login (15 ms
// of Dovecot's time on this machine, more with its password scheme) for
// each, and each new connection pushed the account against its budget,
// whose first victims are the pool's idle connections and the mailbox
// watchers (docs/benchmarks.md, per-command overhead).
//
// What is remembered, per account, is the last user name and password the
// upstream accepted and when: an HMAC-SHA256 of them under a key drawn at
// random when the process starts, never the password itself, so a memory
// dump yields no password and no offline guess (the key is not stored
// anywhere else). A plain salted hash would do for a short-lived
// in-memory entry too; the HMAC costs the same and makes the entries
// meaningless without the key. A slow hash (argon2, PBKDF2) protects
// stored hashes from offline guessing; this one lives minutes at most in
// the memory of a process that holds the sessions' passwords anyway
// (Session.pass), so it would only cost every login time.
//
// The rules, each for a reason:
//   - Only an upstream verification fills an entry: a successful upstream
//     login with exactly these credentials for this account (a session's
//     login, a lease's dial, a watcher's dial). A login answered from the
//     cache does not renew it, so a password the upstream stopped
//     accepting is accepted here for at most the window after the
//     upstream last said yes to it.
//   - The window is LoginCacheWindow (default 30 s). The upstream's
//     decision is what counts, and it may change (a password change, an
//     account locked): for that long after the last real check a changed
//     password still lets the old one in through the proxy. That is the
//     cost; it is bounded by the window, and it is no more than what the
//     proxy already allows sessions logged in before the change, which
//     keep running on pooled connections. 30 s covers a reconnecting
//     phone and clients that open several connections at start-up.
//   - Any upstream authentication failure of the account, whatever the
//     credentials, ends its entry and keeps it from being refilled by a
//     login that began before the failure: a failure may be the first sign
//     that the password changed. A mismatch is never answered from the
//     cache either way: a password that differs from the remembered one is
//     checked upstream like any other (it may be the new one).
//   - One entry per account: a new password that the upstream accepts
//     replaces the old one at once.
//   - Entries are bounded (loginCacheSize accounts, least recently used
//     first out); an entry is made only by a login the upstream accepted,
//     so no client can fill the cache without valid credentials. A
//     failure of an account without an entry is noted apart (failedOnly,
//     as bounded): failing logins with made-up names pushes out no one's
//     entry.
//   - The failed-login delays, the per-account session limit and cluster
//     routing apply before the cache is consulted, as for any login; in
//     cluster mode only the node that serves the account consults it (a
//     forwarding node hands the login over first), and Evict drops the
//     account's entry with its other state.
type loginCache struct {
	window time.Duration
	key    [32]byte
	now    func() time.Time // time.Now; tests replace it

	mu      sync.Mutex
	entries *simplelru.LRU[string, *loginEntry]
	// failedOnly holds loginEntry.failed for accounts without an entry:
	// a failure with a name nobody logged in with lately must not push
	// real entries out of entries (anyone can fail a login). Its own
	// eviction only forgets, early, that a login in progress of that
	// account began before a failure.
	failedOnly *simplelru.LRU[string, uint64]
	// failures counts upstream authentication failures (of any
	// account): a login notes it when it begins (begin), and its
	// success does not count if the account failed since.
	failures uint64
}

// loginCacheSize bounds how many accounts the login cache remembers.
const loginCacheSize = 10000

// DefaultLoginCacheWindow is the default of Config.LoginCacheWindow.
const DefaultLoginCacheWindow = 30 * time.Second

// loginEntry is what the cache knows of one account.
type loginEntry struct {
	sum   [sha256.Size]byte // HMAC of the accepted credentials
	valid bool              // sum holds credentials (false after a failure)
	okAt  time.Time         // when the upstream last accepted them
	// failed is loginCache.failures after the account's last upstream
	// authentication failure.
	failed uint64
	caps   upstream.Caps // the upstream's capabilities after that login
}

// newLoginCache returns a cache with entries valid for window; nil (no
// caching) if window <= 0.
func newLoginCache(window time.Duration) *loginCache {
	if window <= 0 {
		return nil
	}
	c := &loginCache{window: window, now: time.Now}
	if _, err := rand.Read(c.key[:]); err != nil {
		// crypto/rand does not fail on supported systems; without a key
		// there is no cache rather than a predictable one.
		return nil
	}
	c.entries, _ = simplelru.NewLRU[string, *loginEntry](loginCacheSize, nil)
	c.failedOnly, _ = simplelru.NewLRU[string, uint64](loginCacheSize, nil)
	return c
}

func (c *loginCache) sum(user, pass string) [sha256.Size]byte {
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(pass))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// check reports whether the upstream accepted exactly user and pass for
// account within the window, and returns the capabilities it advertised
// then.
func (c *loginCache) check(account, user, pass string) (upstream.Caps, bool) {
	if c == nil {
		return nil, false
	}
	sum := c.sum(user, pass)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries.Get(account)
	if !ok || !e.valid || c.now().Sub(e.okAt) >= c.window {
		return nil, false
	}
	if !hmac.Equal(e.sum[:], sum[:]) {
		return nil, false
	}
	return e.caps, true
}

// begin returns the token of an upstream login about to begin, for
// accepted.
func (c *loginCache) begin() uint64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failures
}

// accepted records that the upstream accepted user and pass for account,
// in a login that began with token (begin); a failure of the account
// since then keeps it from counting: that login may have been checked
// before a password change the failure reveals.
func (c *loginCache) accepted(account, user, pass string, token uint64, caps upstream.Caps) {
	if c == nil {
		return
	}
	sum := c.sum(user, pass)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries.Get(account)
	if ok && e.failed > token {
		return
	}
	if f, failed := c.failedOnly.Peek(account); failed && f > token {
		return
	}
	c.failedOnly.Remove(account)
	if !ok {
		e = &loginEntry{}
		c.entries.Add(account, e)
	}
	e.sum, e.valid, e.okAt, e.caps = sum, true, c.now(), caps
}

// failed records an upstream authentication failure of account: its entry
// no longer answers, and logins that began before now cannot refill it.
func (c *loginCache) failed(account string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	if e, ok := c.entries.Peek(account); ok {
		*e = loginEntry{failed: c.failures}
		return
	}
	c.failedOnly.Add(account, c.failures)
}

// forget drops account's entry ("" for every account): cluster mode moved
// it elsewhere.
func (c *loginCache) forget(account string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if account == "" {
		c.entries.Purge()
		c.failedOnly.Purge()
		return
	}
	c.entries.Remove(account)
	c.failedOnly.Remove(account)
}

// dialLogin opens a connection of account and logs in as user, within the
// account's budget, and tells the login cache what the upstream said:
// every upstream login of the proxy goes through here (a client's login,
// a lease's dial, a watcher's), so the cache hears of every verdict.
func (srv *Server) dialLogin(ctx context.Context, account, user, pass string) (*upstream.Conn, string, error) {
	token := srv.logins.begin()
	c, text, err := srv.pool.Budget().DialLogin(ctx, &srv.cfg.Upstream, account, user, pass)
	switch {
	case err == nil:
		srv.logins.accepted(account, user, pass, token, c.Caps())
	case errors.Is(err, upstream.ErrAuthFailed):
		srv.logins.failed(account)
	}
	return c, text, err
}
