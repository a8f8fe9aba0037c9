package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// drainPoll is how often Drain looks whether the node owns nothing any
// more (an operator's command: polling the database is fine here).
const drainPoll = 200 * time.Millisecond

// Drain asks node to hand its accounts over (`lemonproxy cluster drain`):
// it marks the node draining and waits until no account names it, or its
// lease has expired (a dead node's accounts are taken over as their clients
// come back), or ctx ends. The node notices at its next renewal: it stops
// taking accounts, evicts and releases those it owns (their sessions get
// BYE and reconnect to other nodes) and forwards new logins. A node that
// restarts is no longer draining.
func Drain(ctx context.Context, dbURL, node string) error {
	pool, err := adminPool(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	tag, err := pool.Exec(ctx, sqlDrain, node)
	if err != nil {
		return fmt.Errorf("cluster: drain %s: %w", node, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("cluster: drain: no node named %q", node)
	}
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		var live bool
		var owned int64
		err := pool.QueryRow(ctx, sqlDrainDone, node).Scan(&live, &owned)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cluster: drain %s: %w", node, err)
		}
		if owned == 0 || !live {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: drain %s: %d accounts still owned: %w", node, owned, ctx.Err())
		case <-t.C:
		}
	}
}

// Status describes every node registered in the cluster, live or not,
// ordered by name (`lemonproxy cluster status`).
func Status(ctx context.Context, dbURL string) ([]NodeStatus, error) {
	pool, err := adminPool(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, sqlStatus)
	if err != nil {
		return nil, fmt.Errorf("cluster: status: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (NodeStatus, error) {
		var s NodeStatus
		var age, remaining float64
		var owned int64
		err := r.Scan(&s.Name, &s.Addr, &s.Started, &s.Draining, &s.Sessions, &s.Forwarded,
			&age, &remaining, &s.Live, &owned)
		s.LeaseAge = time.Duration(age * float64(time.Second))
		s.LeaseRemaining = time.Duration(remaining * float64(time.Second))
		s.Owned = int(owned)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: status: %w", err)
	}
	return out, nil
}

// adminPool connects for a command and makes sure the tables exist (a
// status before any node ran shows an empty cluster, not an error).
func adminPool(ctx context.Context, dbURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("cluster: database URL: %w", err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
