package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Abuse limits. A proxy on the open internet must keep serving everyone
// else when one address or one account misbehaves: it bounds connections
// per client address and sessions per upstream account, drops clients that
// talk too much before logging in, and slows down password guessing per
// address with a delay that doubles on every failure.

// AbuseLimits bounds what one client address or account may use. Zero
// values select the defaults; negative values turn a limit off.
type AbuseLimits struct {
	// ConnsPerIP bounds simultaneous connections from one address;
	// loopback addresses are exempt (a local balancer without the PROXY
	// protocol, tests). Mobile carriers put many phones behind one address,
	// hence the generous default of 2,000.
	ConnsPerIP int
	// SessionsPerUser bounds simultaneous logged-in sessions of one
	// upstream account. Default 50.
	SessionsPerUser int
	// PreAuthCommands bounds the commands a client may send before it
	// logs in. Default 25.
	PreAuthCommands int
	// AuthFailureMaxDelay caps the delay before a failed login's answer,
	// which starts at Config.AuthFailureDelay and doubles with each
	// failure of the same address or account in the last
	// AuthFailureWindow.
	// Default 30 s.
	AuthFailureMaxDelay time.Duration
	// AuthFailureWindow is how long failures of an address or an
	// account are remembered.
	// Default 15 minutes.
	AuthFailureWindow time.Duration
}

func (l AbuseLimits) withDefaults() AbuseLimits {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.ConnsPerIP, 2000)
	def(&l.SessionsPerUser, 50)
	def(&l.PreAuthCommands, 25)
	if l.AuthFailureMaxDelay <= 0 {
		l.AuthFailureMaxDelay = 30 * time.Second
	}
	if l.AuthFailureWindow <= 0 {
		l.AuthFailureWindow = 15 * time.Minute
	}
	return l
}

// limiter tracks connections per address, sessions per account and login
// failures per address. Its limits may change while it runs (see
// Server.Reload); every check reads them under mu.
type limiter struct {
	mu       sync.Mutex
	cfg      AbuseLimits
	conns    map[netip.Addr]int
	sessions map[string]int
	// penalties holds the failed-login state of addresses and accounts
	// with failures or logins being checked; changed is closed and
	// replaced whenever one ends (see admit).
	penalties map[penaltyKey]*penalty
	changed   chan struct{}
}

func newLimiter(cfg AbuseLimits) *limiter {
	return &limiter{cfg: cfg.withDefaults(), conns: map[netip.Addr]int{}, sessions: map[string]int{}, penalties: map[penaltyKey]*penalty{}, changed: make(chan struct{})}
}

// setConfig changes the limits. Connections and sessions already counted
// stay; a lower limit refuses new ones until enough have ended.
func (l *limiter) setConfig(cfg AbuseLimits) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg = cfg.withDefaults()
}

// addrOf returns a connection's client address (the zero Addr if unknown).
func addrOf(nc net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// clientKey is what the per-address limits count a client address as:
// an IPv4 address as it is, an IPv6 one as its /64. An IPv6 client holds
// a /64 of its own (a phone on a mobile network, a home behind its
// router) and may send from any of its 2^64 addresses, so per address
// neither conns-per-ip nor the failed-login delay bounded anything
// (Dovecot's auth penalty takes a /48). Loopback stays itself: it is
// exempt. An IPv4 address written as IPv6 (::ffff:a.b.c.d) is IPv4: cut
// to a /64 every one of them was "::", one key for all IPv4 clients.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if !a.Is6() || a.IsLoopback() {
		return a
	}
	return netip.PrefixFrom(a.WithZone(""), 64).Masked().Addr()
}

// connect counts a connection from a; false if a has too many.
func (l *limiter) connect(a netip.Addr) bool {
	a = clientKey(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.ConnsPerIP > 0 && !a.IsLoopback() && l.conns[a] >= l.cfg.ConnsPerIP {
		return false
	}
	l.conns[a]++
	return true
}

func (l *limiter) disconnect(a netip.Addr) {
	a = clientKey(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[a]--; l.conns[a] <= 0 {
		delete(l.conns, a)
	}
}

// login counts a session of account; false if it has too many.
func (l *limiter) login(account string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.SessionsPerUser > 0 && l.sessions[account] >= l.cfg.SessionsPerUser {
		return false
	}
	l.sessions[account]++
	return true
}

func (l *limiter) logout(account string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[account]--; l.sessions[account] <= 0 {
		delete(l.sessions, account)
	}
}

// Failed logins. Each client address and each account has a penalty:
// its failures in the last AuthFailureWindow, and a time before which no
// new login under it is checked (the answer time of its last failure).
// A login is checked upstream only when neither its address nor its
// account is held back, and, once an address has failed, or for any
// account, only one login under it is checked at a time: parallel
// connections wait their turn instead of multiplying the guessing rate.
// A failure is answered its delay after the login was admitted, so the
// upstream's own time counts in the delay instead of adding to it. A
// success forgets its account's failures, never its address's: another
// account's success from the same address must not reset them.

// penaltyKey names an address (account empty) or an account (addr zero).
type penaltyKey struct {
	addr    netip.Addr
	account string
}

type penalty struct {
	n        int       // failures in the window
	last     time.Time // of the latest failure
	next     time.Time // no login under this key is checked before
	inflight int       // logins under this key being checked now
}

// loginOutcome is how a login check ended.
type loginOutcome int

const (
	loginFailed loginOutcome = iota // wrong credentials
	loginOK
	loginError // the upstream could not say: neither success nor failure
)

// ready tells whether a login under key k (penalty p) may be checked
// now; if it may not because of p.next, wait is how long until then.
// Logins of an account are checked one at a time; those from an address
// one at a time once it has failures, else cleanParallel at a time
// (loopback: any number, as for conns-per-ip).
func (l *limiter) ready(k penaltyKey, p *penalty, now time.Time) (ok bool, wait time.Duration) {
	if p == nil {
		return true, 0
	}
	if p.n > 0 && now.Sub(p.last) > l.cfg.AuthFailureWindow {
		p.n = 0 // forgotten
	}
	switch {
	case p.n > 0 && now.Before(p.next):
		return false, p.next.Sub(now)
	case p.inflight == 0:
		return true, 0
	case k.account != "" || p.n > 0:
		return false, 0
	}
	return p.inflight < cleanParallel || k.addr.IsLoopback(), 0
}

// cleanParallel is how many logins from an address without failures are
// checked at once: enough for a carrier NAT's phones reconnecting
// together, few enough that a guesser's first burst is small.
const cleanParallel = 4

// admit waits until a login from addr as account (empty when the login
// fails before an account is known) may be checked, and returns when it
// was admitted and the function to call with its outcome, which returns
// when a failure may be answered. It gives up with ctx's error.
func (l *limiter) admit(ctx context.Context, addr netip.Addr, account string) (start time.Time, done func(o loginOutcome, base time.Duration) time.Time, err error) {
	keys := []penaltyKey{{addr: clientKey(addr)}}
	if account != "" {
		keys = append(keys, penaltyKey{account: account})
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		l.mu.Lock()
		now := time.Now()
		ok, wait := true, time.Duration(0)
		for _, k := range keys {
			kok, kwait := l.ready(k, l.penalties[k], now)
			ok = ok && kok
			wait = max(wait, kwait)
		}
		if ok {
			for _, k := range keys {
				p := l.penalties[k]
				if p == nil {
					p = &penalty{}
					l.penalties[k] = p
				}
				p.inflight++
			}
			l.mu.Unlock()
			return now, func(o loginOutcome, base time.Duration) time.Time { return l.finish(keys, now, o, base) }, nil
		}
		changed := l.changed
		l.mu.Unlock()
		var tick <-chan time.Time
		if wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			tick = timer.C
		}
		select {
		case <-changed:
		case <-tick:
		case <-ctx.Done():
			return time.Time{}, nil, ctx.Err()
		}
	}
}

// finish records the outcome of a login admitted at start under keys and
// returns when a failure may be answered: base doubled for each earlier
// failure of the address or the account (whichever has more) in the
// window, at most the maximum, after start.
func (l *limiter) finish(keys []penaltyKey, start time.Time, o loginOutcome, base time.Duration) time.Time {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	answer := now
	if o == loginFailed {
		n := 0
		for _, k := range keys {
			p := l.penalties[k]
			if now.Sub(p.last) > l.cfg.AuthFailureWindow {
				p.n = 0
			}
			p.n++
			p.last = now
			n = max(n, p.n)
		}
		d := max(base, 0)
		for i := 1; i < n && d < l.cfg.AuthFailureMaxDelay; i++ {
			d *= 2
		}
		answer = start.Add(min(d, l.cfg.AuthFailureMaxDelay))
	}
	for _, k := range keys {
		p := l.penalties[k]
		p.inflight--
		switch {
		case o == loginFailed:
			if answer.After(p.next) {
				p.next = answer
			}
		case o == loginOK && k.account != "":
			p.n, p.next = 0, time.Time{}
		}
		if p.inflight == 0 && p.n == 0 {
			delete(l.penalties, k)
		}
	}
	if len(l.penalties) > 100000 {
		l.pruneLocked(now)
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return answer
}

// pruneLocked drops penalties older than the window, bounding the map.
func (l *limiter) pruneLocked(now time.Time) {
	for k, p := range l.penalties {
		if p.inflight == 0 && now.Sub(p.last) > l.cfg.AuthFailureWindow {
			delete(l.penalties, k)
		}
	}
}
