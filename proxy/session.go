package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Session is one client connection.
//
// One goroutine at a time runs the session: it reads a command, handles or
// relays it, and writes the responses. While the session waits for its
// client it may park (park.go): the goroutine ends and the next one takes
// the session on when the client speaks. Writes go through a mutex so that
// an extension may write from another goroutine.
type Session struct {
	srv *Server
	// ahead holds the commands sent upstream before their turn, whose
	// answers are relayed next (ahead.go).
	ahead []aheadCmd
	// cfg is the server's configuration when the session started: later
	// Reloads leave this session's limits and timeouts as they were.
	cfg *Config
	log *slog.Logger
	id  uint64

	nc    net.Conn
	tr    Transport // the byte stream to the client: nc, or a layer on it
	r     *imapcodec.Reader
	wmu   sync.Mutex
	w     *burstWriter // holds a buffer only during a burst (writebuf.go)
	isTLS bool

	state   State
	user    string // upstream login name
	pass    string // kept in memory only, to open more upstream connections
	account string // pool key: the authenticated upstream identity
	upCaps  upstream.Caps

	up *upstream.Conn // leased upstream connection, if any
	// upPartial: up was leased for a command that needed only part of
	// the selected mailbox's view, and has not caught up with the rest
	// (catchup.go).
	upPartial bool
	mbox      *selectedMailbox
	// examined is the connection and mailbox ExecIn last brought up
	// to date during the current command; each new exchange clears it
	// (see ExecIn).
	examined examinedView
	// wake and between drive pushes while the session waits for its
	// client; updates is its Updates setting (see push.go).
	wake, between atomic.Bool
	betweenMu     sync.Mutex // between's changes and Wake's interrupt
	// loginAnswered: the login's tagged OK has been queued (guarded by
	// wmu; see hangUpUnanswered).
	loginAnswered bool
	updates       atomic.Int32
	idling        atomic.Bool // SetIdling
	// stateMirror and leased mirror state and up for Server.Stats, which
	// reads them from another goroutine.
	stateMirror atomic.Int32
	leased      atomic.Bool
	// addr is the client's address, for the per-address limits;
	// preAuthCmds counts commands before login; counted tells whether
	// the session counts against its account's session limit.
	addr        netip.Addr
	preAuthCmds int
	// preAuthEnd is when a client that has not logged in is disconnected:
	// PreAuthTimeout after the session started, however busy the client.
	preAuthEnd time.Time
	counted    bool
	// Cluster mode (handoff.go): acct mirrors account for Server.evict,
	// which reads it from another goroutine; handedOff marks a session
	// another node handed over (it is never routed again); forwarded, a
	// session whose bytes go to another node; release gives the account's
	// place on this node back when the session ends.
	acct atomic.Pointer[string]
	// loginCancel ends a login in progress at this node, for evict (set
	// while the login runs in cluster mode).
	loginCancel atomic.Pointer[context.CancelFunc]
	handedOff   bool
	forwarded   atomic.Bool
	routeDone   func()
	// enabled and values are made on first use: most sessions never
	// need them, and an idle one should hold nothing it does not need.
	enabled map[string]bool
	values  map[any]any // per-extension state, see Value

	// Parking (park.go): idle is the connection a waiting session parks
	// on (nil if it cannot); resumed is set when a parked session's new
	// goroutine starts, so that its first read does wait; waitUntil is
	// the deadline of the wait in progress, kept across parkings, and
	// parkAfter when it may park;
	// awaiting is the continuation of a command waiting for the client's
	// next line (AwaitLine); end is the server's part of the session's
	// end, run once on the goroutine that ends it.
	idle      *idleConn
	resumed   bool
	waitUntil time.Time
	parkAfter time.Time
	awaiting  func(line []byte, lit *imapcodec.LiteralHeader, err error) error
	end       func()

	byeOnce sync.Once
	closed  chan struct{}
	// raw is the accepted connection (under TLS, if any); unlike nc it
	// never changes, so bye may use it from any goroutine.
	raw net.Conn
	// ending is set by bye: the write deadline it set must not be renewed.
	ending atomic.Bool
}

func newSession(srv *Server, nc net.Conn, isTLS bool) *Session {
	id := srv.nextID.Add(1)
	s := &Session{
		srv:    srv,
		cfg:    srv.live.Load(),
		id:     id,
		nc:     nc,
		raw:    nc,
		isTLS:  isTLS,
		closed: make(chan struct{}),
	}
	s.log = slog.New(newLazyAttrs(srv.log.Handler(), slog.Uint64("session", id), slog.String("remote", nc.RemoteAddr().String())))
	s.setTransport(connTransport{nc})
	under := nc
	if tc, ok := nc.(*tls.Conn); ok {
		under = tc.NetConn()
	}
	s.idle, _ = under.(*idleConn)
	return s
}

// Transport is the byte stream between the session and its client: the
// network connection, or a layer on top of it such as COMPRESS's deflate.
// Flush is called at the end of every burst of responses, after the
// session's own buffer has been written to the transport.
type Transport interface {
	io.Reader
	io.Writer
	Flush() error
}

type connTransport struct{ net.Conn }

func (connTransport) Flush() error { return nil }

// setTransport starts reading and writing through tr. Neither side holds
// a buffer while the session waits for its client: the reader gives its
// buffer back before each wait (see serve), the writer after each burst.
func (s *Session) setTransport(tr Transport) {
	if s.r != nil {
		s.r.Release() // WrapTransport took what it held
	}
	s.tr = tr
	s.r = imapcodec.NewReader(tr, s.cfg.Limits)
	s.w = &burstWriter{dst: tr}
}

// WrapTransport layers a new transport over the current one, for an
// extension that changes the encoding of the stream from the next byte on
// (COMPRESS). Call it after the response that starts the new encoding has
// been flushed. Bytes the client already sent that the session has read
// from the old transport but not yet consumed are passed to wrap as
// pending: they belong to the new encoding.
func (s *Session) WrapTransport(wrap func(base Transport, pending []byte) (Transport, error)) error {
	if err := s.Flush(); err != nil {
		return err
	}
	pending := s.r.TakeBuffered()
	tr, err := wrap(s.tr, pending)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.setTransport(tr)
	return nil
}

// State returns the session's current state.
func (s *Session) State() State { return s.state }

// Logger returns the session's logger.
func (s *Session) Logger() *slog.Logger { return s.log }

// Account returns the pool key of the authenticated upstream identity.
func (s *Session) Account() string { return s.account }

// AccountOf returns the account key a login as user would have
// (Config.UsernameFormat applied), so an extension can tell whether a user
// name it was given (the user of an IMAP URL, RFC 5092) is the session's
// own account: compare it with Account.
func (s *Session) AccountOf(user string) string { return s.srv.accountKey(user) }

// AppendLimits returns the largest message one APPEND may carry
// (MaxAppendLiteral) and the most literal bytes one APPEND may carry in
// all (MaxCommandBytes), for an extension that builds an APPEND's message
// itself (CATENATE) and must stop before the relay would refuse it.
func (s *Session) AppendLimits() (message, command int64) {
	return s.cfg.MaxAppendLiteral, s.cfg.MaxCommandBytes
}

// RemoteAddr returns the client's address (after a PROXY header, the one
// it names), for an extension that trusts clients by where they connect
// from (URLAUTH's submission servers).
func (s *Session) RemoteAddr() net.Addr { return s.nc.RemoteAddr() }

// UpstreamCaps returns the capabilities the upstream advertised after
// login (nil before), shared and not to be modified: an extension that
// synthesizes what an upstream may lack (ESEARCH, NAMESPACE, UIDPLUS)
// relays instead where the upstream has it, and decides by these, never
// by the response codes the upstream happens to send.
func (s *Session) UpstreamCaps() upstream.Caps { return s.upCaps }

// Enabled reports whether the client enabled name (RFC 5161).
func (s *Session) Enabled(name string) bool { return s.enabled[strings.ToUpper(name)] }

// Value returns the per-session value an extension stored under key.
func (s *Session) Value(key any) any { return s.values[key] }

// SetValue stores per-session state for an extension; use an unexported key
// type, as with context.Context.
func (s *Session) SetValue(key, v any) {
	if s.values == nil {
		s.values = map[any]any{}
	}
	s.values[key] = v
}

// setEnabled records that the client enabled name (upper case).
func (s *Session) setEnabled(name string) {
	if s.enabled == nil {
		s.enabled = map[string]bool{}
	}
	s.enabled[name] = true
}

// Write queues raw protocol bytes for the client (they must be whole lines).
func (s *Session) Write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.renewWriteDeadline()
	_, err := s.w.Write(b)
	return err
}

// WriteStatus queues a status response: "tag OK [code] text".
func (s *Session) WriteStatus(tag, status, code, text string) error {
	return s.Write(imapcodec.AppendStatus(nil, tag, status, code, text))
}

// Flush sends everything queued. The session flushes before it waits for
// the client, so a burst of responses leaves in as few packets as possible.
func (s *Session) Flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.renewWriteDeadline()
	if err := s.w.Flush(); err != nil {
		return err
	}
	return s.tr.Flush()
}

// readLineWithin reads one line from the client, for extensions that take over the
// conversation (IDLE's DONE, AUTHENTICATE's responses). It flushes first.
func (s *Session) readLineWithin(timeout time.Duration) ([]byte, *imapcodec.LiteralHeader, error) {
	if err := s.Flush(); err != nil {
		return nil, nil, err
	}
	s.nc.SetReadDeadline(s.capDeadline(time.Now().Add(timeout)))
	return s.r.ReadLine()
}

// capDeadline returns d, or the end of the pre-login time if that comes
// first and the client has not logged in.
func (s *Session) capDeadline(d time.Time) time.Time {
	if s.state == StateNotAuthenticated && s.preAuthEnd.Before(d) {
		return s.preAuthEnd
	}
	return d
}

// renewLiteralDeadline gives the client the idle timeout from now (within
// the pre-login time, before login) to send the literal about to be read:
// a large literal over a slow link is not cut short by what was left of
// the wait for its command, whoever reads it (the relay, readRest,
// Exchange.ReadStreamed).
func (s *Session) renewLiteralDeadline() {
	s.nc.SetReadDeadline(s.capDeadline(time.Now().Add(s.cfg.IdleTimeout)))
}

// IdleTimeout is the configured autologout timer for authenticated clients.
func (s *Session) IdleTimeout() time.Duration { return s.cfg.IdleTimeout }

// bye sends an untagged BYE and closes the client connection; the session
// goroutine then ends. Safe to call from any goroutine, more than once.
func (s *Session) bye(text string) { s.byeCode("", text) }

// byeCode is bye with a response code. A forwarded session's stream is
// the owning node's: it is closed without a word, which the owner's
// session sees as its client leaving.
func (s *Session) byeCode(code, text string) {
	if s.forwarded.Load() {
		s.hangUp()
		return
	}
	s.byeOnce.Do(func() {
		// The session goroutine may hold wmu while blocked writing to a
		// client that does not read (a large literal is streamed under
		// it): cut that write short rather than wait out writeTimeout,
		// which would hold up Shutdown for minutes.
		s.ending.Store(true)
		s.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
		s.wmu.Lock()
		s.nc.SetWriteDeadline(time.Now().Add(byeTimeout))
		s.w.Write(imapcodec.AppendStatus(nil, "*", "BYE", code, text))
		if s.w.Flush() == nil {
			s.tr.Flush()
		}
		s.wmu.Unlock()
		s.nc.Close()
	})
}

// byeTimeout bounds how long bye waits to get its BYE out.
const byeTimeout = 2 * time.Second

// renewWriteDeadline gives the next write to the client writeTimeout,
// unless bye is ending the session: its shorter deadline stays in force.
func (s *Session) renewWriteDeadline() {
	if s.ending.Load() {
		return
	}
	s.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if s.ending.Load() {
		// bye ran meanwhile and its deadline may have been overwritten.
		s.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	}
}

// run runs the session on the calling goroutine until the session ends
// or parks (park.go); resumed tells a parked session's new goroutine. A
// panic ends this session only (its deferred cleanup has run by then):
// the connection is closed without a word, since it may stop in the
// middle of a response.
func (s *Session) run(ctx context.Context, resumed bool) {
	if s.runGuarded(ctx, resumed) {
		// The last thing this goroutine does: from here on the
		// session is the new goroutine's.
		go s.resume(ctx)
	}
}

func (s *Session) runGuarded(ctx context.Context, resumed bool) (parked bool) {
	defer func() {
		if !parked && s.end != nil {
			s.end()
		}
	}()
	defer recovery.Recover(recovery.Session, s.log, func(error) { s.hangUp() })
	return s.serve(ctx, resumed)
}

// serve runs the session from its start or, resumed, from where it
// parked, until it ends (then it cleans up) or parks again.
func (s *Session) serve(ctx context.Context, resumed bool) (parked bool) {
	defer func() {
		if !parked {
			s.cleanup()
		}
	}()
	if resumed {
		return s.loop(ctx)
	}
	s.log.Debug("session start", "tls", s.isTLS)
	s.preAuthEnd = time.Now().Add(s.cfg.PreAuthTimeout)
	if tc, ok := s.nc.(*tls.Conn); ok {
		// Implicit TLS: the handshake before the greeting, bounded by
		// the time a client has to log in.
		s.nc.SetDeadline(s.preAuthEnd)
		if err := handshakeApart(tc); err != nil {
			s.log.Debug("TLS handshake failed", "err", err)
			return
		}
		s.nc.SetDeadline(time.Time{})
	}
	greeting := "CAPABILITY " + strings.Join(s.capabilities(), " ")
	s.WriteStatus("*", "OK", greeting, "lemonproxy ready.")
	return s.loop(ctx)
}

// loop reads and runs commands until the session ends, or parks while it
// waits for its client (it then returns true).
func (s *Session) loop(ctx context.Context) (parked bool) {
	for s.state != StateLogout {
		if err := s.Flush(); err != nil {
			return false
		}
		if len(s.ahead) > 0 {
			// A command sent upstream ahead of its turn: its answers
			// come before anything else is read (ahead.go).
			if err := s.finishAhead(); err != nil {
				s.commandFailed(err)
				return false
			}
			continue
		}
		s.r.Release() // nothing to hold while the client thinks
		if s.waitUntil.IsZero() {
			// Before login, the deadline is the session's, not the
			// command's: a client that keeps talking without logging
			// in is still disconnected PreAuthTimeout after it
			// connected. A parked wait keeps its deadline.
			s.waitUntil = s.capDeadline(time.Now().Add(s.cfg.IdleTimeout))
		}
		if s.idle != nil && s.parkAfter.IsZero() {
			s.parkAfter = time.Now().Add(parkGrace)
		}
		line, lit, err := s.readLineParking(s.waitUntil, s.parkAfter)
		if err == errParked {
			return true
		}
		s.waitUntil, s.parkAfter = time.Time{}, time.Time{}
		if then := s.awaiting; then != nil {
			s.awaiting = nil
			if err := then(line, lit, err); err != nil {
				s.commandFailed(err)
				return false
			}
			if err == nil && lit != nil {
				// The line is not a command and its literal nobody's
				// (AwaitLine): not left for the next command to start in.
				if err := s.discardRest(lit); err != nil {
					s.readFailed(err)
					return false
				}
			}
			continue
		}
		if errors.Is(err, imapcodec.ErrLiteralTooLarge) && lit != nil {
			// A literal over every limit (an APPEND over max-append):
			// the command is refused, the session goes on (#16.9).
			if err := s.refuseOversized(line, lit); err != nil {
				s.readFailed(err)
				return false
			}
			continue
		}
		if err != nil {
			s.readFailed(err)
			return false
		}
		if s.state == StateNotAuthenticated {
			if s.preAuthCmds++; s.cfg.Abuse.PreAuthCommands > 0 && s.preAuthCmds > s.cfg.Abuse.PreAuthCommands {
				s.srv.countError(ErrPreAuthCommands)
				s.log.Info("too many commands before login")
				s.bye("Too many commands before login.")
				return false
			}
		}
		if err := s.dispatch(ctx, line, lit); err != nil {
			s.commandFailed(err)
			return false
		}
	}
	return false
}

// commandFailed ends the session after a command returned err.
func (s *Session) commandFailed(err error) {
	if errors.Is(err, errForwardEnded) {
		return
	}
	if errors.Is(err, errEvictedInLogin) || s.ending.Load() && errors.Is(err, context.Canceled) {
		// Evicted (cluster mode): the client has its BYE, or, handed
		// over, its forwarding node answers; not a failure.
		s.hangUp()
		return
	}
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		s.log.Info("session ended", "err", err)
		s.srv.countError(ErrSessionFailed)
	}
	if errors.Is(err, errClientStream) {
		s.hangUp()
		return
	}
	s.bye(byeText(err))
}

// AwaitLine lets a command that waits for the client's next line (IDLE
// waits for DONE) give up the session's goroutine meanwhile, so that the
// session can park (park.go): the handler returns AwaitLine's result at
// once, and the core calls then with the next line, or with
// os.ErrDeadlineExceeded once deadline has passed (or with the read's
// error), from its own loop. The wait is WaitLine's: the session flushes
// first, holds no read buffer, and pushes what Wake asks for meanwhile.
// then runs as the handler's own code: it may answer (x.Reply), await
// again, or return an error, which ends the session as a handler's does.
// Handlers before it in the chain see the command return with no tagged
// response yet. A line that ends in a literal header gets lit; the core
// discards the literal once then has returned (cancelling a synchronising
// one, which the client was not invited to send).
func (s *Session) AwaitLine(deadline time.Time, then func(line []byte, lit *imapcodec.LiteralHeader, err error) error) error {
	s.awaiting = then
	s.waitUntil = deadline
	return nil
}

// hangUp ends a session whose response stream was cut in the middle of a
// response (errClientStream: the upstream connection broke while a FETCH
// literal was being streamed). The client is reading the literal or line:
// a BYE now would be taken as part of it, as bytes of the message body
// (and where few bytes were missing, as its end, a corrupt message that
// looks complete). So the connection is closed without one: the client
// sees it end in the middle of the response, which no client takes for
// success (proxy/faults_test.go TestFaultUpstreamCutMidFetch).
func (s *Session) hangUp() {
	s.byeOnce.Do(func() {
		s.ending.Store(true)
		s.nc.Close()
	})
}

// A byeTexter error names the text of the BYE that ends the session, for
// failures a layer such as COMPRESS detects (corrupt compressed input).
type byeTexter interface{ ByeText() string }

// byeText is the text of the BYE that ends a session after err.
func byeText(err error) string {
	var bt byeTexter
	switch {
	case errors.As(err, &bt):
		return bt.ByeText()
	case errors.Is(err, hub.ErrUIDValidity):
		return "The mailbox's UIDVALIDITY changed; please reconnect."
	case errors.Is(err, hub.ErrMailboxGone):
		return "Selected mailbox was deleted, have to disconnect."
	case errors.Is(err, ErrIdleTimeout):
		return "Autologout; idle for too long."
	case errors.Is(err, imapcodec.ErrLineTooLong):
		return "Line too long."
	case errors.Is(err, imapcodec.ErrLiteralTooLarge):
		return "Literal too large."
	case errors.Is(err, os.ErrDeadlineExceeded) && !errors.As(err, new(*upstreamError)):
		// The client stalled in the middle of a command (a literal
		// that never came): the same autologout as between commands.
		return "Autologout; idle for too long."
	}
	return "Internal error, closing the connection."
}

// readFailed ends the session after a failed read from the client.
func (s *Session) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, imapcodec.ErrLineTooLong):
		s.log.Info("client sent an over-long line")
		s.srv.countError(ErrLineTooLong)
		s.bye("Line too long.")
	case errors.Is(err, imapcodec.ErrLiteralTooLarge):
		s.srv.countError(ErrLiteralTooLarge)
		s.bye("Literal too large.")
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		s.log.Info("client timed out", "state", s.state.String())
		s.srv.countError(ErrClientTimeout)
		s.bye("Autologout; idle for too long.")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		s.log.Debug("client disconnected")
	case errors.As(err, new(byeTexter)):
		s.log.Info("client read failed", "err", err)
		s.bye(byeText(err))
	default:
		s.log.Info("client read failed", "err", err)
		s.bye("Read error.")
	}
}

func (s *Session) cleanup() {
	s.nc.Close()
	if s.counted {
		s.srv.limits.logout(s.account)
	}
	if s.up != nil {
		// No session keeps a connection between commands (release): one
		// still held ends mid-command, its answers perhaps half read (a
		// panic, a failure whose error did not say so), and must not
		// reach the account's next command through the pool.
		s.up.MarkBroken()
		s.releaseUpstream()
	}
	s.closeMailbox()
	for _, h := range s.srv.hooks {
		h.SessionClosed(s)
	}
	if s.routeDone != nil {
		s.routeDone()
	}
	s.pass = ""
	close(s.closed)
	s.log.Debug("session end")
}

func (s *Session) setState(st State) {
	if s.state == st {
		return
	}
	s.state = st
	s.stateMirror.Store(int32(st))
	if st != StateSelected {
		s.closeMailbox()
	}
	for _, h := range s.srv.hooks {
		h.StateChanged(s, st)
	}
}

// capabilities lists what the proxy advertises in the current state.
func (s *Session) capabilities() []string {
	caps := []string{"IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE"}
	if s.state == StateNotAuthenticated {
		if s.canStartTLS() {
			caps = append(caps, "STARTTLS")
		}
		if s.plaintextAuthOK() {
			caps = append(caps, "AUTH=PLAIN")
		} else {
			caps = append(caps, "LOGINDISABLED")
		}
	} else {
		caps = append(caps, "UNSELECT")
		caps = append(caps, relayableCaps(s.upCaps)...)
	}
	for _, p := range s.srv.capProvs {
		caps = append(caps, p.Capabilities(s.state, s.upCaps)...)
	}
	return dedupe(caps)
}

func dedupe(l []string) []string {
	seen := map[string]bool{}
	out := l[:0]
	for _, w := range l {
		u := strings.ToUpper(w)
		if !seen[u] {
			seen[u] = true
			out = append(out, w)
		}
	}
	return out
}

func (s *Session) canStartTLS() bool { return s.srv.cfg.TLS != nil && !s.isTLS }

// plaintextAuthOK reports whether a password may cross this connection:
// it is TLS, or loopback, or the operator allowed plaintext explicitly.
func (s *Session) plaintextAuthOK() bool {
	if s.isTLS || s.cfg.AllowPlaintextAuth {
		return true
	}
	if ta, ok := s.nc.RemoteAddr().(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		return true
	}
	return false
}

// dispatch handles one command whose first line has been read: it checks
// the command against the session's state, reads it whole unless it
// streams, translates it in the selected state, and passes its exchange
// down the extensions' chain to the core's handling.
func (s *Session) dispatch(ctx context.Context, line []byte, lit *imapcodec.LiteralHeader) error {
	first := imapcodec.Segment{Text: line, Literal: lit}
	if lit != nil {
		first.Text = line[:lit.Start]
	}
	cmd, err := imapcodec.ParseCommand([]imapcodec.Segment{first}, s.cfg.Limits)
	if err != nil {
		tag := "*"
		if cmd != nil {
			tag = cmd.Tag
		}
		if err := s.discardRest(lit); err != nil {
			return err
		}
		return s.WriteStatus(tag, "BAD", "", "Error in IMAP command: "+plainErr(err))
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		// Checked first: the arguments of a disabled Debug are still
		// boxed, two allocations on every command.
		s.log.Debug("command", "name", cmd.Name, "state", s.state.String())
	}
	handlers := s.srv.chain[cmd.Name]
	core, isCore := coreCommands[cmd.Name]
	// An extension's own command (IDLE, NOTIFY, COMPRESS: never relayed)
	// is the extension's to check; the core checks the others.
	owned := neverRelayed[cmd.Name] && len(handlers) > 0
	refuse := ""
	switch {
	case owned:
	case isCore && s.state < core.minState:
		refuse = stateError(cmd.Name, s.state)
	case isCore && (core.maxState != 0 && s.state > core.maxState || core.preAuthOnly && s.state != StateNotAuthenticated):
		refuse = cmd.Name + " not allowed in the " + s.state.String() + " state."
	case isCore:
	case s.state == StateNotAuthenticated && knownCommands[cmd.Name]:
		refuse = stateError(cmd.Name, s.state)
	case s.state == StateNotAuthenticated || neverRelayed[cmd.Name]:
		refuse = "Unknown command " + cmd.Name + "."
	case s.state == StateAuthenticated && selectedOnly[cmd.Name]:
		refuse = stateError(cmd.Name, s.state)
	}
	if refuse != "" {
		if err := s.discardRest(lit); err != nil {
			return err
		}
		return s.WriteStatus(cmd.Tag, "BAD", "", refuse)
	}
	// APPEND streams from the client to the upstream as it arrives, and
	// so does, in the authenticated state, a command the core relays and
	// no extension handles. Everything else is read whole.
	streamed := !isCore && !owned && (cmd.Name == "APPEND" || s.state == StateAuthenticated && len(handlers) == 0)
	if !streamed {
		full, ok, err := s.readRest(cmd.Tag, cmd.Name, first, s.cfg.Limits.MaxInlineLiteral)
		if err != nil || !ok {
			return err
		}
		if cmd, err = imapcodec.ParseCommand(full, s.cfg.Limits); err != nil {
			return s.WriteStatus(cmd.Tag, "BAD", "", "Error in IMAP command: "+plainErr(err))
		}
	} else {
		first.Text = bytes.Clone(first.Text) // the reader reuses its buffer
		cmd.Segments = []imapcodec.Segment{first}
	}
	x := s.newExchange(ctx, cmd, streamed)
	if cmd.Name == "STATUS" {
		x.statusSync = s.statusSyncSoon(x)
	}
	var last Next
	switch {
	case isCore:
		last = func(ctx context.Context, x *Exchange) error { return core.handle(s, ctx, x) }
	case owned:
		last = func(ctx context.Context, x *Exchange) error {
			return x.Reply("BAD", "", "Unknown command "+x.Name+".")
		}
	case streamed:
		last = s.forgetOnOK(x, s.relay)
	default:
		last = s.forgetOnOK(x, s.relayWhole)
	}
	if s.state == StateSelected && !isCore && !owned {
		if !streamed && len(s.srv.rewriters) > 0 {
			switch err := s.rewriteCommand(x); {
			case errors.Is(err, ErrNoMessages):
				return s.answerEmpty(x)
			case err != nil:
				return s.WriteStatus(cmd.Tag, "BAD", "", "Error in IMAP command "+cmd.Name+": "+sentence(err.Error())+".")
			}
		}
		if err := s.translateCommand(x); err != nil {
			if streamed {
				if err := s.discardRest(lit); err != nil {
					return err
				}
			}
			if errors.Is(err, ErrNoMessages) {
				return s.answerEmpty(x)
			}
			return s.WriteStatus(cmd.Tag, "BAD", "", "Error in IMAP command "+cmd.Name+": "+sentence(err.Error())+".")
		}
		// A mailbox the account's connection budget leaves unwatched is
		// brought up to date before each command (hub budget.go).
		if s.mbox.sub.Passive() {
			s.syncMailbox(ctx, syncTimeout)
		}
		// Report what is already known first, so the client's view (and
		// the translation of this command's answers) includes it.
		if !streamed {
			if _, err := s.deliver(x, x.xlate.allowExpunge); err != nil {
				return err
			}
			if x.xlate.silent {
				s.silentBefore(x.xlate)
			}
		}
		// The client's next commands may follow it upstream before its
		// answers are relayed (ahead.go).
		x.pipelined = !streamed && s.pipelinable(cmd) && s.chainPipelineSafe(x)
	}
	return s.serveChain(ctx, x, handlers, 0, last)
}

func stateError(name string, st State) string {
	switch st {
	case StateNotAuthenticated:
		return name + " not allowed before authentication; log in first."
	case StateAuthenticated:
		return "No mailbox selected."
	}
	return name + " not allowed in the " + st.String() + " state."
}

// sentence capitalises the first letter of an error message for a client.
func sentence(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// plainErr turns a codec error into text for a client.
func plainErr(err error) string {
	return strings.TrimPrefix(err.Error(), "imapcodec: ")
}

// readRest completes a command whose first segment has been read, reading
// literals of up to limit bytes, and commandBytes(name) together, into
// memory (and sending the continuation request a synchronising literal
// needs). If a literal is too large the client is answered and ok is false.
func (s *Session) readRest(tag, name string, first imapcodec.Segment, limit int64) (segs []imapcodec.Segment, ok bool, err error) {
	first.Text = append([]byte(nil), first.Text...)
	segs = []imapcodec.Segment{first}
	total := len(first.Text)
	var litTotal int64
	for lit := first.Literal; lit != nil; {
		if why := s.literalTooBig(lit, limit, s.commandBytes(name), litTotal); why != "" {
			return nil, false, s.refuseLiteral(tag, lit, why)
		}
		litTotal += lit.Size
		if !lit.NonSync {
			if err := s.Write([]byte("+ Ready for literal data\r\n")); err != nil {
				return nil, false, err
			}
			if err := s.Flush(); err != nil {
				return nil, false, err
			}
		}
		s.renewLiteralDeadline()
		data, err := s.r.ReadLiteral()
		if err != nil {
			return nil, false, err
		}
		segs[len(segs)-1].Data = data
		line, next, err := s.r.ReadLine()
		if err != nil {
			return nil, false, err
		}
		total += len(line)
		if total > s.cfg.Limits.MaxLine {
			return nil, false, fmt.Errorf("%w: command text", imapcodec.ErrLineTooLong)
		}
		seg := imapcodec.Segment{Text: append([]byte(nil), line...), Literal: next}
		if next != nil {
			seg.Text = seg.Text[:next.Start]
		}
		segs = append(segs, seg)
		lit = next
	}
	return segs, true, nil
}

// commandBytes is how many literal bytes the command name may carry in
// all: before login a few KiB (LOGIN needs a name and a password), an
// APPEND (streamed, never held) MaxCommandBytes, any other command
// (read into memory) MaxOtherCommandBytes.
func (s *Session) commandBytes(name string) int64 {
	switch {
	case s.state == StateNotAuthenticated:
		return s.cfg.MaxPreAuthCommandBytes
	case name == "APPEND":
		return s.cfg.MaxCommandBytes
	}
	return s.cfg.MaxOtherCommandBytes
}

// literalTooBig tells whether lit, coming after literals of earlier bytes
// in the same command, is over limit (the limit of each literal) or
// brings the command over total (see commandBytes); if so it returns why,
// for the client, and "" otherwise.
func (s *Session) literalTooBig(lit *imapcodec.LiteralHeader, limit, total, earlier int64) string {
	switch {
	case lit.Size > limit:
		return fmt.Sprintf("Literal of %d bytes exceeds the limit of %d bytes.", lit.Size, limit)
	case lit.Size > total-earlier:
		return fmt.Sprintf("Literals of %d bytes in one command exceed the limit of %d bytes.", earlier+lit.Size, total)
	}
	return ""
}

// refuseOversized answers a command whose first line announced a literal
// over the codec's own limit (Limits.MaxLiteral, at least max-append) with
// NO [TOOBIG]. A client that announced a synchronising literal is never
// invited and sends nothing more of the command; a non-synchronising one
// is read and thrown away with the rest of the command (RFC 7888 4 lets
// the server do either; this keeps a well-behaved session).
func (s *Session) refuseOversized(line []byte, lit *imapcodec.LiteralHeader) error {
	tag := imapcodec.ParseTag(line)
	if tag == "" {
		tag = "*"
	}
	// The limit that applies to the command, as literalTooBig says it.
	limit := s.cfg.Limits.MaxInlineLiteral
	if cmd, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: line[:lit.Start]}}, s.cfg.Limits); err == nil && cmd.Name == "APPEND" {
		limit = s.cfg.MaxAppendLiteral
	}
	return s.refuseLiteral(tag, lit, fmt.Sprintf("Literal of %d bytes exceeds the limit of %d bytes.", lit.Size, limit))
}

// refuseLiteral answers a command whose literal is too big with
// NO [TOOBIG] and why (see literalTooBig). A synchronising literal is
// simply refused (the client will not send it); a non-synchronising one is
// read and thrown away with the rest of the command, so the connection
// stays in step.
func (s *Session) refuseLiteral(tag string, lit *imapcodec.LiteralHeader, why string) error {
	return s.refuseLiteralFrom(s.r, tag, lit, why)
}

// refuseLiteralFrom is refuseLiteral for a command read from in (the
// client, or a command a handler made, Exchange.Restream).
func (s *Session) refuseLiteralFrom(in *imapcodec.Reader, tag string, lit *imapcodec.LiteralHeader, why string) error {
	s.srv.countError(ErrLiteralTooLarge)
	if err := s.discardFrom(in, lit); err != nil {
		return err
	}
	return s.WriteStatus(tag, "NO", "TOOBIG", why)
}

// discardRest skips the rest of a command that is refused without being
// read. After a synchronising literal the client waits for our answer, so
// there is nothing more to skip; non-synchronising literals and the lines
// after them are read and dropped.
func (s *Session) discardRest(lit *imapcodec.LiteralHeader) error { return s.discardFrom(s.r, lit) }

// discardFrom is discardRest for a command read from in.
func (s *Session) discardFrom(in *imapcodec.Reader, lit *imapcodec.LiteralHeader) error {
	if lit != nil && !lit.NonSync {
		in.CancelLiteral()
	}
	for lit != nil && lit.NonSync {
		if _, err := io.Copy(io.Discard, in.Literal()); err != nil {
			return err
		}
		var err error
		if _, lit, err = in.ReadLine(); err != nil {
			return err
		}
		if lit != nil && !lit.NonSync {
			in.CancelLiteral()
		}
	}
	return nil
}

// handshakeApart runs tc's TLS handshake on a goroutine of its own and
// waits for it. A server handshake grows its goroutine's stack to 16 KiB
// or more (key exchange, certificate signature); on the session's
// goroutine that stack would stay for the session's life, and with it
// about 8 KiB per idle TLS session (issue 20, docs/benchmarks.md). The
// connection's deadline bounds it.
func handshakeApart(tc *tls.Conn) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("TLS handshake panicked: %v", p)
			}
		}()
		done <- tc.Handshake()
	}()
	return <-done
}

// starttls upgrades the connection. Whatever the client pipelined after
// the STARTTLS command arrived in plaintext and is discarded, not executed
// (CVE-2011-0411 class of injection).
func (s *Session) starttls() error {
	if n := s.r.Buffered(); n > 0 {
		s.log.Warn("discarding plaintext pipelined after STARTTLS", "bytes", n)
	}
	s.nc.SetDeadline(s.capDeadline(time.Now().Add(s.cfg.PreAuthTimeout)))
	tc := tls.Server(s.nc, s.srv.cfg.TLS)
	if err := handshakeApart(tc); err != nil {
		return fmt.Errorf("STARTTLS handshake: %w", err)
	}
	s.nc.SetDeadline(time.Time{})
	s.wmu.Lock()
	s.nc = tc
	s.setTransport(connTransport{tc})
	s.wmu.Unlock()
	s.isTLS = true
	return nil
}
