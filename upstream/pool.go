package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// PoolConfig bounds the idle connections a Pool keeps.
type PoolConfig struct {
	// MaxIdlePerAccount is how many idle connections one account may keep
	// for longer than SurplusGrace. Default 2.
	MaxIdlePerAccount int
	// SurplusGrace is how long connections beyond MaxIdlePerAccount stay
	// idle before they are closed. When more sessions of one account are
	// busy at once than MaxIdlePerAccount (a client with several
	// connections fetching in parallel), closing each surplus connection
	// as it comes back would make the next command dial, log in and
	// select again, every command; kept for a while, they are reused.
	// Default 2 seconds (commands of busy sessions follow each other within
	// milliseconds; an idle phone's next command may be minutes away, and
	// an upstream connection kept for it costs the server a process);
	// negative: closed at once.
	SurplusGrace time.Duration
	// MaxIdle is how many idle connections all accounts together may keep;
	// the least recently used go first. Default 1000.
	MaxIdle int
	// IdleTimeout closes connections idle for longer. Default 5 minutes.
	IdleTimeout time.Duration
	// MaxConnsPerAccount is the budget of upstream connections one
	// account may have open at once, of every kind (login, leased, idle
	// in the pool, mailbox watchers, NOTIFY's account watcher); see
	// Budget. Default 10 (Dovecot's mail_max_userip_connections);
	// negative: unlimited.
	MaxConnsPerAccount int
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
	if c.SurplusGrace == 0 {
		c.SurplusGrace = 2 * time.Second
	}
	if c.MaxConnsPerAccount == 0 {
		c.MaxConnsPerAccount = 10
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
	byAccount map[string][]*Conn            // oldest first
	over      map[string]bool               // accounts with more than MaxIdlePerAccount idle
	evicted   []*Conn                       // closed outside the lock
	closed    bool
	budget    *Budget
	// putWaiters are closed at the account's next Put (see GetOrWait).
	putWaiters map[string]chan struct{}
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) *Pool {
	p := &Pool{cfg: cfg.withDefaults(), byAccount: map[string][]*Conn{}, over: map[string]bool{}}
	p.lru, _ = simplelru.NewLRU[*Conn, string](p.cfg.MaxIdle, func(c *Conn, account string) {
		p.removeLocked(account, c)
		p.evicted = append(p.evicted, c)
	})
	p.budget = NewBudget(p.cfg.MaxConnsPerAccount)
	p.budget.AddReclaimer(p.reclaim)
	return p
}

// Budget returns the per-account connection budget (MaxConnsPerAccount)
// that every opener of an upstream connection goes through; the pool's
// idle connections are the first it reclaims.
func (p *Pool) Budget() *Budget { return p.budget }

// reclaim closes the account's least recently used idle connection, if
// it has one (a Reclaimer of the budget).
func (p *Pool) reclaim(account string, _ bool) bool {
	p.mu.Lock()
	l := p.byAccount[account]
	if len(l) == 0 {
		p.mu.Unlock()
		return false
	}
	p.lru.Remove(l[0]) // its eviction callback queues it for closing
	p.mu.Unlock()
	p.closeEvicted()
	return true
}

// SetMaxIdle changes PoolConfig.MaxIdle while the pool runs (cluster mode
// shares the configured total out among the live nodes); the least
// recently used idle connections over the new bound are closed.
func (p *Pool) SetMaxIdle(n int) {
	if n <= 0 {
		n = 1
	}
	p.mu.Lock()
	p.cfg.MaxIdle = n
	p.lru.Resize(n) // its eviction callback queues what goes for closing
	p.mu.Unlock()
	p.closeEvicted()
}

// CloseAccount closes every idle connection of account ("" for every
// account), for an account that moved to another proxy node (cluster
// mode): they would otherwise hold upstream connections until they
// expire.
func (p *Pool) CloseAccount(account string) {
	p.mu.Lock()
	var doomed []*Conn
	for a, l := range p.byAccount {
		if account == "" || a == account {
			doomed = append(doomed, l...)
		}
	}
	for _, c := range doomed {
		p.lru.Remove(c) // its eviction callback queues it for closing
	}
	p.mu.Unlock()
	p.closeEvicted()
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
	// Every server hears of its connection's end at once; then each
	// Close waits for its server (see Conn.Close).
	for _, c := range ev {
		if c.onClose.Load() != nil {
			c.shutWrite()
		}
	}
	for _, c := range ev {
		c.Close()
	}
}

// Get takes an idle connection of account out of the pool, preferring one
// that has mailbox selected, or returns nil.
func (p *Pool) Get(account, mailbox string) *Conn {
	c, _ := p.GetOrWait(account, mailbox)
	return c
}

// GetOrWait is Get that, when the account has no idle connection, also
// returns a channel closed at the account's next Put: a caller that may not
// open another connection (the account's Budget is used up by connections
// busy with other commands) waits for one to come back instead of
// reclaiming one that is in use or dialling anew. Registering under the
// pool's lock means a Put right after cannot be missed.
func (p *Pool) GetOrWait(account, mailbox string) (*Conn, <-chan struct{}) {
	defer p.closeEvicted()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expireLocked(time.Now())
	l := p.byAccount[account]
	if len(l) == 0 {
		w := p.putWaiters[account]
		if w == nil {
			if p.putWaiters == nil {
				p.putWaiters = map[string]chan struct{}{}
			}
			w = make(chan struct{})
			p.putWaiters[account] = w
		}
		return nil, w
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
	return pick, nil
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
	now := time.Now()
	c.account = account
	c.lastUsed = now
	c.Release() // an idle connection holds no buffers
	if l := p.byAccount[account]; len(l) >= p.cfg.MaxIdlePerAccount {
		if p.cfg.SurplusGrace < 0 {
			p.lru.Remove(l[0]) // the account's oldest
		} else {
			p.over[account] = true
		}
	}
	p.byAccount[account] = append(p.byAccount[account], c)
	p.lru.Add(c, account)
	p.expireLocked(now)
	if w := p.putWaiters[account]; w != nil {
		close(w)
		delete(p.putWaiters, account)
	}
	// A dial waiting for room in the budget retries: it may now reclaim
	// this idle connection instead of waiting for one to be closed.
	p.budget.wake(account)
}

// expireLocked evicts connections idle for longer than IdleTimeout, and an
// account's connections beyond MaxIdlePerAccount idle for longer than
// SurplusGrace, oldest first.
func (p *Pool) expireLocked(now time.Time) {
	for {
		c, _, ok := p.lru.GetOldest()
		if !ok || now.Sub(c.lastUsed) < p.cfg.IdleTimeout {
			break
		}
		p.lru.RemoveOldest()
	}
	for account := range p.over {
		l := p.byAccount[account]
		for len(l) > p.cfg.MaxIdlePerAccount && now.Sub(l[0].lastUsed) >= p.cfg.SurplusGrace {
			p.lru.Remove(l[0]) // removes it from byAccount too
			l = p.byAccount[account]
		}
		if len(l) <= p.cfg.MaxIdlePerAccount {
			delete(p.over, account)
		}
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
	every := p.cfg.IdleTimeout / 4
	if p.cfg.SurplusGrace > 0 {
		every = min(every, p.cfg.SurplusGrace/2)
	}
	t := time.NewTicker(max(every, time.Second))
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
	p.over = map[string]bool{}
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
