package pgtx_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lemonproxy/lemonproxy/cluster/internal/pgtx"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
)

// TestFailedTransactionsShareConnection: transactions that fail, run by
// two goroutines on a pool of one connection, each hand the connection
// back while the other waits for it. Run looks at the connection of a
// failed transaction only while it is its own (under -race, a look after
// the rollback gave it back was a data race with the next BEGIN, seen in
// CI in cluster mode). Each failure is the caller's final answer: one try
// each, the error returned as it is.
func TestFailedTransactionsShareConnection(t *testing.T) {
	server := pgtest.Start(t)
	cfg, err := pgxpool.ParseConfig(server.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	errNo := errors.New("no")
	final := func(err error) bool { return errors.Is(err, errNo) }
	var wg sync.WaitGroup
	var mu sync.Mutex
	tries := 0
	for range 2 {
		wg.Go(func() {
			for range 200 {
				err := pgtx.Run(context.Background(), pool, pgx.TxOptions{}, final, func(ctx context.Context, tx pgx.Tx) error {
					mu.Lock()
					tries++
					mu.Unlock()
					if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
						return err
					}
					return errNo
				})
				if !errors.Is(err, errNo) {
					t.Errorf("Run: %v, want the function's own error", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if tries != 400 {
		t.Errorf("%d tries, want 400 (one per Run)", tries)
	}
}
