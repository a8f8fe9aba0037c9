package hub

import (
	"context"
	"time"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// The account's connection budget (upstream.Budget, Config.Pool).
//
// A watcher holds one of its account's upstream connections for as long
// as anyone watches the mailbox. When the budget is used up, the hub gives
// watchers up, least recently used first: first those of mailboxes nobody
// watches any more (in their grace period: stopped), then those whose
// sessions do not idle (their box goes passive), and, only for a
// connection a command needs (a lease, a login), those with idling
// sessions too. A box without a connection is passive: it keeps its
// state, served by its goroutine as ever (claims, Sync), and brings it up
// to date on a connection lent from the pool (EXAMINE, UID FETCH 1:*
// (FLAGS), reconciled as after a reconnect) whenever a session asks:
// sessions on a passive box Sync before each command, so their clients
// hear of every change at their next command, as from a polling watcher.
// A passive box with idling subscribers tries for a connection of its own
// every PollInterval (and at once when a subscriber starts idling),
// refreshing its state meanwhile on a lent connection each time the
// budget refuses.
//
// A passive box keeps the connection it refreshed on as its watcher's
// when the account can spare it (see canKeep): the refresh has just
// EXAMINEd the mailbox and listed it there, which is all a watcher's
// start does, and the connection is counted in the budget already. The
// box is then active again at no extra cost. Without this, a box that
// lost its watcher in a moment of pressure (imaptest's stress: ten
// clients of one account logging in at once) stayed passive for as long
// as its sessions did not idle, and each of their commands waited for a
// full refresh (EXAMINE and the flags of every message) before it ran and,
// after EXPUNGE or APPEND, once more before its tagged answer: 20 ms of a
// 50 ms command on a 2-CPU machine (docs/benchmarks.md, per-command
// overhead).

// touch records that a session used the box (for the least recently used
// order).
func (b *box) touch() { b.lastUsed.Store(time.Now().UnixNano()) }

// reclaim is the hub's upstream.Reclaimer: it gives up the least recently
// used watcher connection of account, among those without idling
// subscribers unless any. A watcher nobody watches stops; one with
// subscribers goes passive.
func (h *Hub) reclaim(account string, any bool) bool {
	h.mu.Lock()
	var pick *box
	for k, b := range h.boxes {
		if k.Account != account || b.dropConn == nil || !any && b.idleSubs > 0 {
			continue
		}
		if pick == nil || reclaimBefore(b, pick) {
			pick = b
		}
	}
	if pick == nil {
		h.mu.Unlock()
		return false
	}
	drop := pick.dropConn
	pick.dropConn = nil
	if len(pick.subs) == 0 {
		// In its grace period: stop it as the grace timer would.
		if pick.graceTimer != nil {
			pick.graceTimer.Stop()
			pick.graceTimer = nil
		}
		h.retireLocked(pick)
		drop = pick.cancel
	}
	h.mu.Unlock()
	drop()
	return true
}

// reclaimBefore orders watchers for reclaiming: unwatched ones first, then
// those without idling subscribers, then the least recently used.
func reclaimBefore(a, b *box) bool {
	if (len(a.subs) == 0) != (len(b.subs) == 0) {
		return len(a.subs) == 0
	}
	if (a.idleSubs == 0) != (b.idleSubs == 0) {
		return a.idleSubs == 0
	}
	return a.lastUsed.Load() < b.lastUsed.Load()
}

func (b *box) hasIdleSubs() bool {
	b.hub.mu.Lock()
	defer b.hub.mu.Unlock()
	return b.idleSubs > 0
}

// passiveLoop runs the box without a connection of its own: it serves
// claims and Sync requests, answering each Sync (and the first readiness,
// if the box never had a state) with a refresh on a lent connection. It
// returns true when the box should try for a watcher connection again (a
// subscriber idles), false when the box stopped. poll asks for a refresh
// at once (the try just made was refused).
func (b *box) passiveLoop(log interface{ Warn(string, ...any) }, ready func(), poll bool) bool {
	b.passive.Store(true)
	defer b.passive.Store(false)
	t := time.NewTicker(b.hub.cfg.PollInterval)
	defer t.Stop()
	first := !isReady(b.ready)
	refresh := first || poll
	for {
		b.serveClaims()
		if refresh || b.wantsTrip() {
			refresh = false
			syncs := b.takeSyncs()
			kept, err := b.refreshLent(log)
			answer(syncs, err)
			if first {
				if err != nil {
					b.readyErr = err
					b.hub.mu.Lock()
					if b.hub.boxes[b.key] == b {
						delete(b.hub.boxes, b.key)
					}
					b.hub.mu.Unlock()
					ready()
					return false
				}
				first = false
				ready()
			}
			if kept != nil {
				// The lent connection becomes the watcher's (run).
				b.kept = kept
				return true
			}
			continue // serve what came meanwhile
		}
		if b.wantWatcher.Swap(false) && b.hasIdleSubs() {
			return true
		}
		select {
		case <-b.ctx.Done():
			return false
		case <-b.wake:
		case <-t.C:
			if b.hasIdleSubs() {
				return true
			}
		}
	}
}

// refreshLent brings the state up to date on a connection lent from the
// pool (or dialled within the budget, waiting for one if need be) and
// gives it back, or, when the account can spare it (canKeep), keeps it:
// it returns the watch on it then, synced, for the box's next watcher.
func (b *box) refreshLent(log interface{ Warn(string, ...any) }) (kept *watch, err error) {
	ctx, cancel := context.WithTimeout(b.ctx, b.hub.cfg.Timeout)
	defer cancel()
	c, err := b.lend(ctx)
	if err != nil {
		log.Warn("no connection to refresh an unwatched mailbox", "err", err)
		return nil, err
	}
	// A lent connection may have a mailbox selected, this one included:
	// leave it, so that the EXAMINE is sent (Select skips a mailbox
	// already selected, and the full sync needs its UIDVALIDITY and
	// EXISTS) and nothing of another mailbox is read as this one's.
	if err := c.Unselect(ctx); err != nil {
		c.Close()
		return nil, err
	}
	w := &watch{box: b, log: log, conn: c}
	// What the state knew before the EXAMINE, the connection has seen
	// once it is back in the pool (proxy/catchup.go): its marks.
	st0 := b.state()
	var uid0 uint32
	var modseq0 uint64
	if st0 != nil {
		uid0, modseq0 = st0.Marks()
	}
	err = w.fullSync(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	if b.canKeep() {
		w.synced = true
		return w, nil
	}
	if st0 != nil && b.state() == st0 {
		c.SyncedTo, c.SyncedUID = modseq0, uid0
	}
	if p := b.hub.cfg.Pool; p != nil {
		p.Put(b.key.Account, c)
	} else {
		c.Logout()
	}
	return nil, nil
}

// canKeep reports whether the account can spare the connection a passive
// box has just refreshed on, for the box's watcher: another connection of
// the account stays idle in the pool, or the budget has room to dial one.
// Then no command has to wait or reclaim anything because of it. When
// neither holds, every connection of the account is busy with commands,
// and the box stays passive: taking one would only make the next command
// take it back (a LOGOUT and a dial more for each round).
func (b *box) canKeep() bool {
	p := b.hub.cfg.Pool
	if p == nil || b.ctx.Err() != nil {
		return false
	}
	return p.IdleFor(b.key.Account) > 0 || !p.Budget().Full(b.key.Account)
}

// lend takes an idle connection of the account from the pool, preferring
// one with the mailbox selected, or dials one.
func (b *box) lend(ctx context.Context) (*upstream.Conn, error) {
	if p := b.hub.cfg.Pool; p != nil {
		for {
			c := p.Get(b.key.Account, b.key.Mailbox)
			if c == nil {
				break
			}
			if c.Alive() {
				return c, nil
			}
			c.Close()
		}
	}
	b.hub.mu.Lock()
	dial := b.dial
	b.hub.mu.Unlock()
	if dial == nil {
		return nil, upstream.ErrBudget
	}
	return dial(ctx)
}
