// Package pgtx runs a function in a PostgreSQL transaction and retries it
// when that is safe: the one copy of the retry rule the cluster's stores
// (cluster/pgstate, cluster/pgdata) share.
package pgtx

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MaxAttempts is how many times Run tries a transaction.
const MaxAttempts = 3

// Run runs fn in a transaction of pool until it commits, ctx ends, or the
// failure may not be retried. A failure may be retried when nothing was
// sent, when the connection was lost (the stores' writes are idempotent,
// so even a commit whose outcome is unknown may be repeated), or when the
// database asks for it (serialization failure, deadlock); never when
// final says the error is the caller's answer (not found, fenced...).
func Run(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, final func(error) bool, fn func(ctx context.Context, tx pgx.Tx) error) error {
	var err error
	for range MaxAttempts {
		var lost bool
		lost, err = try(ctx, pool, opts, fn)
		if err == nil || ctx.Err() != nil || final(err) || !retryable(err, lost) {
			return err
		}
	}
	return err
}

// try runs fn in one transaction; lost says the connection was closed
// under it, or BEGIN failed.
func try(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) (lost bool, err error) {
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		// Nothing was done: worth another try (a pooled connection the
		// server closed meanwhile, say after a restart).
		return true, err
	}
	conn := tx.Conn()
	if err = fn(ctx, tx); err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		// Read before the rollback: it gives the connection back to
		// the pool, and another transaction may be using it by then.
		lost = conn.IsClosed()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = tx.Rollback(rctx)
		cancel()
		return lost, err
	}
	return false, nil
}

func retryable(err error, lost bool) bool {
	if lost || pgconn.SafeToRetry(err) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}
