package conformance

import (
	"bufio"
	"io"
	"net"
	"sync"
	"testing"
)

// relay stands between the suite and a real server, line by line, to make
// of it a server that is just as correct but makes other legal choices
// (rewrite: the order of a SEARCH response's numbers), or one that breaks
// a connection in the middle of a scenario (cut). Literal data goes
// through as lines too, which the suite's small test messages allow.
type relay struct {
	ln       net.Listener
	upstream string
	// rewrite, if set, makes for each connection the function that
	// returns what the client gets for a line the server sent (CRLF
	// included; "" holds the line back, for a rewrite that reorders).
	rewrite func() func(line string) string
	// cut, if set, is asked about every line a client sends: true closes
	// that connection instead of forwarding the line.
	cut func(line string) bool

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

// startRelay listens on a local port and relays every connection to
// upstream until the test ends.
func startRelay(t *testing.T, upstream string, rewrite func(string) string, cut func(string) bool) *relay {
	t.Helper()
	var each func() func(string) string
	if rewrite != nil {
		each = func() func(string) string { return rewrite }
	}
	return startRelayEach(t, upstream, each, cut)
}

// startRelayEach is startRelay with a rewrite of each connection's own,
// made by rewrite when the connection is accepted: one that holds lines
// back keeps its state per connection.
func startRelayEach(t *testing.T, upstream string, rewrite func() func(string) string, cut func(string) bool) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, upstream: upstream, rewrite: rewrite, cut: cut}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", r.upstream)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		r.conns = append(r.conns, c, u)
		r.mu.Unlock()
		r.wg.Add(2)
		var rw func(string) string
		if r.rewrite != nil {
			rw = r.rewrite()
		}
		go r.pipe(u, c, rw, nil)
		go r.pipe(c, u, nil, r.cut)
	}
}

// pipe copies lines from src to dst; closing both ends when either
// direction ends makes the other one end too.
func (r *relay) pipe(src, dst net.Conn, rewrite func(string) string, cut func(string) bool) {
	defer r.wg.Done()
	defer src.Close()
	defer dst.Close()
	br := bufio.NewReader(src)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			if cut != nil && cut(line) {
				return
			}
			if rewrite != nil {
				line = rewrite(line)
			}
			if _, werr := io.WriteString(dst, line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *relay) close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
