package load

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fillMailbox makes sure the first account's mailbox holds at least n
// messages of about size bytes, appending what is missing through the
// outside connection (pipelined where the server has LITERAL+). It
// returns how many messages the mailbox held before.
func (r *runner) fillMailbox(mailbox string, n, size int, tag string) (int, error) {
	oc, err := r.outside().get(0, "")
	if err != nil {
		return 0, err
	}
	failed := true
	defer func() { r.outside().put(oc, failed) }()
	if _, err := oc.do("CREATE "+astring(mailbox), nil); err != nil {
		var se *statusError
		if !errors.As(err, &se) {
			return 0, err
		}
		// It exists (or cannot be created, which STATUS tells).
	}
	have := -1
	if _, err := oc.do("STATUS "+astring(mailbox)+" (MESSAGES)", func(rs *resp) error {
		if rs.head.Name == "STATUS" {
			if _, rest, ok := strings.Cut(strings.ToUpper(rs.head.Text), "(MESSAGES "); ok {
				num, _, _ := strings.Cut(rest, ")")
				have, _ = strconv.Atoi(strings.TrimSpace(num))
			}
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if have < 0 {
		return 0, fmt.Errorf("STATUS %s: no MESSAGES", mailbox)
	}
	var added atomic.Int64
	missing := n - have
	r.setPhase("filling "+mailbox, func() string { return fmt.Sprintf("%d/%d messages appended", added.Load(), max(missing, 0)) })
	const batch = 100
	for i := 0; i < missing && r.ctx.Err() == nil; {
		k := min(batch, missing-i)
		if !oc.has("LITERAL+") {
			k = 1
		}
		var b strings.Builder
		var tags []string
		for j := range k {
			msg := message(0, have+i+j, size, tag)
			t := oc.nextTag()
			tags = append(tags, t)
			if k == 1 {
				if _, err := oc.appendMsg(mailbox, "", msg); err != nil {
					return have, err
				}
				break
			}
			fmt.Fprintf(&b, "%s APPEND %s {%d+}\r\n", t, astring(mailbox), len(msg))
			b.Write(msg)
			b.WriteString("\r\n")
		}
		if k > 1 {
			if err := oc.write(b.String()); err != nil {
				return have, err
			}
			for _, t := range tags {
				if _, err := oc.await(t, "APPEND", nil); err != nil {
					return have, err
				}
			}
		}
		i += k
		added.Add(int64(k))
	}
	if err := r.ctx.Err(); err != nil {
		return have, err
	}
	failed = false
	return have, nil
}

// runResync: a mailbox of Messages messages; per round, Changes changes
// made from outside (a third of them expunges), then every client
// reconnects and resyncs with QRESYNC from its last state; beside it a
// full resync (SELECT and UID FETCH 1:* (FLAGS)). Every QRESYNC view is
// compared with the full one.
func (r *runner) runResync() error {
	cfg, res := r.cfg, r.res
	res.Params.Mailbox, res.Params.Messages, res.Params.Changes, res.Params.Rounds = cfg.Mailbox, cfg.Messages, cfg.Changes, cfg.Rounds
	have, err := r.fillMailbox(cfg.Mailbox, cfg.Messages, 400, "resync")
	if err != nil {
		return fmt.Errorf("filling %s: %w", cfg.Mailbox, err)
	}
	if have > cfg.Messages {
		res.Notes = append(res.Notes, fmt.Sprintf("%s already held %d messages (more than -messages %d)", cfg.Mailbox, have, cfg.Messages))
	}

	// Every client syncs once in full and keeps its state.
	type client struct {
		v view
	}
	clients := make([]*client, cfg.Clients)
	useQ := cfg.QResync != "off"
	var initial []float64
	var mu sync.Mutex
	var synced atomic.Int64
	r.setPhase("initial full sync", func() string { return fmt.Sprintf("%d/%d clients", synced.Load(), cfg.Clients) })
	var firstErr atomic.Pointer[error]
	r.forEach(cfg.Clients, cfg.Concurrency, func(i int) {
		c, err := r.login(0, cfg.Target)
		if err == nil {
			defer c.close()
			if useQ && cfg.QResync == "auto" && !c.has("QRESYNC") {
				err = errNoQResync
			} else if useQ {
				_, err = c.do("ENABLE QRESYNC", nil)
			}
		}
		var v view
		if err == nil {
			t := r.now()
			v, err = fullSync(c, cfg.Mailbox, nil)
			mu.Lock()
			initial = append(initial, ms(r.now()-t))
			mu.Unlock()
		}
		if err == nil && useQ && v.modseq == 0 {
			err = errors.New("no HIGHESTMODSEQ in the SELECT response after ENABLE QRESYNC")
		}
		if err != nil {
			firstErr.CompareAndSwap(nil, &err)
			return
		}
		c.do("LOGOUT", nil)
		clients[i] = &client{v: v}
		synced.Add(1)
	})
	if p := firstErr.Load(); p != nil {
		if errors.Is(*p, errNoQResync) {
			useQ = false
			res.Notes = append(res.Notes, "the target does not advertise QRESYNC: full resyncs only")
		} else {
			return *p
		}
	}
	if useQ && synced.Load() < int64(cfg.Clients) {
		return fmt.Errorf("initial sync: %d of %d clients", synced.Load(), cfg.Clients)
	}
	res.Params.QResync = useQ

	oc, err := r.outside().get(0, cfg.Mailbox)
	if err != nil {
		return err
	}
	ov, err := fullSync(oc.conn, cfg.Mailbox, nil)
	if err != nil {
		r.outside().put(oc, true)
		return fmt.Errorf("outside: %w", err)
	}
	r.outside().put(oc, false)
	res.add("messages", float64(len(ov.msgs)), "messages")
	res.add("initial-full-sync-time-p50", summarize(initial).p50, "ms")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8))

	var qBytes, qPlain, qTimes, qTotal, fBytes, fTimes []float64
	for round := 1; round <= cfg.Rounds && r.ctx.Err() == nil; round++ {
		r.setPhase(fmt.Sprintf("round %d/%d: changes", round, cfg.Rounds), nil)
		if ov, err = r.makeChanges(ov, cfg.Changes, rng); err != nil {
			return fmt.Errorf("changes from outside: %w", err)
		}
		if !r.sleep(cfg.Settle) {
			break
		}
		var done atomic.Int64
		r.setPhase(fmt.Sprintf("round %d/%d: resyncs", round, cfg.Rounds), func() string { return fmt.Sprintf("%d/%d clients", done.Load(), cfg.Clients) })
		views := make([]view, cfg.Clients)
		if useQ {
			r.forEach(cfg.Clients, cfg.Concurrency, func(i int) {
				defer done.Add(1)
				cl := clients[i]
				t0 := r.now()
				c, err := r.login(0, cfg.Target)
				if err != nil {
					r.errs.add("conn", "client %d: %v", i, err)
					return
				}
				defer c.close()
				if _, err := c.do("ENABLE QRESYNC", nil); err != nil {
					r.errs.add("protocol", "client %d: %v", i, err)
					return
				}
				in0, p0, t := c.wireIn(), c.plainIn(), r.now()
				var q qresyncSelect
				q.exists = -1
				_, err = c.do(fmt.Sprintf("SELECT %s (QRESYNC (%d %d))", astring(cfg.Mailbox), cl.v.uidValidity, cl.v.modseq), q.collect)
				el := r.now() - t
				if err != nil {
					r.errs.add("protocol", "client %d: %v", i, err)
					return
				}
				nv, err := q.resynced(cl.v)
				if err != nil {
					r.errs.add("resync", "client %d: %v", i, err)
					return
				}
				mu.Lock()
				qBytes = append(qBytes, float64(c.wireIn()-in0))
				qPlain = append(qPlain, float64(c.plainIn()-p0))
				qTimes = append(qTimes, ms(el))
				qTotal = append(qTotal, ms(r.now()-t0))
				mu.Unlock()
				cl.v = nv
				views[i] = nv
				c.do("LOGOUT", nil)
			})
		}
		// The full resync, for comparison and as the reference.
		c, err := r.login(0, cfg.Target)
		if err != nil {
			return fmt.Errorf("full resync: %w", err)
		}
		in0, t := c.wireIn(), r.now()
		full, err := fullSync(c, cfg.Mailbox, nil)
		el := r.now() - t
		b := c.wireIn() - in0
		c.do("LOGOUT", nil)
		c.close()
		if err != nil {
			return fmt.Errorf("full resync: %w", err)
		}
		fBytes = append(fBytes, float64(b))
		fTimes = append(fTimes, ms(el))
		if !slices.Equal(full.msgs, ov.msgs) {
			r.errs.add("resync", "round %d: the full resync through the target differs from the outside view: %s", round, diffViews(full, ov))
		}
		if useQ {
			for i, v := range views {
				if v.msgs == nil && full.msgs != nil {
					continue // failed, counted
				}
				if !slices.Equal(v.msgs, full.msgs) {
					r.errs.add("resync", "round %d client %d: the QRESYNC view differs from the full resync: %s", round, i, diffViews(v, full))
				}
			}
		}
	}
	res.add("changes-per-round", float64(cfg.Changes), "changes")
	if useQ {
		res.add("qresync-bytes-p50", summarize(qBytes).p50, "B")
		res.add("qresync-bytes-max", summarize(qBytes).max, "B")
		if cfg.Compress {
			res.add("qresync-uncompressed-bytes-p50", summarize(qPlain).p50, "B")
		}
		res.add("qresync-round-trips", 1, "commands")
		res.addSummary("qresync-time", summarize(qTimes), "ms")
		res.add("qresync-reconnect-time-p50", summarize(qTotal).p50, "ms")
	}
	res.add("full-resync-bytes-p50", summarize(fBytes).p50, "B")
	res.add("full-resync-time-p50", summarize(fTimes).p50, "ms")
	res.add("full-resync-time-max", summarize(fTimes).max, "ms")
	if useQ && len(qBytes) > 0 && summarize(fBytes).p50 > 0 {
		res.add("qresync-bytes-share-of-full", 100*summarize(qBytes).p50/summarize(fBytes).p50, "%")
	}
	return nil
}

var errNoQResync = errors.New("the target does not advertise QRESYNC")

// makeChanges makes k changes in the outside view's mailbox: flag changes
// on distinct messages and, for a third of them, expunges; it returns the
// view after them.
func (r *runner) makeChanges(v view, k int, rng *rand.Rand) (view, error) {
	oc, err := r.outside().get(0, r.cfg.Mailbox)
	if err != nil {
		return v, err
	}
	failed := true
	defer func() { r.outside().put(oc, failed) }()
	if len(v.msgs) < k {
		return v, fmt.Errorf("%d messages left, %d changes asked", len(v.msgs), k)
	}
	picks := rng.Perm(len(v.msgs))[:k]
	expunges := k / 3
	var gone []uint32
	for j, i := range picks {
		m := v.msgs[i]
		if j < expunges {
			gone = append(gone, m.uid)
			continue
		}
		nf := m.flags ^ fFlagged
		if _, err := oc.do(fmt.Sprintf("UID STORE %d FLAGS.SILENT %s", m.uid, nf), nil); err != nil {
			return v, err
		}
	}
	if len(gone) > 0 {
		slices.Sort(gone)
		set := formatUIDSet(gone)
		if _, err := oc.do("UID STORE "+set+" +FLAGS.SILENT (\\Deleted)", nil); err != nil {
			return v, err
		}
		cmd := "UID EXPUNGE " + set
		if !oc.has("UIDPLUS") {
			cmd = "EXPUNGE"
		}
		if _, err := oc.do(cmd, nil); err != nil {
			return v, err
		}
	}
	nv, err := fullSync(oc.conn, r.cfg.Mailbox, nil)
	if err != nil {
		return v, err
	}
	failed = false
	return nv, nil
}

// diffViews describes how a differs from b, briefly.
func diffViews(a, b view) string {
	am, _ := a.state()
	bm, _ := b.state()
	var missing, extra, flags []string
	for u, f := range bm {
		af, ok := am[u]
		switch {
		case !ok:
			missing = append(missing, strconv.FormatUint(uint64(u), 10))
		case af != f:
			flags = append(flags, fmt.Sprintf("%d %s not %s", u, af, f))
		}
	}
	for u := range am {
		if _, ok := bm[u]; !ok {
			extra = append(extra, strconv.FormatUint(uint64(u), 10))
		}
	}
	short := func(s []string) string {
		slices.Sort(s)
		if len(s) > 5 {
			return strings.Join(s[:5], ",") + fmt.Sprintf(",... (%d)", len(s))
		}
		return strings.Join(s, ",")
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "missing UIDs "+short(missing))
	}
	if len(extra) > 0 {
		parts = append(parts, "extra UIDs "+short(extra))
	}
	if len(flags) > 0 {
		parts = append(parts, "flags of "+short(flags))
	}
	if len(a.msgs) != len(b.msgs) {
		parts = append(parts, fmt.Sprintf("%d messages, not %d", len(a.msgs), len(b.msgs)))
	}
	if len(parts) == 0 {
		return "same messages in another order"
	}
	return strings.Join(parts, "; ")
}
