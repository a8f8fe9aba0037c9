// Package pgschema creates and migrates the proxy's tables in PostgreSQL.
// Each component (the cluster's coordination tables, the mailbox states)
// owns an ordered list of steps; the database remembers, per component,
// how many have run, in the table lp_schema. A step, once released, is
// never edited: a change is a new step at the end.
//
// Nodes may start at the same moment: the steps of a component run in one
// transaction that first locks the component's row, so one node migrates
// and the others wait and then find nothing to do. Only plain DDL,
// INSERT ... ON CONFLICT and SELECT ... FOR UPDATE are used, which the
// PostgreSQL-compatible distributed databases also accept.
package pgschema

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what Apply needs of a connection or pool.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Apply runs the steps of component that the database has not run yet.
func Apply(ctx context.Context, db DB, component string, steps []string) error {
	if err := createVersionTable(ctx, db); err != nil {
		return err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgschema: %s: %w", component, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO lp_schema (component, version) VALUES ($1, 0) ON CONFLICT (component) DO NOTHING`, component); err != nil {
		return fmt.Errorf("pgschema: %s: %w", component, err)
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT version FROM lp_schema WHERE component = $1 FOR UPDATE`, component).Scan(&version); err != nil {
		return fmt.Errorf("pgschema: %s: %w", component, err)
	}
	if version > len(steps) {
		return fmt.Errorf("pgschema: %s: the database is at version %d, newer than this program's %d: upgrade the program", component, version, len(steps))
	}
	for i := version; i < len(steps); i++ {
		if _, err := tx.Exec(ctx, steps[i]); err != nil {
			return fmt.Errorf("pgschema: %s step %d: %w", component, i+1, err)
		}
	}
	if version < len(steps) {
		if _, err := tx.Exec(ctx, `UPDATE lp_schema SET version = $2 WHERE component = $1`, component, len(steps)); err != nil {
			return fmt.Errorf("pgschema: %s: %w", component, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgschema: %s: %w", component, err)
	}
	return nil
}

// createVersionTable creates lp_schema. Two sessions creating it at once
// may both pass IF NOT EXISTS and one then fails on a catalog's unique
// index: pg_class's (23505 unique_violation, or 42P07 duplicate_table) or
// pg_type's for the table's row type (42710 duplicate_object, "type
// lp_schema already exists"). That one finds the table made and goes on.
func createVersionTable(ctx context.Context, db DB) error {
	const ddl = `CREATE TABLE IF NOT EXISTS lp_schema (component text PRIMARY KEY, version integer NOT NULL)`
	_, err := db.Exec(ctx, ddl)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07" || pe.Code == "42710") {
		_, err = db.Exec(ctx, ddl)
	}
	if err != nil {
		return fmt.Errorf("pgschema: creating lp_schema: %w", err)
	}
	return nil
}
