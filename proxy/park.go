package proxy

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Parking: an idle session without a goroutine deep in a read.
//
// A goroutine blocked in a read of its client keeps every frame under it:
// the session's loop, dispatch, the command chain (IDLE's handler), the
// codec, the COMPRESS and TLS layers, the runtime's poller. That is 3 to
// 5 KiB of frames, and the runtime keeps a stack at least four times what
// it uses (counting its 800-byte guard), so a session waiting for its
// client kept an 8 KiB stack, 16 KiB once COMPRESS had grown it: the
// largest part of an idle session's memory (issue 20, docs/benchmarks.md).
//
// So a session that waits for its client with nothing read and not yet
// handled lets its goroutine end ("parks"), and a new goroutine waits for
// the socket to become readable with a few frames on a 2 KiB stack; when
// input, a deadline, a Wake or the end of the connection comes, that
// goroutine carries on the session where it stopped. A command that waits
// for the client's next line (IDLE's DONE) hands its continuation to the
// core (AwaitLine) instead of blocking, so an idling session parks too.
//
// Whether nothing is held is asked of every layer at once: the session
// reads its next line with the socket in "try" mode, where the connection
// returns errWouldWait instead of blocking. A layer that has bytes of its
// own (the codec's buffer, COMPRESS's inflater, TLS's decrypted record or
// records read ahead) returns them; the error comes through only when all
// of them are empty. On its way it releases what the layers hold while
// they wait (COMPRESS gives its deflater back).
//
// Only connections the proxy accepted itself on TCP can park; others (a
// PROXY-protocol listener's wrapper, a session handed over by another
// node) wait in a read as before.

// parkGrace is how long a session waits for its client in a plain read
// before it parks: a client in the middle of a burst of commands (the
// next one follows the last answer within a round trip) keeps its
// goroutine and pays nothing for parking; a client that has gone quiet
// parks soon after.
const parkGrace = 20 * time.Millisecond

// idleConn is an accepted TCP connection a session can park on.
type idleConn struct {
	*net.TCPConn
	raw syscall.RawConn
	// try makes Read return errWouldWait instead of reading. Only the
	// session's reading goroutine sets it, around one read.
	try bool
	// readable is the poller's test of the socket (waitReadable): it
	// peeks at its first call of a wait, and takes the poller's word
	// after that.
	readable func(fd uintptr) bool
	peeked   bool
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.try {
		return 0, errWouldWait
	}
	return c.TCPConn.Read(p)
}

// wouldWait is the error a connection in try mode reads. It is a
// temporary timeout, so that the layers above keep their state as for an
// expired read deadline: crypto/tls keeps a partial record, COMPRESS's
// inflater its checkpoint, the codec a partial line.
type wouldWait struct{}

func (wouldWait) Error() string   { return "proxy: the read would wait" }
func (wouldWait) Timeout() bool   { return true }
func (wouldWait) Temporary() bool { return true }

var errWouldWait net.Error = wouldWait{}

// errParked is what readLine returns when the session parked: its
// goroutine must return without touching the session again.
var errParked = errors.New("proxy: session parked")

// tryReadLine reads the next line as far as the layers over the socket
// have it, without reading the socket.
func (s *Session) tryReadLine() (line []byte, lit *imapcodec.LiteralHeader, err error) {
	s.idle.try = true
	line, lit, err = s.r.ReadLine()
	s.idle.try = false
	return line, lit, err
}

// resume waits, on a new goroutine, for the parked session's socket, then
// carries on the session on that goroutine.
func (s *Session) resume(ctx context.Context) {
	s.idle.waitReadable()
	s.resumed = true
	s.run(ctx, true)
}
