package pgschema

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/internal/pgtest"
)

// TestApply runs steps, adds one, and runs them from several goroutines at
// once: each step runs exactly once.
func TestApply(t *testing.T) {
	pg := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	steps := []string{
		`CREATE TABLE a (n integer)`,
		`INSERT INTO a VALUES (1)`,
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- Apply(ctx, pool, "test", steps) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	steps = append(steps, `INSERT INTO a VALUES (2)`)
	if err := Apply(ctx, pool, "test", steps); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, pool, "test", steps); err != nil {
		t.Fatal(err)
	}
	var sum, count int
	if err := pool.QueryRow(ctx, `SELECT sum(n), count(*) FROM a`).Scan(&sum, &count); err != nil {
		t.Fatal(err)
	}
	if sum != 3 || count != 2 {
		t.Fatalf("rows: sum %d count %d, want 3 and 2 (each step once)", sum, count)
	}
	err = Apply(ctx, pool, "test", steps[:1])
	if err == nil || !strings.Contains(err.Error(), "newer than this program") {
		t.Fatalf("older program against a newer schema: %v", err)
	}
}
