package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// errNotAcquired: the account is owned by another live node.
var errNotAcquired = errors.New("cluster: the account is owned by another live node")

// errNotServing: this node takes no account now (fenced, closed or
// draining).
var errNotServing = errors.New("cluster: this node takes no account now")

// acquire takes account for this node (or finds it already here) and
// counts one session on it, or, when h is not nil, adds the hold h. The acquisition is one conditional statement
// (two for an account never seen), so two nodes racing for an account
// cannot both win: the loser's UPDATE waits for the winner's row lock and
// then finds the row owned by a live node.
func (n *Node) acquire(ctx context.Context, acct string, h *holder) (*account, error) {
	var flight chan struct{}
	for flight == nil {
		n.mu.Lock()
		if !n.leaseValidLocked() || n.draining {
			n.mu.Unlock()
			return nil, errNotServing
		}
		var wait chan struct{}
		switch a := n.owned[acct]; {
		case a != nil && !a.leaving:
			a.count(h)
			n.mu.Unlock()
			return a, nil
		case a != nil:
			// Being evicted here: acquiring now would have the new
			// session caught by that eviction.
			wait = a.gone
		case n.acquiring[acct] != nil:
			// One acquisition at a time per account: two would both
			// succeed with successive epochs, and the sessions holding
			// the first would find their writes fenced.
			wait = n.acquiring[acct]
		default:
			flight = make(chan struct{})
			n.acquiring[acct] = flight
		}
		n.mu.Unlock()
		if wait != nil {
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	defer func() {
		n.mu.Lock()
		delete(n.acquiring, acct)
		n.mu.Unlock()
		close(flight)
	}()

	dctx, cancel := n.dbContext(ctx)
	defer cancel()
	var epoch int64
	var from *string
	var used bool
	err := n.observe("acquire", func() error {
		err := n.pool.QueryRow(dctx, sqlAcquire, []byte(acct), n.cfg.Node).Scan(&epoch, &from, &used)
		if errors.Is(err, pgx.ErrNoRows) {
			used = false
			err = n.pool.QueryRow(dctx, sqlAcquireNew, []byte(acct), n.cfg.Node).Scan(&epoch)
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotAcquired
	}
	if err != nil {
		return nil, err
	}
	if from != nil {
		n.takeovers.Add(1)
		n.log.Info("cluster account taken over", "account", acct, "from", *from, "epoch", epoch)
	}

	n.mu.Lock()
	if !n.leaseValidLocked() || n.draining {
		// Fenced or draining meanwhile: the acquisition must not be used.
		// Releasing it spares the others the TTL; if that fails too, the
		// row names this node, which re-acquires or is taken over later.
		n.mu.Unlock()
		n.releaseRow(acct, epoch, !used)
		return nil, errNotServing
	}
	a := n.owned[acct]
	switch {
	case a == nil || a.leaving:
		// A leaving entry (fenced meanwhile and unfenced again) is
		// replaced: its release finds the new epoch and touches nothing.
		a = newAccount(epoch)
		a.used, a.marked = used, used
		n.owned[acct] = a
	case epoch > a.epoch:
		a.epoch = epoch
		a.used = a.used || used
		a.marked = a.marked || used
	}
	a.count(h)
	n.mu.Unlock()
	return a, nil
}

// releaser returns the function that ends one session's hold on a.
func (n *Node) releaser(a *account) func() {
	var done bool
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if done {
			return
		}
		done = true
		a.refs--
		if a.refs == 0 {
			a.idle = time.Now()
		}
	}
}

// Hold fences a state write: call it inside each transaction that writes
// account's state. It fails (wrapping ErrFenced) when this node does not
// own the account or its lease has run out; otherwise it reads the owner
// row with this node's epoch FOR SHARE, so that a takeover waits until tx
// ends. No row means the account was taken over: the account is dropped
// here (its sessions end, asynchronously: the caller may be the very
// goroutine Evict waits for) and the write must be abandoned.
func (n *Node) Hold(ctx context.Context, tx pgx.Tx, acct string) error {
	n.mu.Lock()
	if !n.leaseValidLocked() {
		n.mu.Unlock()
		return fmt.Errorf("%w: %s: this node's lease is not valid", ErrFenced, acct)
	}
	a := n.owned[acct]
	if a == nil {
		n.mu.Unlock()
		return fmt.Errorf("%w: %s is not owned here", ErrFenced, acct)
	}
	epoch, marked := a.epoch, a.marked
	n.mu.Unlock()
	if !marked {
		// Not known to be marked used (the login's mark failed, or has
		// not committed yet): this write marks the row, in its own
		// transaction, so that no state is ever committed under an
		// unused row, which any node may delete. The row's exclusive
		// lock, taken first, makes concurrent writes wait in turn
		// rather than deadlock upgrading shared ones.
		var tag pgconn.CommandTag
		err := n.observe("hold", func() error {
			var err error
			tag, err = tx.Exec(ctx, sqlMarkUsed, []byte(acct), n.cfg.Node, epoch)
			return err
		})
		if err != nil {
			return fmt.Errorf("cluster: holding %s: %w", acct, err)
		}
		if tag.RowsAffected() == 1 {
			n.mu.Lock()
			a.used = true
			n.mu.Unlock()
			return nil
		}
	}
	var one int
	err := n.observe("hold", func() error {
		return tx.QueryRow(ctx, sqlHold, []byte(acct), n.cfg.Node, epoch).Scan(&one)
	})
	if err == nil && !marked {
		// The row was found used, as committed by another transaction.
		n.mu.Lock()
		a.used, a.marked = true, true
		n.mu.Unlock()
	}
	if errors.Is(err, pgx.ErrNoRows) {
		n.fencedWrites.Add(1)
		n.log.Warn("cluster write fenced: account taken over", "account", acct, "epoch", epoch)
		n.lose(acct, a)
		return fmt.Errorf("%w: %s: epoch %d is no longer current", ErrFenced, acct, epoch)
	}
	if err != nil {
		return fmt.Errorf("cluster: holding %s: %w", acct, err)
	}
	return nil
}

// lose drops an account found taken over, and evicts it.
func (n *Node) lose(acct string, a *account) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if a.leaving {
		return
	}
	a.leaving = true
	if n.owned[acct] == a {
		delete(n.owned, acct)
	}
	n.evictLocked(acct, a, "the account moved to another proxy node", false)
}

// evictLocked evicts acct on a goroutine, then releases its row when
// release, then finishes a. a.leaving is set.
func (n *Node) evictLocked(acct string, a *account, text string, release bool) {
	lost := a.detachHoldersLocked()
	started := n.goLocked(func() {
		defer a.finish()
		tellLost(lost)
		if h := n.hostOf(); h != nil {
			ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL)
			err := h.Evict(ctx, acct, text)
			cancel()
			if err != nil {
				n.log.Warn("cluster: evicting account", "account", acct, "err", err)
			}
		}
		if release {
			n.mu.Lock()
			unused := !a.used
			n.mu.Unlock()
			n.releaseRow(acct, a.epoch, unused)
		}
		n.mu.Lock()
		if n.owned[acct] == a {
			delete(n.owned, acct)
		}
		n.mu.Unlock()
	})
	if !started {
		a.finish()
		go tellLost(lost)
	}
}

// LoginSucceeded implements proxy.LoginReporter: the account is in use,
// and its row stays when it is released.
func (n *Node) LoginSucceeded(acct string) {
	n.mu.Lock()
	a := n.owned[acct]
	n.mu.Unlock()
	if a != nil {
		n.use(acct, a)
	}
}

// use marks a's row used in the database, once per acquisition, before
// the login's session or the hold can write anything of the account: any
// node may delete an unused row (sqlForget, sqlForgetUnusedMine,
// sqlSweepUnused), so the mark is what keeps the epochs that guard the
// account's states. A mark that fails is made by the account's first
// state write (Hold), in the write's own transaction, or else by the
// release (sqlRelease sets used).
func (n *Node) use(acct string, a *account) {
	n.mu.Lock()
	if a.used {
		n.mu.Unlock()
		return
	}
	a.used = true
	epoch := a.epoch
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL/3)
	defer cancel()
	err := n.observe("mark_used", func() error {
		_, err := n.pool.Exec(ctx, sqlMarkUsed, []byte(acct), n.cfg.Node, epoch)
		return err
	})
	if err != nil {
		n.log.Warn("cluster: marking an account used", "account", acct, "err", err)
		return
	}
	n.mu.Lock()
	if a.epoch == epoch {
		a.marked = true
	}
	n.mu.Unlock()
}

// releaseRow frees an account's row if it still holds this node's epoch;
// with forget, the row goes if it is unused (nobody logged in as the
// account since the row was inserted: no state was written under it, and
// no epoch of it needs remembering).
func (n *Node) releaseRow(acct string, epoch int64, forget bool) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL/3)
	defer cancel()
	q := sqlRelease
	if forget {
		q = sqlForget
	}
	err := n.observe("release", func() error {
		_, err := n.pool.Exec(ctx, q, []byte(acct), n.cfg.Node, epoch)
		return err
	})
	if err != nil {
		n.log.Warn("cluster: releasing account", "account", acct, "err", err)
	}
}

// idleLoop releases the accounts without a local session for
// ReleaseAfter, so that ownership follows the clients: an account whose
// clients now arrive elsewhere moves to its preferred node when it falls
// free.
func (n *Node) idleLoop() {
	defer n.wg.Done()
	t := time.NewTicker(max(n.cfg.ReleaseAfter/4, 10*time.Millisecond))
	defer t.Stop()
	var swept time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(swept) >= max(n.cfg.ReleaseAfter, n.cfg.LeaseTTL) {
			swept = time.Now()
			n.sweepUnused()
		}
		n.mu.Lock()
		for acct, a := range n.owned {
			if !a.leaving && a.refs == 0 && len(a.holders) == 0 && time.Since(a.idle) >= n.cfg.ReleaseAfter {
				a.leaving = true
				n.evictLocked(acct, a, "the account is released by this proxy node", true)
			}
		}
		n.mu.Unlock()
	}
}

// drain hands every account over: each is evicted (its sessions reconnect
// and are routed elsewhere) and released; then any row still naming this
// node (left by an earlier incarnation) is released too.
func (n *Node) drain() {
	n.log.Info("cluster node draining", "accounts", n.Stats().Owned)
	n.mu.Lock()
	var gone []chan struct{}
	for acct, a := range n.owned {
		if !a.leaving {
			a.leaving = true
			n.evictLocked(acct, a, "this proxy node is being drained", true)
		}
		gone = append(gone, a.gone)
	}
	n.mu.Unlock()
	for _, g := range gone {
		select {
		case <-g:
		case <-n.ctx.Done():
			return
		}
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL)
	defer cancel()
	if err := n.releaseAll(ctx); err != nil {
		// Left as it is, the rows would keep naming this node, which
		// refuses their accounts while draining, and nobody else may
		// take them while its lease lives: no node could serve them and
		// the drain would never end. The next renewal tries again.
		n.log.Warn("cluster drain: releasing accounts; trying again at the next renewal", "err", err)
		n.mu.Lock()
		n.drainRetry = true
		n.mu.Unlock()
	}
}

// releaseAll deletes the unused rows naming this node and frees the
// others (Close, drain).
func (n *Node) releaseAll(ctx context.Context) error {
	if err := n.forgetUnusedMine(ctx, n.pool); err != nil {
		return err
	}
	return n.observe("release_all", func() error {
		_, err := n.pool.Exec(ctx, sqlReleaseAll, n.cfg.Node, n.inc)
		return err
	})
}

// execer is what forgetUnusedMine needs of a connection or the pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// forgetUnusedMine deletes the unused rows naming this node. It is called
// when the node owns nothing (at its start, and when it serves again
// after fencing itself) or is giving everything up (releaseAll): those
// rows were left by an earlier incarnation, or by a fencing, which
// forgets the owned accounts without a word to the database. Nobody else
// deletes them while this node is live, and nobody logs in as a made-up
// name again to release them.
func (n *Node) forgetUnusedMine(ctx context.Context, db execer) error {
	return n.observe("forget_unused", func() error {
		_, err := db.Exec(ctx, sqlForgetUnusedMine, n.cfg.Node, n.inc)
		return err
	})
}

// sweepUnused deletes the unused rows of nodes whose lease has expired: a
// node that crashed and is not restarted under its name leaves them, and
// only a login as the same name would take them over.
func (n *Node) sweepUnused() {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.LeaseTTL/3)
	defer cancel()
	err := n.observe("sweep_unused", func() error {
		_, err := n.pool.Exec(ctx, sqlSweepUnused)
		return err
	})
	if err != nil && n.ctx.Err() == nil {
		n.log.Warn("cluster: deleting the unused rows of dead nodes", "err", err)
	}
}
