// Package idle gives clients the IDLE command (RFC 2177).
//
// Today it relays IDLE to the session's upstream connection: the client is
// told "+ idling" once the upstream has accepted, every response the upstream
// sends meanwhile is relayed (through the session's response filters), and
// the client's DONE ends the upstream IDLE. Because servers may drop a
// connection that idles for 30 minutes (RFC 2177 asks clients to re-issue
// IDLE at least every 29 minutes), the extension silently re-issues the
// upstream IDLE every Reissue period; the client notices nothing.
//
// IDLE is advertised only when the upstream offers it; the mailbox hub will
// serve IDLE for every upstream without holding a connection per client.
package idle

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/proxy/upstream"
)

// Extension implements IDLE. The zero value is ready to use.
type Extension struct {
	// Reissue is how long an upstream IDLE runs before it is renewed.
	// Default 25 minutes.
	Reissue time.Duration
}

// New returns the IDLE extension with default settings.
func New() *Extension { return &Extension{} }

func (e *Extension) Name() string { return "idle" }

func (e *Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st >= proxy.StateAuthenticated && up.Has("IDLE") {
		return []string{"IDLE"}
	}
	return nil
}

func (e *Extension) Commands() []string { return []string{"IDLE"} }

func (e *Extension) reissue() time.Duration {
	if e.Reissue <= 0 {
		return 25 * time.Minute
	}
	return e.Reissue
}

// result is what the upstream relay goroutine reports when an IDLE ends.
type result struct {
	head imapcodec.ResponseHead
	err  error
}

func (e *Extension) Handle(ctx context.Context, s *proxy.Session, cmd *imapcodec.Command) error {
	if !cmd.Args.AtEnd() {
		return s.WriteStatus(cmd.Tag, "BAD", "", "IDLE takes no arguments.")
	}
	if s.State() < proxy.StateAuthenticated {
		return s.WriteStatus(cmd.Tag, "BAD", "", "IDLE not allowed before authentication; log in first.")
	}
	if !s.UpstreamCaps().Has("IDLE") {
		return s.WriteStatus(cmd.Tag, "BAD", "", "IDLE is not supported by this server.")
	}
	up, err := s.Upstream(ctx)
	if err != nil {
		return s.UpstreamUnavailable(cmd.Tag, err)
	}
	defer s.Release()

	started := make(chan struct{}, 1)
	start := func() (string, <-chan result, error) {
		tag := up.NextTag()
		w := up.Writer()
		w.WriteString(tag + " IDLE\r\n")
		if err := w.Flush(); err != nil {
			up.MarkBroken()
			return "", nil, err
		}
		done := make(chan result, 1)
		go func() {
			head, err := s.RelayResponses(up, tag, e.reissue()+5*time.Minute, func() error {
				select {
				case started <- struct{}{}:
				default:
				}
				return s.Flush()
			})
			s.Interrupt() // before done: the session resets its deadline after
			done <- result{head, err}
		}()
		return tag, done, nil
	}
	// waitStarted waits for the upstream's continuation request, or for the
	// IDLE to end without one (refused, or the connection failed).
	waitStarted := func(done <-chan result) (result, bool) {
		select {
		case <-started:
			return result{}, true
		case r := <-done:
			return r, false
		}
	}
	finish := func(done <-chan result) result {
		w := up.Writer()
		w.WriteString("DONE\r\n")
		if err := w.Flush(); err != nil {
			up.MarkBroken()
		}
		return <-done
	}

	_, done, err := start()
	if err != nil {
		return s.UpstreamFailed(cmd.Tag, err)
	}
	if r, ok := waitStarted(done); !ok {
		if r.err != nil {
			return s.UpstreamFailed(cmd.Tag, r.err)
		}
		return s.WriteTagged(cmd.Tag, r.head)
	}
	s.Write([]byte("+ idling\r\n"))
	deadline := time.Now().Add(s.IdleTimeout())
	for {
		renew := time.Now().Add(e.reissue())
		wait := time.Until(renew)
		if d := time.Until(deadline); d < wait {
			wait = d
		}
		line, lit, err := s.ReadLine(max(wait, time.Millisecond))
		switch {
		case err == nil && lit == nil && strings.EqualFold(string(line), "DONE"):
			r := finish(done)
			if r.err != nil {
				return s.UpstreamFailed(cmd.Tag, r.err)
			}
			return s.WriteTagged(cmd.Tag, r.head)
		case err == nil:
			r := finish(done)
			if r.err != nil {
				return s.UpstreamFailed(cmd.Tag, r.err)
			}
			return s.WriteStatus(cmd.Tag, "BAD", "", "Expected DONE.")
		case errors.Is(err, os.ErrDeadlineExceeded):
			select {
			case r := <-done:
				// The upstream ended the IDLE on its own.
				if r.err != nil {
					return s.UpstreamFailed(cmd.Tag, r.err)
				}
				return s.WriteTagged(cmd.Tag, r.head)
			default:
			}
			if !time.Now().Before(deadline) {
				finish(done)
				return errors.New("client idle for too long")
			}
			// Renew the upstream IDLE; the client sees nothing of it.
			if r := finish(done); r.err != nil {
				return s.UpstreamFailed(cmd.Tag, r.err)
			}
			if _, done, err = start(); err != nil {
				return s.UpstreamFailed(cmd.Tag, err)
			}
			if r, ok := waitStarted(done); !ok {
				if r.err != nil {
					return s.UpstreamFailed(cmd.Tag, r.err)
				}
				return s.WriteTagged(cmd.Tag, r.head)
			}
		default:
			// The client went away: end the upstream IDLE cleanly so the
			// connection can serve again.
			finish(done)
			return err
		}
	}
}
