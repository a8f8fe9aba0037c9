//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// parkable wraps an accepted connection so that its session can park, if
// it is a TCP connection.
func parkable(nc net.Conn) net.Conn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nc
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nc
	}
	c := &idleConn{TCPConn: tc, raw: raw}
	c.readable = c.readableOnce
	return c
}

// waitReadable waits until the socket has input, its read deadline
// passes (a Wake sets one in the past) or it is closed, with few frames
// on the stack. Whatever it was, the read that follows tells; a wake-up
// without input only means that read waits.
func (c *idleConn) waitReadable() {
	c.peeked = false
	c.raw.Read(c.readable)
}

// readableOnce reports whether fd has input or an end to read (EOF, an
// error); false makes the poller wait for the socket. The first call
// peeks (the bytes stay for the read that follows): the poller reports
// only input that arrives after the wait began. Later calls come after
// the poller saw the socket readable, and trust it.
func (c *idleConn) readableOnce(fd uintptr) bool {
	if c.peeked {
		return true
	}
	c.peeked = true
	// As upstream's socketState, for a connection of the pool.
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}

// hasInput reports, without waiting, whether the socket has input (or an
// end) to read: a client that keeps sending pipelined commands has more
// behind what the session has read (ahead.go).
func (c *idleConn) hasInput() bool {
	ready := false
	c.raw.Control(func(fd uintptr) {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = err != syscall.EAGAIN
	})
	return ready
}
