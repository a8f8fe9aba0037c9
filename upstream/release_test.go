package upstream

import (
	"testing"
)

// TestReleaseDropsWriteBuffer: a connection given back to the pool holds
// no write buffer (thousands of pooled connections and IDLE watchers
// would hold 4 KiB each); the next write takes one and reaches the wire
// as before. A buffer holding unflushed bytes is kept.
func TestReleaseDropsWriteBuffer(t *testing.T) {
	noLeaks(t)
	p := NewPool(PoolConfig{})
	c, sc := newStub("")
	c.Writer().WriteString("a1 NOOP\r\n")
	c.Release()
	if c.w == nil {
		t.Fatal("Release dropped a write buffer holding unflushed bytes")
	}
	if err := c.Writer().Flush(); err != nil {
		t.Fatal(err)
	}
	p.Put("a", c)
	if c.w != nil {
		t.Fatal("a pooled connection holds a write buffer")
	}
	if got := p.Get("a", ""); got != c {
		t.Fatal("Get did not return the pooled connection")
	}
	w := c.Writer()
	w.WriteString("a2 NOOP\r\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if got, want := string(sc.wrote), "a1 NOOP\r\na2 NOOP\r\n"; got != want {
		t.Fatalf("wrote %q, want %q", got, want)
	}
}
