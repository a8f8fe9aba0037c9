// Package proxy is lemonproxy's session core: it accepts IMAP clients, runs
// the RFC 3501 state machine for each, authenticates them against the
// upstream server, answers what the proxy owns (CAPABILITY, ENABLE, ID,
// STARTTLS, LOGOUT, the selected-state bookkeeping) and relays everything else
// to an upstream connection leased from a per-account pool.
//
// Protocol extensions plug in through the Extension interfaces; the core
// knows none of them by name.
//
// Literals. The core frames literals (imapcodec), so it offers clients
// LITERAL+ (RFC 7888) always, before and after login, whatever the
// upstream has: a client's non-synchronising literal goes upstream
// non-synchronising where the upstream takes it (LITERAL+, or LITERAL- up
// to 4096 bytes), and synchronising otherwise, the proxy waiting for the
// upstream's continuation request itself; the client never sees one it
// did not ask for (relay.go). LITERAL- is never advertised: LITERAL+
// allows every literal LITERAL- does, and a server offers one of the two.
// So the LITERAL- rule of refusing non-synchronising literals over 4096
// bytes does not apply to the proxy; what bounds a client's literals are
// the proxy's own limits (Limits.MaxInlineLiteral, MaxAppendLiteral, the
// per-command totals), answered NO [TOOBIG] with the literal read and
// dropped so the session stays in step. literal_test.go holds the tests,
// RFC 7888's examples among them.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Version is the proxy's version, set by the build.
var Version = "0.1.0-dev"

// Server serves IMAP clients on any number of listeners.
type Server struct {
	// cfg is the configuration the server started with, defaults
	// applied; live is cfg with the run-time settings of the last Reload.
	// Each session takes the live one current when it starts (Session.cfg),
	// so one session sees one consistent set of limits and timeouts.
	cfg      Config
	live     atomic.Pointer[Config]
	reloadMu sync.Mutex // serialises Reloads
	log      *slog.Logger
	pool     *upstream.Pool
	hub      *hub.Hub

	// The extensions' hooks, each in chain order (see Extension).
	chain        map[string][]CommandHandler // by command name
	filters      []ResponseFilter
	enablers     []Enabler
	selectParams map[string]SelectHook // by parameter name
	selectHooks  []SelectHook
	reporters    []ChangeReporter
	capProvs     []CapabilityProvider
	rewriters    []CommandRewriter
	seqCommands  map[string]bool // SequenceCommander's names
	hooks        []SessionHook
	mailboxes    *MailboxService
	delims       sync.Map // account key -> its Hierarchy (names.go)
	counters     serverCounters
	limits       *limiter
	logins       *loginCache // nil: off

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[*net.Listener]struct{} // keyed by address: a Listener need not be hashable
	sessions  map[*Session]struct{}
	pending   map[net.Conn]struct{} // accepted, client address not yet known
	closing   bool
	wg        sync.WaitGroup // sessions and the pool's janitor
	nextID    atomic.Uint64
}

// NewServer returns a Server for cfg. Call Shutdown to release it.
func NewServer(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if cfg.Upstream.Addr == "" {
		return nil, errors.New("proxy: no upstream address configured")
	}
	if strings.ContainsAny(cfg.Upstream.Addr, "\x00\r\n") {
		return nil, fmt.Errorf("proxy: upstream address %q holds NUL, CR or LF", cfg.Upstream.Addr)
	}
	if err := checkUsernameFormat(cfg.UsernameFormat); err != nil {
		return nil, err
	}
	pool := upstream.NewPool(cfg.Pool)
	cfg.Hub.Pool = pool // watchers share the account's budget (upstream.Budget)
	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		pool:         pool,
		hub:          hub.New(cfg.Hub),
		chain:        map[string][]CommandHandler{},
		selectParams: map[string]SelectHook{},
		limits:       newLimiter(cfg.Abuse),
		logins:       newLoginCache(cfg.LoginCacheWindow),
		listeners:    map[*net.Listener]struct{}{},
		sessions:     map[*Session]struct{}{},
		pending:      map[net.Conn]struct{}{},
	}
	s.live.Store(&cfg)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mailboxes = &MailboxService{hub: s.hub, delims: &s.delims}
	if err := s.register(cfg.Extensions); err != nil {
		s.hub.Close()
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.runJanitor()
	}()
	return s, nil
}

// register wires the extensions in, in chain order, and provisions them.
// Two extensions with the same name, or claiming the same SELECT
// parameter, are a configuration error.
func (s *Server) register(exts []Extension) error {
	names := map[string]bool{}
	for _, ext := range exts {
		if names[ext.Name()] {
			return fmt.Errorf("proxy: extension %q configured twice", ext.Name())
		}
		names[ext.Name()] = true
		if p, ok := ext.(Provisioner); ok {
			svc := Services{Mailboxes: s.mailboxes, Data: s.cfg.AccountData, Upstream: &UpstreamService{s}}
			if pl, ok := s.cfg.Router.(Placement); ok {
				svc.Placement = pl
			}
			if err := p.Provision(svc); err != nil {
				return fmt.Errorf("proxy: extension %s: %w", ext.Name(), err)
			}
		}
		if h, ok := ext.(CommandHandler); ok {
			for _, name := range h.Commands() {
				s.chain[name] = append(s.chain[name], h)
			}
		}
		if f, ok := ext.(ResponseFilter); ok {
			s.filters = append(s.filters, f)
		}
		if e, ok := ext.(Enabler); ok {
			s.enablers = append(s.enablers, e)
		}
		if c, ok := ext.(CapabilityProvider); ok {
			s.capProvs = append(s.capProvs, c)
		}
		if r, ok := ext.(CommandRewriter); ok {
			s.rewriters = append(s.rewriters, r)
		}
		if c, ok := ext.(SequenceCommander); ok {
			if s.seqCommands == nil {
				s.seqCommands = map[string]bool{}
			}
			for _, name := range c.SequenceCommands() {
				s.seqCommands[strings.ToUpper(name)] = true
			}
		}
		if h, ok := ext.(SessionHook); ok {
			s.hooks = append(s.hooks, h)
		}
		if h, ok := ext.(SelectHook); ok {
			for _, name := range h.SelectParams() {
				if other, taken := s.selectParams[name]; taken {
					return fmt.Errorf("proxy: SELECT parameter %s claimed by %s and %s", name, other.(Extension).Name(), ext.Name())
				}
				s.selectParams[name] = h
			}
			s.selectHooks = append(s.selectHooks, h)
		}
		if r, ok := ext.(ChangeReporter); ok {
			s.reporters = append(s.reporters, r)
		}
	}
	return nil
}

// Reload changes the settings that may change while the server runs:
// Limits, MaxAppendLiteral, MaxCommandBytes, AllowPlaintextAuth,
// AuthFailureDelay, PreAuthTimeout, IdleTimeout and Abuse. Zero values
// select the defaults, as in NewServer; the other fields of cfg are
// ignored (changing them needs a new Server).
//
// Sessions that start afterwards use the new values; sessions already open
// keep those they started with, except the abuse limits the server checks
// for everyone at each connection and login (Abuse.ConnsPerIP,
// Abuse.SessionsPerUser, Abuse.AuthFailureMaxDelay and
// Abuse.AuthFailureWindow), which apply at once. Lowering a limit ends
// nothing already counted: connections and sessions beyond the new limit
// stay until they end. Safe to call from any goroutine.
func (s *Server) Reload(cfg Config) {
	cfg = cfg.withDefaults()
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	next := cfg.reloadable(*s.live.Load())
	s.live.Store(&next)
	s.limits.setConfig(next.Abuse)
}

// Hub returns the server's mailbox hub (for metrics and tests).
func (s *Server) Hub() *hub.Hub { return s.hub }

// Pool returns the server's upstream connection pool (for metrics and tests).
func (s *Server) Pool() *upstream.Pool { return s.pool }

// Serve accepts clients on ln until ln is closed or Shutdown is called. With
// implicitTLS, every connection starts with a TLS handshake (port 993 style).
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	if implicitTLS && s.cfg.TLS == nil {
		return errors.New("proxy: implicit TLS listener without a TLS configuration")
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	s.listeners[&ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, &ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporaryAccept) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			// Out of file descriptors and the like: back off, keep going.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		nc = parkable(nc)
		if implicitTLS {
			nc = tls.Server(nc, s.cfg.TLS)
		}
		if !s.startSession(nc, implicitTLS) {
			nc.Close()
		}
	}
}

var errTemporaryAccept = errors.New("temporary accept error")

// startSession serves nc in a goroutine of its own. Nothing here may
// wait for the client: behind a PROXY-protocol listener, the first call of
// nc.RemoteAddr reads the PROXY header (up to 5 s from a silent balancer
// connection), so the address is taken in the session's goroutine, outside
// s.mu, where a silent connection holds up no one else (accept loop,
// session cleanup, Stats, Shutdown). Until then the connection is in
// s.pending, so that Shutdown can close it.
func (s *Server) startSession(nc net.Conn, isTLS bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.pending[nc] = struct{}{}
	s.wg.Add(1)
	go func() {
		addr := addrOf(nc)
		s.mu.Lock()
		delete(s.pending, nc)
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			s.wg.Done()
			return
		}
		if !s.limits.connect(addr) {
			s.mu.Unlock()
			defer s.wg.Done()
			s.countError(ErrTooManyConns)
			s.log.Warn("too many connections from one address", "remote", addr.String())
			defer nc.Close()
			nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			nc.Write([]byte("* BYE Too many connections from your address.\r\n"))
			return
		}
		sess := newSession(s, nc, isTLS)
		sess.addr = addr
		s.sessions[sess] = struct{}{}
		s.counters.opened.Add(1)
		s.mu.Unlock()
		// The session may park and go on in other goroutines
		// (park.go): the one that ends it runs end.
		sess.end = func() {
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
			s.limits.disconnect(addr)
			s.wg.Done()
		}
		sess.run(s.ctx, false)
	}()
	return true
}

// runJanitor runs the pool's janitor until the server stops, starting it
// again (a second later) if it panics.
func (s *Server) runJanitor() {
	for {
		panicked := false
		func() {
			defer recovery.Recover(recovery.PoolJanitor, s.log, func(error) { panicked = true })
			s.pool.Run(s.ctx)
		}()
		if !panicked {
			return
		}
		select {
		case <-s.ctx.Done():
			s.pool.Close()
			return
		case <-time.After(time.Second):
		}
	}
}

// Sessions returns the number of open client sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, tells every client "* BYE", closes the client and
// upstream connections, and waits (up to ctx or Config.ShutdownTimeout) for
// the sessions to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		(*ln).Close()
	}
	for nc := range s.pending {
		nc.Close() // a PROXY header still awaited
	}
	sessions := make([]*Session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	// In parallel: a bye can take a few seconds when its client does not
	// read.
	var byes sync.WaitGroup
	for _, sess := range sessions {
		byes.Go(func() { sess.bye("Server shutting down") })
	}
	byes.Wait()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
	defer cancel()
	select {
	case <-done:
		s.closeShared()
		return nil
	case <-ctx.Done():
		s.closeShared()
		return fmt.Errorf("proxy: shutdown: %d sessions still open: %w", s.Sessions(), ctx.Err())
	}
}

// closeShared stops what sessions share: the hub, and extensions that
// keep goroutines of their own (those implementing io.Closer).
func (s *Server) closeShared() {
	s.hub.Close()
	for _, ext := range s.cfg.Extensions {
		if c, ok := ext.(io.Closer); ok {
			c.Close()
		}
	}
}
