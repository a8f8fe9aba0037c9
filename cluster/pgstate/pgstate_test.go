package pgstate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/internal/pgtest"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/statestore/storetest"
)

// The tests share one PostgreSQL server (a database each), started on
// first use; TestRestart runs one of its own.
var (
	serverOnce sync.Once
	server     *pgtest.Server
	serverErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if server != nil {
		server.Close()
	}
	os.Exit(code)
}

// newPool returns a pool on a new, empty database of the shared server.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped under -short")
	}
	serverOnce.Do(func() { server, serverErr = pgtest.StartServer() })
	if serverErr != nil {
		if errors.Is(serverErr, pgtest.ErrNotInstalled) && os.Getenv(pgtest.RequireEnv) != "1" {
			t.Skipf("pgtest: %v", serverErr)
		}
		t.Fatalf("pgtest: %v", serverErr)
	}
	return poolOn(t, server.NewDatabase(t))
}

func poolOn(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func open(t *testing.T, pool *pgxpool.Pool, f Fencer) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, pool, f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStore runs the behavioural tests every Store must pass.
func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) statestore.Store { return open(t, newPool(t), nil) })
}

// TestOpenTwice: a second node opening the same database finds the tables
// made and shares the states, mark included.
func TestOpenTwice(t *testing.T) {
	pool := newPool(t)
	a, b := open(t, pool, nil), open(t, pool, nil)
	if err := a.Save("alice\x00INBOX", statestore.Batch{Reset: true, UIDValidity: 1, Highest: 42, Upsert: []statestore.Message{{UID: 1, ModSeq: 42, Flags: []string{`\Seen`}}}}); err != nil {
		t.Fatal(err)
	}
	sv, err := b.Load("alice\x00INBOX")
	if err != nil || sv == nil || sv.Highest != 42 || len(sv.Messages) != 1 {
		t.Fatalf("the other node loads %+v, %v", sv, err)
	}
	if err := b.Drop("alice\x00INBOX"); err != nil {
		t.Fatal(err)
	}
	if m, ok, err := a.Continue("alice\x00INBOX"); m != 42 || !ok || err != nil {
		t.Fatalf("Continue after the other node dropped: %d, %v, %v", m, ok, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load("alice\x00INBOX"); err == nil {
		t.Fatal("Load after Close worked")
	}
	// The pool is the caller's.
	if err := pool.Ping(context.Background()); err != nil {
		t.Fatalf("Close closed the pool: %v", err)
	}
}

// testFencer fences on a test table of owners and epochs: it holds the
// account if the row's epoch is its own, locking the row FOR SHARE.
type testFencer struct {
	mu       sync.Mutex
	epoch    int64
	accounts []string
	// held, if set, is called with the row locked (the test holds the
	// transaction open there).
	held func()
}

var errStale = errors.New("account taken over")

func (f *testFencer) Hold(ctx context.Context, tx pgx.Tx, account string) error {
	f.mu.Lock()
	epoch, held := f.epoch, f.held
	f.accounts = append(f.accounts, account)
	f.mu.Unlock()
	var e int64
	err := tx.QueryRow(ctx, `SELECT epoch FROM test_owners WHERE account = $1 FOR SHARE`, account).Scan(&e)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %q has no owner", errStale, account)
	}
	if err != nil {
		return err
	}
	if e != epoch {
		return fmt.Errorf("%w: epoch %d, ours %d", errStale, e, epoch)
	}
	if held != nil {
		held()
	}
	return nil
}

func TestFencing(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE test_owners (account text PRIMARY KEY, epoch bigint NOT NULL);
		INSERT INTO test_owners VALUES ('alice', 1)`); err != nil {
		t.Fatal(err)
	}
	f := &testFencer{epoch: 1}
	s := open(t, pool, f)
	const key = "alice\x00INBOX"
	first := statestore.Batch{Reset: true, UIDValidity: 1, Highest: 2, Upsert: []statestore.Message{{UID: 1, ModSeq: 2}}}
	if err := s.Save(key, first); err != nil {
		t.Fatal(err)
	}
	if f.accounts[0] != "alice" {
		t.Fatalf("Hold was given %q, want the account", f.accounts[0])
	}
	unchanged := func(what string) {
		t.Helper()
		sv, err := s.Load(key)
		if err != nil || sv == nil || sv.Highest != 2 || len(sv.Messages) != 1 || sv.Messages[0].ModSeq != 2 {
			t.Fatalf("%s wrote: %+v, %v", what, sv, err)
		}
	}

	// Another node took the account: a stale write writes nothing.
	if _, err := pool.Exec(ctx, `UPDATE test_owners SET epoch = 2`); err != nil {
		t.Fatal(err)
	}
	err := s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 3, Upsert: []statestore.Message{{UID: 1, ModSeq: 3}}})
	if !errors.Is(err, errStale) {
		t.Fatalf("stale Save: %v, want the fencer's error", err)
	}
	unchanged("a stale Save")
	if err := s.Save(key, statestore.Batch{Reset: true, UIDValidity: 9, Highest: 9}); !errors.Is(err, errStale) {
		t.Fatalf("stale Reset: %v", err)
	}
	unchanged("a stale Reset")
	if err := s.Drop(key); !errors.Is(err, errStale) {
		t.Fatalf("stale Drop: %v", err)
	}
	unchanged("a stale Drop")
	if err := s.Save("alice\x00Sent", statestore.Batch{Reset: true, UIDValidity: 9, Highest: 9}); !errors.Is(err, errStale) {
		t.Fatalf("stale Reset of a new key: %v", err)
	}
	if _, ok, _ := s.Continue("alice\x00Sent"); ok {
		t.Fatal("a stale Reset made a mailbox row")
	}

	// This node owns the account again (epoch 2). A takeover started
	// while a Save is in flight waits for it to commit.
	f.mu.Lock()
	f.epoch = 2
	inHold, release := make(chan struct{}), make(chan struct{})
	f.held = func() { close(inHold); <-release }
	f.mu.Unlock()
	saved := make(chan error, 1)
	go func() {
		saved <- s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 4, Upsert: []statestore.Message{{UID: 2, ModSeq: 4, Flags: []string{`\Seen`}}}})
	}()
	<-inHold
	f.mu.Lock()
	f.held = nil
	f.mu.Unlock()
	tookOver := make(chan error, 1)
	go func() {
		_, err := pool.Exec(ctx, `UPDATE test_owners SET epoch = 3 WHERE account = 'alice'`)
		tookOver <- err
	}()
	select {
	case err := <-tookOver:
		t.Fatalf("the takeover did not wait for the Save in flight (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-saved; err != nil {
		t.Fatalf("the Save in flight: %v", err)
	}
	if err := <-tookOver; err != nil {
		t.Fatal(err)
	}
	sv, err := s.Load(key)
	if err != nil || sv == nil || sv.Highest != 4 || len(sv.Messages) != 2 {
		t.Fatalf("the Save in flight was not kept: %+v, %v", sv, err)
	}
	// A Save started after the takeover fails and writes nothing.
	err = s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 5, Upsert: []statestore.Message{{UID: 3, ModSeq: 5}}})
	if !errors.Is(err, errStale) || !strings.Contains(err.Error(), "pgstate: saving") {
		t.Fatalf("Save after the takeover: %v", err)
	}
	if sv, _ := s.Load(key); sv == nil || sv.Highest != 4 || len(sv.Messages) != 2 {
		t.Fatalf("the Save after the takeover wrote: %+v", sv)
	}
}

// typical returns a 100,000-message state: 80 % \Seen, 10 % \Answered
// \Seen, 5 % \Flagged \Seen, 5 % none, and a keyword on 2 %.
func typical(n int) statestore.Batch {
	b := statestore.Batch{Reset: true, UIDValidity: 1, Highest: uint64(n + 1), Base: 1, MaxUID: uint32(n)}
	sets := [][]string{{`\Seen`}, {`\Answered`, `\Seen`}, {`\Flagged`, `\Seen`}, nil}
	kw := [][]string{{`$Label1`, `\Seen`}, {`$Label1`, `\Answered`, `\Seen`}, {`$Label1`, `\Flagged`, `\Seen`}, {`$Label1`}}
	b.Upsert = make([]statestore.Message, n)
	for i := range n {
		var set int
		switch r := i % 20; {
		case r < 16:
			set = 0
		case r < 18:
			set = 1
		case r < 19:
			set = 2
		default:
			set = 3
		}
		flags := sets[set]
		if i%50 == 7 {
			flags = kw[set]
		}
		b.Upsert[i] = statestore.Message{UID: uint32(i + 1), ModSeq: uint64(i + 2), Flags: flags}
	}
	return b
}

// TestBytesPerMessage: at most 150 bytes per message in PostgreSQL,
// indexes included.
func TestBytesPerMessage(t *testing.T) {
	const n = 100_000
	s := open(t, newPool(t), nil)
	empty, err := s.Size()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save("alice\x00INBOX", typical(n)); err != nil {
		t.Fatal(err)
	}
	size, err := s.Size()
	if err != nil {
		t.Fatal(err)
	}
	per := float64(size) / n
	t.Logf("%d messages: %d bytes (%d empty), %.1f bytes/message", n, size, empty, per)
	if per > 150 {
		t.Fatalf("%.1f bytes/message, want at most 150", per)
	}
}

// TestLargeMailbox saves a 100,000-message state whole, then small
// batches, timing them.
func TestLargeMailbox(t *testing.T) {
	const n = 100_000
	s := open(t, newPool(t), nil)
	const key = "alice\x00INBOX"
	b := typical(n)
	start := time.Now()
	if err := s.Save(key, b); err != nil {
		t.Fatal(err)
	}
	t.Logf("Reset of %d messages: %v", n, time.Since(start))

	start = time.Now()
	sv, err := s.Load(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Load of %d messages: %v", n, time.Since(start))
	if len(sv.Messages) != n || sv.Messages[0].UID != 1 || sv.Messages[n-1].UID != n || sv.Messages[7].Flags[0] != `$Label1` {
		t.Fatalf("loaded %d messages, first %+v", len(sv.Messages), sv.Messages[0])
	}

	// One-message batches.
	highest := b.Highest
	const rounds = 50
	start = time.Now()
	for i := range rounds {
		highest++
		if err := s.Save(key, statestore.Batch{UIDValidity: 1, Highest: highest, Base: 1, MaxUID: n,
			Upsert: []statestore.Message{{UID: uint32(1 + i*997), ModSeq: highest, Flags: []string{`\Deleted`, `\Seen`}}}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("one-message batch: %v each", time.Since(start)/rounds)
	// An expunge batch of 1000.
	x := statestore.Batch{UIDValidity: 1, Base: 1, MaxUID: n}
	for i := range 1000 {
		highest++
		x.Expunged = append(x.Expunged, statestore.Expunge{UID: uint32(n - i), ModSeq: highest, At: time.Now()})
	}
	x.Highest = highest
	start = time.Now()
	if err := s.Save(key, x); err != nil {
		t.Fatal(err)
	}
	t.Logf("batch of 1000 expunges: %v", time.Since(start))

	// Saved whole again, unchanged but for 1 % of the flags.
	sv, err = s.Load(key)
	if err != nil {
		t.Fatal(err)
	}
	whole := statestore.Batch{Reset: true, UIDValidity: 1, Highest: sv.Highest + 1, Base: sv.Base, MaxUID: sv.MaxUID, Upsert: sv.Messages, Expunged: sv.Expunged}
	for i := 0; i < len(whole.Upsert); i += 100 {
		whole.Upsert[i].ModSeq, whole.Upsert[i].Flags = whole.Highest, []string{`\Flagged`}
	}
	start = time.Now()
	if err := s.Save(key, whole); err != nil {
		t.Fatal(err)
	}
	t.Logf("Reset of the same %d messages, 1 %% changed: %v", len(whole.Upsert), time.Since(start))
	got, err := s.Load(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Messages) != n-1000 || len(got.Expunged) != 1000 || got.Messages[100].Flags[0] != `\Flagged` || got.Messages[101].ModSeq != whole.Upsert[101].ModSeq {
		t.Fatalf("after the second Reset: %d messages, %d expunges", len(got.Messages), len(got.Expunged))
	}
	size, _ := s.Size()
	t.Logf("size now %d bytes (%.1f per message, dead rows not yet vacuumed)", size, float64(size)/float64(len(got.Messages)))
}

// TestRestart: with the database down, calls fail (no panic, no hang
// beyond the time-out); once it is back, the next Save works.
func TestRestart(t *testing.T) {
	pg := pgtest.Start(t)
	pool := poolOn(t, pg.NewDatabase(t))
	s := open(t, pool, nil)
	s.Timeout = 3 * time.Second
	const key = "alice\x00INBOX"
	if err := s.Save(key, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 2, Upsert: []statestore.Message{{UID: 1, ModSeq: 2}}}); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 3, Upsert: []statestore.Message{{UID: 2, ModSeq: 3}}})
	if err == nil {
		t.Fatal("Save with the database down worked")
	}
	t.Logf("Save with the database down: %v after %v", err, time.Since(start))
	if _, err := s.Load(key); err == nil {
		t.Fatal("Load with the database down worked")
	}
	if err := s.Save(key, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 3}); err == nil {
		t.Fatal("a second Save with the database down worked")
	}
	if _, _, err := s.Continue(key); err == nil {
		t.Fatal("Continue with the database down worked")
	}
	if time.Since(start) > 2*s.Timeout+time.Second {
		t.Fatalf("calls took %v with the database down", time.Since(start))
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 4, Upsert: []statestore.Message{{UID: 3, ModSeq: 4}}}); err != nil {
		t.Fatalf("Save after the restart: %v", err)
	}
	sv, err := s.Load(key)
	if err != nil || sv == nil || sv.Highest != 4 || len(sv.Messages) != 2 {
		t.Fatalf("after the restart: %+v, %v", sv, err)
	}
}

// TestTimeout: a Save blocked on a lock fails after its time-out.
func TestTimeout(t *testing.T) {
	pool := newPool(t)
	s := open(t, pool, nil)
	s.Timeout = 300 * time.Millisecond
	const key = "alice\x00INBOX"
	if err := s.Save(key, statestore.Batch{Reset: true, UIDValidity: 1, Highest: 1}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM lp_state_mailboxes FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 2})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Save on a locked row: %v, want a time-out", err)
	}
	t.Logf("Save on a locked row failed after %v: %v", time.Since(start), err)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Save took %v with a 300ms time-out", d)
	}
	tx.Rollback(ctx)
	if err := s.Save(key, statestore.Batch{UIDValidity: 1, Highest: 2}); err != nil {
		t.Fatalf("Save once the lock is gone: %v", err)
	}
}

// TestOutOfRange: mod-sequences above 2^63-1 are refused, not wrapped.
func TestOutOfRange(t *testing.T) {
	s := open(t, newPool(t), nil)
	for _, b := range []statestore.Batch{
		{Reset: true, UIDValidity: 1, Highest: math.MaxInt64 + 1},
		{Reset: true, UIDValidity: 1, Highest: 1, Upsert: []statestore.Message{{UID: 1, ModSeq: math.MaxUint64}}},
		{Reset: true, UIDValidity: 1, Highest: 1, Expunged: []statestore.Expunge{{UID: 1, ModSeq: 1 << 63}}},
	} {
		if err := s.Save("k\x00INBOX", b); err == nil {
			t.Fatalf("Save of %+v worked", b)
		}
	}
	if _, ok, _ := s.Continue("k\x00INBOX"); ok {
		t.Fatal("a refused batch was saved")
	}
}
