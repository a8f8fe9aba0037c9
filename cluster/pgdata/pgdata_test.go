package pgdata

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/accountdata/datatest"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
)

// The tests share one PostgreSQL server, a database each.
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, server.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func open(t *testing.T, pool *pgxpool.Pool, f Fencer) *Store {
	t.Helper()
	s, err := Open(context.Background(), pool, f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore(t *testing.T) {
	datatest.Run(t, func(t *testing.T) accountdata.Store { return open(t, newPool(t), nil) })
}

// TestSharedAndReopened: a second node (another Store on the database)
// sees the records, and opening again migrates nothing twice.
func TestSharedAndReopened(t *testing.T) {
	pool := newPool(t)
	a, b := open(t, pool, nil), open(t, pool, nil)
	if err := accountdata.Put(a, "alice", "metadata/x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get("alice", "metadata/x"); err != nil || string(v) != "v" {
		t.Fatalf("the other node reads %q, %v", v, err)
	}
	a.Close()
	if _, err := a.Get("alice", "metadata/x"); err == nil {
		t.Fatal("Get after Close worked")
	}
	if err := pool.Ping(context.Background()); err != nil {
		t.Fatalf("Close closed the pool: %v", err)
	}
}

func TestSuccessor(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
	}{{"", nil}, {"a", []byte("b")}, {"a\xff", []byte("b")}, {"\xff\xff", nil}, {"metadata/", []byte("metadata0")}} {
		if got := successor(tc.in); string(got) != string(tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("successor(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// testFencer holds an account when a test table says this node's epoch
// owns it, locking the row FOR SHARE as cluster.Node does.
type testFencer struct {
	mu    sync.Mutex
	epoch int64
	held  func()
}

var errStale = errors.New("account taken over")

func (f *testFencer) Hold(ctx context.Context, tx pgx.Tx, account string) error {
	f.mu.Lock()
	epoch, held := f.epoch, f.held
	f.mu.Unlock()
	var e int64
	err := tx.QueryRow(ctx, `SELECT epoch FROM test_owners WHERE account = $1 FOR SHARE`, account).Scan(&e)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && e != epoch {
		return fmt.Errorf("%w: %q", errStale, account)
	}
	if err != nil {
		return err
	}
	if held != nil {
		held()
	}
	return nil
}

// TestFencing: a write by a node that lost the account writes nothing; a
// takeover waits for a write in flight.
func TestFencing(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE test_owners (account text PRIMARY KEY, epoch bigint NOT NULL);
		INSERT INTO test_owners VALUES ('alice', 1)`); err != nil {
		t.Fatal(err)
	}
	f := &testFencer{epoch: 1}
	s := open(t, pool, f)
	if err := accountdata.Put(s, "alice", "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE test_owners SET epoch = 2`); err != nil {
		t.Fatal(err)
	}
	if err := s.Write("alice", []accountdata.Record{{Key: "k", Value: []byte("2")}, {Key: "new", Value: nil}}, nil); !errors.Is(err, errStale) {
		t.Fatalf("stale Write: %v, want the fencer's error", err)
	}
	if err := accountdata.Delete(s, "alice", "k"); !errors.Is(err, errStale) {
		t.Fatalf("stale Delete: %v", err)
	}
	if v, err := s.Get("alice", "k"); err != nil || string(v) != "1" {
		t.Fatalf("a fenced write changed the record: %q, %v", v, err)
	}
	if _, err := s.Get("alice", "new"); !errors.Is(err, accountdata.ErrNotFound) {
		t.Fatalf("a fenced write made a record: %v", err)
	}

	f.mu.Lock()
	f.epoch = 2
	inHold, release := make(chan struct{}), make(chan struct{})
	f.held = func() { close(inHold); <-release }
	f.mu.Unlock()
	wrote := make(chan error, 1)
	go func() { wrote <- accountdata.Put(s, "alice", "k", []byte("3")) }()
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
		t.Fatalf("the takeover did not wait for the write in flight (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-tookOver; err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("alice", "k"); string(v) != "3" {
		t.Fatalf("the write in flight: %q", v)
	}
	if err := accountdata.Put(s, "alice", "k", []byte("4")); !errors.Is(err, errStale) {
		t.Fatalf("write after the takeover: %v", err)
	}
}
