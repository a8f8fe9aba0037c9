package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// checkAfter is how long a pooled connection may sit unused before it is
// checked with NOOP before reuse: servers drop idle connections (Dovecot
// after 30 minutes, NATs sooner), and a dead connection found by the
// client's own command would cost that command.
const checkAfter = 30 * time.Second

// leaseWait bounds how long a command waits for a busy connection of its
// account to come back to the pool, when the account's budget allows no
// new one, before it dials anyway (the budget then reclaims a watcher).
const leaseWait = time.Second

// upstreamConn returns the session's upstream connection, leasing one from the
// account's pool (or dialling and logging in) if the session holds none, and
// bringing it into the session's state: no mailbox selected in the
// authenticated state, the session's mailbox in the selected state, caught
// up with everything the session's client knows of it (catchup.go).
//
// The session keeps the lease until release, which the core calls after
// every command.
func (s *Session) upstreamConn(ctx context.Context) (*upstream.Conn, error) {
	return s.lease(ctx, true, nil)
}

// leaseAny is Upstream without bringing a pooled connection into the
// session's mailbox state, for commands (SELECT) that set the state anyway.
func (s *Session) leaseAny(ctx context.Context) (*upstream.Conn, error) {
	return s.lease(ctx, false, nil)
}

// lease leases a connection; restore brings it into the session's state.
// x is the client's command the connection is for, whose form upstream
// says what it relies on in the connection's view of the selected mailbox
// (catchup.go); nil for anything else, which may rely on everything.
func (s *Session) lease(ctx context.Context, restore bool, x *Exchange) (*upstream.Conn, error) {
	if x != nil {
		if t := x.xlate; t != nil && (strings.HasSuffix(x.Name, "STORE") || t.restated(x)) {
			// A STORE's answers become claims, and a restated command
			// (CONDSTORE's CHANGEDSINCE, UNCHANGEDSINCE) may name fewer
			// messages: narrowed before any answer comes (reportsOnly).
			s.upstreamForm(x)
		}
	}
	if s.up != nil && !s.up.Broken() {
		if restore && s.mbox != nil && (s.up.Selected != s.mbox.name || s.up.ReadOnly != s.mbox.readOnly) {
			// A hook ran ExecIn on the held connection (another
			// mailbox, or this one read-only): what runs next is
			// for the session's mailbox, which it selects again.
			if err := s.restoreOn(ctx, s.up, x); err != nil {
				s.up.MarkBroken()
				return nil, err
			}
			return s.up, nil
		}
		if s.upPartial && x == nil {
			// Held for a command that needed less; whatever runs on
			// it now may need everything.
			if err := s.catchUp(ctx, s.up, s.syncMark(), false, nil); err != nil {
				s.up.MarkBroken()
				return nil, err
			}
		}
		return s.up, nil
	}
	if s.up != nil {
		s.releaseUpstream()
	}
	if s.account == "" {
		return nil, errors.New("not authenticated")
	}
	mailbox := "" // the pool's preference
	if restore && s.mbox != nil {
		mailbox = s.mbox.name
	}
	waited := false
	for {
		c, returned := s.srv.pool.GetOrWait(s.account, mailbox)
		if c == nil {
			if waited || !s.srv.pool.Budget().Full(s.account) {
				break
			}
			// Every connection the account may have is busy: the next
			// one given back serves this command, which is far cheaper
			// than reclaiming a watcher and dialling (and without it a
			// burst of commands stalled until some connection closed).
			select {
			case <-returned:
				continue
			case <-time.After(leaseWait):
				waited = true // then dial, reclaiming as the budget allows
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
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
		if mailbox != "" && c.Selected == mailbox && c.UIDValidity != 0 && c.UIDValidity != s.mbox.state.UIDValidity() {
			// The connection has another mailbox of that name open, one
			// deleted and re-created since (#16.8): select it again.
			c.Selected = ""
		}
		if restore {
			if err := s.restoreOn(ctx, c, x); err != nil {
				if errors.Is(err, hub.ErrUIDValidity) {
					// Any other connection would find the same.
					s.srv.pool.Put(s.account, c)
					return nil, err
				}
				c.Close()
				continue
			}
		}
		s.up = c
		s.leased.Store(true)
		return c, nil
	}
	c, err := s.dialUpstream(ctx)
	if err != nil {
		return nil, err
	}
	if restore {
		if err := s.restoreOn(ctx, c, x); err != nil {
			c.Close()
			return nil, err
		}
	}
	s.up = c
	s.leased.Store(true)
	return c, nil
}

// restoreOn brings c into the session's state: the selected mailbox as
// the session has it (none in the authenticated state), selected unless
// c has it so already, then caught up as far as x relies on (catchup.go).
func (s *Session) restoreOn(ctx context.Context, c *upstream.Conn, x *Exchange) error {
	mailbox, readOnly := "", false
	if s.mbox != nil {
		mailbox, readOnly = s.mbox.name, s.mbox.readOnly
	}
	fresh := c.Selected != mailbox || c.ReadOnly != readOnly
	mark := s.syncMark() // before the SELECT or NOOP that shows the connection what it covers
	if err := c.Select(ctx, mailbox, readOnly, nil); err != nil {
		return err
	}
	if s.mbox != nil && c.Selected == mailbox && c.UIDValidity != 0 {
		if v := s.mbox.state.UIDValidity(); v != 0 && c.UIDValidity != v {
			// Deleted and created again since the session selected it:
			// its messages of the session's UIDs are others' (a MOVE's
			// second try, on a new connection, expunged another
			// client's message). The session ends when its state
			// says so (hub.ErrUIDValidity); until then nothing runs
			// on the new mailbox.
			return fmt.Errorf("%w: the upstream's is %d, the session's %d", hub.ErrUIDValidity, c.UIDValidity, v)
		}
	}
	return s.catchUp(ctx, c, mark, fresh, x)
}

// dialUpstream opens and authenticates a new upstream connection with the
// session's credentials.
func (s *Session) dialUpstream(ctx context.Context) (*upstream.Conn, error) {
	c, _, err := s.srv.dialLogin(ctx, s.account, s.user, s.pass)
	return c, err
}

// release gives the upstream connection back to the pool after a
// command, unless commands sent ahead of their turn are still in flight on
// it. No session keeps a connection between commands: in the selected
// state its view of the mailbox lives in the hub (see selected.go).
func (s *Session) release() {
	if len(s.ahead) > 0 {
		// Commands sent ahead on it wait for their answers (ahead.go).
		return
	}
	if s.up != nil {
		s.releaseUpstream()
	}
}

// releaseUpstream gives the connection back (or closes it if broken). A
// mailbox still selected on it is kept: the next lease for the same mailbox
// finds it ready, and any other lease changes or leaves it first.
func (s *Session) releaseUpstream() {
	c := s.up
	s.up, s.upPartial = nil, false
	s.leased.Store(false)
	if len(s.ahead) > 0 {
		// Given up with commands sent ahead still unanswered on it (the
		// session ends, the connection failed): their answers would
		// reach whoever leased it next. Each of them is answered NO in
		// its turn (finishAhead), if the session goes on.
		c.MarkBroken()
	}
	if c.Broken() {
		c.Close()
		return
	}
	s.srv.pool.Put(s.account, c)
}

// upstreamUnavailable answers a command that could not get an upstream
// connection.
func (s *Session) upstreamUnavailable(tag string, err error) error {
	s.log.Warn("no upstream connection", "err", err)
	s.srv.countError(ErrUpstreamUnavailable)
	return s.WriteStatus(tag, "NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
}
