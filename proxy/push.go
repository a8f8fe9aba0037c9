package proxy

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Pushes between commands. RFC 3501 lets a server send unsolicited
// responses at any time; IDLE (RFC 2177) and NOTIFY (RFC 5465) rely on it: a
// client hears of changes while it sends nothing. The session's goroutine
// waits in a read of the client's next line; Wake cuts that read short (the
// codec keeps a partially read line), the session writes what is pending,
// and goes back to reading with the same deadline. IDLE and the wait for
// the next command are the same wait (readLine, AwaitLine); what may be
// pushed during it is the session's Updates setting. A parked session
// (park.go) waits for its socket, which the same Wake cuts short.

// Updates says when changes of the selected mailbox reach the client
// outside the answers to its commands.
type Updates int32

const (
	// UpdatesWithCommands reports them only with the responses to
	// commands (RFC 3501's rule).
	UpdatesWithCommands Updates = iota
	// UpdatesNoExpunge pushes them between commands too, except
	// expunges, which wait for a command that allows them.
	UpdatesNoExpunge
	// UpdatesAll pushes them all as they come.
	UpdatesAll
)

// SetUpdates sets when changes of the selected mailbox reach the client
// outside IDLE (NOTIFY sets what its selected filter asks, and
// UpdatesWithCommands again when it ends) and returns the previous
// setting. While the client idles (SetIdling), every change is pushed
// whatever this says; the setting holds again after DONE.
func (s *Session) SetUpdates(u Updates) Updates {
	prev := Updates(s.updates.Swap(int32(u)))
	s.updatesChanged()
	return prev
}

// SetIdling tells the core that the client idles (IDLE, until DONE):
// every change of the selected mailbox is pushed as it comes. It is apart
// from SetUpdates so that a setting changed during IDLE (NOTIFY ended by
// an overflow the idling client was told of) neither silences the IDLE
// nor is undone by its DONE.
func (s *Session) SetIdling(on bool) {
	s.idling.Store(on)
	s.updatesChanged()
}

// currentUpdates is the Updates setting in force: UpdatesAll while the
// client idles, else SetUpdates's.
func (s *Session) currentUpdates() Updates {
	if s.idling.Load() {
		return UpdatesAll
	}
	return Updates(s.updates.Load())
}

// updatesChanged follows a change of the setting in force: the watcher
// is told whether the session waits for pushes, and news already there
// go out.
func (s *Session) updatesChanged() {
	u := s.currentUpdates()
	if s.mbox != nil {
		s.mbox.sub.SetIdle(u != UpdatesWithCommands)
	}
	if u != UpdatesWithCommands && s.hasNews() {
		s.Wake()
	}
}

// Wake makes the session push as soon as it may: the selected mailbox's
// changes (as Updates allows) and the extensions' queued data (see
// SessionHook.Push), at once if it waits for its client, else after the
// command that runs. It is safe to call from any goroutine.
func (s *Session) Wake() {
	s.wake.Store(true)
	// Under betweenMu, so that the interrupt lands only while the
	// session waits for its client: one that found it waiting, but landed
	// once it had read the next command and set a deadline for the
	// command's literal, cut the literal's read short and ended a healthy
	// session with "Autologout" (a second reviewer's finding).
	s.betweenMu.Lock()
	if s.between.Load() {
		s.interrupt()
	}
	s.betweenMu.Unlock()
}

// setBetween marks the session as waiting for its client's next line, or
// not, for Wake.
func (s *Session) setBetween(on bool) {
	s.betweenMu.Lock()
	s.between.Store(on)
	s.betweenMu.Unlock()
}

// interrupt wakes the session goroutine if it is blocked reading from the
// client (the read returns a timeout error; no input is lost).
func (s *Session) interrupt() { s.nc.SetReadDeadline(time.Unix(1, 0)) }

// WaitLine waits for the next line from the client until deadline, pushing
// what Wake asks for meanwhile, for a handler that takes over the
// conversation. It flushes first and holds no read buffer while it waits.
// At the deadline it returns os.ErrDeadlineExceeded. The session's
// goroutine waits in it and so cannot park: a wait that may be long (IDLE's
// DONE) should use AwaitLine.
func (s *Session) WaitLine(deadline time.Time) ([]byte, *imapcodec.LiteralHeader, error) {
	if err := s.Flush(); err != nil {
		return nil, nil, err
	}
	s.r.Release() // an idling client may send nothing for half an hour
	return s.readLine(deadline)
}

// PushNow writes at once what is pending for the client as Updates allows
// (and whatever the extensions queued), and flushes: IDLE calls it when it
// starts.
func (s *Session) PushNow() error {
	s.wake.Store(true)
	return s.pushBetween()
}

// readLine reads the next line, pushing whatever is pending whenever Wake
// interrupts the wait, until deadline.
func (s *Session) readLine(deadline time.Time) ([]byte, *imapcodec.LiteralHeader, error) {
	return s.readLineParking(deadline, time.Time{})
}

// readLineParking is readLine for the session's loop, which may park
// (park.go) from parkAfter on (zero: never): if by then the layers over
// the socket hold no input, it returns errParked with the wait still in
// force (a Wake still interrupts it), and the caller's goroutine must
// return; the goroutine that resumes the session calls it again.
func (s *Session) readLineParking(deadline, parkAfter time.Time) ([]byte, *imapcodec.LiteralHeader, error) {
	for {
		wait, try := deadline, false
		if !parkAfter.IsZero() && !s.resumed {
			if time.Now().Before(parkAfter) {
				if parkAfter.Before(deadline) {
					wait = parkAfter
				}
			} else {
				try = true
			}
		}
		s.nc.SetReadDeadline(wait)
		s.setBetween(true)
		if s.wake.Load() {
			s.interrupt()
		}
		var line []byte
		var lit *imapcodec.LiteralHeader
		var err error
		if try {
			line, lit, err = s.tryReadLine()
			if err == errWouldWait {
				s.r.Release()
				return nil, nil, errParked
			}
		} else {
			// A resumed session reads for real once: its socket
			// was readable, or the wait was cut short.
			s.resumed = false
			line, lit, err = s.r.ReadLine()
		}
		s.setBetween(false)
		var ne net.Error
		if err == nil || !(errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) || !time.Now().Before(deadline) {
			// The rest of the command (its literals) is read under the
			// wait's deadline, not the grace's, nor an interrupt's that
			// landed after the line was read.
			s.nc.SetReadDeadline(deadline)
			return line, lit, err
		}
		if err := s.pushBetween(); err != nil {
			return nil, nil, err
		}
	}
}

// pushBetween writes what is pending between two commands.
func (s *Session) pushBetween() error {
	// The wake is taken first, before anything is delivered: a Wake that
	// comes meanwhile (the hub notifying of a change recorded after
	// deliver took its snapshot) sets it again, and readLine then cuts its
	// read short at once. Taken after the delivery, it would swallow that
	// Wake, and the change would wait for the client's next line (an
	// idling client's DONE).
	woken := s.wake.Swap(false)
	// Only after a Wake: with expunges held back (UpdatesNoExpunge) the
	// news stay pending, and must not make the session spin.
	delivered := false
	if mode := s.currentUpdates(); mode != UpdatesWithCommands && woken && s.mbox != nil && s.mbox.news.Load() {
		var err error
		if delivered, err = s.deliver(nil, mode == UpdatesAll); err != nil {
			return err
		}
	}
	if woken {
		if err := s.push(); err != nil {
			return err
		}
	}
	if err := s.Flush(); err != nil {
		return err
	}
	if cb := s.srv.cfg.PushLatency; cb != nil && delivered && s.mbox != nil {
		cb(time.Since(s.mbox.sub.LastChangeRead()), s.mbox.sub.LastChangeWait())
	}
	return nil
}

// push runs the extensions' pushers (pushBetween calls it after a Wake).
func (s *Session) push() error {
	for _, h := range s.srv.hooks {
		if err := h.Push(s); err != nil {
			return err
		}
	}
	return nil
}
