package accountwatch

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func box(name string, uv, msgs uint32, sub bool) Mailbox {
	return Mailbox{Name: name, Delim: "/", Selectable: true, Subscribed: sub,
		Status: Status{Messages: msgs, UIDNext: msgs + 1, UIDValidity: uv}}
}

func kinds(evs []Event) []string {
	var out []string
	for _, e := range evs {
		s := e.Kind.String() + " " + e.Mailbox.Name
		if e.OldName != "" {
			s += " from " + e.OldName
		}
		out = append(out, s)
	}
	return out
}

// TestDiff: each kind of difference between two polls, and a rename
// recognised by its UIDVALIDITY.
func TestDiff(t *testing.T) {
	old := map[string]Mailbox{
		"INBOX": box("INBOX", 1, 3, true),
		"a":     box("a", 2, 0, false),
		"b":     box("b", 3, 5, true),
		"gone":  box("gone", 4, 0, false),
	}
	flagged := box("INBOX", 1, 3, true)
	flagged.Status.Unseen = 2
	next := map[string]Mailbox{
		"INBOX": flagged,              // flags
		"a":     box("a", 2, 1, true), // subscribed, messages
		"b2":    box("b2", 3, 5, true),
		"new":   box("new", 9, 0, true),
	}
	got := kinds(diff(old, next))
	want := []string{"renamed b2 from b", "deleted gone", "created new", "subscribed new", "flags INBOX", "subscribed a", "messages a"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("diff:\n got  %q\n want %q", got, want)
	}
	if evs := diff(next, next); len(evs) != 0 {
		t.Fatalf("no change: %q", kinds(evs))
	}
}

// TestWatchAndPoke: against go-imap's in-memory server, one watcher per
// account, events after a poke, nothing for another account.
func TestWatchAndPoke(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.AddUser("alice", "a")
	up.AddUser("bob", "b")
	dial := func(user, pass string) DialFunc {
		return func(ctx context.Context) (*upstream.Conn, error) {
			c, err := upstream.Dial(ctx, &upstream.Config{Addr: up.Addr, Timeout: 5 * time.Second})
			if err != nil {
				return nil, err
			}
			if _, err := c.Login(ctx, user, pass); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		}
	}
	m := New(Config{PollInterval: time.Hour, Grace: 10 * time.Millisecond})
	defer m.Close()
	var mu sync.Mutex
	var got []string
	events := make(chan struct{}, 10)
	fn := func(evs []Event) {
		mu.Lock()
		got = append(got, kinds(evs)...)
		mu.Unlock()
		events <- struct{}{}
	}
	ctx := context.Background()
	s1, err := m.Watch(ctx, "alice", dial("alice", "a"), WatchOptions{}, fn)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := m.Watch(ctx, "alice", dial("alice", "a"), WatchOptions{}, func([]Event) {})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := m.Watch(ctx, "bob", dial("bob", "b"), WatchOptions{}, fn)
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Watchers(); n != 2 {
		t.Fatalf("%d watchers for two accounts", n)
	}
	if mbs := s1.Mailboxes(); len(mbs) != 1 || mbs[0].Name != "INBOX" {
		t.Fatalf("initial mailboxes %+v", mbs)
	}
	direct, err := imapclient.DialInsecure(up.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := direct.Login("alice", "a").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := direct.Create("Work", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	m.Poke("alice")
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no event after a poke")
	}
	up.Append("alice", "Work", nil, []byte("Subject: x\r\n\r\nx\r\n"))
	m.Poke("alice", "Work")
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no event after a poke of one mailbox")
	}
	mu.Lock()
	if want := []string{"created Work", "messages Work"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	mu.Unlock()
	s1.Close()
	s2.Close()
	sb.Close()
	deadline := time.Now().Add(5 * time.Second)
	for m.Watchers() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := m.Watchers(); n != 0 {
		t.Fatalf("%d watchers after every subscriber left", n)
	}
}
