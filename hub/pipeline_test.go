package hub

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// scriptServer is an IMAP server just capable enough for a watcher, which
// checks how the watcher leaves IDLE: after DONE it waits a while before
// answering, and notes which commands arrive meanwhile. A watcher that
// pipelines them after DONE sends them before IDLE's tagged OK.
type scriptServer struct {
	t  *testing.T
	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	uids    []uint32      // the mailbox
	conn    net.Conn      // the watcher's connection
	idling  chan struct{} // gets a value when the watcher starts IDLE
	leaves  chan []string // per DONE: the commands that came before its OK
	pending []string      // lines read ahead while waiting after DONE
	closed  chan struct{} // closed when the test ends
	waitFor time.Duration // how long to wait after DONE
	// hold, when set, makes the server stop at the next IDLE: it sends
	// on held and waits for the lines to send before "+ idling".
	hold   bool
	held   chan struct{}
	resume chan []string
}

func startScriptServer(t *testing.T, uids ...uint32) *scriptServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptServer{t: t, ln: ln, uids: uids, idling: make(chan struct{}, 10), leaves: make(chan []string, 10),
		closed: make(chan struct{}), waitFor: 300 * time.Millisecond, held: make(chan struct{}, 1), resume: make(chan []string, 1)}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		close(s.closed)
		ln.Close()
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *scriptServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conn = c
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.serve(c)
		}()
	}
}

// push writes an untagged response to the watcher's connection.
func (s *scriptServer) push(line string) {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	io.WriteString(c, line+"\r\n")
}

func (s *scriptServer) serve(c net.Conn) {
	lines := make(chan string)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(lines)
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			select {
			case lines <- strings.TrimRight(l, "\r\n"):
			case <-s.closed:
				return
			}
		}
	}()
	w := bufio.NewWriter(c)
	send := func(format string, args ...any) { fmt.Fprintf(w, format+"\r\n", args...) }
	send("* OK [CAPABILITY IMAP4rev1 IDLE] script ready")
	w.Flush()
	idleTag := ""
	next := func() (string, bool) {
		if len(s.pending) > 0 {
			l := s.pending[0]
			s.pending = s.pending[1:]
			return l, true
		}
		l, ok := <-lines
		return l, ok
	}
	for {
		line, ok := next()
		if !ok {
			return
		}
		if line == "DONE" {
			// Wait, and note what the watcher sends before the OK.
			var ahead []string
			timer := time.After(s.waitFor)
		wait:
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						break wait
					}
					ahead = append(ahead, l)
				case <-timer:
					break wait
				}
			}
			s.pending = append(s.pending, ahead...)
			cmds := make([]string, len(ahead))
			for i, l := range ahead {
				_, cmds[i], _ = strings.Cut(l, " ")
			}
			s.leaves <- cmds
			send("%s OK Idle completed.", idleTag)
			w.Flush()
			continue
		}
		tag, cmd, _ := strings.Cut(line, " ")
		verb, args, _ := strings.Cut(cmd, " ")
		s.mu.Lock()
		uids := append([]uint32(nil), s.uids...)
		s.mu.Unlock()
		switch strings.ToUpper(verb) {
		case "LOGIN":
			send("%s OK Logged in.", tag)
		case "CAPABILITY":
			send("* CAPABILITY IMAP4rev1 IDLE")
			send("%s OK done", tag)
		case "EXAMINE", "SELECT":
			send("* %d EXISTS", len(uids))
			send("* OK [UIDVALIDITY 7] ok")
			send("%s OK [READ-ONLY] done", tag)
		case "UID":
			// UID FETCH n:* (FLAGS)
			from, _, _ := strings.Cut(strings.TrimPrefix(args, "FETCH "), ":")
			n, _ := strconv.Atoi(from)
			for i, u := range uids {
				if u >= uint32(n) || i == len(uids)-1 {
					send("* %d FETCH (UID %d FLAGS ())", i+1, u)
				}
			}
			send("%s OK Fetch completed.", tag)
		case "NOOP":
			send("%s OK NOOP completed.", tag)
		case "IDLE":
			idleTag = tag
			s.mu.Lock()
			hold := s.hold
			s.hold = false
			s.mu.Unlock()
			if hold {
				s.held <- struct{}{}
				select {
				case before := <-s.resume:
					for _, l := range before {
						send("%s", l)
					}
				case <-s.closed:
					return
				}
			}
			send("+ idling")
			w.Flush()
			s.idling <- struct{}{}
			continue
		case "LOGOUT":
			send("* BYE")
			send("%s OK bye", tag)
			w.Flush()
			return
		default:
			send("%s BAD what?", tag)
		}
		w.Flush()
	}
}

func (s *scriptServer) dial() DialFunc {
	cfg := &upstream.Config{Addr: s.ln.Addr().String(), Timeout: 5 * time.Second}
	return func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, cfg, "alice", "alicepass")
	}
}

func (s *scriptServer) waitIdle() {
	s.t.Helper()
	select {
	case <-s.idling:
	case <-time.After(5 * time.Second):
		s.t.Fatal("the watcher did not enter IDLE")
	}
}

func (s *scriptServer) nextLeave() []string {
	s.t.Helper()
	select {
	case l := <-s.leaves:
		return l
	case <-time.After(5 * time.Second):
		s.t.Fatal("the watcher did not leave IDLE")
		return nil
	}
}

// TestLeaveIdlePipelined: the commands that follow DONE (UID FETCH for a
// new message, NOOP for a Sync, both) go out with it, before IDLE's tagged
// OK, so that they cost one round trip, not two; and the results are
// right.
func TestLeaveIdlePipelined(t *testing.T) {
	s := startScriptServer(t, 10, 11)
	h := New(Config{})
	defer h.Close()
	news := make(chan struct{}, 100)
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, s.dial(), func() {
		select {
		case news <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	s.waitIdle()

	hasUID := func(uid uint32) bool {
		for _, u := range sub.State().Snapshot().UIDs {
			if u == uid {
				return true
			}
		}
		return false
	}

	// A new message: DONE and UID FETCH together.
	s.mu.Lock()
	s.uids = append(s.uids, 12)
	s.mu.Unlock()
	s.push("* 3 EXISTS")
	if got := s.nextLeave(); len(got) != 1 || got[0] != "UID FETCH 12:* (FLAGS)" {
		t.Fatalf("sent with DONE: %q, want the UID FETCH", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !hasUID(12) {
		if time.Now().After(deadline) {
			t.Fatalf("UID 12 not in the state: %v", sub.State().Snapshot().UIDs)
		}
		select {
		case <-news:
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.waitIdle()

	// A Sync: DONE and NOOP together; Sync returns after the NOOP. The
	// server holds the next IDLE back for the last case.
	s.mu.Lock()
	s.hold = true
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- sub.Sync(context.Background()) }()
	if got := s.nextLeave(); len(got) != 1 || got[0] != "NOOP" {
		t.Fatalf("sent with DONE for a Sync: %q, want NOOP", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Both: a Sync is waiting when a new message is announced: DONE, NOOP
	// and UID FETCH together, and the Sync returns with the new message
	// in the state. (The request is made while the watcher waits for
	// "+ idling", which the server sends after the EXISTS.)
	select {
	case <-s.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not send IDLE again")
	}
	s.mu.Lock()
	s.uids = append(s.uids, 13)
	s.mu.Unlock()
	go func() { done <- sub.Sync(context.Background()) }()
	for !sub.box.pendingSyncs() {
		time.Sleep(time.Millisecond)
	}
	s.resume <- []string{"* 4 EXISTS"}
	if got := s.nextLeave(); len(got) != 2 || got[0] != "NOOP" || got[1] != "UID FETCH 13:* (FLAGS)" {
		t.Fatalf("sent with DONE: %q, want NOOP and the UID FETCH", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Sync was not answered")
	}
	if !hasUID(13) {
		t.Fatalf("Sync answered before UID 13 was in the state: %v", sub.State().Snapshot().UIDs)
	}
	s.waitIdle()
}
