package push

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// testChannel records deliveries; fail decides each attempt's outcome,
// and gate, if set, holds every attempt until it receives.
type testChannel struct {
	mu    sync.Mutex
	got   []delivery
	calls int
	fail  func(n int) error
	gate  chan struct{}
	name  string
}

type delivery struct {
	account string
	reg     Registration
	ev      Event
}

func (c *testChannel) Name() string {
	if c.name == "" {
		return "test"
	}
	return c.name
}

func (c *testChannel) Deliver(ctx context.Context, account string, reg Registration, ev Event) error {
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.fail != nil {
		if err := c.fail(c.calls); err != nil {
			return err
		}
	}
	c.got = append(c.got, delivery{account, reg, ev})
	return nil
}

func (c *testChannel) deliveries() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.got...)
}

// queueOnly is an Extension with its queue running and no watchers, over
// a memory store holding one registration of account "a".
func queueOnly(t *testing.T, cfg Config, ch *testChannel) *Extension {
	t.Helper()
	cfg.MasterUser, cfg.MasterPassword = "m", "p"
	cfg.Logger = imaptest.Logger()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.AddChannel(ch)
	e.data = accountdata.NewMemory()
	reg := Registration{Channel: ch.Name(), ID: "dev", Data: []byte("d"), Created: time.Now()}
	if err := accountdata.Put(e.data, "a", regKey(reg.Channel, reg.ID), encodeReg(reg)); err != nil {
		t.Fatal(err)
	}
	e.q.start()
	t.Cleanup(func() { e.Close() })
	return e
}

func ev(n uint32) Event {
	return Event{Mailbox: "INBOX", Messages: 10 + n, New: n, UIDNext: 100 + n, At: time.Now()}
}

func (e *Extension) pendingRecords(t *testing.T, account string) int {
	t.Helper()
	n, err := accountdata.Count(e.data, account, pendingPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQueueCoalesces: events that come while a push is being sent wait
// behind it as one push; the registration's pushes go out in order, one
// at a time; nothing is left in the store.
func TestQueueCoalesces(t *testing.T) {
	ch := &testChannel{gate: make(chan struct{})}
	e := queueOnly(t, Config{}, ch)
	target := []regRef{{channel: "test", id: "dev"}}
	if err := e.q.enqueue("a", target, ev(1), nil); err != nil {
		t.Fatal(err)
	}
	// The first push is in flight (held by the gate) ...
	imaptest.WaitFor(t, "the first push in flight", func() bool {
		e.q.mu.Lock()
		defer e.q.mu.Unlock()
		rq := e.q.regs[qkey{"a", "test", "dev"}]
		return rq != nil && rq.inflight
	})
	// ... so these two merge into one, behind it.
	ev2 := ev(2)
	e.q.enqueue("a", target, ev2, nil)
	e.q.enqueue("a", target, ev(3), nil)
	if n := e.pendingRecords(t, "a"); n != 2 {
		t.Fatalf("%d pending records, want 2", n)
	}
	ch.gate <- struct{}{}
	ch.gate <- struct{}{}
	imaptest.WaitFor(t, "two deliveries", func() bool { return len(ch.deliveries()) == 2 })
	got := ch.deliveries()
	if got[0].ev.New != 1 || got[1].ev.New != 5 || got[1].ev.UIDNext != 103 || got[1].ev.Messages != 13 {
		t.Fatalf("deliveries %+v", got)
	}
	if !got[1].ev.At.Equal(ev2.At) {
		t.Fatalf("At %v; want the earliest, %v", got[1].ev.At, ev2.At)
	}
	if string(got[0].reg.Data) != "d" || got[0].account != "a" {
		t.Fatalf("delivery %+v", got[0])
	}
	imaptest.WaitFor(t, "no pending record", func() bool { return e.pendingRecords(t, "a") == 0 })
	select {
	case ch.gate <- struct{}{}:
		t.Fatal("a third delivery")
	case <-time.After(200 * time.Millisecond):
	}
	if st := e.Stats(); st.Sent["test"] != 2 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestQueueRetryMerges: a push waiting for its retry takes in new events;
// its attempts are kept in the store.
func TestQueueRetryMerges(t *testing.T) {
	ch := &testChannel{fail: func(n int) error {
		if n <= 2 {
			return &RetryError{Err: errors.New("down")}
		}
		return nil
	}}
	e := queueOnly(t, Config{MinBackoff: 300 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}, ch)
	target := []regRef{{channel: "test", id: "dev"}}
	e.q.enqueue("a", target, ev(1), nil)
	waitRetrying := func(attempts int) {
		imaptest.WaitFor(t, "the push waiting for its retry", func() bool {
			e.q.mu.Lock()
			defer e.q.mu.Unlock()
			rq := e.q.regs[qkey{"a", "test", "dev"}]
			return rq != nil && !rq.inflight && len(rq.items) == 1 && rq.items[0].rec.Attempts == attempts
		})
	}
	waitRetrying(1)
	e.q.enqueue("a", target, ev(2), nil)
	var stored pending
	e.data.List("a", pendingPrefix, func(k string, v []byte) bool { stored, _ = decodePending(v); return false })
	if stored.Attempts != 1 || stored.New != 3 {
		t.Fatalf("stored %+v", stored)
	}
	waitRetrying(2)
	imaptest.WaitFor(t, "the delivery", func() bool { return len(ch.deliveries()) == 1 })
	if d := ch.deliveries()[0]; d.ev.New != 3 {
		t.Fatalf("delivered %+v", d.ev)
	}
	if st := e.Stats(); st.Sent["test"] != 1 || st.Failed["test"] != 2 || st.Retried["test"] != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestQueueLoad: pending pushes in the store at start are sent, oldest
// first; an unreadable one is given up and counted.
func TestQueueLoad(t *testing.T) {
	ch := &testChannel{}
	cfg := Config{MasterUser: "m", MasterPassword: "p", Logger: imaptest.Logger()}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.AddChannel(ch)
	e.data = accountdata.NewMemory()
	reg := Registration{Channel: "test", ID: "dev", Data: []byte("d"), Created: time.Now()}
	accountdata.Put(e.data, "a", regKey("test", "dev"), encodeReg(reg))
	now := time.Now()
	accountdata.Put(e.data, "a", pendingKey("test", "dev", 7), encodePending(pending{Event: ev(7), First: now}))
	accountdata.Put(e.data, "a", pendingKey("test", "dev", 5), encodePending(pending{Event: ev(5), First: now, Attempts: 3}))
	accountdata.Put(e.data, "a", pendingKey("test", "dev", 9), []byte("{damaged"))
	accountdata.Put(e.data, "a", pendingKey("test", "gone", 1), encodePending(pending{Event: ev(1), First: now}))
	e.q.load()
	e.q.start()
	defer e.Close()
	imaptest.WaitFor(t, "two deliveries", func() bool { return len(ch.deliveries()) == 2 })
	got := ch.deliveries()
	if got[0].ev.New != 5 || got[1].ev.New != 7 {
		t.Fatalf("deliveries %+v", got)
	}
	imaptest.WaitFor(t, "no pending record", func() bool { return e.pendingRecords(t, "a") == 0 })
	if st := e.Stats(); st.GivenUp[""] != 1 || st.Sent["test"] != 2 {
		t.Fatalf("stats %+v", st)
	}
	if e.q.seq < 7 {
		t.Fatalf("sequence %d below the loaded ones", e.q.seq)
	}
}
