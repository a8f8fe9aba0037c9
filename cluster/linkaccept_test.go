package cluster

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// emfileListener fails one Accept with EMFILE (the process at its
// open-file limit, which a busy node reaches: docs/cluster.md sizes a node
// by it), then accepts normally again.
type emfileListener struct {
	net.Listener
	fail atomic.Bool
}

func (l *emfileListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil && l.fail.CompareAndSwap(true, false) {
		c.Close()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return c, err
}

// TestLinkListenerSurvivesEMFILE: one failed Accept of the internal
// link listener (EMFILE: out of file descriptors for a moment) ends
// Node.Serve for good, while the node goes on renewing its lease and
// owning its accounts. Every later login of an account it owns, at any
// other node, is answered NO [UNAVAILABLE] ("owner unreachable") for as
// long as the account has a session there: the logins are refused
// forever, not for a moment. The proxy's client listener backs off and
// keeps accepting on the same error (proxy/server.go).
func TestLinkListenerSurvivesEMFILE(t *testing.T) {
	url := newDB(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &emfileListener{Listener: inner}
	cfg := Config{DB: url, Node: "a", Listen: ln.Addr().String(), Secret: []byte("a cluster secret for the tests, 48 bytes long..."),
		LeaseTTL: time.Second, ReleaseAfter: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	an, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &testNode{Node: an, host: newFakeHost(), ln: ln, done: make(chan error, 1)}
	an.Attach(a.host)
	go func() { a.done <- an.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		an.Close(ctx)
		<-a.done
	})
	b := startNode(t, url, "b", nil)
	waitRenewals(t, a, b)

	// u is a's: a session of it stays there.
	_, release, err := login(t, a, "u")
	if err != nil || release == nil {
		t.Fatalf("login of u on a: %v", err)
	}
	defer release()
	if c, _, err := login(t, b, "u"); err != nil || c == nil {
		t.Fatalf("handed-over login of u through b before the fault: %v", err)
	} else {
		c.Close()
	}

	// One accept fails with EMFILE: that hand-off is lost, as expected.
	ln.fail.Store(true)
	if c, _, err := login(t, b, "u"); err == nil {
		c.Close()
	}
	select {
	case err := <-a.done:
		a.done <- err
		t.Logf("a's link server returned after one EMFILE: %v", err)
	case <-time.After(500 * time.Millisecond):
	}

	// The descriptors are back: later logins must reach a again.
	deadline := time.Now().Add(5 * time.Second)
	var lerr error
	for time.Now().Before(deadline) {
		var c net.Conn
		c, _, lerr = login(t, b, "u")
		if lerr == nil {
			if c != nil {
				c.Close()
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := a.Stats()
	t.Fatalf("5 s after one failed accept on a's link listener, logins of u (owned by a, which is live: fenced %v, owned %d) "+
		"through b are still refused: %v", st.Fenced, st.Owned, lerr)
}
