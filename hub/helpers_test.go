package hub

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// relay forwards TCP connections to an upstream and lets a test cut them,
// refuse new ones (the upstream "down"), and count the live ones.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]net.Conn // client side -> upstream side
	down   bool
	idling map[net.Conn]bool // the upstream said "+ idling" and the client has not sent since
	wg     sync.WaitGroup
	dials  atomic.Int32
	// slowIdle delays each "+ idling" continuation by this much (the
	// upstream is slow to accept IDLE).
	slowIdle atomic.Int64
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, conns: map[net.Conn]net.Conn{}, idling: map[net.Conn]bool{}}
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
		r.dials.Add(1)
		r.mu.Lock()
		down := r.down
		r.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns[c] = u
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(c, u, c, true)
		go r.pipe(u, c, c, false)
	}
}

func (r *relay) pipe(dst, src, key net.Conn, fromUpstream bool) {
	defer r.wg.Done()
	w := io.Writer(&watchWriter{r: r, key: key, fromUpstream: fromUpstream, dst: dst})
	if os.Getenv("HUB_TRACE") != "" {
		io.Copy(w, io.TeeReader(src, traceWriter{!fromUpstream}))
	} else {
		io.Copy(w, src)
	}
	dst.Close()
	src.Close()
	r.mu.Lock()
	delete(r.conns, key)
	delete(r.idling, key)
	r.mu.Unlock()
}

// watchWriter forwards bytes and notes when a connection enters IDLE.
type watchWriter struct {
	r            *relay
	key          net.Conn
	fromUpstream bool
	dst          io.Writer
}

func (w *watchWriter) Write(p []byte) (int, error) {
	if d := time.Duration(w.r.slowIdle.Load()); d > 0 && w.fromUpstream && bytes.Contains(p, []byte("+ idling\r\n")) {
		time.Sleep(d)
	}
	w.r.mu.Lock()
	if w.fromUpstream {
		if bytes.HasSuffix(p, []byte("+ idling\r\n")) {
			w.r.idling[w.key] = true
		}
	} else {
		w.r.idling[w.key] = false
	}
	w.r.mu.Unlock()
	return w.dst.Write(p)
}

// waitIdle waits until every relayed connection is in IDLE. go-imap's
// server does not report changes queued while a connection was between
// commands when IDLE starts (only at its next command), so a test that
// changes the mailbox right after the watcher left IDLE (to fetch new
// messages) waits for it to be back first. go-imap also sends "+ idling"
// before it starts listening for changes, hence the pause at the end.
func (r *relay) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		all := len(r.conns) > 0
		for c := range r.conns {
			all = all && r.idling[c]
		}
		r.mu.Unlock()
		if all {
			time.Sleep(50 * time.Millisecond)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher's connection did not return to IDLE")
		}
		time.Sleep(time.Millisecond)
	}
}

// cut closes every relayed connection; setDown(true) refuses new ones.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c, u := range r.conns {
		c.Close()
		u.Close()
	}
}

func (r *relay) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// active returns the number of live relayed connections.
func (r *relay) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func (r *relay) close() {
	r.ln.Close()
	r.cut()
	r.wg.Wait()
}

// env is an in-memory upstream (go-imap's imapmemserver) reached through
// a relay.
type env struct {
	t     *testing.T
	mem   *memupstream.Server
	relay *relay
	// noIdle leads to relay through a stripper that removes IDLE from
	// the capability lists (started on first use).
	noIdle string
}

func newEnv(t *testing.T, users ...string) *env {
	t.Helper()
	mem, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	for _, u := range users {
		if err := mem.AddUser(u, u+"pass"); err != nil {
			t.Fatal(err)
		}
	}
	return &env{t: t, mem: mem, relay: startRelay(t, mem.Addr)}
}

// dial returns a watcher's DialFunc for user through the relay. With noIdle
// the connection pretends the upstream lacks IDLE, so the watcher polls.
func (e *env) dial(user string, noIdle bool) DialFunc {
	addr := e.relay.addr()
	if noIdle {
		if e.noIdle == "" {
			e.noIdle = startIdleStripper(e.t, addr)
		}
		addr = e.noIdle
	}
	cfg := &upstream.Config{Addr: addr, Timeout: 5 * time.Second}
	return func(ctx context.Context) (*upstream.Conn, error) {
		c, err := upstream.DialLogin(ctx, cfg, user, user+"pass")
		if err != nil {
			return nil, err
		}
		if noIdle && c.Caps().Has("IDLE") {
			return nil, fmt.Errorf("the stripper let IDLE through: %v", c.Caps())
		}
		return c, nil
	}
}

// client returns a direct connection to the upstream (not through the
// relay) with mailbox selected, for changes made "by someone else".
func (e *env) client(user, mailbox string) *imapclient.Client {
	e.t.Helper()
	c, err := imapclient.DialInsecure(e.mem.Addr, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	if err := c.Login(user, user+"pass").Wait(); err != nil {
		e.t.Fatal(err)
	}
	if mailbox != "" {
		if _, err := c.Select(mailbox, nil).Wait(); err != nil {
			e.t.Fatal(err)
		}
	}
	return c
}

func (e *env) appendMsg(user, mailbox, subject string, flags ...imap.Flag) {
	e.t.Helper()
	msg := fmt.Sprintf("From: a@example.org\r\nSubject: %s\r\n\r\nbody\r\n", subject)
	if err := e.mem.Append(user, mailbox, flags, []byte(msg)); err != nil {
		e.t.Fatal(err)
	}
}

func store(t *testing.T, c *imapclient.Client, uid uint32, op imap.StoreFlagsOp, flags ...imap.Flag) {
	t.Helper()
	if err := c.Store(imap.UIDSetNum(imap.UID(uid)), &imap.StoreFlags{Op: op, Silent: true, Flags: flags}, nil).Close(); err != nil {
		t.Fatal(err)
	}
}

func expunge(t *testing.T, c *imapclient.Client, uid uint32) {
	t.Helper()
	store(t, c, uid, imap.StoreFlagsAdd, imap.FlagDeleted)
	if err := c.UIDExpunge(imap.UIDSetNum(imap.UID(uid))).Close(); err != nil {
		t.Fatal(err)
	}
}

func testHub(t *testing.T, cfg Config) *Hub {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
		if testing.Verbose() && os.Getenv("HUB_TEST_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	h := New(cfg)
	t.Cleanup(h.Close)
	return h
}

// notifier counts notifications and lets a test wait for the next one.
type notifier struct {
	n  atomic.Int32
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{}, 1)} }

func (n *notifier) notify() {
	n.n.Add(1)
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds, checking after each notification (and
// every 50 ms, so a missing notification shows as a failure of the
// notification count rather than a hang).
func waitFor(t *testing.T, n *notifier, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-n.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// since returns the state's changes after modseq as "uid:flags" or
// "uid:expunged" strings.
func since(st *syncstate.Mailbox, modseq uint64) []string {
	var out []string
	st.ChangesSince(modseq, func(c syncstate.Change) {
		if c.Expunged {
			out = append(out, fmt.Sprintf("%d:expunged", c.UID))
		} else {
			out = append(out, fmt.Sprintf("%d:%s", c.UID, strings.Join(c.Flags, " ")))
		}
	})
	return out
}

type traceWriter struct{ up bool }

func (w traceWriter) Write(p []byte) (int, error) {
	dir := "S: "
	if w.up {
		dir = "C: "
	}
	fmt.Fprintf(os.Stderr, "%s%q\n", dir, p)
	return len(p), nil
}

// startIdleStripper forwards connections to target and removes the word
// IDLE from the capability lists the upstream sends, so that a watcher
// polls. (The parsed capability sets are shared between connections and
// must not be edited instead.) Cutting target's relay ends the stripped
// connections too.
func startIdleStripper(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(u, c)
				u.Close()
				c.Close()
			}()
			go func() {
				defer wg.Done()
				defer c.Close()
				defer u.Close()
				br := bufio.NewReader(u)
				for {
					line, err := br.ReadString('\n')
					if strings.HasPrefix(line, "* CAPABILITY ") || strings.Contains(line, "[CAPABILITY ") {
						line = strings.Replace(line, " IDLE", "", 1)
					}
					if _, werr := io.WriteString(c, line); werr != nil || err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
