// Package faultnet is a TCP relay for fault-injection tests. A Relay listens
// on loopback and forwards every connection it accepts to a target address
// (the real server), byte for byte in both directions, until a Fault says
// otherwise: cut the connection, inject bytes into it, or replace the rest
// of one direction with other bytes, at a chosen byte of a chosen
// connection.
//
// The side that dials the relay is the client (for lemonproxy's tests, the
// proxy), the target is the server (the upstream IMAP server); ToServer and
// ToClient name the two directions.
//
// A fault fires at most once. It is armed on one connection, either when
// that connection is accepted (no Match; Conn picks the N-th connection, 0
// the next one) or when Match has passed on it in MatchDir (found across
// read boundaries); it then acts in Dir once After further bytes have
// passed in Dir. "Cut the upstream connection 512 KiB into the answer to
// the command that contains BODY.PEEK[]" is
//
//	r.Add(faultnet.Fault{
//		Match: []byte("BODY.PEEK[]"), MatchDir: faultnet.ToServer,
//		Dir: faultnet.ToClient, After: 512 << 10, Action: faultnet.Cut,
//	})
//
// and "the server's next greeting is binary junk, and it says nothing
// more" is
//
//	r.Add(faultnet.Fault{Dir: faultnet.ToClient, Action: faultnet.Replace, Data: junk})
//
// When Match and Dir are the same direction, After counts from the end of
// the match; otherwise from the moment of arming, so bytes in Dir that the
// relay reads after that point are counted (with a request/response
// protocol, the answer to the matched command).
//
// The relay keeps no more than one read buffer per direction and
// connection. Every goroutine it starts ends in Close, which Start arranges
// for the end of the test.
package faultnet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Dir is a direction of a relayed connection.
type Dir int

const (
	// ToServer is from the client (who dialled the relay) to the target.
	ToServer Dir = iota
	// ToClient is from the target back to the client.
	ToClient
)

func (d Dir) String() string {
	if d == ToServer {
		return "to-server"
	}
	return "to-client"
}

// Action is what a fault does when it fires.
type Action int

const (
	// Cut writes Data (if any) in Dir, then cuts the connection: the
	// client's side is closed at once, as by a crashed server or a
	// broken network; the server's side sees the end of the stream
	// (see Conn.Cut).
	Cut Action = iota
	// Inject writes Data in Dir and goes on forwarding.
	Inject
	// Replace writes Data in Dir, then drops everything else that comes
	// in Dir; the connection stays open (a server that answers garbage
	// and then says nothing more). The other direction is still
	// forwarded.
	Replace
	// Note changes nothing: it only tells (Handle.Fired, Handle.Conn)
	// which connection carried Match, and when.
	Note
	// Hold writes Data in Dir, then forwards nothing more in Dir until
	// Handle.Release is called (or the relay closes): a server slow to
	// answer, at a point the test chooses. The other direction is still
	// forwarded.
	Hold
)

func (a Action) String() string {
	switch a {
	case Cut:
		return "cut"
	case Inject:
		return "inject"
	case Replace:
		return "replace"
	case Hold:
		return "hold"
	}
	return "note"
}

// Fault describes one fault; see the package comment.
type Fault struct {
	// Conn, if not 0, restricts the fault to the Conn-th connection the
	// relay accepted (counting from 1).
	Conn int
	// Match arms the fault on the first connection on which it passes in
	// MatchDir. Empty: armed on the connection when it is accepted (or at
	// once, if the Conn-th connection exists already).
	Match    []byte
	MatchDir Dir
	// Dir and After: where the action happens.
	Dir    Dir
	After  int64
	Action Action
	// Data is what Cut, Inject and Replace write.
	Data []byte
}

// Handle follows a fault added to a Relay.
type Handle struct {
	f         Fault
	firedCh   chan struct{}
	releaseCh chan struct{}
	release   sync.Once

	// Under the relay's mutex.
	on        *Conn // the connection the fault is armed on
	remaining int64 // bytes to pass in Dir before the action
	fired     bool
}

// Fired is closed when the fault has acted.
func (h *Handle) Fired() <-chan struct{} { return h.firedCh }

// Conn returns the connection the fault fired on, nil before it fired.
func (h *Handle) Conn() *Conn {
	select {
	case <-h.firedCh:
		return h.on // written before firedCh was closed
	default:
	}
	return nil
}

// Release lets a Hold go on forwarding (see Hold); it may be called
// before the fault fired, and more than once.
func (h *Handle) Release() { h.release.Do(func() { close(h.releaseCh) }) }

func (h *Handle) String() string {
	return fmt.Sprintf("fault %s in %s after %d bytes (match %q in %s)", h.f.Action, h.f.Dir, h.f.After, h.f.Match, h.f.MatchDir)
}

// Relay is a listening fault-injecting relay.
type Relay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  []*Conn
	faults []*Handle
	closed bool
	stop   chan struct{} // closed by Close: held pumps go on
}

// Listen starts a relay on a free loopback port that forwards to target.
func Listen(target string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	r := &Relay{ln: ln, target: target, stop: make(chan struct{})}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Start is Listen for a test: it fails the test on error and closes the
// relay when the test ends.
func Start(t testing.TB, target string) *Relay {
	t.Helper()
	r, err := Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// Addr is the address to dial instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Add adds a fault and returns its handle.
func (r *Relay) Add(f Fault) *Handle {
	h := &Handle{f: f, firedCh: make(chan struct{}), releaseCh: make(chan struct{})}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, h)
	if len(f.Match) == 0 && f.Conn > 0 && f.Conn <= len(r.conns) {
		if c := r.conns[f.Conn-1]; !c.isDone() {
			r.armLocked(h, c)
		}
	}
	return h
}

// Conns returns every connection accepted so far, in order (Conns()[0] is
// connection 1).
func (r *Relay) Conns() []*Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Conn(nil), r.conns...)
}

// Open returns the number of connections not yet closed on both sides.
func (r *Relay) Open() int {
	n := 0
	for _, c := range r.Conns() {
		if !c.isDone() {
			n++
		}
	}
	return n
}

// CutAll cuts every open connection (see Conn.Cut).
func (r *Relay) CutAll() {
	for _, c := range r.Conns() {
		c.Cut()
	}
}

// Close stops the relay, closes every connection and waits for its
// goroutines.
func (r *Relay) Close() {
	r.mu.Lock()
	if !r.closed {
		close(r.stop)
	}
	r.closed = true
	conns := append([]*Conn(nil), r.conns...)
	r.mu.Unlock()
	r.ln.Close()
	for _, c := range conns {
		c.closeSockets()
	}
	r.wg.Wait()
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		nc, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			nc.Close()
			return
		}
		c := &Conn{ID: len(r.conns) + 1, r: r, client: nc, done: make(chan struct{})}
		r.conns = append(r.conns, c)
		for _, h := range r.faults {
			if h.on == nil && !h.fired && len(h.f.Match) == 0 && (h.f.Conn == 0 || h.f.Conn == c.ID) {
				r.armLocked(h, c)
			}
		}
		r.wg.Add(1)
		r.mu.Unlock()
		go c.run()
	}
}

func (r *Relay) armLocked(h *Handle, c *Conn) {
	h.on = c
	h.remaining = h.f.After
}

// Conn is one relayed connection.
type Conn struct {
	// ID counts the relay's connections from 1 in the order accepted.
	ID int

	r              *Relay
	client, server net.Conn // server is nil until dialled
	passed         [2]atomic.Int64
	swallow        [2]bool // Replace fired in that direction; only its pump touches it
	tails          map[*Handle][]byte
	// relayClosed is set when the relay closes the client's side itself,
	// so that the pumps' errors are not taken for the client's doing.
	relayClosed  atomic.Bool
	clientClosed atomic.Bool
	sockMu       sync.Mutex
	closed       bool // both sides
	serverEOF    bool // the server's side is half-closed
	done         chan struct{}
}

// Bytes returns how many bytes have been forwarded in d (Data written by a
// fault included, bytes dropped by Replace not).
func (c *Conn) Bytes(d Dir) int64 { return c.passed[d].Load() }

// Done is closed when both sides of the connection are closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// ClientClosed reports whether the client ended the connection (its side
// reached EOF or failed) before the relay closed it itself.
func (c *Conn) ClientClosed() bool { return c.clientClosed.Load() }

// Cut cuts the connection now, as the Cut action does.
func (c *Conn) Cut() { c.cutClient() }

// cutClient closes the client's side at once and half-closes the
// server's: the server reads the end of the stream, and what it still
// sends is read and dropped until it closes (see the ToClient pump). So a
// server in the middle of a write finishes it, as when a network fails
// where the server does not notice at once. (Failing its write instead
// would test the server, not the client; go-imap v2's in-memory server,
// for one, never releases a connection whose FETCH write failed.)
func (c *Conn) cutClient() {
	c.relayClosed.Store(true)
	c.client.Close()
	c.endToServer()
}

// endToServer half-closes the server's side, once.
func (c *Conn) endToServer() {
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	if c.closed || c.serverEOF || c.server == nil {
		return
	}
	c.serverEOF = true
	if tc, ok := c.server.(*net.TCPConn); !ok || tc.CloseWrite() != nil {
		c.server.Close()
	}
}

// closeSockets closes both sides at once.
func (c *Conn) closeSockets() {
	c.relayClosed.Store(true)
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	c.closed = true
	c.client.Close()
	if c.server != nil {
		c.server.Close()
	}
}

func (c *Conn) run() {
	defer c.r.wg.Done()
	defer close(c.done)
	server, err := net.DialTimeout("tcp", c.r.target, 5*time.Second)
	c.sockMu.Lock()
	if err != nil || c.closed {
		c.sockMu.Unlock()
		if server != nil {
			server.Close()
		}
		c.client.Close()
		return
	}
	c.server = server
	c.sockMu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.pump(ToServer, c.client, server) }()
	go func() { defer wg.Done(); c.pump(ToClient, server, c.client) }()
	wg.Wait()
	c.closeSockets()
}

// pump copies one direction. The end of the client's stream (or a cut)
// is passed on to the server as a half-close; the server's to the client
// likewise. When the client is gone or cut, the ToClient pump drains the
// server until it closes. A failure towards the server closes both sides.
func (c *Conn) pump(d Dir, src, dst net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.forward(d, buf[:n], dst) {
			if !c.relayClosed.Load() {
				// Writing failed: to the client, it is gone; to the
				// server, it is.
				if d == ToServer {
					c.closeSockets()
					return
				}
				c.clientClosed.Store(true)
			}
			if d == ToServer {
				return // a Cut: cutClient has half-closed the server's side
			}
			c.cutClient()
			c.swallow[ToClient] = true
		}
		if err != nil {
			if d == ToServer {
				if !c.relayClosed.Load() {
					c.clientClosed.Store(true)
				}
				c.endToServer()
				return
			}
			if errors.Is(err, io.EOF) && !c.swallow[ToClient] {
				if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
					return
				}
			}
			c.closeSockets()
			return
		}
	}
}

// forward writes p to dst, acting on the faults on the way. It returns
// false when the connection must end.
func (c *Conn) forward(d Dir, p []byte, dst net.Conn) bool {
	for len(p) > 0 {
		if c.swallow[d] {
			return true
		}
		pos, h := c.next(d, p)
		if pos > 0 {
			if _, err := dst.Write(p[:pos]); err != nil {
				return false
			}
			c.passed[d].Add(int64(pos))
			p = p[pos:]
		}
		if h != nil && !c.fire(d, h, dst) {
			return false
		}
	}
	return true
}

// next finds the first event in p, a chunk read in direction d: faults
// that arm (their Match ends there; next arms them) or one that fires (its
// After runs out). It returns the position up to which p may be forwarded
// and the fault that fires there (nil if none does), and counts the
// forwarded bytes against the armed faults.
func (c *Conn) next(d Dir, p []byte) (int, *Handle) {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	best, fire, arms := len(p), (*Handle)(nil), []*Handle(nil)
	for _, h := range r.faults {
		switch {
		case h.fired:
		case h.on == c && h.f.Dir == d:
			if h.remaining < int64(best) {
				best, fire, arms = int(h.remaining), h, nil
			} else if h.remaining == int64(best) && fire == nil && arms == nil {
				fire = h
			}
		case h.on == nil && len(h.f.Match) > 0 && h.f.MatchDir == d && (h.f.Conn == 0 || h.f.Conn == c.ID):
			// A fault that arms where another fires arms first, so
			// that its own action can come at that very byte.
			end := matchEnd(c.tails[h], p, h.f.Match)
			switch {
			case end < 0:
			case end < best:
				best, fire, arms = end, nil, []*Handle{h}
			case end == best:
				fire, arms = nil, append(arms, h)
			}
		}
	}
	// The bytes up to best pass: count them against the armed faults,
	// and keep the end of them for matches that span reads.
	for _, h := range r.faults {
		switch {
		case h.fired || h == fire || slices.Contains(arms, h):
		case h.on == c && h.f.Dir == d:
			h.remaining -= int64(best)
		case h.on == nil && len(h.f.Match) > 0 && h.f.MatchDir == d:
			if c.tails == nil {
				c.tails = map[*Handle][]byte{}
			}
			c.tails[h] = keepTail(c.tails[h], p[:best], len(h.f.Match)-1)
		}
	}
	if fire != nil {
		fire.remaining = 0
	}
	for _, h := range arms {
		// Armed at the end of its match (best > 0): the caller forwards
		// up to there and comes back with the rest.
		delete(c.tails, h)
		r.armLocked(h, c)
	}
	return best, fire
}

// matchEnd returns where the first occurrence of m ends in p, counting the
// tail of the earlier reads (shorter than m) as coming before p, or -1.
func matchEnd(tail, p, m []byte) int {
	if len(tail) > 0 {
		// A match that starts in the tail ends within len(m)-1 bytes
		// of p.
		k := min(len(p), len(m)-1)
		if j := bytes.Index(append(tail[:len(tail):len(tail)], p[:k]...), m); j >= 0 {
			return j + len(m) - len(tail)
		}
	}
	if i := bytes.Index(p, m); i >= 0 {
		return i + len(m)
	}
	return -1
}

// keepTail returns the last keep bytes of tail followed by seg.
func keepTail(tail, seg []byte, keep int) []byte {
	if len(seg) >= keep {
		return append(tail[:0], seg[len(seg)-keep:]...)
	}
	tail = append(tail, seg...)
	if len(tail) > keep {
		tail = append(tail[:0:0], tail[len(tail)-keep:]...)
	}
	return tail
}

// fire performs h's action in direction d (the pump of d calls it).
func (c *Conn) fire(d Dir, h *Handle, dst net.Conn) bool {
	r := c.r
	r.mu.Lock()
	h.fired = true
	// The relay forgets a fault once it fired (and the fault its Data),
	// so that a test's heap measurements are not skewed by its faults.
	r.faults = slices.DeleteFunc(r.faults, func(x *Handle) bool { return x == h })
	data := h.f.Data
	h.f.Data = nil
	r.mu.Unlock()
	close(h.firedCh)
	if h.f.Action == Note {
		return true
	}
	if len(data) > 0 {
		n, err := dst.Write(data)
		c.passed[d].Add(int64(n))
		if err != nil {
			return false
		}
	}
	switch h.f.Action {
	case Cut:
		c.cutClient()
		return false
	case Replace:
		c.swallow[d] = true
	case Hold:
		select {
		case <-h.releaseCh:
		case <-r.stop:
		}
	}
	return true
}
