package accountwatch

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/upstream"
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
		"c":     box("c", 11, 1, false),
	}
	flagged := box("INBOX", 1, 3, true)
	flagged.Status.Unseen = 2
	next := map[string]Mailbox{
		"INBOX": flagged,              // flags
		"a":     box("a", 2, 1, true), // subscribed, messages
		"b2":    box("b2", 3, 5, true),
		"c2":    box("c2", 11, 2, false), // renamed from c, and given mail
		"new":   box("new", 9, 0, true),
		"filed": box("filed", 10, 2, false), // made with mail in it: its messages are new too
	}
	got := kinds(diff(old, next))
	want := []string{"renamed b2 from b", "renamed c2 from c", "messages c2", "deleted gone", "created filed", "messages filed", "created new", "subscribed new", "flags INBOX", "subscribed a", "messages a"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("diff:\n got  %q\n want %q", got, want)
	}
	if evs := diff(next, next); len(evs) != 0 {
		t.Fatalf("no change: %q", kinds(evs))
	}
}

// TestDiffNoselect: a mailbox deleted while its name stays as a \Noselect
// parent is deleted, and one created under a \Noselect name is created,
// with its mail; neither is a change of counters (a \Noselect name has
// none).
func TestDiffNoselect(t *testing.T) {
	noselect := func(name string) Mailbox {
		return Mailbox{Name: name, Delim: "/", Attrs: []string{`\Noselect`, `\HasChildren`}}
	}
	old := map[string]Mailbox{"p": box("p", 1, 2, false), "q": noselect("q"), "r": noselect("r")}
	next := map[string]Mailbox{"p": noselect("p"), "q": box("q", 2, 0, false), "r": box("r", 3, 1, false)}
	want := []string{"deleted p", "created q", "created r", "messages r"}
	if got := kinds(diff(old, next)); !reflect.DeepEqual(got, want) {
		t.Fatalf("diff:\n got  %q\n want %q", got, want)
	}
	// Counters not known before (a STATUS that failed) are news only
	// where there is mail.
	unknown := func(name string) Mailbox { return Mailbox{Name: name, Delim: "/", Selectable: true} }
	old = map[string]Mailbox{"u": unknown("u"), "v": unknown("v")}
	next = map[string]Mailbox{"u": box("u", 5, 0, false), "v": box("v", 6, 3, false)}
	if got, want := kinds(diff(old, next)), []string{"messages v"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("diff of unknown counters:\n got  %q\n want %q", got, want)
	}
}

// TestWatchAndPoke: against go-imap's in-memory server, one watcher per
// account, events after a poke, nothing for another account.
func TestWatchAndPoke(t *testing.T) {
	up := memupstream.StartForTest(t, memupstream.Options{}, "alice", "a", "bob", "b")
	dial := func(user, pass string) DialFunc { return loginDial(up.Addr, user, pass) }
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
	createDirectly(t, up.Addr, "alice", "a", "Work")
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

// TestPokesDoNotDelayFullPolls: partial polls (a session's own change in
// INBOX pokes INBOX alone) more often than PollInterval must not put off
// the full poll that finds changes elsewhere: a change in another mailbox
// is seen within PollInterval. (The interval used to restart after every
// poll, partial ones included.)
func TestPokesDoNotDelayFullPolls(t *testing.T) {
	up := memupstream.StartForTest(t, memupstream.Options{}, "alice", "a")
	createDirectly(t, up.Addr, "alice", "a", "Work")
	dial := loginDial(up.Addr, "alice", "a")
	const interval = 400 * time.Millisecond
	m := New(Config{PollInterval: interval, Grace: 10 * time.Millisecond})
	defer m.Close()
	seen := make(chan time.Time, 10)
	s, err := m.Watch(context.Background(), "alice", dial, WatchOptions{}, func(evs []Event) {
		for _, k := range kinds(evs) {
			if k == "messages Work" {
				seen <- time.Now()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // INBOX pokes every 50 ms, as a busy session's APPENDs would make
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				m.Poke("alice", "INBOX")
			}
		}
	}()
	defer func() { close(stop); <-done }()
	time.Sleep(interval / 2)
	changed := time.Now()
	up.Append("alice", "Work", nil, []byte("Subject: x\r\n\r\nx\r\n"))
	select {
	case at := <-seen:
		// One interval, plus room for the poll itself on a busy machine.
		if d := at.Sub(changed); d > interval+300*time.Millisecond {
			t.Fatalf("new message in Work seen after %v with INBOX poked every 50 ms, want within the poll interval %v", d, interval)
		}
	case <-time.After(10 * interval):
		t.Fatalf("new message in Work not seen within %v while INBOX was poked every 50 ms (poll interval %v)", 10*interval, interval)
	}
}

// TestLatestCredentials: the account watcher reconnects with the
// credentials of the latest subscriber. The first subscriber's password
// stops working, a second subscriber comes with the new one, the watcher's
// connection is cut: its next poll must still find a new mailbox.
func TestLatestCredentials(t *testing.T) {
	up := memupstream.StartForTest(t, memupstream.Options{}, "alice", "a")
	relay := faultnet.Start(t, up.Addr)
	good := loginDial(relay.Addr(), "alice", "a")
	var revoked atomic.Bool
	old := func(ctx context.Context) (*upstream.Conn, error) {
		if revoked.Load() {
			return nil, errors.New("LOGIN: NO [AUTHENTICATIONFAILED] (the old password)")
		}
		return good(ctx)
	}
	m := New(Config{PollInterval: 100 * time.Millisecond, Grace: 10 * time.Millisecond})
	defer m.Close()
	created := make(chan struct{}, 1)
	s1, err := m.Watch(context.Background(), "alice", old, WatchOptions{}, func(evs []Event) {
		if slices.Contains(kinds(evs), "created Work") {
			created <- struct{}{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	revoked.Store(true)
	s2, err := m.Watch(context.Background(), "alice", good, WatchOptions{}, func([]Event) {})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	relay.CutAll()
	createDirectly(t, up.Addr, "alice", "a", "Work")
	select {
	case <-created:
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a new mailbox after the watcher's connection was cut and the first subscriber's password revoked")
	}
}

// createDirectly creates a mailbox over a connection of its own, as
// another client of the account would.
func createDirectly(t *testing.T, addr, user, pass, mailbox string) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(mailbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// loginDial returns a DialFunc that connects to addr and logs in.
func loginDial(addr, user, pass string) DialFunc {
	return func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, &upstream.Config{Addr: addr, Timeout: 5 * time.Second}, user, pass)
	}
}

// TestSubscribeThenNewMail: a mailbox subscribed and then given new mail
// while a poll is under way (between what it reads first and last) must
// still come with a messages event that has the subscription: a client
// with NOTIFY SET (subscribed ...) filters by it, and the poll after finds
// nothing more to report. go-imap's server has no LIST-STATUS, so a poll
// runs LIST, a STATUS per mailbox and LSUB; the test holds the rest of
// the poll after LSUB and subscribes and appends meanwhile.
func TestSubscribeThenNewMail(t *testing.T) {
	up := memupstream.StartForTest(t, memupstream.Options{}, "alice", "a")
	createDirectly(t, up.Addr, "alice", "a", "Work")
	relay := faultnet.Start(t, up.Addr)
	m := New(Config{PollInterval: time.Hour, Grace: 10 * time.Millisecond})
	defer m.Close()
	var mu sync.Mutex
	var messages []Event
	events := make(chan struct{}, 10)
	s, err := m.Watch(context.Background(), "alice", loginDial(relay.Addr(), "alice", "a"), WatchOptions{}, func(evs []Event) {
		mu.Lock()
		for _, e := range evs {
			if e.Kind == Messages && e.Mailbox.Name == "Work" {
				messages = append(messages, e)
			}
		}
		mu.Unlock()
		events <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// The watcher's connection is the relay's first. Its next poll is
	// held once LSUB has gone upstream: the subscription and the new
	// mail come after LSUB, and, in a poll that reads the counters after
	// LSUB (as polls did), before the counters.
	hold := relay.Add(faultnet.Fault{Conn: 1, Match: []byte("LSUB \"\" \"*\"\r\n"), MatchDir: faultnet.ToServer, Dir: faultnet.ToServer, Action: faultnet.Hold})
	defer hold.Release()
	// A full poll: it is held after LSUB if LSUB is not its last command
	// (the hold acts on the next bytes), else it completes.
	m.mu.Lock()
	w := m.accts["alice"]
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	polled := make(chan error, 1)
	go func() { polled <- w.awaitPoll(ctx) }()
	held := false
	select {
	case <-hold.Fired():
		held = true
	case err := <-polled:
		if err != nil {
			t.Fatal(err)
		}
	}
	c, err := imapclient.DialInsecure(up.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "a").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe("Work").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := up.Append("alice", "Work", nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	hold.Release()
	if held {
		if err := <-polled; err != nil {
			t.Fatal(err)
		}
	}
	// Polls until the messages event comes: with the subscription it
	// must, without it no later poll has one to report.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(messages)
		mu.Unlock()
		if n > 0 {
			break
		}
		m.Poke("alice")
		select {
		case <-events:
		case <-time.After(200 * time.Millisecond):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(messages) != 1 || !messages[0].Mailbox.Subscribed {
		t.Fatalf("messages events for Work %+v, want one, with the mailbox subscribed", messages)
	}
}
