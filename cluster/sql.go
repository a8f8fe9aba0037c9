package cluster

import (
	"context"

	"github.com/lemonproxy/lemonproxy/cluster/pgschema"
)

// schema is the cluster component's migration steps (package pgschema):
// released steps are never edited, changes are new steps at the end.
// Steps that a node of an earlier release can run beside go to a
// component of their own (schemaUsed): a program refuses a database whose
// component is at a newer version than it knows, so a new step here
// would keep the nodes not yet upgraded from restarting, and the upgrade
// from being rolled back.
//
// lp_owners.taken_from records the previous owner when an account was
// taken from another node (a takeover), for the takeover count and for
// operators reading the table; it is NULL for a first acquisition, a
// re-acquisition by the same node and an account that had been released.
//
// lp_owners.used is false while nobody has logged in as the account (nor
// held it) since its row was inserted: a login routes, and so writes the
// row, before the upstream checks the password. No state is ever written
// under an unused row, so it may be deleted (see releaseRow,
// forgetUnusedMine, sweepUnused); a used row stays, its epochs guarding
// the account's states. Rows from before the column count as used, and
// so do those inserted by a node of an earlier release, which does not
// name the column (its statements are unchanged by it).
var schema = []string{
	`CREATE TABLE lp_nodes (
		name text PRIMARY KEY,
		addr text NOT NULL,
		incarnation bigint NOT NULL,
		lease_until timestamptz NOT NULL,
		started timestamptz NOT NULL,
		draining boolean NOT NULL DEFAULT false,
		sessions integer NOT NULL DEFAULT 0,
		forwarded integer NOT NULL DEFAULT 0,
		owned integer NOT NULL DEFAULT 0,
		updated timestamptz NOT NULL
	)`,
	`CREATE TABLE lp_owners (
		account bytea PRIMARY KEY,
		node text NULL,
		epoch bigint NOT NULL,
		since timestamptz NOT NULL,
		taken_from text NULL
	)`,
	`CREATE INDEX lp_owners_node ON lp_owners (node)`,
}

// schemaUsed is the component cluster_used: lp_owners.used, which the
// nodes of the earlier release run beside (see schema).
var schemaUsed = []string{
	`ALTER TABLE lp_owners ADD COLUMN IF NOT EXISTS used boolean NOT NULL DEFAULT true`,
	`CREATE INDEX IF NOT EXISTS lp_owners_unused ON lp_owners (node) WHERE NOT used`,
}

// migrate creates and migrates the cluster's tables.
func migrate(ctx context.Context, db pgschema.DB) error {
	if err := pgschema.Apply(ctx, db, "cluster", schema); err != nil {
		return err
	}
	return pgschema.Apply(ctx, db, "cluster_used", schemaUsed)
}

// The statements. Durations are passed in milliseconds and multiplied by
// an interval literal, which every PostgreSQL dialect accepts. A lease is
// live while lease_until > now(), by the database's clock.
const (
	// sqlRegister registers this incarnation, taking the name over from
	// any earlier one at once, and clears a drain left from before.
	sqlRegister = `INSERT INTO lp_nodes (name, addr, incarnation, lease_until, started, draining, updated)
		VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', now(), false, now())
		ON CONFLICT (name) DO UPDATE SET addr = EXCLUDED.addr, incarnation = EXCLUDED.incarnation,
			lease_until = EXCLUDED.lease_until, started = EXCLUDED.started, draining = false,
			sessions = 0, forwarded = 0, owned = 0, updated = EXCLUDED.updated`

	// sqlRenew extends the lease of this incarnation only: no row means
	// another incarnation took the name.
	sqlRenew = `UPDATE lp_nodes SET lease_until = now() + $3 * interval '1 millisecond',
			sessions = $4, forwarded = $5, owned = $6, updated = now()
		WHERE name = $1 AND incarnation = $2
		RETURNING draining`

	sqlLive = `SELECT name, addr, draining FROM lp_nodes WHERE lease_until > now()`

	// sqlLookup finds an account's owner with its address and whether its
	// lease is live.
	sqlLookup = `SELECT o.node, n.addr, n.lease_until > now()
		FROM lp_owners o LEFT JOIN lp_nodes n ON n.name = o.node
		WHERE o.account = $1`

	// sqlAcquire takes an account that is free, already this node's (a
	// re-acquisition after forgetting it), or owned by a node whose lease
	// has expired. The epoch increases at every acquisition, so writes
	// under any earlier epoch are fenced.
	sqlAcquire = `UPDATE lp_owners AS o SET node = $2, epoch = o.epoch + 1, since = now(),
			taken_from = CASE WHEN o.node IS NOT NULL AND o.node <> $2 THEN o.node END
		WHERE o.account = $1 AND (o.node IS NULL OR o.node = $2
			OR NOT EXISTS (SELECT 1 FROM lp_nodes n WHERE n.name = o.node AND n.lease_until > now()))
		RETURNING o.epoch, o.taken_from, o.used`

	// sqlAcquireNew takes an account seen for the first time: unused
	// until a login succeeds.
	sqlAcquireNew = `INSERT INTO lp_owners (account, node, epoch, since, used) VALUES ($1, $2, 1, now(), false)
		ON CONFLICT (account) DO NOTHING
		RETURNING epoch`

	// sqlMarkUsed records that someone logged in as the account (or held
	// it), before anything of it is written.
	sqlMarkUsed = `UPDATE lp_owners SET used = true WHERE account = $1 AND node = $2 AND epoch = $3 AND NOT used`

	sqlRelease = `UPDATE lp_owners SET node = NULL, since = now(), taken_from = NULL, used = true
		WHERE account = $1 AND node = $2 AND epoch = $3`

	// sqlForget drops the row of an account nobody logged in as
	// (releaseRow).
	sqlForget = `DELETE FROM lp_owners WHERE account = $1 AND node = $2 AND epoch = $3 AND NOT used`

	// sqlForgetUnusedMine drops the unused rows naming this node, which
	// owns nothing at that moment (at its start, and when it serves again
	// after fencing itself): they were left by an earlier incarnation or
	// by the fencing, which forgets accounts without releasing them.
	sqlForgetUnusedMine = `DELETE FROM lp_owners
		WHERE node = $1 AND NOT used AND EXISTS (SELECT 1 FROM lp_nodes WHERE name = $1 AND incarnation = $2)`

	// sqlSweepUnused drops the unused rows of nodes whose lease has
	// expired (they crashed and were not restarted; nobody logs in as a
	// made-up name to take its row over). A free row is left alone: this
	// version frees only used rows (sqlRelease marks them; releaseAll
	// deletes the unused first), and one freed unused by a node of an
	// earlier version, which marks nothing, may have states.
	sqlSweepUnused = `DELETE FROM lp_owners o WHERE NOT o.used AND o.node IS NOT NULL
		AND NOT EXISTS (SELECT 1 FROM lp_nodes n WHERE n.name = o.node AND n.lease_until > now())`

	// sqlHold runs inside a state-writing transaction: the shared row lock
	// makes a takeover wait until the transaction ends, and no row means
	// the account has changed hands.
	sqlHold = `SELECT 1 FROM lp_owners WHERE account = $1 AND node = $2 AND epoch = $3 FOR SHARE`

	// sqlReleaseAll releases every account naming this node, unless
	// another incarnation has taken the name (its accounts are its own);
	// the unused ones go (sqlForgetUnusedMine runs first).
	sqlReleaseAll = `UPDATE lp_owners SET node = NULL, since = now(), taken_from = NULL
		WHERE node = $1 AND EXISTS (SELECT 1 FROM lp_nodes WHERE name = $1 AND incarnation = $2)`

	// sqlDropLease ends the lease now, so that nobody waits out the TTL.
	sqlDropLease = `UPDATE lp_nodes SET lease_until = now(), sessions = 0, forwarded = 0, owned = 0, updated = now()
		WHERE name = $1 AND incarnation = $2`

	sqlDrain = `UPDATE lp_nodes SET draining = true WHERE name = $1`

	sqlDrainDone = `SELECT lease_until > now(), (SELECT count(*) FROM lp_owners WHERE node = $1)
		FROM lp_nodes WHERE name = $1`

	sqlStatus = `SELECT n.name, n.addr, n.started, n.draining, n.sessions, n.forwarded,
			EXTRACT(EPOCH FROM now() - n.updated)::float8, EXTRACT(EPOCH FROM n.lease_until - now())::float8,
			n.lease_until > now(), (SELECT count(*) FROM lp_owners o WHERE o.node = n.name)
		FROM lp_nodes n ORDER BY n.name`
)
