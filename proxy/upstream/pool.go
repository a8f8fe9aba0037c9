package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// PoolConfig bounds the idle connections a Pool keeps.
type PoolConfig struct {
	// MaxIdlePerAccount is how many idle connections one account may keep.
	// Default 2.
	MaxIdlePerAccount int
	// MaxIdle is how many idle connections all accounts together may keep;
	// the least recently used go first. Default 1000.
	MaxIdle int
	// IdleTimeout closes connections idle for longer. Default 5 minutes.
	IdleTimeout time.Duration
}

func (c PoolConfig) withDefaults() PoolConfig {
	if c.MaxIdlePerAccount <= 0 {
		c.MaxIdlePerAccount = 2
	}
	if c.MaxIdle <= 0 {
		c.MaxIdle = 1000
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	return c
}

// Pool keeps authenticated upstream connections that no session is using,
// per account, so the next command of any session of that account can reuse
// one instead of dialling and logging in again. Accounts never share
// connections: the key is the authenticated upstream identity.
//
// The pool only stores connections; dialling and logging in is the caller's
// business, because only the caller holds the credentials.
type Pool struct {
	cfg       PoolConfig
	mu        sync.Mutex
	lru       *simplelru.LRU[*Conn, string] // all idle conns, oldest first
	byAccount map[string][]*Conn
	evicted   []*Conn // closed outside the lock
	closed    bool
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) *Pool {
	p := &Pool{cfg: cfg.withDefaults(), byAccount: map[string][]*Conn{}}
	p.lru, _ = simplelru.NewLRU[*Conn, string](p.cfg.MaxIdle, func(c *Conn, account string) {
		p.removeLocked(account, c)
		p.evicted = append(p.evicted, c)
	})
	return p
}

func (p *Pool) removeLocked(account string, c *Conn) {
	l := p.byAccount[account]
	for i, x := range l {
		if x == c {
			l = append(l[:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(p.byAccount, account)
	} else {
		p.byAccount[account] = l
	}
}

func (p *Pool) closeEvicted() {
	p.mu.Lock()
	ev := p.evicted
	p.evicted = nil
	p.mu.Unlock()
	for _, c := range ev {
		c.Close()
	}
}

// Get takes an idle connection of account out of the pool, preferring one
// that has mailbox selected, or returns nil.
func (p *Pool) Get(account, mailbox string) *Conn {
	defer p.closeEvicted()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expireLocked(time.Now())
	l := p.byAccount[account]
	if len(l) == 0 {
		return nil
	}
	pick := l[len(l)-1] // most recently used
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].Selected == mailbox {
			pick = l[i]
			break
		}
	}
	p.removeLocked(account, pick)
	p.lru.Remove(pick) // calls the eviction callback: undo its effect
	p.evicted = p.evicted[:len(p.evicted)-1]
	return pick
}

// Put gives a connection back. Broken connections, and connections beyond
// the bounds, are closed.
func (p *Pool) Put(account string, c *Conn) {
	defer p.closeEvicted()
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.broken || p.closed {
		p.evicted = append(p.evicted, c)
		return
	}
	c.account = account
	c.lastUsed = time.Now()
	c.r.Release() // an idle connection holds no read buffer
	if l := p.byAccount[account]; len(l) >= p.cfg.MaxIdlePerAccount {
		p.lru.Remove(l[0]) // the account's oldest
	}
	p.byAccount[account] = append(p.byAccount[account], c)
	p.lru.Add(c, account)
}

// expireLocked evicts connections idle for longer than IdleTimeout.
func (p *Pool) expireLocked(now time.Time) {
	for {
		c, _, ok := p.lru.GetOldest()
		if !ok || now.Sub(c.lastUsed) < p.cfg.IdleTimeout {
			return
		}
		p.lru.RemoveOldest()
	}
}

// Idle returns the number of idle connections in the pool.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lru.Len()
}

// IdleFor returns the number of idle connections of one account.
func (p *Pool) IdleFor(account string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byAccount[account])
}

// Run expires idle connections until ctx is done, then closes the pool.
func (p *Pool) Run(ctx context.Context) {
	t := time.NewTicker(max(p.cfg.IdleTimeout/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.Close()
			return
		case now := <-t.C:
			p.mu.Lock()
			p.expireLocked(now)
			p.mu.Unlock()
			p.closeEvicted()
		}
	}
}

// Close logs out every idle connection; later Puts close theirs.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*Conn
	for _, l := range p.byAccount {
		all = append(all, l...)
	}
	p.byAccount = map[string][]*Conn{}
	p.lru.Purge()
	p.evicted = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() { defer wg.Done(); c.Logout() }()
	}
	wg.Wait()
}
