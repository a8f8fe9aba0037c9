package upstream

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBudget is returned when an account's connection budget is used up
// and nothing could be freed in time.
var ErrBudget = errors.New("upstream: the account's connection budget is used up")

// Budget counts the upstream connections open per account (the login's,
// the pool's, the leased ones, the hub's watchers, NOTIFY's account
// watcher) and keeps them at most Max: servers limit connections per user
// (Dovecot's mail_max_userip_connections is 10 by default), and a proxy
// that opens more locks the account's other devices out.
//
// Every opener of an account's connection goes through Acquire (or Dial,
// DialLogin): the count is taken before the connection is dialled and
// given back when the connection is closed. When the budget is used up,
// Acquire asks the reclaimers, in the order they were added (the pool's
// idle connections first, then the hub's least recently used watchers),
// to close one of the account's connections, and waits for it.
//
// A nil Budget, or one with Max <= 0, counts nothing and never refuses.
type Budget struct {
	max        int
	mu         sync.Mutex
	used       map[string]int
	freed      map[string]chan struct{} // closed at the account's next release
	reclaimers []Reclaimer
}

// A Reclaimer closes, or starts closing, one connection of account that
// its owner can do without, and reports whether it did. With any false it
// may only take connections that serve no waiting client (idle pooled
// connections, watchers of mailboxes nobody idles in); with any true,
// every connection it owns but those in use by a command.
type Reclaimer func(account string, any bool) bool

// NewBudget returns a budget of max connections per account (max <= 0:
// unlimited).
func NewBudget(max int) *Budget {
	return &Budget{max: max, used: map[string]int{}, freed: map[string]chan struct{}{}}
}

// Max returns the budget per account (<= 0: unlimited).
func (b *Budget) Max() int {
	if b == nil {
		return 0
	}
	return b.max
}

// AddReclaimer adds r after the reclaimers added before.
func (b *Budget) AddReclaimer(r Reclaimer) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.reclaimers = append(b.reclaimers, r)
	b.mu.Unlock()
}

// Used returns how many connections of account are counted.
func (b *Budget) Used(account string) int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used[account]
}

type optionalKey struct{}

// Optional marks ctx for an Acquire (or Dial) of a connection the caller
// can do without (a mailbox watcher: its sessions can catch up at their
// next command): when the budget is used up, only connections that serve
// no waiting client are reclaimed for it, and it fails with ErrBudget at
// once rather than wait for a command's connection to come back.
func Optional(ctx context.Context) context.Context {
	return context.WithValue(ctx, optionalKey{}, true)
}

func isOptional(ctx context.Context) bool {
	v, _ := ctx.Value(optionalKey{}).(bool)
	return v
}

// optionalWait bounds how long an optional Acquire waits for a connection
// a reclaimer is closing.
const optionalWait = 5 * time.Second

// Acquire counts one more connection of account, reclaiming one if the
// budget is used up (see Budget and Optional), and returns the function
// that gives it back (safe to call more than once). It fails with
// ErrBudget, or ctx's error, if no room is found.
func (b *Budget) Acquire(ctx context.Context, account string) (release func(), err error) {
	if b == nil || b.max <= 0 {
		return func() {}, nil
	}
	optional := isOptional(ctx)
	if optional {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, optionalWait)
		defer cancel()
	}
	for {
		b.mu.Lock()
		if b.used[account] < b.max {
			b.used[account]++
			b.mu.Unlock()
			var once atomic.Bool
			return func() {
				if once.CompareAndSwap(false, true) {
					b.release(account)
				}
			}, nil
		}
		freed := b.freed[account]
		if freed == nil {
			freed = make(chan struct{})
			b.freed[account] = freed
		}
		recl := b.reclaimers
		b.mu.Unlock()
		reclaimed := false
		for _, r := range recl {
			if r(account, false) {
				reclaimed = true
				break
			}
		}
		if !reclaimed && !optional {
			for _, r := range recl {
				if r(account, true) {
					reclaimed = true
					break
				}
			}
		}
		if !reclaimed && optional {
			return nil, ErrBudget
		}
		select {
		case <-freed:
		case <-ctx.Done():
			if optional || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, ErrBudget
			}
			return nil, ctx.Err()
		}
	}
}

// Full reports whether account has used its whole budget.
func (b *Budget) Full(account string) bool {
	if b == nil || b.max <= 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used[account] >= b.max
}

// wake makes the account's waiting Acquires try again without a
// connection given back: one went idle in the pool and may be reclaimed.
func (b *Budget) wake(account string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if ch := b.freed[account]; ch != nil {
		close(ch)
		delete(b.freed, account)
	}
}

func (b *Budget) release(account string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used[account]--; b.used[account] <= 0 {
		delete(b.used, account)
	}
	if ch := b.freed[account]; ch != nil {
		close(ch)
		delete(b.freed, account)
	}
}

// Dial acquires a connection of account (see Acquire) and dials cfg's
// server; closing the connection gives the count back.
func (b *Budget) Dial(ctx context.Context, cfg *Config, account string) (*Conn, error) {
	// The wait for room is part of dialling, which cfg.Timeout bounds:
	// an account whose every connection is busy (a client that stalls
	// in a literal, slow readers of large FETCHes) must not leave its
	// other commands waiting for as long as those last.
	actx, cancel := context.WithTimeout(ctx, cfg.timeout())
	release, err := b.Acquire(actx, account)
	cancel()
	if err != nil {
		return nil, err
	}
	c, err := Dial(ctx, cfg)
	if err != nil {
		release()
		return nil, err
	}
	c.onClose.Store(&release)
	return c, nil
}

// ErrLimit marks a login the server refused for its own limit of
// connections (NO [LIMIT]), not for the credentials.
var ErrLimit = errors.New("upstream: the server's connection limit is reached")

// DialLogin is Dial followed by a login as user (see DialLogin); it
// returns the text of the server's OK too. A login refused with
// NO [LIMIT] is tried again a few times within about 2 s: a server counts
// a connection until its process has noticed the close, a little after
// the budget let another one in (Dovecot's mail_max_userip_connections).
func (b *Budget) DialLogin(ctx context.Context, cfg *Config, account, user, pass string) (*Conn, string, error) {
	return b.DialWith(ctx, cfg, account, func(ctx context.Context, c *Conn) (string, error) {
		return c.Login(ctx, user, pass)
	})
}

// DialWith is DialLogin with a login of the caller's own (Conn.LoginAs
// for a master user): login runs on the new connection and returns the
// server's OK text; its error should wrap ErrLimit when the server
// refused for its connection limit, which is tried again as DialLogin
// does.
func (b *Budget) DialWith(ctx context.Context, cfg *Config, account string, login func(context.Context, *Conn) (string, error)) (*Conn, string, error) {
	delay := 20 * time.Millisecond
	for try := 0; ; try++ {
		c, err := b.Dial(ctx, cfg, account)
		if err != nil {
			return nil, "", err
		}
		text, err := login(ctx, c)
		if err == nil {
			return c, text, nil
		}
		c.Close()
		if !errors.Is(err, ErrLimit) || try == 6 {
			return nil, "", err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, "", err
		}
		delay *= 2
	}
}
