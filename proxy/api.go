package proxy

import (
	"fmt"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// This file holds what the core offers extensions that take over a command
// (IDLE today; the hub, NOTIFY and COMPRESS later).

// RelayResponses relays the upstream's responses to the client until the
// tagged response for upTag, which it returns without writing it. Each
// continuation request ("+") is passed to onContinue (an error from it stops
// the relay); timeout bounds the wait for each response line. On failure
// the upstream connection is marked broken. Responses are flushed to the
// client as soon as the upstream has nothing more buffered, so pushes during
// IDLE reach the client at once.
func (s *Session) RelayResponses(up *upstream.Conn, upTag string, timeout time.Duration, onContinue func() error) (imapcodec.ResponseHead, error) {
	r := up.Reader()
	for {
		up.SetDeadline(time.Now().Add(timeout))
		line, lit, err := r.ReadLine()
		if err != nil {
			up.MarkBroken()
			return imapcodec.ResponseHead{}, &upstreamError{err}
		}
		head, err := imapcodec.ParseResponseHead(line)
		if err != nil {
			up.MarkBroken()
			return head, &upstreamError{fmt.Errorf("unparsable response: %w", err)}
		}
		up.Seen()
		switch head.Tag {
		case upTag:
			return head, nil
		case "+":
			if onContinue == nil {
				up.MarkBroken()
				return head, &upstreamError{fmt.Errorf("unexpected continuation request")}
			}
			if err := onContinue(); err != nil {
				return head, err
			}
		case "*":
			if err := s.relayUntagged(up, line, lit, head); err != nil {
				return head, err
			}
			if r.Buffered() == 0 {
				if err := s.Flush(); err != nil {
					return head, &writeError{err}
				}
			}
		default:
			up.MarkBroken()
			return head, &upstreamError{fmt.Errorf("unexpected response tag %q", truncate(head.Tag))}
		}
	}
}

// WriteTagged writes an upstream's tagged response under the client's tag.
func (s *Session) WriteTagged(tag string, head imapcodec.ResponseHead) error {
	return s.writeTagged(tag, "", head)
}

// Interrupt wakes the session goroutine if it is blocked reading from the
// client (ReadLine returns a timeout error; no input is lost).
func (s *Session) Interrupt() { s.nc.SetReadDeadline(time.Unix(1, 0)) }

// Release gives the upstream connection back to the pool.
func (s *Session) Release() { s.release() }

// UpstreamFailed answers tag after a failure of the upstream connection and
// drops it. A non-nil result means the session must end.
func (s *Session) UpstreamFailed(tag string, err error) error { return s.relayFailed(tag, err) }

// UpstreamUnavailable answers tag when no upstream connection could be had.
func (s *Session) UpstreamUnavailable(tag string, err error) error {
	return s.upstreamUnavailable(tag, err)
}
