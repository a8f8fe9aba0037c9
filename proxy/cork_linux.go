package proxy

import (
	"net"
	"syscall"
)

// setCork sets or clears TCP_CORK on c. While it is set the kernel sends
// only full segments, so a literal's header and first bytes, which the
// proxy writes itself, leave together with the bytes splice(2) moves after
// them: the client reads the body in a few large pieces rather than a
// small one per literal and one per splice. Clearing it sends what is
// held. Errors are ignored: corking changes only how the bytes are cut
// into segments, not what is sent.
func setCork(c *net.TCPConn, on bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, v)
	})
}
