package proxy

import (
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
	// failure from the same address in the last AuthFailureWindow.
	// Default 30 s.
	AuthFailureMaxDelay time.Duration
	// AuthFailureWindow is how long an address's failures are remembered.
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
	failures map[netip.Addr]failures
}

type failures struct {
	n    int
	last time.Time
}

func newLimiter(cfg AbuseLimits) *limiter {
	return &limiter{cfg: cfg.withDefaults(), conns: map[netip.Addr]int{}, sessions: map[string]int{}, failures: map[netip.Addr]failures{}}
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

// connect counts a connection from a; false if a has too many.
func (l *limiter) connect(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.ConnsPerIP > 0 && !a.IsLoopback() && l.conns[a] >= l.cfg.ConnsPerIP {
		return false
	}
	l.conns[a]++
	return true
}

func (l *limiter) disconnect(a netip.Addr) {
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

// failed records a failed login from a and returns the delay to wait
// before answering it: base, doubled for each earlier failure in the
// window, at most the configured maximum.
func (l *limiter) failed(a netip.Addr, base time.Duration) time.Duration {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.failures[a]
	if now.Sub(f.last) > l.cfg.AuthFailureWindow {
		f.n = 0
	}
	f.n++
	f.last = now
	l.failures[a] = f
	if len(l.failures) > 100000 {
		l.pruneLocked(now)
	}
	d := base
	for i := 1; i < f.n && d < l.cfg.AuthFailureMaxDelay; i++ {
		d *= 2
	}
	return min(d, l.cfg.AuthFailureMaxDelay)
}

// succeeded forgets a's failures.
func (l *limiter) succeeded(a netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.failures, a)
}

// pruneLocked drops failures older than the window, bounding the map.
func (l *limiter) pruneLocked(now time.Time) {
	for a, f := range l.failures {
		if now.Sub(f.last) > l.cfg.AuthFailureWindow {
			delete(l.failures, a)
		}
	}
}
