package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestLoginCacheFailureDuringLogin: an upstream login that began before a
// failure of the account and succeeds after it does not fill the entry
// (the failure may be the first sign of a password change the login was
// checked before); one that began after it does.
func TestLoginCacheFailureDuringLogin(t *testing.T) {
	c := newLoginCache(time.Minute)
	caps := upstream.Caps{}
	early := c.begin()
	c.failed("alice")
	c.accepted("alice", "alice", "secret", early, caps)
	if _, ok := c.check("alice", "alice", "secret"); ok {
		t.Fatal("a login that began before the failure filled the entry")
	}
	// Another account's failure is not alice's.
	late := c.begin()
	c.failed("bob")
	c.accepted("alice", "alice", "secret", late, caps)
	if _, ok := c.check("alice", "alice", "secret"); !ok {
		t.Fatal("a login that began after alice's failure did not fill her entry")
	}
	if _, ok := c.check("alice", "alice", "Secret"); ok {
		t.Fatal("another password was accepted")
	}
	if _, ok := c.check("bob", "alice", "secret"); ok {
		t.Fatal("alice's credentials were accepted for another account")
	}
}

// TestLoginCacheBounded: the cache remembers at most loginCacheSize
// accounts, the least recently used going first, and never a password in
// the clear.
func TestLoginCacheBounded(t *testing.T) {
	c := newLoginCache(time.Minute)
	for i := range loginCacheSize + 10 {
		a := fmt.Sprintf("user%d", i)
		c.accepted(a, a, "pw", c.begin(), nil)
	}
	if n := c.entries.Len(); n != loginCacheSize {
		t.Fatalf("%d entries, want %d", n, loginCacheSize)
	}
	if _, ok := c.check("user0", "user0", "pw"); ok {
		t.Error("the oldest entry is still there")
	}
	last := fmt.Sprintf("user%d", loginCacheSize+9)
	if _, ok := c.check(last, last, "pw"); !ok {
		t.Error("the newest entry is gone")
	}
	e, _ := c.entries.Get(last)
	if e.sum == c.sum(last, "other") || e.sum != c.sum(last, "pw") {
		t.Error("the entry does not hold the HMAC of the credentials")
	}
	// Another process (another key) makes other sums.
	if d := newLoginCache(time.Minute); d.sum(last, "pw") == e.sum {
		t.Error("two caches made the same sum: the key is not random")
	}
}

// TestLoginCacheFailuresEvictNothing: failed logins of many accounts
// without an entry (names anyone can make up) push no entry out; before,
// each made an entry, and 10,000 of them emptied the cache of the real
// ones. A failure of an account without an entry still keeps a login that
// began before it from filling one.
func TestLoginCacheFailuresEvictNothing(t *testing.T) {
	c := newLoginCache(time.Minute)
	c.accepted("alice", "alice", "pw", c.begin(), nil)
	for i := range 2 * loginCacheSize {
		c.failed(fmt.Sprintf("nobody%d", i))
	}
	if _, ok := c.check("alice", "alice", "pw"); !ok {
		t.Fatal("failures of other names pushed alice's entry out")
	}
	if n := c.entries.Len(); n != 1 {
		t.Fatalf("%d entries, want alice's alone", n)
	}
	early := c.begin()
	c.failed("bob")
	c.accepted("bob", "bob", "pw", early, nil)
	if _, ok := c.check("bob", "bob", "pw"); ok {
		t.Fatal("a login that began before bob's failure filled his entry")
	}
	c.accepted("bob", "bob", "pw", c.begin(), nil)
	if _, ok := c.check("bob", "bob", "pw"); !ok {
		t.Fatal("a login after bob's failure did not fill his entry")
	}
}

// TestLoginCacheNil: a cache turned off answers nothing and takes
// anything.
func TestLoginCacheNil(t *testing.T) {
	var c *loginCache = newLoginCache(-1)
	if c != nil {
		t.Fatal("a negative window made a cache")
	}
	c.accepted("alice", "alice", "secret", c.begin(), nil)
	c.failed("alice")
	c.forget("")
	if _, ok := c.check("alice", "alice", "secret"); ok {
		t.Fatal("a nil cache answered")
	}
}
