package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// BenchmarkFanOut measures the hub's fan-out of one change to 10,000
// sessions idling in the same mailbox: the change is applied to the shared
// state, the hub notifies every subscription (each interrupts its session's
// read), and every session then writes its client's untagged response into
// a connection that discards it. All of it runs on one goroutine, so ns/op
// is the CPU the proxy spends on one push to 10,000 clients; the socket
// writes (one syscall per session) are not included.
func BenchmarkFanOut(b *testing.B) {
	for _, kind := range []string{"new-message", "flag-change"} {
		b.Run(kind, func(b *testing.B) { benchFanOut(b, kind, 10000) })
	}
}

func benchFanOut(b *testing.B, kind string, n int) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	if err := up.AddUser("u", "p"); err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		msg := fmt.Sprintf("Subject: %d\r\n\r\nHello.\r\n", i)
		if err := up.Append("u", "INBOX", []imap.Flag{imap.FlagSeen}, []byte(msg)); err != nil {
			b.Fatal(err)
		}
	}
	srv, err := NewServer(Config{
		Upstream: upstream.Config{Addr: up.Addr, Timeout: 10 * time.Second},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	dial := func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, &srv.cfg.Upstream, "u", "p")
	}

	conn := &discardConn{}
	sessions := make([]*Session, n)
	for i := range sessions {
		s := newSession(srv, conn, false)
		m := &selectedMailbox{name: "INBOX"}
		sub, err := srv.hub.Watch(context.Background(), hub.Key{Account: "u", Mailbox: "INBOX"}, dial, s.notify(m))
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close()
		m.sub, m.state = sub, sub.State()
		snap := m.state.Snapshot()
		m.view, m.pos = snap.UIDs, snap.Highest
		s.mbox, s.state = m, StateSelected
		s.SetUpdates(UpdatesAll)
		sessions[i] = s
	}
	sub := sessions[0].mbox.sub
	uid := uint32(100)
	flags := [2][]string{{`\Seen`, `\Flagged`}, {`\Seen`}}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		var c syncstate.Changes
		if kind == "new-message" {
			// As the watcher would: the new message goes into the
			// state, then every subscriber hears of it (Subscription.Own
			// changes only known messages' flags; giving the new one
			// its flags makes it notify).
			uid++
			sub.State().Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uid}}})
			c.Upsert = []syncstate.Message{{UID: uid, Flags: []string{`\Seen`}}}
		} else {
			c.Upsert = []syncstate.Message{{UID: 1, Flags: flags[i%2]}}
		}
		i++
		conn.written.Store(0)
		sub.Own(context.Background(), c.Upsert[0].UID, c.Upsert[0].Flags) // the hub: state change, then notify every session
		for _, s := range sessions {
			if err := s.PushNow(); err != nil {
				b.Fatal(err)
			}
		}
		if w := conn.writes.Swap(0); w != int64(n) {
			b.Fatalf("%d sessions wrote, want %d", w, n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/session")
	b.ReportMetric(float64(conn.written.Load())/float64(n), "B-written/session")
}

// discardConn is a client connection that swallows what the session
// writes.
type discardConn struct {
	writes, written atomic.Int64
}

func (c *discardConn) Read([]byte) (int, error) { return 0, net.ErrClosed }
func (c *discardConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	c.written.Add(int64(len(p)))
	return len(p), nil
}
func (c *discardConn) Close() error { return nil }
func (c *discardConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143}
}
func (c *discardConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000}
}
func (c *discardConn) SetDeadline(time.Time) error      { return nil }
func (c *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (c *discardConn) SetWriteDeadline(time.Time) error { return nil }
