package proxy

import (
	"net"
	"time"
)

// SetLoginClock replaces the clock of s's login cache (logincache.go), so
// that tests can move past its window without sleeping.
func SetLoginClock(s *Server, now func() time.Time) {
	if s.logins == nil {
		return // off
	}
	s.logins.mu.Lock()
	s.logins.now = now
	s.logins.mu.Unlock()
}

// ErrWouldWait is what a parkable connection in try mode reads (park.go).
var ErrWouldWait = errWouldWait

// Parkable wraps nc as the server does an accepted connection, and
// returns the wrapper with its try switch and its wait for input, or
// ok false if nc cannot park.
func Parkable(nc net.Conn) (c net.Conn, try func(bool), wait func(), ok bool) {
	ic, ok := parkable(nc).(*idleConn)
	if !ok {
		return nc, nil, nil, false
	}
	return ic, func(on bool) { ic.try = on }, ic.waitReadable, true
}
