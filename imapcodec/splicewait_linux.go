package imapcodec

import (
	"net"

	"golang.org/x/sys/unix"
)

// awaitQueued waits until want bytes are queued on c's socket, and
// returns how many are. The upstream writes a body in many pieces; a
// splice that takes each piece as it lands moves a 100 KiB literal in a
// dozen small splices, each handing the client a small piece and each
// waking the proxy. SO_RCVLOWAT has the kernel wake the reader only when
// want bytes are there (or the buffer is nearly full), so the literal
// moves in one or two large pieces: in the load tool's bulk fetch with the
// proxy on a CPU of its own, the proxy's CPU per MB fell by about 9 % and
// the client's by 10-15 % (docs/benchmarks.md, "SO_RCVLOWAT").
//
// It returns fewer than want when the kernel woke the reader anyway (the
// socket's buffer under pressure, the window nearly shut, a readiness
// left from earlier bytes) and 0 only when the peer shut its side: the
// caller moves what is queued, which never waits, and asks again for the
// rest. No wait depends on bytes the peer may never send: want never
// exceeds the rest of the literal, and a shut peer ends the wait whether
// its end came before the wait began or during it (TestSpliceLiteralCut).
// *lowat is the socket's current SO_RCVLOWAT, kept to spare a system call
// when it does not change.
func awaitQueued(c *net.TCPConn, want int64, lowat *int64) (int64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	if want > 1<<30 {
		want = 1 << 30
	}
	if *lowat != want {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, int(want))
		}); err != nil {
			return 0, err
		}
		if serr != nil {
			return 0, serr
		}
		*lowat = want
	}
	var queued int64
	var qerr error
	woken := false
	err = rc.Read(func(fd uintptr) bool {
		n, e := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if e != nil {
			qerr = e
			return true
		}
		queued = int64(n)
		if queued >= want || (woken && queued > 0) || peerShut(fd) {
			return true
		}
		woken = true
		return false
	})
	if err == nil {
		err = qerr
	}
	return queued, err
}

// peerShut reports whether the peer has shut its side of the stream (or
// the connection failed): no more bytes will come, and no readiness
// either if the kernel reported the end before the wait began.
func peerShut(fd uintptr) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
}

// resetLowat gives c's socket back the default SO_RCVLOWAT of 1, for the
// Reader's own reads after the literal.
func resetLowat(c *net.TCPConn, lowat *int64) {
	if *lowat <= 1 {
		return
	}
	*lowat = 1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
		})
	}
}
