package proxy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// midPush is a ChangeReporter whose BatchDone runs during a push, after
// the session took its snapshot of the mailbox: what it does there is a
// change that comes while the session pushes.
type midPush struct{ during func() }

func (*midPush) Name() string                                                      { return "midpush" }
func (*midPush) FetchItems(*Session, uint32, bool) []byte                          { return nil }
func (*midPush) ExpungesHeld(*Session) []byte                                      { return nil }
func (*midPush) ReportExpunged(_ *Session, b []byte, _, _ []uint32) ([]byte, bool) { return b, false }
func (m *midPush) BatchDone(_ *Session, _ *Exchange, b []byte, _ bool) []byte {
	if f := m.during; f != nil {
		m.during = nil
		f()
	}
	return b
}

// recordConn is a client connection that keeps what the session writes.
type recordConn struct {
	discardConn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *recordConn) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// TestPushChangeDuringPush: a change the hub records while an idling
// session pushes the previous one (after its snapshot) must leave the
// session woken, so that its wait for the client's next line is cut short
// and the change pushed at once. (Found by the cluster property test: a
// client STORE of three messages reached an IDLE session as two pushes,
// the third only after DONE.)
func TestPushChangeDuringPush(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := up.Append("u", "INBOX", nil, fmt.Appendf(nil, "Subject: %d\r\n\r\nHello.\r\n", i)); err != nil {
			t.Fatal(err)
		}
	}
	ext := &midPush{}
	srv, err := NewServer(Config{
		Upstream:   upstream.Config{Addr: up.Addr, Timeout: 10 * time.Second},
		Logger:     slog.New(slog.DiscardHandler),
		Extensions: []Extension{ext},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	dial := func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, &srv.cfg.Upstream, "u", "p")
	}
	conn := &recordConn{}
	s := newSession(srv, conn, false)
	m := &selectedMailbox{name: "INBOX"}
	sub, err := srv.hub.Watch(context.Background(), hub.Key{Account: "u", Mailbox: "INBOX"}, dial, s.notify(m))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	m.sub, m.state = sub, sub.State()
	snap := m.state.Snapshot()
	m.view, m.pos = snap.UIDs, snap.Highest
	s.mbox, s.state = m, StateSelected
	s.SetUpdates(UpdatesAll)

	ctx := context.Background()
	ext.during = func() {
		// UID 2 changes while UID 1's change is being pushed.
		if _, _, err := sub.Own(ctx, 2, []string{string(imap.FlagFlagged)}); err != nil {
			t.Error(err)
		}
	}
	if _, _, err := sub.Own(ctx, 1, []string{string(imap.FlagSeen)}); err != nil {
		t.Fatal(err)
	}
	if err := s.pushBetween(); err != nil { // as readLine does once woken
		t.Fatal(err)
	}
	if !strings.Contains(conn.String(), "* 1 FETCH (FLAGS (\\Seen))") {
		t.Fatalf("first change not pushed: %q", conn.String())
	}
	// readLine's wait: it cuts the read short only if the session is woken.
	if !s.wake.Load() {
		t.Fatalf("the change made during the push left the session unwoken: its client hears of it only after its next line; pushed %q", conn.String())
	}
	if err := s.pushBetween(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conn.String(), "* 2 FETCH (FLAGS (\\Flagged))") {
		t.Fatalf("second change not pushed: %q", conn.String())
	}
}
