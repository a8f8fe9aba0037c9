package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// The proxy holds no user database: a login succeeds exactly when the same
// credentials log in to the upstream. That first upstream connection then
// joins the account's pool.

func (s *Session) cmdLogin(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	args, err := cmd.Args.Values()
	if err != nil || len(args) != 2 {
		return s.WriteStatus(cmd.Tag, "BAD", "", "LOGIN needs a user name and a password.")
	}
	user, ok1 := imapcodec.AsString(args[0])
	pass, ok2 := imapcodec.AsString(args[1])
	if !ok1 || !ok2 {
		return s.WriteStatus(cmd.Tag, "BAD", "", "LOGIN needs a user name and a password.")
	}
	if !s.plaintextAuthOK() {
		return s.WriteStatus(cmd.Tag, "NO", "PRIVACYREQUIRED", "Plaintext authentication is disabled on this connection; use STARTTLS.")
	}
	return s.authenticate(ctx, cmd.Tag, user, pass)
}

func (s *Session) cmdAuthenticate(ctx context.Context, x *Exchange) error {
	cmd := x.cmd
	if err := cmd.Args.SP(); err != nil {
		return s.WriteStatus(cmd.Tag, "BAD", "", "AUTHENTICATE needs a mechanism name.")
	}
	mech, err := cmd.Args.Atom()
	if err != nil {
		return s.WriteStatus(cmd.Tag, "BAD", "", "AUTHENTICATE needs a mechanism name.")
	}
	var ir []byte
	hasIR := false
	if cmd.Args.MaybeSP() {
		v, err := cmd.Args.Atom()
		if err != nil || !cmd.Args.AtEnd() {
			return s.WriteStatus(cmd.Tag, "BAD", "", "Malformed initial response.")
		}
		hasIR = true
		ir = []byte{} // "=" is an empty response (RFC 4959), not an absent one
		if v != "=" {
			if ir, err = base64.StdEncoding.DecodeString(v); err != nil {
				return s.WriteStatus(cmd.Tag, "BAD", "", "Initial response is not valid base64.")
			}
		}
	}
	if !strings.EqualFold(mech, sasl.Plain) {
		return s.WriteStatus(cmd.Tag, "NO", "", "Unsupported authentication mechanism; use PLAIN.")
	}
	if !s.plaintextAuthOK() {
		return s.WriteStatus(cmd.Tag, "NO", "PRIVACYREQUIRED", "Plaintext authentication is disabled on this connection; use STARTTLS.")
	}
	var user, pass string
	srv := sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && identity != username {
			return errors.New("authorization identity differs from the user name")
		}
		user, pass = username, password
		return nil
	})
	resp := ir
	for {
		if !hasIR {
			s.Write([]byte("+ \r\n"))
			line, lit, err := s.readLineWithin(s.cfg.PreAuthTimeout)
			if err != nil {
				return err
			}
			if lit != nil {
				s.discardRest(lit)
				return s.WriteStatus(cmd.Tag, "BAD", "", "AUTHENTICATE responses are base64 lines, not literals.")
			}
			if string(line) == "*" {
				return s.WriteStatus(cmd.Tag, "BAD", "", "AUTHENTICATE cancelled.")
			}
			if resp, err = base64.StdEncoding.DecodeString(string(line)); err != nil {
				return s.WriteStatus(cmd.Tag, "BAD", "", "Response is not valid base64.")
			}
		}
		hasIR = false
		_, done, err := srv.Next(resp)
		if err != nil {
			return s.authFailed(ctx, cmd.Tag)
		}
		if done {
			break
		}
	}
	return s.authenticate(ctx, cmd.Tag, user, pass)
}

// errEvictedInLogin ends a session whose account left this node while
// its login ran (cluster mode, Server.evict).
var errEvictedInLogin = errors.New("proxy: the account left this node during the login")

// authenticate logs in to the upstream with the client's credentials and, on
// success, moves the session to the authenticated state. The check waits
// its turn behind the failed logins of the client's address and of the
// account (limits.go).
func (s *Session) authenticate(ctx context.Context, tag, user, pass string) error {
	if badUsername(user) {
		s.log.Info("login refused: user name with NUL, CR or LF")
		return s.authFailed(ctx, tag)
	}
	if len(user) > maxUsername {
		s.log.Info("login refused: user name too long", "bytes", len(user))
		return s.authFailed(ctx, tag)
	}
	account := s.srv.accountKey(user)
	var turn loginTurn
	defer turn.finish(loginError, 0) // a way out that told no outcome
	if s.srv.cfg.Router != nil && !s.handedOff {
		// Cluster mode: the node that owns the account checks the
		// login (and its failed-login delays, which see every login of
		// the account there). Routing takes the account (and writes its
		// row, for a name never seen) before anyone checked the
		// password, so the login waits its turn behind the failed-login
		// delays of the client's address here first: a client trying
		// many names at once otherwise had rows written at the node's
		// full login rate, the delays holding back only the answers. A
		// login handed to another node tells its outcome here too
		// (forward), so that the address's failures count at this node.
		done, err := s.admitLogin(ctx, account)
		if err != nil {
			return err
		}
		turn.done = done
		local, release, err := s.route(ctx, tag, user, pass, account, &turn)
		if !local {
			return err
		}
		s.routeDone = release
		defer func() {
			if s.state == StateNotAuthenticated {
				s.routeDone = nil
				release()
			}
		}()
	}
	if s.srv.cfg.Router != nil {
		// From here the session is the account's at this node: an
		// eviction (a drain, fencing, the account lost) must find it
		// and end its login too. Found only once logged in, a login
		// that was waiting its turn (failed-login delays) or for the
		// upstream went on at a node that no longer owned the account,
		// beside the node that took it over (a second reviewer's
		// finding).
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ctx = lctx
		s.loginCancel.Store(&cancel)
		s.acct.Store(&account)
		defer func() {
			s.loginCancel.Store(nil)
			if s.state == StateNotAuthenticated {
				s.acct.Store(nil)
			}
		}()
		if o, ok := s.srv.cfg.Router.(Owner); ok && !o.Owns(account) {
			// Evicted between the route and now (see Owner): the
			// client tries again and is routed to the new owner.
			turn.finish(loginError, 0)
			s.srv.countError(ErrClusterUnavailable)
			return s.WriteStatus(tag, "NO", "UNAVAILABLE", "This account cannot be served right now; try again shortly.")
		}
	}
	if turn.done == nil {
		done, err := s.admitLogin(ctx, account)
		if err != nil {
			return err
		}
		turn.done = done
	}
	done := turn.finish
	var err error
	// Credentials the upstream accepted a moment ago need no new upstream
	// login (logincache.go).
	c, caps, cached := s.cachedLogin(ctx, account, user, pass)
	text := ""
	if !cached {
		uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// The upstream may be told whose login this is (Dovecot's
		// x-originating-ip, upstream.Config.ForwardClientAddr).
		uctx = upstream.WithClientAddr(uctx, s.addr)
		c, text, err = s.srv.dialLogin(uctx, account, user, pass)
		if err != nil {
			if errors.Is(err, upstream.ErrAuthFailed) {
				s.log.Info("login failed", "user", user)
				return s.answerFailure(ctx, tag, done(loginFailed, s.cfg.AuthFailureDelay))
			}
			done(loginError, 0)
			s.log.Warn("upstream failed during login", "err", err)
			return s.WriteStatus(tag, "NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
		}
		caps = c.Caps()
	}
	done(loginOK, 0)
	if ctx.Err() != nil || s.ending.Load() {
		// Evicted meanwhile: the client has its BYE.
		if c != nil {
			c.Logout() // not back to the pool, which evict emptied
		}
		return errEvictedInLogin
	}
	if !s.srv.limits.login(account) {
		switch {
		case c != nil && cached:
			s.srv.pool.Put(account, c) // the pool's, as it was
		case c != nil:
			c.Logout()
			c.Close()
		}
		s.srv.countError(ErrTooManySessions)
		s.log.Warn("too many sessions for one account", "user", user)
		return s.WriteStatus(tag, "NO", "LIMIT", "Too many sessions for this account; log out elsewhere first.")
	}
	s.counted = true
	s.user, s.pass = user, pass
	s.account = account
	s.acct.Store(&account)
	s.upCaps = caps
	s.log = s.log.With("user", user)
	s.log.Info("logged in", "verified", verifiedBy(cached))
	if c != nil {
		s.up = c
		s.leased.Store(true)
	}
	s.setState(StateAuthenticated)
	if r, ok := s.srv.cfg.Router.(LoginReporter); ok {
		r.LoginSucceeded(account)
	}
	s.release()
	if text == "" {
		text = "Logged in."
	}
	ok := imapcodec.AppendStatus(nil, tag, "OK", "CAPABILITY "+strings.Join(s.capabilities(), " "), text)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.ending.Load() {
		return errEvictedInLogin // hung up meanwhile (hangUpUnanswered)
	}
	s.renewWriteDeadline()
	_, err = s.w.Write(ok)
	s.loginAnswered = true
	return err
}

// loginTurn is a login's admission by the failed-login delays
// (admitLogin): its outcome is told exactly once, however the login ends.
type loginTurn struct {
	done func(loginOutcome, time.Duration) time.Time
	told bool
}

// finish tells the login's outcome (once; nothing before the admission)
// and returns when a failure may be answered.
func (t *loginTurn) finish(o loginOutcome, base time.Duration) time.Time {
	if t.done == nil || t.told {
		return time.Now()
	}
	t.told = true
	return t.done(o, base)
}

// hangUpUnanswered ends a session whose login has not been answered yet
// without a word, and reports whether it did: a handed-over login's
// forwarding node then answers its client NO [UNAVAILABLE] itself (a BYE
// here would reach that client before the tagged NO, on a connection that
// goes on). It decides under wmu, as the login's answer is written, so
// that an answer either went before it (and the session gets a BYE) or
// never goes.
func (s *Session) hangUpUnanswered() bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.loginAnswered {
		return false
	}
	s.ending.Store(true)
	s.nc.Close()
	return true
}

// cachedLogin answers a login from the login cache (logincache.go) when
// the upstream accepted exactly these credentials for account within the
// window and the account is being served now: an idle pooled connection
// of the account is alive (it becomes the session's first, as a login's
// own connection would), or every connection the account's budget allows
// is busy with its other sessions' commands (c is nil: the session's first
// command waits for one to come back, as any lease then does, instead of
// a login dialling past the budget and taking a watcher's). Otherwise
// (nothing open: the upstream may be down, or nothing idle but room to
// dial) ok is false and the login goes upstream, which costs no more than
// the dial the session's first command would make.
func (s *Session) cachedLogin(ctx context.Context, account, user, pass string) (c *upstream.Conn, caps upstream.Caps, ok bool) {
	caps, ok = s.srv.logins.check(account, user, pass)
	if !ok {
		return nil, nil, false
	}
	for {
		c = s.srv.pool.Get(account, "")
		if c == nil {
			break
		}
		if !c.Alive() {
			c.Close()
			continue
		}
		if time.Since(c.LastUsed()) > checkAfter {
			if _, err := c.Exec(ctx, "NOOP", nil); err != nil {
				c.Close()
				continue
			}
		}
		return c, caps, true
	}
	if s.srv.pool.Budget().Full(account) {
		return nil, caps, true
	}
	return nil, nil, false
}

// verifiedBy names, for the login's log line, what verified the
// credentials.
func verifiedBy(cached bool) string {
	if cached {
		return "cache"
	}
	return "upstream"
}

// admitLogin waits until a login from the session's address as account
// ("" for none) may be checked. Waiting ends with the pre-login deadline
// (an autologout, as for a client that does not log in in time).
func (s *Session) admitLogin(ctx context.Context, account string) (func(loginOutcome, time.Duration) time.Time, error) {
	wctx, cancel := context.WithDeadline(ctx, s.preAuthEnd)
	defer cancel()
	if err := s.Flush(); err != nil {
		return nil, err
	}
	_, done, err := s.srv.limits.admit(wctx, s.addr, account)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.srv.countError(ErrClientTimeout)
		s.log.Info("pre-login time ran out waiting for the failed-login delay")
		return nil, fmt.Errorf("waiting for the failed-login delay: %w", os.ErrDeadlineExceeded)
	}
	return done, nil
}

// authFailed answers a login that failed before the upstream was asked
// (a malformed AUTHENTICATE exchange, a user name with NUL, CR or LF): it
// counts against the client's address as any failure.
func (s *Session) authFailed(ctx context.Context, tag string) error {
	done, err := s.admitLogin(ctx, "")
	if err != nil {
		return err
	}
	return s.answerFailure(ctx, tag, done(loginFailed, s.cfg.AuthFailureDelay))
}

// answerFailure answers a failed login at the time the failed-login delay
// allows (limiter.finish), which slows down password guessing.
func (s *Session) answerFailure(ctx context.Context, tag string, at time.Time) error {
	s.srv.countError(ErrAuthFailed)
	if d := time.Until(at); d > 0 {
		s.Flush()
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return s.WriteStatus(tag, "NO", "AUTHENTICATIONFAILED", "Authentication failed.")
}
