// Package pgdata is an accountdata.Store in PostgreSQL, shared by the
// proxy nodes of a cluster: the METADATA entries, filters and push
// registrations of an account follow it to whichever node serves it. It
// passes the same behavioural tests as accountdata's Memory and Bolt
// (package accountdata/datatest).
//
// # Schema
//
// One table, created and migrated through package pgschema (component
// "pgdata"):
//
//	lp_accountdata  (account bytea, key bytea) -> value bytea
//	index lp_accountdata_key (key, account), for Accounts
//
// Accounts and keys are bytea, not text: accountdata takes any bytes (an
// account key holds a NUL, a mailbox name need not be UTF-8), and bytea
// compares byte by byte, which is List's order. A prefix is matched as a
// range (key >= prefix AND key < the prefix's successor), which the
// primary key's index answers without a scan of the account.
//
// # Fencing
//
// Every Write runs Fencer.Hold for its account inside its transaction, as
// pgstate's Save does: a node that no longer owns the account writes
// nothing, and a takeover waits for a write in flight. Reads are not
// fenced (a stale read is no worse than the moment before the takeover).
//
// # Time-outs and retries
//
// The Store interface takes no context: every call runs under Timeout. A
// Write is idempotent (the same puts and deletes leave the same records),
// so it is retried within its time-out when the connection was lost or
// the database asks for a retry (serialisation failure, deadlock).
package pgdata

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster/internal/pgtx"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/cluster/pgschema"
)

// Fencer keeps a node's writes to an account's records from racing with
// another node taking the account over (cluster.Node implements it; the
// same contract as pgstate.Fencer).
type Fencer interface {
	Hold(ctx context.Context, tx pgx.Tx, account string) error
}

// DefaultTimeout bounds one call, retries included.
const DefaultTimeout = 10 * time.Second

// steps are the component's migrations; a released step is never edited.
var steps = []string{
	`CREATE TABLE lp_accountdata (
		account bytea NOT NULL,
		key bytea NOT NULL,
		value bytea NOT NULL,
		PRIMARY KEY (account, key)
	)`,
	// Accounts lists the accounts with a record under a prefix (push
	// lists its registered accounts at every node's claim pass): a range
	// of this index, not a scan of the table.
	`CREATE INDEX lp_accountdata_key ON lp_accountdata (key, account)`,
}

// Store is an accountdata.Store in PostgreSQL.
type Store struct {
	pool  *pgxpool.Pool
	fence Fencer

	// Timeout bounds each call; set it before the Store is used.
	Timeout time.Duration

	closed atomic.Bool
}

var _ accountdata.Store = (*Store)(nil)

// Open creates or migrates the table in the pool's database. f, if not
// nil, fences every Write. The pool stays the caller's.
func Open(ctx context.Context, pool *pgxpool.Pool, f Fencer) (*Store, error) {
	if err := pgschema.Apply(ctx, pool, "pgdata", steps); err != nil {
		return nil, fmt.Errorf("pgdata: %w", err)
	}
	return &Store{pool: pool, fence: f, Timeout: DefaultTimeout}, nil
}

// Close makes later calls fail; it does not close the pool.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

var errClosed = errors.New("pgdata: store closed")

// run runs fn in a transaction under the call's time-out, retrying what
// may be retried.
func (s *Store) run(opts pgx.TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	return pgtx.Run(ctx, s.pool, opts, final, fn)
}

// final tells the errors that are the call's answer, never retried.
func final(err error) bool {
	return errors.Is(err, accountdata.ErrNotFound) || errors.As(err, new(*fenceError))
}

type fenceError struct{ err error }

func (e *fenceError) Error() string { return "fencing: " + e.err.Error() }
func (e *fenceError) Unwrap() error { return e.err }

// successor returns the smallest byte string above every string that
// begins with prefix, or nil when there is none (the prefix is empty or
// all 0xff).
func successor(prefix string) []byte {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] != 0xff {
			b[i]++
			return b[:i+1]
		}
	}
	return nil
}

var readOnly = pgx.TxOptions{AccessMode: pgx.ReadOnly}

// Get implements accountdata.Store.
func (s *Store) Get(account, key string) ([]byte, error) {
	var v []byte
	err := s.run(readOnly, func(ctx context.Context, tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT value FROM lp_accountdata WHERE account = $1 AND key = $2`, []byte(account), []byte(key)).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return accountdata.ErrNotFound
		}
		return err
	})
	if errors.Is(err, accountdata.ErrNotFound) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("pgdata: reading %q: %w", key, err)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// Write implements accountdata.Store: one transaction, fenced, of one
// upsert and one delete statement.
func (s *Store) Write(account string, puts []accountdata.Record, deletes []string) error {
	// The last put of a key wins, and a key both put and deleted is
	// deleted (puts first, then deletes).
	keys := make([][]byte, 0, len(puts))
	vals := make([][]byte, 0, len(puts))
	at := map[string]int{}
	gone := map[string]bool{}
	for _, k := range deletes {
		gone[k] = true
	}
	for _, r := range puts {
		if gone[r.Key] {
			continue
		}
		v := r.Value
		if v == nil {
			v = []byte{}
		}
		if i, ok := at[r.Key]; ok {
			vals[i] = v
			continue
		}
		at[r.Key] = len(keys)
		keys = append(keys, []byte(r.Key))
		vals = append(vals, v)
	}
	dels := make([][]byte, 0, len(deletes))
	for k := range gone {
		dels = append(dels, []byte(k))
	}
	err := s.run(pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
		if s.fence != nil {
			if err := s.fence.Hold(ctx, tx, account); err != nil {
				return &fenceError{err}
			}
		}
		var b pgx.Batch
		if len(keys) > 0 {
			b.Queue(`INSERT INTO lp_accountdata (account, key, value)
				SELECT $1, u.key, u.value FROM unnest($2::bytea[], $3::bytea[]) AS u(key, value)
				ON CONFLICT (account, key) DO UPDATE SET value = excluded.value`, []byte(account), keys, vals)
		}
		if len(dels) > 0 {
			b.Queue(`DELETE FROM lp_accountdata d USING unnest($2::bytea[]) AS u(key) WHERE d.account = $1 AND d.key = u.key`, []byte(account), dels)
		}
		if b.Len() == 0 {
			return nil
		}
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return fmt.Errorf("pgdata: writing: %w", err)
	}
	return nil
}

// List implements accountdata.Store. The rows are read whole before fn
// is called, so fn holds no connection.
func (s *Store) List(account, prefix string, fn func(key string, value []byte) bool) error {
	var recs []accountdata.Record
	err := s.run(readOnly, func(ctx context.Context, tx pgx.Tx) error {
		recs = recs[:0]
		rows, err := tx.Query(ctx, `SELECT key, value FROM lp_accountdata
			WHERE account = $1 AND key >= $2 AND ($3::bytea IS NULL OR key < $3) ORDER BY key`,
			[]byte(account), []byte(prefix), successor(prefix))
		if err != nil {
			return err
		}
		for rows.Next() {
			var k, v []byte
			if err := rows.Scan(&k, &v); err != nil {
				return err
			}
			if v == nil {
				v = []byte{}
			}
			recs = append(recs, accountdata.Record{Key: string(k), Value: v})
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("pgdata: listing: %w", err)
	}
	for _, r := range recs {
		if !fn(r.Key, r.Value) {
			break
		}
	}
	return nil
}

// Accounts implements accountdata.Store.
func (s *Store) Accounts(prefix string, fn func(account string) bool) error {
	var accts []string
	err := s.run(readOnly, func(ctx context.Context, tx pgx.Tx) error {
		accts = accts[:0]
		rows, err := tx.Query(ctx, `SELECT DISTINCT account FROM lp_accountdata
			WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) ORDER BY account`,
			[]byte(prefix), successor(prefix))
		if err != nil {
			return err
		}
		for rows.Next() {
			var a []byte
			if err := rows.Scan(&a); err != nil {
				return err
			}
			accts = append(accts, string(a))
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("pgdata: listing accounts: %w", err)
	}
	for _, a := range accts {
		if !fn(a) {
			break
		}
	}
	return nil
}
