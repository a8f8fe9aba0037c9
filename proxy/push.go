package proxy

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Pushes between commands. RFC 3501 lets a server send unsolicited
// responses at any time, and NOTIFY (RFC 5465) relies on it: a client that
// set NOTIFY hears of changes while it sends nothing, without IDLE. The
// session's goroutine waits in a read of the client's next command; Wake
// cuts that read short (the codec keeps a partially read line), the session
// writes what is pending, and goes back to reading with the same deadline.

// Modes of SetPushSelected.
const (
	// PushSelectedOff reports changes of the selected mailbox only with
	// the responses to commands (RFC 3501's rule).
	PushSelectedOff int32 = iota
	// PushSelectedDelayed pushes them between commands, except expunges,
	// which wait for a command (NOTIFY's selected-delayed).
	PushSelectedDelayed
	// PushSelectedNow pushes them all between commands (NOTIFY's
	// selected).
	PushSelectedNow
)

// Wake makes the session call the extensions' pushers as soon as it may:
// at once if it waits for a command or in IDLE, else after the command
// that runs. It is safe to call from any goroutine.
func (s *Session) Wake() {
	s.wake.Store(true)
	if s.between.Load() || s.idling.Load() {
		s.Interrupt()
	}
}

// SetPushSelected sets how changes of the selected mailbox reach the client
// between commands (PushSelectedOff, PushSelectedDelayed, PushSelectedNow).
func (s *Session) SetPushSelected(mode int32) {
	s.pushSelected.Store(mode)
	if mode != PushSelectedOff && s.HasNews() {
		s.Wake()
	}
}

// SetFetchUID makes the FETCH responses that report flag changes of the
// selected mailbox carry the message's UID (NOTIFY's FlagChange).
func (s *Session) SetFetchUID(on bool) { s.fetchUID = on }

// DeliverPending reports the selected mailbox's changes now, for an
// extension's Push; expunges only when allowExpunge.
func (s *Session) DeliverPending(allowExpunge bool) error { return s.deliver(allowExpunge) }

// readCommand reads the next command line, pushing whatever is pending
// whenever Wake interrupts the wait, until deadline.
func (s *Session) readCommand(deadline time.Time) ([]byte, *imapcodec.LiteralHeader, error) {
	for {
		s.nc.SetReadDeadline(deadline)
		s.between.Store(true)
		if s.wake.Load() {
			s.Interrupt()
		}
		line, lit, err := s.r.ReadLine()
		s.between.Store(false)
		var ne net.Error
		if err == nil || !(errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) || !time.Now().Before(deadline) {
			return line, lit, err
		}
		if err := s.pushBetween(); err != nil {
			return nil, nil, err
		}
	}
}

// pushBetween writes what is pending between two commands.
func (s *Session) pushBetween() error {
	// Only after a Wake: with expunges held back (PushSelectedDelayed) the
	// news stay pending, and must not make the session spin.
	if mode := s.pushSelected.Load(); mode != PushSelectedOff && s.wake.Load() && s.mbox != nil && s.mbox.news.Load() {
		if err := s.deliver(mode == PushSelectedNow); err != nil {
			return err
		}
	}
	if err := s.push(); err != nil {
		return err
	}
	return s.Flush()
}

// push runs the extensions' pushers if Wake asked for it.
func (s *Session) push() error {
	if !s.wake.Swap(false) {
		return nil
	}
	for _, p := range s.srv.pushers {
		if err := p.Push(s); err != nil {
			return err
		}
	}
	return nil
}

// observe tells the command observers that a relayed command ended.
func (s *Session) observe(name string, line []byte) {
	for _, o := range s.srv.observers {
		o.CommandDone(s, name, line, s.lastTagged)
	}
}
