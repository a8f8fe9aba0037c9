//go:build unix

package upstream

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

type sockState int

const (
	socketIdle   sockState = iota // nothing to read
	socketData                    // bytes are waiting (or state unknown)
	socketClosed                  // the peer closed or reset the connection
)

// socketState peeks at the TCP socket under nc without blocking
// (MSG_PEEK|MSG_DONTWAIT), so checking an idle pooled connection costs no
// waiting. A deadline in the past would not do: Go reports it before it
// reads, and so never sees a pending EOF.
func socketState(nc net.Conn) sockState {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return socketData
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return socketData
	}
	state := socketData
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			state = socketData
		case n == 0 && err == nil:
			state = socketClosed
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
			state = socketIdle
		case err != nil:
			state = socketClosed
		}
		return true // never wait for readiness
	})
	if err != nil {
		return socketClosed
	}
	return state
}
