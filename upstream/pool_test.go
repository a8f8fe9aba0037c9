package upstream

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The pool tests check for leaked goroutines one by one (goroutines that
// existed before the test are not theirs to answer for): this package's
// other tests are not written with a package-wide goleak check in mind.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// stubConn is a net.Conn that swallows writes, has nothing to read and
// records whether it was closed and whether a LOGOUT was written.
type stubConn struct {
	closed atomic.Bool
	mu     sync.Mutex
	wrote  []byte
}

func (c *stubConn) Read([]byte) (int, error) { return 0, io.EOF }
func (c *stubConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.wrote = append(c.wrote, p...)
	c.mu.Unlock()
	return len(p), nil
}
func (c *stubConn) Close() error                     { c.closed.Store(true); return nil }
func (c *stubConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *stubConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *stubConn) SetDeadline(time.Time) error      { return nil }
func (c *stubConn) SetReadDeadline(time.Time) error  { return nil }
func (c *stubConn) SetWriteDeadline(time.Time) error { return nil }

var stubCfg = &Config{Addr: "upstream.test:143"}

func newStub(selected string) (*Conn, *stubConn) {
	sc := &stubConn{}
	c := newConn(sc, stubCfg)
	c.Selected = selected
	return c, sc
}

func TestPoolGetPut(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{})
	if c := p.Get("a", ""); c != nil {
		t.Fatal("Get from an empty pool returned a connection")
	}
	c1, s1 := newStub("")
	p.Put("a", c1)
	if p.Idle() != 1 || p.IdleFor("a") != 1 || p.IdleFor("b") != 0 {
		t.Fatalf("after Put: Idle %d, a %d, b %d", p.Idle(), p.IdleFor("a"), p.IdleFor("b"))
	}
	// Accounts never share.
	if c := p.Get("b", ""); c != nil {
		t.Fatal("Get for account b returned account a's connection")
	}
	if c := p.Get("a", ""); c != c1 {
		t.Fatal("Get did not return the pooled connection")
	}
	if p.Idle() != 0 || p.IdleFor("a") != 0 {
		t.Fatalf("after Get: Idle %d, a %d", p.Idle(), p.IdleFor("a"))
	}
	if s1.closed.Load() {
		t.Fatal("Get closed the connection it returned")
	}

	// Broken connections are closed, not kept.
	c2, s2 := newStub("")
	c2.MarkBroken()
	p.Put("a", c2)
	if p.Idle() != 0 || !s2.closed.Load() {
		t.Fatalf("broken connection: Idle %d, closed %v", p.Idle(), s2.closed.Load())
	}
}

func TestPoolPrefersSelectedMailbox(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxIdlePerAccount: 3})
	inbox, _ := newStub("INBOX")
	none, _ := newStub("")
	sent, _ := newStub("Sent")
	p.Put("a", inbox)
	p.Put("a", none)
	p.Put("a", sent)
	if c := p.Get("a", "INBOX"); c != inbox {
		t.Errorf("Get(INBOX) did not return the connection with INBOX selected")
	}
	if c := p.Get("a", "Drafts"); c != sent {
		t.Errorf("Get(Drafts) did not return the most recently used connection")
	}
	if c := p.Get("a", ""); c != none {
		t.Errorf("Get(\"\") did not return the connection with nothing selected")
	}
	if p.Idle() != 0 {
		t.Errorf("Idle %d after taking everything", p.Idle())
	}
}

// putStubs puts n new stub connections with mailbox selected into p for
// account, oldest first.
func putStubs(p *Pool, account, mailbox string, n int) ([]*Conn, []*stubConn) {
	var conns []*Conn
	var stubs []*stubConn
	for range n {
		c, s := newStub(mailbox)
		conns, stubs = append(conns, c), append(stubs, s)
		p.Put(account, c)
	}
	return conns, stubs
}

func TestPoolPerAccountBound(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxIdlePerAccount: 2, SurplusGrace: -1})
	conns, stubs := putStubs(p, "a", "", 3)
	b, sb := newStub("")
	p.Put("b", b)
	if p.IdleFor("a") != 2 || p.IdleFor("b") != 1 || p.Idle() != 3 {
		t.Fatalf("IdleFor(a) %d, IdleFor(b) %d, Idle %d; want 2, 1, 3", p.IdleFor("a"), p.IdleFor("b"), p.Idle())
	}
	// The account's oldest went.
	if !stubs[0].closed.Load() || stubs[1].closed.Load() || stubs[2].closed.Load() || sb.closed.Load() {
		t.Fatalf("closed: %v %v %v b %v; want only the first", stubs[0].closed.Load(), stubs[1].closed.Load(), stubs[2].closed.Load(), sb.closed.Load())
	}
	if got := p.Get("a", ""); got != conns[2] {
		t.Error("Get did not return the most recent connection")
	}
	if got := p.Get("a", ""); got != conns[1] {
		t.Error("second Get did not return the other connection")
	}
	if got := p.Get("a", ""); got != nil {
		t.Error("third Get returned a connection")
	}
}

// With more sessions of one account busy at once than MaxIdlePerAccount,
// the surplus connections they give back stay for SurplusGrace, so the
// next round of commands reuses them instead of logging in again; then
// the oldest go, down to MaxIdlePerAccount.
func TestPoolSurplusGrace(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxIdlePerAccount: 2, SurplusGrace: time.Hour})
	conns, stubs := putStubs(p, "a", "INBOX", 4)
	if p.IdleFor("a") != 4 {
		t.Fatalf("IdleFor(a) = %d within the grace, want 4", p.IdleFor("a"))
	}
	// A second round of four commands gets all four back.
	for i := range 4 {
		if c := p.Get("a", "INBOX"); c != conns[3-i] {
			t.Fatalf("Get %d: not the most recent idle connection", i)
		}
	}
	for i, s := range stubs {
		if s.closed.Load() {
			t.Fatalf("connection %d closed within the grace", i)
		}
	}

	// Past the grace, the surplus (the least recently used) is closed.
	q := NewPool(PoolConfig{MaxIdlePerAccount: 2, SurplusGrace: time.Millisecond})
	for _, c := range conns {
		q.Put("a", c)
	}
	b, sb := newStub("")
	q.Put("b", b)
	time.Sleep(5 * time.Millisecond)
	q.Put("b", q.Get("b", "")) // any use of the pool expires
	if q.IdleFor("a") != 2 || q.IdleFor("b") != 1 {
		t.Fatalf("past the grace: IdleFor(a) %d, IdleFor(b) %d; want 2, 1", q.IdleFor("a"), q.IdleFor("b"))
	}
	if !stubs[0].closed.Load() || !stubs[1].closed.Load() || stubs[2].closed.Load() || stubs[3].closed.Load() || sb.closed.Load() {
		t.Fatalf("closed: %v %v %v %v b %v; want the two oldest of a", stubs[0].closed.Load(), stubs[1].closed.Load(), stubs[2].closed.Load(), stubs[3].closed.Load(), sb.closed.Load())
	}
	if got := q.Get("a", ""); got != conns[3] {
		t.Error("the most recent connection did not stay")
	}
	q.Put("a", conns[3])
	q.Close()
	p.Close()
}

func TestPoolTotalBound(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxIdlePerAccount: 5, MaxIdle: 3})
	a1, s1 := newStub("")
	a2, s2 := newStub("")
	b1, s3 := newStub("")
	b2, s4 := newStub("")
	p.Put("a", a1)
	p.Put("a", a2)
	p.Put("b", b1)
	// Using a connection makes it recent again.
	if p.Get("a", "") != a2 {
		t.Fatal("Get(a) did not return a2")
	}
	p.Put("a", a2)
	p.Put("b", b2) // over MaxIdle: the least recently used (a1) goes
	if p.Idle() != 3 || p.IdleFor("a") != 1 || p.IdleFor("b") != 2 {
		t.Fatalf("Idle %d, a %d, b %d; want 3, 1, 2", p.Idle(), p.IdleFor("a"), p.IdleFor("b"))
	}
	if !s1.closed.Load() || s2.closed.Load() || s3.closed.Load() || s4.closed.Load() {
		t.Fatalf("closed: a1 %v a2 %v b1 %v b2 %v; want only a1", s1.closed.Load(), s2.closed.Load(), s3.closed.Load(), s4.closed.Load())
	}
	if p.Get("a", "") != a2 {
		t.Fatal("a's remaining connection is not a2")
	}
}

// TestPoolSetMaxIdle: lowering the total bound while the pool runs closes
// the least recently used idle connections over it; raising it keeps more.
func TestPoolSetMaxIdle(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxIdlePerAccount: 5, MaxIdle: 4})
	conns, stubs := putStubs(p, "a", "", 4)
	p.SetMaxIdle(2)
	if p.Idle() != 2 {
		t.Fatalf("Idle %d after SetMaxIdle(2), want 2", p.Idle())
	}
	for i, st := range stubs {
		if want := i < 2; st.closed.Load() != want {
			t.Errorf("connection %d (put %d of 4): closed %v, want %v", i, i+1, st.closed.Load(), want)
		}
	}
	p.SetMaxIdle(3)
	more, _ := putStubs(p, "b", "", 1)
	if p.Idle() != 3 || p.Get("b", "") != more[0] || p.Get("a", "") != conns[3] {
		t.Fatalf("after SetMaxIdle(3): Idle %d", p.Idle())
	}
	p.Close()
}

func TestPoolExpiry(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{IdleTimeout: 50 * time.Millisecond})
	old, sOld := newStub("")
	p.Put("a", old)
	time.Sleep(80 * time.Millisecond)
	fresh, sFresh := newStub("")
	p.Put("b", fresh)
	// Get expires what is too old, for every account.
	if c := p.Get("a", ""); c != nil {
		t.Fatal("Get returned an expired connection")
	}
	if !sOld.closed.Load() {
		t.Error("the expired connection was not closed")
	}
	if p.Idle() != 1 || sFresh.closed.Load() {
		t.Fatalf("Idle %d, fresh closed %v", p.Idle(), sFresh.closed.Load())
	}
	if c := p.Get("b", ""); c != fresh {
		t.Fatal("the fresh connection was not returned")
	}
}

// TestPoolRun checks the janitor expires idle connections without a Get,
// and closes the pool (logging out what is idle) when its context ends.
func TestPoolRun(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{IdleTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	c1, s1 := newStub("")
	p.Put("a", c1)
	// The janitor ticks every max(IdleTimeout/4, 1s).
	deadline := time.Now().Add(3 * time.Second)
	for p.Idle() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the janitor did not expire an idle connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !s1.closed.Load() {
		t.Error("the expired connection was not closed")
	}

	c2, s2 := newStub("")
	p.Put("a", c2)
	cancel()
	<-done
	if !s2.closed.Load() {
		t.Error("Close did not close an idle connection")
	}
	s2.mu.Lock()
	wrote := string(s2.wrote)
	s2.mu.Unlock()
	if want := " LOGOUT\r\n"; len(wrote) < len(want) || wrote[len(wrote)-len(want):] != want {
		t.Errorf("Close wrote %q, want a LOGOUT", wrote)
	}
	if p.Idle() != 0 {
		t.Errorf("Idle %d after Close", p.Idle())
	}
	// A connection given back after Close is closed.
	c3, s3 := newStub("")
	p.Put("a", c3)
	if p.Idle() != 0 || !s3.closed.Load() {
		t.Errorf("Put after Close: Idle %d, closed %v", p.Idle(), s3.closed.Load())
	}
}

// TestPoolWaitForReturn: a command of an account whose budget is used up
// by busy connections waits for one to come back (GetOrWait), and a dial
// waiting for room in the budget is woken by a Put too, so that it can
// reclaim the idle connection instead of waiting for one to close. Without
// these, a burst of commands on one account stalled for seconds (imaptest's
// stress mode through the proxy: 7-13 s of 30 with no command done).
func TestPoolWaitForReturn(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{MaxConnsPerAccount: 1})
	c, w := p.GetOrWait("a", "")
	if c != nil || w == nil {
		t.Fatal("empty pool: want a channel to wait on")
	}
	select {
	case <-w:
		t.Fatal("woken before any Put")
	default:
	}
	busy, _ := newStub("")
	p.Put("b", busy)
	select {
	case <-w:
		t.Fatal("woken by another account's Put")
	default:
	}
	back, _ := newStub("")
	p.Put("a", back)
	select {
	case <-w:
	case <-time.After(time.Second):
		t.Fatal("not woken by the account's Put")
	}
	if got, w := p.GetOrWait("a", ""); got != back || w != nil {
		t.Fatalf("after the Put: %v, %v", got, w)
	}

	// A dial waiting for room: the one slot is used by a connection that
	// is busy, then given back idle; the waiting Acquire reclaims it.
	release, err := p.Budget().Acquire(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	held, _ := newStub("")
	done := make(chan error, 1)
	go func() {
		r, err := p.Budget().Acquire(context.Background(), "a")
		if err == nil {
			r()
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // the Acquire is waiting (best effort; the test holds either way)
	held.onClose.Store(&release)      // closing it gives the slot back
	p.Put("a", held)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a dial waiting for room was not woken by the Put of an idle connection")
	}
	p.Close()
}
