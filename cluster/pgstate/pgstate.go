// Package pgstate is a statestore.Store in PostgreSQL, shared by the
// proxy nodes of a cluster. It behaves exactly as statestore.Bolt (the
// same behavioural tests, package statestore/storetest, run against both)
// and also implements statestore.Continuer.
//
// # Schema
//
// Four tables, created and migrated through package pgschema (component
// "pgstate"):
//
//	lp_state_mailboxes  one row per key: id, key, account, uidvalidity
//	                    (NULL: no state), highest, base, max_uid, mark
//	lp_state_flagsets   (mailbox, id) -> flags joined by spaces
//	lp_state_messages   (mailbox, uid) -> modseq, flagset
//	lp_state_expunges   (mailbox, modseq) -> uid, at (Unix seconds, 0: unknown)
//
// The key and the account are bytea, not text: Bolt takes any bytes, and
// a mailbox or user name that is not valid UTF-8 must not make a mailbox's
// state unsaveable (text refuses such bytes, and NUL). The key is kept
// whole (the mailbox name is what follows the account and the last NUL) so that
// every key maps to exactly one row, a key without a NUL included; the
// account is the part before the last NUL, what Fencer.Hold is given.
//
// A mailbox row outlives its state: Drop and Reset empty it but keep mark,
// the highest mod-sequence ever saved under the key, which Continue
// returns. Mailbox ids come from an identity column; mod-sequences never
// come from the database, only from the batches.
//
// # Flags: interned flag sets
//
// Flags are interned per mailbox, as Bolt does: a message row holds the id
// of its flag set, and the set's flags are stored once per mailbox, joined
// by spaces (IMAP flags never contain spaces). This was chosen over system
// flags as bits plus a text column of the others because
//
//   - it gives flags back exactly as saved, order, case and duplicates
//     included, as Bolt does, with no canonical form to agree on;
//   - it costs the same per message: the message row is two bigints and two
//     integers, 24 bytes of data with no alignment padding (a smallint of
//     bits would still be padded to the same 24), so no keyword, however
//     common, makes a row longer;
//   - the sets of a mailbox are few (a handful, plus the keyword
//     combinations in use) and are read once per Save, in the same round
//     trip that locks the mailbox row.
//
// Measured (TestBytesPerMessage, PostgreSQL 15): 91 bytes per message for
// a 100,000-message mailbox of typical flags, table, primary key index,
// the fill factor's reserve and the other tables included (the budget is
// 150). Of that, the heap row is 52 bytes (24 header, 24 data, 4 line
// pointer) and the index entry 28. The message table has fillfactor 90: a flag change
// rewrites its row, and the free tenth of each page lets that happen in the
// same page (a HOT update, no new index entry) instead of growing the
// index with every change.
//
// A Reset's unused flag sets are deleted; an incremental batch leaves sets
// no message uses any more until the next Reset or Drop, as Bolt does.
//
// # Round trips
//
// A Save is BEGIN, the fencer's Hold, one pipelined round trip that
// creates or locks the mailbox row and reads its flag sets (and, for a
// Reset, the UIDs it has), one pipelined round trip of all writes, and
// COMMIT: each bulk write is ONE statement whatever the batch's size
// (INSERT ... SELECT FROM unnest($1::int8[], ...) ON CONFLICT ... DO
// UPDATE, DELETE ... USING unnest). A Reset deletes only the messages it
// does not name (found in Go, so that no plan of the database's choosing
// can make it quadratic), and the upsert leaves rows that did not change
// untouched (ON CONFLICT DO UPDATE ... WHERE), so saving a state whole
// again after an error writes nothing but what differs.
//
// A Load is one REPEATABLE READ, read-only transaction with its four
// queries pipelined.
//
// On a local PostgreSQL 15 (TestLargeMailbox), a Reset of 100,000
// messages takes about 0.5 s, a Load of them 70 ms, a one-message batch
// 0.3 ms, a batch of 1,000 expunges 30 ms.
//
// # Portability
//
// The package relies on: transactions (READ COMMITTED for writes, the row
// lock of SELECT ... FOR UPDATE on the mailbox row serialising writers of a
// key; REPEATABLE READ for a Load's consistent snapshot), INSERT ... ON
// CONFLICT DO NOTHING / DO UPDATE ... WHERE, DELETE ... USING, multi-array
// unnest, GREATEST, bytea, an identity column, the storage
// parameter fillfactor (a no-op where unsupported) and, for Size only,
// pg_total_relation_size. It uses no LISTEN/NOTIFY, advisory locks,
// sequences for mod-sequences, PL/pgSQL, triggers or foreign keys (the
// store keeps its tables consistent itself; a foreign key check per
// message row would slow bulk writes). CockroachDB and YugabyteDB document all
// of this except pg_total_relation_size (untested here: the tests run
// PostgreSQL); a serialisation failure (SQLSTATE 40001, their usual answer
// to contention) is retried.
//
// # Errors, time-outs and retries
//
// The Store interface takes no context: every call runs under a time-out
// (Timeout, plus PerMessage for each message of a batch) so that a hung
// database cannot hang a watcher. A batch is idempotent (saving it twice
// leaves what saving it once does), so a call is retried, within its
// time-out, when the connection was lost before the commit was known or
// the database asked for a retry (serialisation failure, deadlock).
// Errors wrap their cause with the operation and key ("pgstate: saving
// %q: ..."); statestore.ErrNoState and statestore.ErrCorrupt are kept for
// errors.Is, as is the fencer's error.
package pgstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster/internal/pgtx"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/cluster/pgschema"
	"github.com/lemonproxy/lemonproxy/statestore"
)

// Fencer keeps a node's writes to an account's state from racing with
// another node taking the account over.
type Fencer interface {
	// Hold runs inside the transaction about to write account's state:
	// it checks that this node still owns the account and keeps it owned
	// until tx ends (a row lock), so that a takeover either waits for
	// this write or this write sees the takeover. An error makes the
	// write write nothing.
	Hold(ctx context.Context, tx pgx.Tx, account string) error
}

// Default time-outs of a call.
const (
	DefaultTimeout    = 10 * time.Second
	DefaultPerMessage = 50 * time.Microsecond
)

// Store is a statestore.Store and statestore.Continuer in PostgreSQL.
type Store struct {
	pool  *pgxpool.Pool
	fence Fencer

	// Timeout bounds each call (Load, Save, Drop, Continue, Size),
	// retries included; a Save gets PerMessage more for each message and
	// expunge of its batch. Set them before the Store is used.
	Timeout    time.Duration
	PerMessage time.Duration

	closed atomic.Bool
}

var (
	_ statestore.Store     = (*Store)(nil)
	_ statestore.Continuer = (*Store)(nil)
)

// Open creates or migrates the store's tables in the pool's database and
// returns the store. f, if not nil, fences every Save and Drop. The pool
// stays the caller's: Close does not close it.
func Open(ctx context.Context, pool *pgxpool.Pool, f Fencer) (*Store, error) {
	if err := pgschema.Apply(ctx, pool, "pgstate", steps); err != nil {
		return nil, fmt.Errorf("pgstate: %w", err)
	}
	return &Store{pool: pool, fence: f, Timeout: DefaultTimeout, PerMessage: DefaultPerMessage}, nil
}

var errClosed = errors.New("pgstate: store closed")

// Close implements statestore.Store. Calls after Close fail.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// account returns the part of key before its last NUL (the whole key if
// it has none). The hub's keys are the account key, itself the upstream's
// address and the user joined by a NUL, then a NUL and the mailbox name,
// which never holds a NUL (RFC 3501 strings cannot carry one).
func account(key string) string {
	if i := strings.LastIndexByte(key, 0); i >= 0 {
		return key[:i]
	}
	return key
}

// run runs fn in a transaction under the call's time-out, retrying as the
// package doc says.
func (s *Store) run(n int, opts pgx.TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout+time.Duration(n)*s.PerMessage)
	defer cancel()
	return pgtx.Run(ctx, s.pool, opts, final, fn)
}

// final tells the errors that are the call's answer, never retried.
func final(err error) bool {
	return errors.Is(err, statestore.ErrNoState) || errors.Is(err, statestore.ErrCorrupt)
}

// i64 converts a mod-sequence for the database, which holds at most
// 2^63-1 (RFC 7162's bound).
func i64(what string, v uint64) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%s %d above 2^63-1", what, v)
	}
	return int64(v), nil
}

// write is a batch prepared for the database.
type write struct {
	reset bool
	meta  [5]int64 // uidvalidity, highest, base, max_uid, mark
	// Messages after the batch: the last upsert of each UID, without the
	// expunged ones.
	uids, modseqs []int64
	flags         []string // joined by spaces
	// Expunges to log (above the base; the last of each mod-sequence),
	// and every expunged UID.
	xModseqs, xUIDs, xAts []int64
	gone                  []int64
}

func prepare(b statestore.Batch) (*write, error) {
	w := &write{reset: b.Reset}
	var err error
	var highest, base int64
	if highest, err = i64("HIGHESTMODSEQ", b.Highest); err != nil {
		return nil, err
	}
	if base, err = i64("base", b.Base); err != nil {
		return nil, err
	}
	mark := highest
	var expunged map[uint32]bool
	if len(b.Expunged) > 0 {
		expunged = make(map[uint32]bool, len(b.Expunged))
		logged := make(map[uint64]int, len(b.Expunged))
		for _, x := range b.Expunged {
			ms, err := i64("expunge mod-sequence", x.ModSeq)
			if err != nil {
				return nil, err
			}
			mark = max(mark, ms)
			expunged[x.UID] = true
			w.gone = append(w.gone, int64(x.UID))
			if ms <= base {
				continue // pruned at once
			}
			var at int64 // 0: unknown
			if !x.At.IsZero() {
				at = max(x.At.Unix(), 1)
			}
			if i, ok := logged[x.ModSeq]; ok { // the last wins
				w.xUIDs[i], w.xAts[i] = int64(x.UID), at
				continue
			}
			logged[x.ModSeq] = len(w.xModseqs)
			w.xModseqs = append(w.xModseqs, ms)
			w.xUIDs = append(w.xUIDs, int64(x.UID))
			w.xAts = append(w.xAts, at)
		}
	}
	// A batch by ascending UID (a state saved whole) names each UID
	// once; otherwise the last upsert of a UID wins.
	ascending := true
	for i := 1; i < len(b.Upsert) && ascending; i++ {
		ascending = b.Upsert[i-1].UID < b.Upsert[i].UID
	}
	var at map[uint32]int
	if !ascending {
		at = make(map[uint32]int, len(b.Upsert))
	}
	w.uids = make([]int64, 0, len(b.Upsert))
	w.modseqs = make([]int64, 0, len(b.Upsert))
	w.flags = make([]string, 0, len(b.Upsert))
	for _, m := range b.Upsert {
		ms, err := i64("mod-sequence", m.ModSeq)
		if err != nil {
			return nil, err
		}
		mark = max(mark, ms)
		if expunged[m.UID] {
			continue
		}
		f := joinFlags(m.Flags)
		if at != nil {
			if i, ok := at[m.UID]; ok {
				w.modseqs[i], w.flags[i] = ms, f
				continue
			}
			at[m.UID] = len(w.uids)
		}
		w.uids = append(w.uids, int64(m.UID))
		w.modseqs = append(w.modseqs, ms)
		w.flags = append(w.flags, f)
	}
	w.meta = [5]int64{int64(b.UIDValidity), highest, base, int64(b.MaxUID), mark}
	return w, nil
}

// joinFlags is strings.Join(flags, " ") without allocating for the usual
// sets of none or one flag.
func joinFlags(flags []string) string {
	switch len(flags) {
	case 0:
		return ""
	case 1:
		return flags[0]
	}
	return strings.Join(flags, " ")
}

// Save implements statestore.Store.
func (s *Store) Save(key string, b statestore.Batch) error {
	w, err := prepare(b)
	if err == nil {
		err = s.run(len(b.Upsert)+len(b.Expunged), pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
			return s.save(ctx, tx, key, w)
		})
	}
	if err != nil {
		return fmt.Errorf("pgstate: saving %q: %w", key, err)
	}
	return nil
}

func (s *Store) hold(ctx context.Context, tx pgx.Tx, key string) error {
	if s.fence == nil {
		return nil
	}
	if err := s.fence.Hold(ctx, tx, account(key)); err != nil {
		return fmt.Errorf("fencing: %w", err)
	}
	return nil
}

func (s *Store) save(ctx context.Context, tx pgx.Tx, key string, w *write) error {
	if err := s.hold(ctx, tx, key); err != nil {
		return err
	}
	k := []byte(key)

	// The mailbox row, locked, and its flag sets.
	var rb pgx.Batch
	if w.reset {
		rb.Queue(`INSERT INTO lp_state_mailboxes (key, account) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, k, []byte(account(key)))
	}
	var id int32
	var hasState, found bool
	rb.Queue(`SELECT id, uidvalidity IS NOT NULL FROM lp_state_mailboxes WHERE key = $1 FOR UPDATE`, k).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			found = true
			if err := rows.Scan(&id, &hasState); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	sets := map[string]int32{}
	var next int32
	rb.Queue(`SELECT f.id, f.flags FROM lp_state_flagsets f WHERE f.mailbox = (SELECT id FROM lp_state_mailboxes WHERE key = $1)`, k).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var sid int32
			var flags []byte
			if err := rows.Scan(&sid, &flags); err != nil {
				return err
			}
			sets[string(flags)] = sid
			next = max(next, sid+1)
		}
		return rows.Err()
	})
	// A Reset deletes the messages it does not name: their UIDs are
	// found here rather than by an anti-join against the batch in SQL,
	// whose plan would be the planner's choice.
	var existing []int64
	if w.reset {
		rb.Queue(`SELECT uid FROM lp_state_messages WHERE mailbox = `+mailboxOf, k).Query(func(rows pgx.Rows) error {
			var uid int64
			for rows.Next() {
				if err := rows.Scan(&uid); err != nil {
					return err
				}
				existing = append(existing, uid)
			}
			return rows.Err()
		})
	}
	if err := tx.SendBatch(ctx, &rb).Close(); err != nil {
		return err
	}
	if !found || !w.reset && !hasState {
		return statestore.ErrNoState
	}
	gone := w.gone
	if w.reset {
		gone = stale(existing, w.uids)
	}

	// Flag set ids, new sets added.
	setIDs := make([]int32, len(w.flags))
	var newIDs []int32
	var newFlags [][]byte
	var used map[int32]bool
	if w.reset {
		used = map[int32]bool{}
	}
	for i, f := range w.flags {
		sid, ok := sets[f]
		if !ok {
			sid = next
			next++
			sets[f] = sid
			newIDs = append(newIDs, sid)
			newFlags = append(newFlags, []byte(f))
		}
		setIDs[i] = sid
		if used != nil {
			used[sid] = true
		}
	}

	var wb pgx.Batch
	if w.reset {
		wb.Queue(`DELETE FROM lp_state_expunges WHERE mailbox = $1`, id)
		keep := make([]int32, 0, len(used))
		for sid := range used {
			keep = append(keep, sid)
		}
		wb.Queue(`DELETE FROM lp_state_flagsets WHERE mailbox = $1 AND NOT (id = ANY($2::int4[]))`, id, keep)
	}
	if len(newIDs) > 0 {
		wb.Queue(`INSERT INTO lp_state_flagsets (mailbox, id, flags)
			SELECT $1, u.id, u.flags FROM unnest($2::int4[], $3::bytea[]) AS u(id, flags)`, id, newIDs, newFlags)
	}
	if len(w.uids) > 0 {
		wb.Queue(`INSERT INTO lp_state_messages (mailbox, uid, modseq, flagset)
			SELECT $1, u.uid, u.modseq, u.flagset FROM unnest($2::int8[], $3::int8[], $4::int4[]) AS u(uid, modseq, flagset)
			ON CONFLICT (mailbox, uid) DO UPDATE SET modseq = excluded.modseq, flagset = excluded.flagset
			WHERE lp_state_messages.modseq <> excluded.modseq OR lp_state_messages.flagset <> excluded.flagset`,
			id, w.uids, w.modseqs, setIDs)
	}
	if len(gone) > 0 {
		wb.Queue(`DELETE FROM lp_state_messages m USING unnest($2::int8[]) AS u(uid) WHERE m.mailbox = $1 AND m.uid = u.uid`, id, gone)
	}
	if len(w.xModseqs) > 0 {
		wb.Queue(`INSERT INTO lp_state_expunges (mailbox, modseq, uid, at)
			SELECT $1, u.modseq, u.uid, u.at FROM unnest($2::int8[], $3::int8[], $4::int8[]) AS u(modseq, uid, at)
			ON CONFLICT (mailbox, modseq) DO UPDATE SET uid = excluded.uid, at = excluded.at`,
			id, w.xModseqs, w.xUIDs, w.xAts)
	}
	if !w.reset {
		wb.Queue(`DELETE FROM lp_state_expunges WHERE mailbox = $1 AND modseq <= $2`, id, w.meta[2])
	}
	wb.Queue(`UPDATE lp_state_mailboxes SET uidvalidity = $2, highest = $3, base = $4, max_uid = $5, mark = GREATEST(mark, $6)
		WHERE id = $1`, id, w.meta[0], w.meta[1], w.meta[2], w.meta[3], w.meta[4])
	return tx.SendBatch(ctx, &wb).Close()
}

// stale returns the UIDs of existing that are not in keep.
func stale(existing, keep []int64) []int64 {
	if len(existing) == 0 {
		return nil
	}
	kept := make(map[int64]struct{}, len(keep))
	for _, u := range keep {
		kept[u] = struct{}{}
	}
	var out []int64
	for _, u := range existing {
		if _, ok := kept[u]; !ok {
			out = append(out, u)
		}
	}
	return out
}

// Load implements statestore.Store.
func (s *Store) Load(key string) (*statestore.Saved, error) {
	var out *statestore.Saved
	err := s.run(0, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(ctx context.Context, tx pgx.Tx) error {
		out = nil
		sv, err := load(ctx, tx, []byte(key))
		if err == nil && sv != nil {
			err = statestore.Plausible(sv)
		}
		if err == nil {
			out = sv
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstate: loading %q: %w", key, err)
	}
	return out, nil
}

const mailboxOf = `(SELECT id FROM lp_state_mailboxes WHERE key = $1)`

func load(ctx context.Context, tx pgx.Tx, key []byte) (*statestore.Saved, error) {
	var b pgx.Batch
	var sv *statestore.Saved
	var corrupt error
	b.Queue(`SELECT uidvalidity, highest, base, max_uid FROM lp_state_mailboxes WHERE key = $1 AND uidvalidity IS NOT NULL`, key).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var v [4]int64
			if err := rows.Scan(&v[0], &v[1], &v[2], &v[3]); err != nil {
				return err
			}
			if v[0] < 0 || v[0] > math.MaxUint32 || v[1] < 0 || v[2] < 0 || v[3] < 0 || v[3] > math.MaxUint32 {
				corrupt = fmt.Errorf("%w: mailbox row %v", statestore.ErrCorrupt, v)
			}
			sv = &statestore.Saved{UIDValidity: uint32(v[0]), Highest: uint64(v[1]), Base: uint64(v[2]), MaxUID: uint32(v[3])}
		}
		return rows.Err()
	})
	sets := map[int32][]string{}
	b.Queue(`SELECT id, flags FROM lp_state_flagsets WHERE mailbox = `+mailboxOf, key).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id int32
			var flags []byte
			if err := rows.Scan(&id, &flags); err != nil {
				return err
			}
			sets[id] = strings.Fields(string(flags))
		}
		return rows.Err()
	})
	var msgs []statestore.Message
	b.Queue(`SELECT uid, modseq, flagset FROM lp_state_messages WHERE mailbox = `+mailboxOf+` ORDER BY uid`, key).Query(func(rows pgx.Rows) error {
		var uid, modseq int64
		var set int32
		for rows.Next() {
			if err := rows.Scan(&uid, &modseq, &set); err != nil {
				return err
			}
			flags, ok := sets[set]
			if !ok || uid < 0 || uid > math.MaxUint32 || modseq < 0 {
				if corrupt == nil {
					corrupt = fmt.Errorf("%w: message UID %d, mod-sequence %d, flag set %d", statestore.ErrCorrupt, uid, modseq, set)
				}
				continue
			}
			msgs = append(msgs, statestore.Message{UID: uint32(uid), ModSeq: uint64(modseq), Flags: flags})
		}
		return rows.Err()
	})
	var xs []statestore.Expunge
	b.Queue(`SELECT uid, modseq, at FROM lp_state_expunges WHERE mailbox = `+mailboxOf+` ORDER BY modseq`, key).Query(func(rows pgx.Rows) error {
		var uid, modseq, at int64
		for rows.Next() {
			if err := rows.Scan(&uid, &modseq, &at); err != nil {
				return err
			}
			if uid < 0 || uid > math.MaxUint32 || modseq < 0 {
				if corrupt == nil {
					corrupt = fmt.Errorf("%w: expunge of UID %d at mod-sequence %d", statestore.ErrCorrupt, uid, modseq)
				}
				continue
			}
			x := statestore.Expunge{UID: uint32(uid), ModSeq: uint64(modseq)}
			if at != 0 {
				x.At = time.Unix(at, 0)
			}
			xs = append(xs, x)
		}
		return rows.Err()
	})
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, err
	}
	if sv == nil {
		return nil, nil
	}
	if corrupt != nil {
		return nil, corrupt
	}
	sv.Messages, sv.Expunged = msgs, xs
	return sv, nil
}

// Drop implements statestore.Store. The key's mark stays (Continue).
func (s *Store) Drop(key string) error {
	err := s.run(0, pgx.TxOptions{}, func(ctx context.Context, tx pgx.Tx) error {
		if err := s.hold(ctx, tx, key); err != nil {
			return err
		}
		var id int32
		err := tx.QueryRow(ctx, `SELECT id FROM lp_state_mailboxes WHERE key = $1 FOR UPDATE`, []byte(key)).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var b pgx.Batch
		b.Queue(`DELETE FROM lp_state_messages WHERE mailbox = $1`, id)
		b.Queue(`DELETE FROM lp_state_expunges WHERE mailbox = $1`, id)
		b.Queue(`DELETE FROM lp_state_flagsets WHERE mailbox = $1`, id)
		b.Queue(`UPDATE lp_state_mailboxes SET uidvalidity = NULL, highest = 0, base = 0, max_uid = 0 WHERE id = $1`, id)
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return fmt.Errorf("pgstate: dropping %q: %w", key, err)
	}
	return nil
}

// Keys implements statestore.Store: the keys of saved states (a dropped
// one keeps its row for its mark, without a UIDVALIDITY) from the index
// on key, as a range.
func (s *Store) Keys(prefix string) ([]string, error) {
	var keys []string
	err := s.run(0, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(ctx context.Context, tx pgx.Tx) error {
		keys = keys[:0]
		rows, err := tx.Query(ctx, `SELECT key FROM lp_state_mailboxes
			WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) AND uidvalidity IS NOT NULL ORDER BY key`,
			[]byte(prefix), prefixEnd([]byte(prefix)))
		if err != nil {
			return err
		}
		for rows.Next() {
			var k []byte
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, string(k))
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstate: keys under %q: %w", prefix, err)
	}
	return keys, nil
}

// prefixEnd returns the least byte string above every one that begins
// with p, or nil if there is none (p empty or all 0xff).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Continue implements statestore.Continuer: the highest mod-sequence ever
// saved under key, through Resets and Drops.
func (s *Store) Continue(key string) (uint64, bool, error) {
	var mark int64
	var found bool
	err := s.run(0, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(ctx context.Context, tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT mark FROM lp_state_mailboxes WHERE key = $1`, []byte(key)).Scan(&mark)
		found = err == nil
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err == nil && mark < 0 {
		err = fmt.Errorf("%w: mark %d", statestore.ErrCorrupt, mark)
	}
	if err != nil {
		return 0, false, fmt.Errorf("pgstate: continuing %q: %w", key, err)
	}
	return uint64(mark), found, nil
}

// Size implements statestore.Store: the bytes of the store's tables with
// their indexes and TOAST (pg_total_relation_size, PostgreSQL only).
func (s *Store) Size() (int64, error) {
	var n int64
	err := s.run(0, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(ctx context.Context, tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(t::regclass)), 0)::int8 FROM unnest($1::text[]) AS t`, tables).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("pgstate: size: %w", err)
	}
	return n, nil
}
