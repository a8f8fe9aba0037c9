package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy/upstream"
)

// checkAfter is how long a pooled connection may sit unused before it is
// checked with NOOP before reuse: servers drop idle connections (Dovecot
// after 30 minutes, NATs sooner), and a dead connection found by the
// client's own command would cost that command.
const checkAfter = 30 * time.Second

// Upstream returns the session's upstream connection, leasing one from the
// account's pool (or dialling and logging in) if the session holds none, and
// bringing it into the session's state: no mailbox selected in the
// authenticated state, the session's mailbox in the selected state.
//
// The session keeps the lease until releaseIfUnpinned, which the core calls
// after every command.
func (s *Session) Upstream(ctx context.Context) (*upstream.Conn, error) {
	return s.lease(ctx, true)
}

// leaseAny is Upstream without bringing a pooled connection into the
// session's mailbox state, for commands (SELECT) that set the state anyway.
func (s *Session) leaseAny(ctx context.Context) (*upstream.Conn, error) {
	return s.lease(ctx, false)
}

func (s *Session) lease(ctx context.Context, restore bool) (*upstream.Conn, error) {
	if s.up != nil && !s.up.Broken() {
		return s.up, nil
	}
	if s.up != nil {
		// The pinned connection broke. In the selected state the client's
		// sequence numbers lived on it; they cannot be restored faithfully.
		s.releaseUpstream(false)
		if s.state == StateSelected {
			return nil, errUpstreamLost
		}
	}
	if s.account == "" {
		return nil, errors.New("not authenticated")
	}
	for {
		c := s.srv.pool.Get(s.account, s.selected)
		if c == nil {
			break
		}
		if time.Since(c.LastUsed()) > checkAfter {
			if _, err := c.Exec(ctx, "NOOP", nil); err != nil {
				c.Close()
				continue
			}
		}
		if restore || c.Selected != "" && s.selected == "" {
			if err := c.Select(ctx, s.selected, s.readOnly, nil); err != nil {
				c.Close()
				continue
			}
		}
		s.up = c
		return c, nil
	}
	c, err := s.dialUpstream(ctx)
	if err != nil {
		return nil, err
	}
	if s.selected != "" {
		if err := c.Select(ctx, s.selected, s.readOnly, nil); err != nil {
			c.Close()
			return nil, err
		}
	}
	s.up = c
	return c, nil
}

// dialUpstream opens and authenticates a new upstream connection with the
// session's credentials.
func (s *Session) dialUpstream(ctx context.Context) (*upstream.Conn, error) {
	c, err := upstream.Dial(ctx, &s.srv.cfg.Upstream)
	if err != nil {
		return nil, err
	}
	if _, err := c.Login(ctx, s.user, s.pass); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// pinned reports whether the session must keep its upstream connection
// between commands (see cmdSelect).
func (s *Session) pinned() bool { return s.state == StateSelected }

// releaseIfUnpinned gives the upstream connection back to the pool unless
// the session's state lives on it.
func (s *Session) releaseIfUnpinned() {
	if s.up != nil && (!s.pinned() || s.up.Broken()) {
		s.releaseUpstream(false)
	}
}

// releaseUpstream gives the connection back (or closes it if broken). At the
// end of a session the connection goes back too; a mailbox still selected on
// it is unselected by whoever leases it next.
func (s *Session) releaseUpstream(final bool) {
	c := s.up
	s.up = nil
	if c.Broken() {
		c.Close()
		return
	}
	s.srv.pool.Put(s.account, c)
}

// upstreamUnavailable answers a command that could not get an upstream
// connection.
func (s *Session) upstreamUnavailable(tag string, err error) error {
	if errors.Is(err, errUpstreamLost) {
		s.WriteStatus(tag, "NO", "UNAVAILABLE", "Lost the connection to the upstream server.")
		return err
	}
	s.log.Warn("no upstream connection", "err", err)
	return s.WriteStatus(tag, "NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
}
