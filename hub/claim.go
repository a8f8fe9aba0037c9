package hub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lemonproxy/lemonproxy/syncstate"
)

// maxClaims bounds how many claims a box remembers. A claim beyond it is
// still applied, but not remembered, and the box asks for a round trip,
// which resolves every claim made before it.
const maxClaims = 1024

// errStopped is what Own and Sync return once the watcher has stopped.
var errStopped = errors.New("hub: watcher stopped")

// A claim is a session's own change to a message's flags (the upstream's
// answer to the session's STORE), applied by the box's goroutine and
// remembered until the watcher's own connection has caught up with it.
//
// The watcher's connection reports the same change later, and may first
// report older flags: with IDLE, Dovecot sends its notifications about half
// a second late, so a report read after the claim can describe the message
// as it was before the STORE. Applying that report would undo the session's
// change and redo it with the next report: every session would be told of
// two changes that never happened. So while a claim stands, reports of its
// UID are ordered against it:
//
//   - a report of the claimed flags confirms the claim, which is forgotten;
//   - a report of other flags is held, not applied: on one connection's
//     stream a stale report and a later change by someone else look the
//     same. The box does a round trip (NOOP) instead. Once a round trip
//     that started after the claim has completed, the connection has
//     reported everything the upstream did before the STORE's answer was
//     claimed, so its latest report is the truth: it is applied if it
//     differs from the state;
//   - an expunge is applied at once (UIDs are never reused, so it cannot
//     be stale) and ends the claim.
//
// A round trip also forgets claims nothing was held for, and a full resync
// (reconnect) forgets every claim: its listing started after them.
type claim struct {
	flags []string // normalized; the state's flags for the UID while the claim stands
	// mark is box.trips when the session last claimed the UID: a round trip
	// numbered above it started after the session's STORE was answered.
	mark   uint64
	held   bool     // a report of other flags came after the claim
	report []string // the latest such report (normalized)
}

// claimReq carries a claim from a session to the box's goroutine: a
// STORE's flags (uid, flags), or the new messages the session's own
// command added (added: Subscription.Added).
type claimReq struct {
	state *syncstate.Mailbox // the state the session follows
	uid   uint32
	flags []string
	added []syncstate.Message
	reply chan claimReply // buffered: the box never waits for the session
}

type claimReply struct {
	modseq uint64
	ok     bool
	err    error
}

// Own hands the flags the session's own STORE left a message with (the
// upstream's FETCH answer to it) to the mailbox's watcher, which applies
// them at once, tells every watching session, and orders the reports its
// own connection later makes of the message against them (see claim), so
// that a stale report does not undo the change. It returns the message's
// mod-sequence after the claim (the one it had if the flags already were
// those), which CONDSTORE's MODSEQ item in the STORE's answer needs.
//
// Only the flags of a message the state has change: ok is false for a
// message the watcher already saw expunged (the session's connection may
// still show it; UIDs are never reused, so it must not come back). Own
// waits for the watcher, which answers promptly unless it is in the middle
// of a command of its own. If the watcher has stopped (or ctx ends first),
// Own returns an error and nothing is applied by this call; the session may
// go on, as the watcher's next full resync reports every change anyway.
func (s *Subscription) Own(ctx context.Context, uid uint32, flags []string) (modseq uint64, ok bool, err error) {
	r := s.box.own(ctx, &claimReq{state: s.state, uid: uid, flags: flags, reply: make(chan claimReply, 1)})
	return r.modseq, r.ok, r.err
}

// own queues a claim for the box's goroutine and waits for its answer.
func (b *box) own(ctx context.Context, req *claimReq) claimReply {
	b.syncMu.Lock()
	b.claimReqs = append(b.claimReqs, req)
	if b.conn != nil {
		// Blocked in an IDLE read: interrupt it, as sync does; the
		// watcher serves the claim and goes on reading in IDLE.
		b.conn.SetReadDeadline(time.Unix(1, 0))
	}
	b.syncMu.Unlock()
	b.signal()
	select {
	case r := <-req.reply:
		return r
	case <-ctx.Done():
		return claimReply{err: fmt.Errorf("hub: %s in %q: %w", req, b.key.Mailbox, ctx.Err())}
	case <-b.stopped:
		// The watcher may have answered just before it stopped.
		select {
		case r := <-req.reply:
			return r
		default:
		}
		return claimReply{err: fmt.Errorf("hub: %s in %q: %w", req, b.key.Mailbox, errStopped)}
	}
}

// signal wakes a watcher waiting in a select (polling, backing off).
func (b *box) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// takeClaims removes and returns the queued claims.
func (b *box) takeClaims() []*claimReq {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	r := b.claimReqs
	b.claimReqs = nil
	return r
}

// String names the request in errors.
func (r *claimReq) String() string {
	if r.added != nil {
		return fmt.Sprintf("adding %d new messages", len(r.added))
	}
	return fmt.Sprintf("claiming UID %d", r.uid)
}

// serveClaims applies the queued claims and new messages, in the order
// they came. Only the box's goroutine calls it.
//
// The claims queued together (of several sessions, or of one STORE's
// messages) are applied in one batch, and so saved in one write of the
// Store (a bbolt transaction with two fsyncs): applied one by one, each
// waited for the saves of those before it. A batch holds each message once, so that each claim's
// answer is the mod-sequence of its own change; a second claim of a
// message starts the next batch.
func (b *box) serveClaims() {
	reqs := b.takeClaims()
	for len(reqs) > 0 {
		if reqs[0].added != nil {
			b.applyAdded(reqs[0])
			reqs = reqs[1:]
			continue
		}
		n := 1
		seen := map[uint32]bool{reqs[0].uid: true}
		for n < len(reqs) && reqs[n].added == nil && !seen[reqs[n].uid] {
			seen[reqs[n].uid] = true
			n++
		}
		b.applyClaims(reqs[:n])
		reqs = reqs[n:]
	}
}

// applyClaims applies claims of distinct messages to the state in one
// batch, remembers them and answers each.
func (b *box) applyClaims(reqs []*claimReq) {
	st := b.state()
	type applied struct {
		req   *claimReq
		flags []string
		c     *claim // nil: not remembered (maxClaims)
		isNew bool   // c was made for this claim
	}
	var todo []applied
	changes := syncstate.Changes{FlagsOnly: true}
	for _, req := range reqs {
		if st == nil || st != req.state {
			// The UIDVALIDITY changed: the session's UID means nothing
			// here.
			req.reply <- claimReply{err: ErrUIDValidity}
			continue
		}
		flags := syncstate.NormalizeFlags(req.flags)
		cur, modseq, ok := st.Flags(req.uid)
		if !ok {
			req.reply <- claimReply{}
			continue
		}
		c := b.claims[req.uid]
		if slices.Equal(cur, flags) {
			// Nothing changes. A standing claim of these flags now
			// covers this STORE too; without one, the state came from
			// the watcher, whose later reports are in order anyway.
			if c != nil {
				c.mark = b.trips
			}
			req.reply <- claimReply{modseq: modseq, ok: true}
			continue
		}
		isNew := false
		if c == nil {
			if len(b.claims) >= maxClaims {
				// Applied but not remembered: a stale report could undo
				// it until the round trip resolves the remembered ones.
				b.needTrip = true
			} else {
				if b.claims == nil {
					b.claims = map[uint32]*claim{}
				}
				c, isNew = &claim{}, true
				b.claims[req.uid] = c
			}
		}
		changes.Upsert = append(changes.Upsert, syncstate.Message{UID: req.uid, Flags: flags})
		todo = append(todo, applied{req, flags, c, isNew})
	}
	if len(todo) == 0 {
		return
	}
	changed, err := st.Apply(changes)
	if err != nil {
		// Not stored, so not applied and not claimed: the watcher's own
		// reports of the changes come later.
		for _, a := range todo {
			if a.isNew {
				delete(b.claims, a.req.uid)
			}
			a.req.reply <- claimReply{err: fmt.Errorf("hub: claiming UID %d in %q: %w", a.req.uid, b.key.Mailbox, err)}
		}
		return
	}
	for _, a := range todo {
		if a.c != nil {
			// A held report stays: if no newer one comes, it is still
			// the connection's latest word on the message.
			a.c.flags, a.c.mark = a.flags, b.trips
		}
	}
	if changed {
		b.lastWait.Store(0)
		b.lastRead.Store(time.Now().UnixNano())
		b.notifyAll()
	}
	for _, a := range todo {
		_, modseq, _ := st.Flags(a.req.uid)
		a.req.reply <- claimReply{modseq: modseq, ok: true}
	}
}

// orderReports filters a batch of the watcher's reports through the
// standing claims (see claim): confirmations and held reports leave the
// batch, expunges end their claims. A report of a new message a session
// told of (ownchanges.go) confirms it: the report is the truth.
func (b *box) orderReports(c *syncstate.Changes) {
	if len(b.claims) == 0 && len(b.added) == 0 {
		return
	}
	for _, uid := range c.Expunged {
		delete(b.claims, uid)
		delete(b.added, uid)
	}
	out := c.Upsert[:0]
	for _, m := range c.Upsert {
		delete(b.added, m.UID)
		cl := b.claims[m.UID]
		if cl == nil {
			out = append(out, m)
			continue
		}
		flags := syncstate.NormalizeFlags(m.Flags)
		if slices.Equal(flags, cl.flags) {
			// The claim's own change: the state has it already.
			delete(b.claims, m.UID)
			continue
		}
		cl.held, cl.report = true, flags
		b.needTrip = true
	}
	clear(c.Upsert[len(out):])
	c.Upsert = out
}

// startTrip numbers a round trip about to be sent.
func (b *box) startTrip() uint64 {
	b.trips++
	return b.trips
}

// resolveClaims is called when round trip k has completed and its answers
// are committed: every claim made before it started is settled, with the
// latest report held for it applied if it differs from the state, and so
// is every new message a session told of before it (resolveAdded); those
// told of since want the next round trip. An error (the state could not
// save) ends the watcher's connection, as in commit.
func (b *box) resolveClaims(k uint64) error {
	if err := b.resolveAdded(k); err != nil {
		return err
	}
	var apply []syncstate.Message
	b.needTrip = len(b.added) > 0
	for uid, c := range b.claims {
		if c.mark >= k {
			b.needTrip = b.needTrip || c.held
			continue
		}
		delete(b.claims, uid)
		if c.held && !slices.Equal(c.report, c.flags) {
			apply = append(apply, syncstate.Message{UID: uid, Flags: c.report})
		}
	}
	if len(apply) == 0 {
		return nil
	}
	slices.SortFunc(apply, func(x, y syncstate.Message) int { return cmp.Compare(x.UID, y.UID) })
	st := b.state()
	if st == nil {
		return nil
	}
	changed, err := st.Apply(syncstate.Changes{Upsert: apply, FlagsOnly: true})
	if err != nil {
		return fmt.Errorf("hub: applying held reports in %q: %w", b.key.Mailbox, err)
	}
	if changed {
		b.notifyAll()
	}
	return nil
}

// forgetClaims drops every claim and every new message sessions told of:
// a full resync's listing, which started after all of them, is the truth.
func (b *box) forgetClaims() {
	clear(b.claims)
	clear(b.added)
	b.needTrip = false
}
