package proxy

import (
	"context"
	"encoding/base64"
	"errors"
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
			s.authFailed(cmd.Tag)
			return nil
		}
		if done {
			break
		}
	}
	return s.authenticate(ctx, cmd.Tag, user, pass)
}

// authenticate logs in to the upstream with the client's credentials and, on
// success, moves the session to the authenticated state.
func (s *Session) authenticate(ctx context.Context, tag, user, pass string) error {
	if badUsername(user) {
		s.log.Info("login refused: user name with NUL, CR or LF")
		return s.authFailed(tag)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := upstream.Dial(ctx, &s.srv.cfg.Upstream)
	if err != nil {
		s.log.Warn("upstream unreachable at login", "err", err)
		return s.WriteStatus(tag, "NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
	}
	text, err := c.Login(ctx, user, pass)
	if err != nil {
		c.Close()
		if errors.Is(err, upstream.ErrAuthFailed) {
			s.log.Info("login failed", "user", user)
			return s.authFailed(tag)
		}
		s.log.Warn("upstream failed during login", "err", err)
		return s.WriteStatus(tag, "NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
	}
	account := s.srv.accountKey(user)
	s.srv.limits.succeeded(s.addr)
	if !s.srv.limits.login(account) {
		c.Logout()
		c.Close()
		s.srv.countError(ErrTooManySessions)
		s.log.Warn("too many sessions for one account", "user", user)
		return s.WriteStatus(tag, "NO", "LIMIT", "Too many sessions for this account; log out elsewhere first.")
	}
	s.counted = true
	s.user, s.pass = user, pass
	s.account = account
	s.upCaps = c.Caps()
	s.log = s.log.With("user", user)
	s.log.Info("logged in")
	s.up = c
	s.leased.Store(true)
	s.setState(StateAuthenticated)
	s.release()
	if text == "" {
		text = "Logged in."
	}
	return s.WriteStatus(tag, "OK", "CAPABILITY "+strings.Join(s.capabilities(), " "), text)
}

// authFailed answers a failed login after the configured delay, which slows
// down password guessing.
func (s *Session) authFailed(tag string) error {
	s.srv.countError(ErrAuthFailed)
	if d := s.srv.limits.failed(s.addr, s.cfg.AuthFailureDelay); d > 0 {
		s.Flush()
		time.Sleep(d)
	}
	return s.WriteStatus(tag, "NO", "AUTHENTICATIONFAILED", "Authentication failed.")
}
