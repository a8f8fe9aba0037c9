package push

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Cluster mode (Services.Placement set; docs/push.md).
//
// An account's records and mailbox states are written only by the node
// that owns it, fenced by its epoch, and a node owns an account only while
// something keeps it there. So each node watches the registered accounts
// it holds (proxy.Placement.HoldAccount: counted like a session, so the
// account stays here, and the logins of its sessions at other nodes are
// handed to this one), and only those:
//
//   - a claim pass lists the registered accounts (accountdata.Accounts,
//     shared by the nodes) and holds those whose preferred node this is
//     (rendezvous hashing, as logins), at start, whenever the placement
//     changes (a node died, joined, began draining; this node serves
//     again after fencing), a few times soon after a change (a draining
//     node releases its accounts at its next renewal), and every
//     ClaimInterval;
//   - a registration, and a login of a registered account held by no node
//     (its session took it here), hold the account where the session is;
//   - an account that leaves the node (drain, fencing, a takeover found by
//     a fenced write, shutdown) is told to push first (the hold's lost
//     function): its watchers stop and its pushes are dropped from memory,
//     not from the store. The next holder reads the registrations, the
//     cursors and the pending pushes from the shared store: what was
//     pending is delivered by it, and mail that came meanwhile is found
//     from the cursor.
//
// At least once: a push the old holder sent but had not yet recorded as
// sent (its store write, or the removal of the pending record, was under
// way or refused once the account had moved) is sent again by the next
// holder.

// claimConcurrency bounds the holds taken at once by a claim pass (each is
// a database statement or two).
const claimConcurrency = 8

// claimFollowUps is how many extra passes follow a placement change, one
// second apart, doubling: accounts of a draining node are released at its
// own next renewal, after the others saw it draining.
const claimFollowUps = 5

// hold is push's hold of an account on this node.
type hold struct {
	lost bool   // the account left the node; guarded by watchers.mu
	rel  func() // ends the hold; set before the account is loaded
	once sync.Once
}

// release ends the hold, once; nil-safe (a single node has none).
func (h *hold) release() {
	if h != nil && h.rel != nil {
		h.once.Do(h.rel)
	}
}

// claimLoop runs the claim passes (one goroutine of the extension).
func (e *Extension) claimLoop() {
	timer := time.NewTimer(0) // the first pass at once
	defer timer.Stop()
	followUps := claimFollowUps // none before a change
	for {
		changed := e.place.PlacementChanged()
		select {
		case <-e.ctx.Done():
			return
		case <-changed:
			followUps = 0
		case <-timer.C:
		}
		missed := e.claimPass()
		next := e.cfg.ClaimInterval
		if missed > 0 && followUps < claimFollowUps {
			next = min(next, time.Second<<followUps)
			followUps++
		}
		timer.Reset(next)
	}
}

// claimPass holds the registered accounts preferred here that this node
// does not hold yet, and returns how many of them another node holds.
func (e *Extension) claimPass() int {
	var accounts []string
	if err := e.data.Accounts(regPrefix, func(a string) bool {
		accounts = append(accounts, a)
		return true
	}); err != nil {
		e.log.Error("listing registered accounts; the next claim pass tries again", "err", err)
		return 0
	}
	var missed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, claimConcurrency)
	held := 0
	for _, a := range accounts {
		if e.ctx.Err() != nil {
			break
		}
		if e.w.known(a) || !e.place.PreferredHere(a) {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			unlock := e.lock(a)
			err := e.claimLocked(a)
			unlock()
			switch {
			case errors.Is(err, proxy.ErrHeldElsewhere):
				missed.Add(1) // its holder watches it; it may move later
			case err != nil:
				e.log.Debug("claiming a registered account", "account", logName(a), "err", err)
			}
		})
		held++
	}
	wg.Wait()
	if held > 0 {
		e.log.Debug("claim pass", "registered", len(accounts), "tried", held, "held_elsewhere", missed.Load())
	}
	return int(missed.Load())
}

// claimLocked holds account here, then loads its registrations and its
// pending pushes and watches it. Called under the account's lock; nil if
// it is held here already.
func (e *Extension) claimLocked(account string) error {
	if e.w.known(account) {
		return nil
	}
	h := &hold{}
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	release, err := e.place.HoldAccount(ctx, account, func() { e.lostAccount(account, h) })
	cancel()
	if err != nil {
		return err
	}
	h.rel = release
	if !e.loadHeldLocked(account, h) {
		// No registration left (or the account already left again).
		h.release()
		return nil
	}
	e.q.loadAccountLocked(account)
	e.log.Info("holding a registered account on this node", "account", logName(account), "pending", e.q.pendingOf(account))
	return nil
}

// claimAtLogin holds a registered account a session logged in to here
// (in the background: the login waits for nothing), and keeps the login's
// credentials where sealed credentials are used.
func (e *Extension) claimAtLogin(account string, a proxy.Account) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if e.w.closed {
		return
	}
	e.wg.Go(func() {
		n, err := accountdata.Count(e.data, account, regPrefix)
		if err != nil || n == 0 {
			return
		}
		unlock := e.lock(account)
		err = e.claimLocked(account)
		unlock()
		if err != nil {
			e.log.Debug("holding a registered account at a login", "account", logName(account), "err", err)
			return
		}
		if e.seal != nil {
			if user, pass, ok := a.Credentials(); ok {
				if err := e.refreshCreds(account, user, pass); err != nil {
					e.log.Warn("keeping the credentials of a login", "account", logName(account), "err", err)
				}
			}
		}
	})
}

// lostAccount is a hold's lost function: the account left this node, so
// it is watched here no more and its pushes are left to its next holder.
func (e *Extension) lostAccount(account string, h *hold) {
	w := &e.w
	w.mu.Lock()
	h.lost = true
	a := w.accts[account]
	mine := a != nil && a.hold == h
	if mine {
		w.forget(a)
	}
	w.mu.Unlock()
	if mine {
		e.q.forget(account)
		e.log.Info("registered account left this node: not watched here any more", "account", logName(account))
	}
}
