// Package idle gives every client the IDLE command (RFC 2177), whatever the
// upstream offers.
//
// An idling client holds no upstream connection: in the selected state the
// mailbox hub's watcher (one upstream IDLE, or NOOP polling, per watched
// mailbox) notifies the session, which writes the changes at once. In the
// authenticated state there is nothing to report until NOTIFY arrives, so
// IDLE just waits for DONE.
//
// The client's IDLE ends with DONE, or with the autologout timer
// (Session.IdleTimeout, 30 minutes by default; RFC 2177 asks clients to
// re-issue IDLE at least every 29 minutes). Optionally, KeepAlive sends
// "* OK Still here" at an interval, for networks that drop silent
// connections; it is off by default to spare phones' batteries.
package idle

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension implements IDLE. The zero value is ready to use.
type Extension struct {
	// KeepAlive, if positive, is the interval of "* OK Still here"
	// responses during IDLE. Default off.
	KeepAlive time.Duration
}

// New returns the IDLE extension with default settings.
func New() *Extension { return &Extension{} }

func (e *Extension) Name() string { return "idle" }

func (e *Extension) Capabilities(st proxy.State, _ upstream.Caps) []string {
	if st >= proxy.StateAuthenticated {
		return []string{"IDLE"}
	}
	return nil
}

func (e *Extension) Commands() []string { return []string{"IDLE"} }

// ServeCommand runs IDLE: the session pushes every change of the selected
// mailbox (and what other extensions queue) as it comes, until DONE.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, _ proxy.Next) error {
	s := x.Session()
	if !x.Command().Args.AtEnd() {
		return x.Reply("BAD", "", "IDLE takes no arguments.")
	}
	if s.State() < proxy.StateAuthenticated {
		return x.Reply("BAD", "", "IDLE not allowed before authentication; log in first.")
	}
	s.SetIdling(true)
	if err := s.PushNow(); err != nil {
		s.SetIdling(false)
		return err
	}
	if err := s.Write([]byte("+ idling\r\n")); err != nil {
		s.SetIdling(false)
		return err
	}
	return e.await(x, time.Now().Add(s.IdleTimeout()))
}

// await waits for DONE until deadline without holding the session's
// goroutine (Session.AwaitLine: an idling session parks), sending
// keepalives meanwhile if configured; the session is idling
// (Session.SetIdling) until IDLE ends.
func (e *Extension) await(x *proxy.Exchange, deadline time.Time) error {
	s := x.Session()
	wait := deadline
	if k := time.Now().Add(e.KeepAlive); e.KeepAlive > 0 && k.Before(deadline) {
		wait = k
	}
	// The core flushes first, and pushes what comes while it waits.
	return s.AwaitLine(wait, func(line []byte, lit *imapcodec.LiteralHeader, err error) error {
		timedOut := errors.Is(err, os.ErrDeadlineExceeded)
		if timedOut && time.Now().Before(deadline) {
			if err := s.Write([]byte("* OK Still here\r\n")); err != nil {
				s.SetIdling(false)
				return err
			}
			return e.await(x, deadline)
		}
		s.SetIdling(false)
		switch {
		case err == nil && lit == nil && strings.EqualFold(string(line), "DONE"):
			return x.Reply("OK", "", "Idle completed.")
		case err == nil:
			return x.Reply("BAD", "", "Expected DONE.")
		case timedOut:
			return proxy.ErrIdleTimeout
		default:
			return err
		}
	})
}
