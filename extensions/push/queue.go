package push

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/internal/recovery"
)

// Delivery: at least once, durable, coalesced, retried.
//
// An Event becomes one pending push per registration that pushes its
// mailbox. The push is handed to the senders at once, and written to the
// store (push/q/...) meanwhile, in the same atomic write as the account's
// new cursor: the disk's flush is not on the push's path. A crash before
// that write leaves the cursor where it was, so the next look (at the
// next start) finds the same mail again and pushes it again; a crash
// after it finds the pending push in the store. Either way nothing the
// proxy decided to push is lost; a device may be woken twice (at least
// once). A pending push is removed from the store once it is delivered
// (after its write, if that was still under way), or given up.
//
// Coalescing: while a registration's push for a mailbox waits (its turn,
// or a retry), a new Event of that mailbox is merged into it (New added
// up, the latest Messages and UIDNEXT, the earliest At), so a burst, or
// a push service that is down, ends in one push, not one per message. A
// push already being sent is not merged into; the new Event waits behind
// it as the registration's next push. So a registration holds at most two
// pending pushes per mailbox.
//
// Each registration's pushes go out one at a time, in order; Senders
// pushes of different registrations at once. A failure is retried after
// a backoff doubling from MinBackoff to MaxBackoff (with jitter, and no
// sooner than a push service's Retry-After; the backoff starts over after
// a restart); a push that has waited GiveUp since it was first queued is
// given up: counted (GivenUp) and logged at ERROR, never dropped
// silently. ErrGone removes the registration; ErrRejected gives the push
// up at once.

// qkey names a registration in the queue.
type qkey struct{ account, channel, id string }

// item is one pending push.
type item struct {
	seq uint64
	rec pending
	due time.Time
	// writes counts the store writes of the item under way (one
	// account's are one after the other: under its lock); a push done
	// meanwhile (doneEarly) is removed from the store by the last of
	// them, so that no write brings its record back.
	writes    int
	doneEarly bool
}

// regQueue is a registration's pending pushes, oldest first.
type regQueue struct {
	key      qkey
	items    []*item
	inflight bool // items[0] is being sent
	idx      int  // in queue.ready; -1 when not there
}

// ready reports whether the registration's first push may be sent.
func (rq *regQueue) ready() bool { return len(rq.items) > 0 && !rq.inflight }

type queue struct {
	e     *Extension
	mu    sync.Mutex
	regs  map[qkey]*regQueue
	ready readyHeap // registrations whose first push may be sent, by its due time
	seq   uint64
	items int
	wake  chan struct{}
}

func (q *queue) init(e *Extension) {
	q.e = e
	q.regs = map[qkey]*regQueue{}
	q.wake = make(chan struct{}, 1)
}

func (q *queue) start() {
	for range q.e.cfg.Senders {
		q.e.wg.Go(q.sendLoop)
	}
}

// size returns the number of pending pushes.
func (q *queue) size() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.items
}

// pendingOf returns the number of pending pushes of account.
func (q *queue) pendingOf(account string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for k, rq := range q.regs {
		if k.account == account {
			n += len(rq.items)
		}
	}
	return n
}

// nextSeq returns a sequence number above every one handed out (and the
// clock, so numbers keep rising across restarts).
func (q *queue) nextSeq() uint64 {
	q.seq = max(q.seq+1, uint64(time.Now().UnixNano()))
	return q.seq
}

// fix puts rq in the ready heap or takes it out, as it now is (q.mu held).
func (q *queue) fix(rq *regQueue) {
	switch {
	case rq.ready() && rq.idx < 0:
		heap.Push(&q.ready, rq)
	case rq.ready():
		heap.Fix(&q.ready, rq.idx)
	case rq.idx >= 0:
		heap.Remove(&q.ready, rq.idx)
	}
	if len(rq.items) == 0 && !rq.inflight && q.regs[rq.key] == rq {
		delete(q.regs, rq.key)
	}
}

// observation is what a look at a mailbox found.
type observation struct {
	uidValidity, uidNext, messages uint32
	at                             time.Time
	// newSince counts the messages with a UID at or above c.
	newSince func(c uint32) uint32
}

// observe compares an observation of an account's mailbox with its
// cursor and, when new mail arrived, queues an Event for each
// registration that pushes the mailbox, in one store write with the new
// cursor. The first observation of a mailbox only sets the cursor, as
// does one of a new UIDVALIDITY (the old UIDs mean nothing).
//
// The cursor is keyed by the mailbox's name as the hub spells it now: a
// live watch that started before the account's delimiter was known
// observes inbox.Lists, and restarts as INBOX.Lists once it is known
// (watchers.update); the old watch's last look and the new one's first
// must find the same cursor, or mail that came between them is taken for
// the new watch's starting point and never pushed (readCursor carries a
// cursor kept under the old spelling over).
func (e *Extension) observe(account, mailbox string, o observation) {
	mailbox = e.canonical(account, mailbox)
	unlock := e.lock(account)
	defer unlock()
	cur, found, aliases, err := e.readCursor(account, mailbox, o.uidValidity)
	if err != nil {
		e.log.Error("reading a cursor", "account", logName(account), "err", err)
		return
	}
	next := cursor{UIDValidity: o.uidValidity, UIDNext: o.uidNext}
	puts := []accountdata.Record{{Key: cursorKey(mailbox), Value: encodeCursor(next)}}
	if !found || cur.UIDValidity != o.uidValidity {
		if found {
			e.log.Info("new UIDVALIDITY: the mailbox starts over", "account", logName(account), "mailbox", mailbox)
		}
		if err := e.data.Write(account, puts, aliases); err != nil {
			e.log.Error("storing a cursor", "account", logName(account), "err", err)
		}
		return
	}
	if o.uidNext <= cur.UIDNext {
		// Nothing new (expunges change no cursor); a cursor carried
		// over from another spelling is kept under this one.
		if len(aliases) > 0 {
			carried := []accountdata.Record{{Key: cursorKey(mailbox), Value: encodeCursor(cur)}}
			if err := e.data.Write(account, carried, aliases); err != nil {
				e.log.Error("storing a cursor", "account", logName(account), "err", err)
			}
		}
		return
	}
	n := o.newSince(cur.UIDNext)
	if n == 0 {
		// New UIDs, all expunged already: nothing to announce.
		if err := e.data.Write(account, puts, aliases); err != nil {
			e.log.Error("storing a cursor", "account", logName(account), "err", err)
		}
		return
	}
	ev := Event{Mailbox: mailbox, Messages: o.messages, New: n, UIDNext: o.uidNext, At: o.at}
	if err := e.q.enqueue(account, e.w.targets(account, mailbox), ev, puts); err != nil {
		// The cursor stayed: the next look finds the same mail.
		e.log.Error("queueing a push; the next change of the mailbox tries again", "account", logName(account), "mailbox", mailbox, "err", err)
		return
	}
	if len(aliases) > 0 {
		// After the new cursor's write: a crash between the two leaves
		// an older cursor under the other spelling, which the next
		// look passes over (readCursor takes the furthest).
		if err := e.data.Write(account, nil, aliases); err != nil {
			e.log.Error("removing a cursor kept under another spelling", "account", logName(account), "err", err)
		}
	}
}

// readCursor returns the account's cursor in mailbox (spelt as the hub
// spells it), found false when there is none or it is unreadable.
//
// A mailbox under INBOX may have a cursor under another spelling of its
// name as well: inbox.Lists, kept by a live watch that started before the
// account's delimiter was known and has since restarted as INBOX.Lists.
// aliases are those records' keys, to be deleted with the next write of
// the cursor; one of them of the same UIDVALIDITY as the mailbox now is
// carried over, the furthest if several (a UIDNEXT only grows, so the
// furthest is the latest: taking it pushes nothing twice). One of
// another UIDVALIDITY (the mailbox was deleted and made anew since) is
// not carried. A name is another spelling of mailbox only as far as the
// account's delimiter is known (MailboxService.Canonical): without it,
// inbox.Lists and INBOX.Lists may be two mailboxes.
func (e *Extension) readCursor(account, mailbox string, uidValidity uint32) (cur cursor, found bool, aliases []string, err error) {
	v, err := e.data.Get(account, cursorKey(mailbox))
	switch {
	case err == nil:
		if cur, err = decodeCursor(v); err != nil {
			e.log.Error("unreadable cursor; starting it anew", "account", logName(account), "mailbox", mailbox, "err", err)
		} else {
			found = true
		}
	case !errors.Is(err, accountdata.ErrNotFound):
		return cur, false, nil, err
	}
	if len(mailbox) <= len("INBOX") || mailbox[:len("INBOX")] != "INBOX" {
		return cur, found, nil, nil // no other spelling
	}
	err = e.data.List(account, cursorPrefix, func(k string, v []byte) bool {
		name := k[len(cursorPrefix):]
		if name == mailbox || e.canonical(account, name) != mailbox {
			return true
		}
		aliases = append(aliases, k)
		c, err := decodeCursor(v)
		if err == nil && c.UIDValidity == uidValidity && (!found || cur.UIDValidity != uidValidity || c.UIDNext > cur.UIDNext) {
			cur, found = c, true
		}
		return true
	})
	if err != nil {
		return cur, false, nil, fmt.Errorf("push: reading cursors: %w", err)
	}
	return cur, found, aliases, nil
}

// enqueue queues ev for each target (merging into a waiting push of the
// same mailbox), hands the pushes to the senders, and writes them and
// extra (the cursor) in one store write. Called under the account's lock,
// which orders the account's writes.
func (q *queue) enqueue(account string, targets []regRef, ev Event, extra []accountdata.Record) error {
	type plan struct {
		key string
		it  *item
		rec pending
	}
	now := time.Now()
	var plans []plan
	q.mu.Lock()
	for _, t := range targets {
		k := qkey{account, t.channel, t.id}
		rq := q.regs[k]
		if rq == nil {
			rq = &regQueue{key: k, idx: -1}
			q.regs[k] = rq
		}
		var it *item
		for i, x := range rq.items {
			if x.rec.Mailbox == ev.Mailbox && !(i == 0 && rq.inflight) {
				it = x
				it.rec = merge(it.rec, ev)
				break
			}
		}
		if it == nil {
			it = &item{seq: q.nextSeq(), due: now, rec: pending{Event: ev, First: now}}
			rq.items = append(rq.items, it)
			q.items++
		}
		it.writes++
		q.fix(rq)
		plans = append(plans, plan{pendingKey(t.channel, t.id, it.seq), it, it.rec})
	}
	q.mu.Unlock()
	signal(q.wake)
	puts := slices.Clone(extra)
	for _, p := range plans {
		puts = append(puts, accountdata.Record{Key: p.key, Value: encodePending(p.rec)})
	}
	err := q.e.data.Write(account, puts, nil)
	var dels []string
	q.mu.Lock()
	for _, p := range plans {
		if p.it.writes--; p.it.writes == 0 && p.it.doneEarly {
			dels = append(dels, p.key)
		}
	}
	q.mu.Unlock()
	if len(dels) > 0 {
		if derr := q.e.data.Write(account, nil, dels); derr != nil {
			q.e.log.Error("removing delivered pushes; they may be sent again after a restart", "account", logName(account), "err", derr)
		}
	}
	if err != nil {
		// The pushes go out from memory; the cursor stayed, so the next
		// look finds the same mail (and pushes it again: at least once).
		return fmt.Errorf("push: storing pending pushes: %w", err)
	}
	return nil
}

// merge adds ev to a waiting push of the same mailbox.
func merge(p pending, ev Event) pending {
	p.New = uint32(min(uint64(p.New)+uint64(ev.New), math.MaxUint32))
	p.Messages, p.UIDNext = ev.Messages, ev.UIDNext
	if ev.At.Before(p.At) {
		p.At = ev.At
	}
	return p
}

// drop forgets a registration's pushes (it was removed with them).
func (q *queue) drop(k qkey) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropLocked(k)
}

// dropLocked is drop with q.mu held. A push being sent finishes its
// attempt; its outcome touches the queue no more.
func (q *queue) dropLocked(k qkey) {
	rq := q.regs[k]
	if rq == nil {
		return
	}
	q.items -= len(rq.items)
	rq.items = nil
	delete(q.regs, k)
	if rq.idx >= 0 {
		heap.Remove(&q.ready, rq.idx)
	}
}

// load reads the pending pushes saved before the last stop (on a single
// node: every account's).
func (q *queue) load() {
	var accounts []string
	if err := q.e.data.Accounts(pendingPrefix, func(a string) bool {
		accounts = append(accounts, a)
		return true
	}); err != nil {
		q.e.log.Error("listing pending pushes; they wait for the next start", "err", err)
		return
	}
	for _, account := range accounts {
		unlock := q.e.lock(account)
		q.loadAccountLocked(account)
		unlock()
	}
}

// loadAccountLocked reads an account's pending pushes into the queue (at
// start, or in a cluster when this node takes the account: the pushes its
// previous holder did not deliver). Called under the account's lock.
func (q *queue) loadAccountLocked(account string) {
	type loaded struct {
		k   qkey
		seq uint64
		rec pending
	}
	now := time.Now()
	var got []loaded
	var bad []string
	err := q.e.data.List(account, pendingPrefix, func(key string, v []byte) bool {
		ch, id, seq, ok := parsePendingKey(key[len(pendingPrefix):])
		rec, err := decodePending(v)
		if !ok || err != nil {
			bad = append(bad, key)
			return true
		}
		got = append(got, loaded{qkey{account, ch, id}, seq, rec})
		return true
	})
	if err == nil && len(bad) > 0 {
		// A push that cannot be read cannot be sent: given up, said so.
		q.e.log.Error("unreadable pending pushes given up", "account", logName(account), "count", len(bad))
		q.e.stats.gaveUp("", len(bad))
		err = q.e.data.Write(account, nil, bad)
	}
	q.mu.Lock()
	for _, l := range got {
		rq := q.regs[l.k]
		if rq == nil {
			rq = &regQueue{key: l.k, idx: -1}
			q.regs[l.k] = rq
		}
		if slices.ContainsFunc(rq.items, func(it *item) bool { return it.seq == l.seq }) {
			continue
		}
		rq.items = append(rq.items, &item{seq: l.seq, rec: l.rec, due: now})
		slices.SortFunc(rq.items, func(a, b *item) int { return cmpSeq(a.seq, b.seq) })
		q.items++
		q.seq = max(q.seq, l.seq)
		q.fix(rq)
	}
	q.mu.Unlock()
	if err != nil {
		q.e.log.Error("reading pending pushes", "account", logName(account), "err", err)
	}
	signal(q.wake)
}

// forget drops an account's pushes from memory, not from the store: in a
// cluster, when the account left this node, whose next holder loads and
// sends them. A push being sent finishes its attempt.
func (q *queue) forget(account string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k := range q.regs {
		if k.account == account {
			q.dropLocked(k)
		}
	}
}

func cmpSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sendLoop is one of the Senders.
func (q *queue) sendLoop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		var rq *regQueue
		for rq == nil {
			if q.e.ctx.Err() != nil {
				q.mu.Unlock()
				return
			}
			wait := time.Hour
			if len(q.ready) > 0 {
				if wait = time.Until(q.ready[0].items[0].due); wait <= 0 {
					rq = heap.Pop(&q.ready).(*regQueue)
					break
				}
			}
			q.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-q.wake:
			case <-timer.C:
			case <-q.e.ctx.Done():
				return
			}
			timer.Stop()
			q.mu.Lock()
		}
		rq.inflight = true
		it := rq.items[0]
		rec := it.rec
		if len(q.ready) > 0 && !q.ready[0].items[0].due.After(time.Now()) {
			signal(q.wake) // the next one is due too: another sender takes it
		}
		q.mu.Unlock()
		q.send(rq, it, rec)
	}
}

// send makes one attempt at a push and acts on its outcome.
func (q *queue) send(rq *regQueue, it *item, rec pending) {
	e := q.e
	k := rq.key
	key := pendingKey(k.channel, k.id, it.seq)
	// done removes the push (delivered, given up, unreadable): from the
	// store now, or after a write of it still under way.
	done := func() {
		q.mu.Lock()
		rq.inflight = false
		if len(rq.items) > 0 && rq.items[0] == it {
			rq.items = rq.items[1:]
			q.items--
		}
		early := it.writes > 0
		it.doneEarly = early
		if q.regs[k] == rq {
			q.fix(rq)
		}
		q.mu.Unlock()
		signal(q.wake)
		if !early {
			if err := accountdata.Delete(e.data, k.account, key); err != nil {
				e.log.Error("removing a pending push; it may be sent again after a restart", "account", logName(k.account), "err", err)
			}
		}
	}
	if e.place != nil && !e.w.known(k.account) {
		// In a cluster, an account that left this node meanwhile: its
		// new holder sends its pushes (from the store).
		q.mu.Lock()
		rq.inflight = false
		if q.regs[k] == rq {
			q.dropLocked(k)
		}
		q.mu.Unlock()
		return
	}
	v, err := e.data.Get(k.account, regKey(k.channel, k.id))
	if errors.Is(err, accountdata.ErrNotFound) {
		done() // unregistered meanwhile: the push went with it
		return
	}
	var reg Registration
	if err == nil {
		reg, err = decodeReg(v)
	}
	ch := e.channels[k.channel]
	if err == nil && ch == nil {
		err = fmt.Errorf("push: channel %q is not configured", k.channel)
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.DeliverTimeout)
		err = deliver(ctx, ch, k.account, reg, rec.Event)
		cancel()
	}
	if e.ctx.Err() != nil {
		// Shutting down: the push stays in the store for the next start.
		return
	}
	log := e.log.With("account", logName(k.account), "channel", k.channel, "id", k.id, "mailbox", rec.Mailbox)
	switch {
	case err == nil:
		d := time.Since(rec.At)
		e.stats.sent(k.channel)
		if e.OnDelivered != nil {
			e.OnDelivered(k.channel, d)
		}
		log.Debug("pushed", "new", rec.New, "latency", d, "attempts", rec.Attempts+1)
		done()
		return
	case errors.Is(err, ErrGone):
		e.stats.gone(k.channel)
		if err := e.unregister(k.account, k.channel, k.id, "registration gone at its push service: removed"); err != nil {
			log.Error("removing a gone registration", "err", err)
		}
		q.mu.Lock()
		rq.inflight = false
		q.mu.Unlock()
		return
	case errors.Is(err, ErrRejected):
		e.stats.failed(k.channel)
		e.stats.gaveUp(k.channel, 1)
		log.Error("push refused by the push service: given up", "err", err, "attempts", rec.Attempts+1)
		done()
		return
	}
	e.stats.failed(k.channel)
	rec.Attempts++
	if waited := time.Since(rec.First); waited >= e.cfg.GiveUp {
		e.stats.gaveUp(k.channel, 1)
		log.Error("push given up", "err", err, "attempts", rec.Attempts, "waited", waited.Round(time.Second))
		done()
		return
	}
	d := backoff(e.cfg.MinBackoff, e.cfg.MaxBackoff, rec.Attempts)
	var re *RetryError
	if errors.As(err, &re) && re.After > d {
		d = min(re.After, e.cfg.MaxBackoff)
	}
	e.stats.retried(k.channel)
	log.Warn("push failed; retrying", "err", err, "attempts", rec.Attempts, "retry_in", d.Round(time.Millisecond))
	q.mu.Lock()
	rq.inflight = false
	it.rec.Attempts = rec.Attempts
	it.due = time.Now().Add(d)
	if q.regs[k] == rq {
		q.fix(rq)
	}
	q.mu.Unlock()
	signal(q.wake)
}

// deliver calls the channel, a panic in it turned into an error (counted
// by recovery as a push panic): one channel's bug must not stop the
// senders.
func deliver(ctx context.Context, ch Channel, account string, reg Registration, ev Event) (err error) {
	defer recovery.Recover(recovery.Push, nil, func(perr error) { err = perr })
	return ch.Deliver(ctx, account, reg, ev)
}

// readyHeap orders the registrations by their first push's due time.
type readyHeap []*regQueue

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return h[i].items[0].due.Before(h[j].items[0].due) }
func (h readyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *readyHeap) Push(x any) {
	rq := x.(*regQueue)
	rq.idx = len(*h)
	*h = append(*h, rq)
}
func (h *readyHeap) Pop() any {
	old := *h
	rq := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	rq.idx = -1
	return rq
}
