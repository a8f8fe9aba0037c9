package load

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The mixed scenario: many clients each loop through a mobile client's
// day (connect, resync with QRESYNC from the state it kept, fetch a few
// bodies, IDLE, then drop the link or log out, reconnect) while the tool
// changes their INBOXes from outside (APPEND, flag changes, expunges) at
// Rate changes per second. After every resync and every IDLE, the
// client's view is checked against the model (model.go); at the end,
// after the changes stopped, every client must converge on the last
// version. Messages is how many messages of its own the tool keeps in
// each INBOX (about); it changes and expunges only those.

type mixedStats struct {
	cycles, drops, logouts    atomic.Int64
	qresyncs, fullResyncs     atomic.Int64
	checks, unchecked, bodies atomic.Int64
	pushes                    atomic.Int64
	appends, flagChanges      atomic.Int64
	expunges, skipped         atomic.Int64
	connected                 atomic.Int64
	converged                 atomic.Int64

	mu                     sync.Mutex
	resyncBytes, resyncMs  []float64
	changeMs               []float64
	fullBytes, fullResyncT []float64
}

func (s *mixedStats) note(dst *[]float64, v float64) {
	s.mu.Lock()
	*dst = append(*dst, v)
	s.mu.Unlock()
}

type mixedClient struct {
	id, acct int
	m        *acctModel
	v        view
	have     bool // v can be resynced with QRESYNC
	prev     int  // the last version the client's view matched
	rng      *rand.Rand
}

// errCheck marks a cycle ended by a failed check (already counted).
var errCheck = errors.New("check failed")

func (r *runner) runMixed() error {
	cfg, res := r.cfg, r.res
	res.Params.Duration, res.Params.Rate, res.Params.Messages = cfg.Duration.Seconds(), cfg.Rate, cfg.Messages
	res.Params.MaxLag = cfg.MaxLag.Seconds()
	seed := cfg.Seed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	res.Params.Seed = seed
	nAcct := min(len(cfg.Accounts), cfg.Clients)
	st := &mixedStats{}

	// The model starts from each INBOX as it is.
	models := make([]*acctModel, nAcct)
	var ready atomic.Int64
	r.setPhase("reading the mailboxes", func() string { return fmt.Sprintf("%d/%d accounts", ready.Load(), nAcct) })
	var firstErr atomic.Pointer[error]
	fail := func(err error) { firstErr.CompareAndSwap(nil, &err) }
	r.forEach(nAcct, cfg.OutsideConns, func(a int) {
		oc, err := r.outside().get(a, "")
		if err != nil {
			fail(err)
			return
		}
		if !oc.has("UIDPLUS") {
			r.outside().put(oc, false)
			fail(errors.New("mixed needs UIDPLUS on the outside server (APPENDUID tells the model the new UIDs)"))
			return
		}
		v, err := fullSync(oc.conn, "INBOX", nil)
		oc.selected = "INBOX"
		r.outside().put(oc, err != nil)
		if err != nil {
			fail(fmt.Errorf("account %s: %w", cfg.Accounts[a].User, err))
			return
		}
		models[a] = newAcctModel(a, v, v.uidNext)
		ready.Add(1)
	})
	if p := firstErr.Load(); p != nil {
		return *p
	}
	defer r.cleanupMixed(models)

	// Messages of the tool's own to start with.
	var seeded atomic.Int64
	perAcct := max(cfg.Messages/2, 1)
	r.setPhase("appending the first messages", func() string { return fmt.Sprintf("%d/%d", seeded.Load(), nAcct*perAcct) })
	rngs := make([]*rand.Rand, nAcct)
	for a := range rngs {
		rngs[a] = rand.New(rand.NewPCG(uint64(seed), uint64(a)+100))
	}
	r.forEach(nAcct, cfg.OutsideConns, func(a int) {
		for range perAcct {
			if err := r.mutate(models[a], "append", rngs[a], st); err != nil {
				fail(err)
				return
			}
			seeded.Add(1)
		}
	})
	if p := firstErr.Load(); p != nil {
		return *p
	}

	useQ := cfg.QResync != "off"
	if cfg.QResync == "auto" {
		c, err := r.login(0, cfg.Target)
		if err != nil {
			return err
		}
		useQ = c.has("QRESYNC")
		c.close()
		if !useQ {
			res.Notes = append(res.Notes, "the target does not advertise QRESYNC: clients resync in full (SELECT, UID FETCH 1:* (FLAGS))")
		}
	}
	res.Params.QResync = useQ

	start := time.Now()
	end := start.Add(cfg.Duration)
	r.setPhase("running", func() string {
		return fmt.Sprintf("%.0fs left; %d connected, %d cycles, %d checks, %d changes",
			time.Until(end).Seconds(), st.connected.Load(), st.cycles.Load(), st.checks.Load(),
			st.appends.Load()+st.flagChanges.Load()+st.expunges.Load())
	})

	// The changes from outside.
	mutDone := make(chan struct{})
	go func() {
		defer close(mutDone)
		pace := &pacer{start: time.Now(), rate: cfg.Rate}
		var wg sync.WaitGroup
		for w := range cfg.OutsideConns {
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)+1_000_000))
			wg.Go(func() {
				for {
					if pace.wait(r.ctx) < 0 || time.Now().After(end) {
						return
					}
					m := r.pickAccount(models, rng)
					if m == nil {
						st.skipped.Add(1)
						continue
					}
					op := r.chooseChange(m, rng)
					if err := r.mutate(m, op, rng, st); err != nil {
						r.errs.add("outside", "%v", err)
					}
				}
			})
		}
		wg.Wait()
	}()

	// The clients.
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		a := i % nAcct
		mc := &mixedClient{id: i, acct: a, m: models[a], rng: rand.New(rand.NewPCG(uint64(seed), uint64(i)+2_000_000))}
		wg.Go(func() {
			// Spread the first connections over the first idle period.
			if !r.sleep(time.Duration(mc.rng.Int64N(int64(cfg.IdleMin)))) {
				return
			}
			for time.Now().Before(end) && r.ctx.Err() == nil {
				st.cycles.Add(1)
				if err := r.mixedCycle(mc, useQ, end, sem, st); err != nil {
					if !errors.Is(err, errCheck) && r.ctx.Err() == nil {
						var pe *protocolError
						if errors.As(err, &pe) && pe.trace != "" {
							r.errs.add(kindOf(err), "client %d (%s): %v; last lines: %s", mc.id, cfg.Accounts[mc.acct].User, err, pe.trace)
						} else {
							r.errs.add(kindOf(err), "client %d (%s): %v", mc.id, cfg.Accounts[mc.acct].User, err)
						}
					}
					mc.have = false // start afresh
				}
				r.sleep(time.Duration(mc.rng.Int64N(int64(500 * time.Millisecond))))
			}
			select {
			case <-mutDone:
			case <-r.ctx.Done():
				return
			}
			r.finalCheck(mc, useQ, sem, st)
		})
	}
	<-mutDone
	r.setPhase("final check", func() string {
		return fmt.Sprintf("%d/%d clients converged", st.converged.Load(), cfg.Clients)
	})
	wg.Wait()

	changes := st.appends.Load() + st.flagChanges.Load() + st.expunges.Load()
	res.add("accounts", float64(nAcct), "accounts")
	res.add("cycles", float64(st.cycles.Load()), "connections")
	res.add("links-dropped", float64(st.drops.Load()), "connections")
	res.add("logouts", float64(st.logouts.Load()), "connections")
	res.add("qresync-resyncs", float64(st.qresyncs.Load()), "SELECTs")
	res.add("full-resyncs", float64(st.fullResyncs.Load()), "SELECTs")
	res.add("checks", float64(st.checks.Load()), "views")
	res.add("checks-skipped", float64(st.unchecked.Load()), "views")
	res.add("bodies-checked", float64(st.bodies.Load()), "bodies")
	res.add("pushes", float64(st.pushes.Load()), "responses")
	res.add("changes", float64(changes), "changes")
	res.add("appends", float64(st.appends.Load()), "APPENDs")
	res.add("flag-changes", float64(st.flagChanges.Load()), "STOREs")
	res.add("expunges", float64(st.expunges.Load()), "messages")
	res.add("change-slots-skipped", float64(st.skipped.Load()), "changes")
	s := summarize(st.changeMs)
	res.add("change-rtt-p50", s.p50, "ms")
	res.add("change-rtt-p99", s.p99, "ms")
	if useQ {
		res.add("qresync-bytes-p50", summarize(st.resyncBytes).p50, "B")
		res.add("qresync-bytes-p99", summarize(st.resyncBytes).p99, "B")
		res.add("qresync-time-p50", summarize(st.resyncMs).p50, "ms")
		res.add("qresync-time-p99", summarize(st.resyncMs).p99, "ms")
	}
	res.add("full-resync-bytes-p50", summarize(st.fullBytes).p50, "B")
	res.add("full-resync-time-p50", summarize(st.fullResyncT).p50, "ms")
	res.add("converged", float64(st.converged.Load()), "clients")
	return nil
}

// kindOf classifies a cycle's error.
func kindOf(err error) string {
	var se *statusError
	var pe *protocolError
	switch {
	case errors.As(err, &pe):
		return "protocol"
	case errors.As(err, &se):
		return "protocol"
	}
	return "conn"
}

// protocolError is a response that contradicts the client's view or the
// protocol.
type protocolError struct {
	err   error
	trace string
}

func (e *protocolError) Error() string { return e.err.Error() }
func (e *protocolError) Unwrap() error { return e.err }

// withTrace adds the connection's last lines to a protocol error.
func withTrace(err error, c *conn) error {
	var pe *protocolError
	if errors.As(err, &pe) && c.trace != nil && pe.trace == "" {
		pe.trace = c.trace.String()
	}
	return err
}

func protoErr(err error) error {
	if err == nil {
		return nil
	}
	return &protocolError{err: err}
}

// pickAccount picks a random account with no change in flight and marks
// it busy.
func (r *runner) pickAccount(models []*acctModel, rng *rand.Rand) *acctModel {
	for range 8 {
		m := models[rng.IntN(len(models))]
		m.mu.Lock()
		if !m.busy && !m.broken {
			m.busy = true
			m.mu.Unlock()
			return m
		}
		m.mu.Unlock()
	}
	return nil
}

// chooseChange picks a change keeping about Messages of the tool's own
// messages in the mailbox.
func (r *runner) chooseChange(m *acctModel, rng *rand.Rand) string {
	m.mu.Lock()
	n := len(m.own)
	m.mu.Unlock()
	want := r.cfg.Messages
	x := rng.Float64()
	switch {
	case n == 0:
		return "append"
	case n < want && x < 0.45, n >= want && x < 0.15:
		return "append"
	case n > want/2 && x > 0.75, x > 0.92:
		return "expunge"
	}
	return "flags"
}

// mutate makes one change (append, flags or expunge) to m's INBOX from
// outside, recording each state in the model before the command goes out
// and its commit when the tagged OK arrives. The account must be marked
// busy by the caller, or be used by this goroutine alone; mutate clears
// busy.
func (r *runner) mutate(m *acctModel, op string, rng *rand.Rand, st *mixedStats) (err error) {
	defer func() {
		m.mu.Lock()
		m.busy = false
		if err != nil {
			m.broken = true
		}
		m.mu.Unlock()
	}()
	oc, err := r.outside().get(m.acct, "INBOX")
	if err != nil {
		return err
	}
	failed := true
	defer func() { r.outside().put(oc, failed) }()
	user := r.cfg.Accounts[m.acct].User
	send := func(cmd string) error {
		t := r.now()
		_, err := oc.do(cmd, nil)
		now := r.now()
		m.mu.Lock()
		m.commit(now)
		m.mu.Unlock()
		st.note(&st.changeMs, ms(now-t))
		if err != nil {
			return fmt.Errorf("account %s: %w", user, err)
		}
		return nil
	}
	m.mu.Lock()
	if op != "append" && len(m.own) == 0 {
		op = "append"
	}
	switch op {
	case "append":
		uid, serial := m.uidNext, m.nextSerial
		m.nextSerial++
		f := []flagBits{0, 0, fSeen, fFlagged, fSeen | fFlagged}[rng.IntN(5)]
		m.begin(r.now(), map[uint32]flagBits{uid: f}, nil)
		m.own = append(m.own, uid)
		m.serial[uid] = serial
		m.mu.Unlock()
		flags := ""
		if f != 0 {
			flags = f.String()
		}
		t := r.now()
		got, err := oc.appendMsg("INBOX", flags, message(m.acct, serial, r.cfg.Size, "mixed"))
		now := r.now()
		m.mu.Lock()
		m.commit(now)
		if err == nil && got != uid {
			err = fmt.Errorf("APPENDUID %d, but UIDNEXT was %d: someone else changes the mailbox", got, uid)
		}
		m.uidNext = uid + 1
		m.mu.Unlock()
		st.note(&st.changeMs, ms(now-t))
		if err != nil {
			return fmt.Errorf("account %s: APPEND: %w", user, err)
		}
		st.appends.Add(1)
	case "flags":
		u := m.own[rng.IntN(len(m.own))]
		f := m.state[u] ^ []flagBits{fSeen, fFlagged, fAnswered}[rng.IntN(3)]
		m.begin(r.now(), map[uint32]flagBits{u: f}, nil)
		m.mu.Unlock()
		if err := send(fmt.Sprintf("UID STORE %d FLAGS.SILENT %s", u, f)); err != nil {
			return err
		}
		st.flagChanges.Add(1)
	case "expunge":
		u := m.own[rng.IntN(len(m.own))]
		m.begin(r.now(), map[uint32]flagBits{u: m.state[u] | fDeleted}, nil)
		m.mu.Unlock()
		if err := send(fmt.Sprintf("UID STORE %d +FLAGS.SILENT (\\Deleted)", u)); err != nil {
			return err
		}
		m.mu.Lock()
		m.begin(r.now(), nil, []uint32{u})
		m.mu.Unlock()
		if err := send(fmt.Sprintf("UID EXPUNGE %d", u)); err != nil {
			return err
		}
		st.expunges.Add(1)
	default:
		m.mu.Unlock()
		return fmt.Errorf("unknown change %q", op)
	}
	failed = false
	return nil
}

// check checks a client's view (taken at time at) against its account's
// model; it returns errCheck after counting an inconsistency.
func (r *runner) check(mc *mixedClient, c *conn, at time.Duration, when string, st *mixedStats) error {
	state, err := mc.v.state()
	if err != nil {
		return protoErr(fmt.Errorf("%s: %w", when, err))
	}
	h := mc.v.hash()
	m := mc.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken {
		st.unchecked.Add(1)
		return nil
	}
	st.checks.Add(1)
	res := m.check(h, len(mc.v.msgs), at, r.cfg.MaxLag, mc.prev)
	if res.matched > mc.prev {
		mc.prev = res.matched
	}
	if res.kind == "" {
		return nil
	}
	detail := res.detail
	if detail == "" {
		detail = "the view equals no state the mailbox had: " + m.describe(state)
	} else {
		detail += "; " + m.describe(state)
	}
	if c != nil && c.trace != nil {
		detail += "; last lines: " + c.trace.String()
	}
	r.errs.add(res.kind, "client %d (%s) %s (checked at %v): %s", mc.id, r.cfg.Accounts[mc.acct].User, when, at.Round(time.Millisecond), detail)
	return errCheck
}

// applier returns the function applying untagged responses to the view,
// counting pushes.
func (r *runner) applier(mc *mixedClient, count *atomic.Int64) func(*resp) error {
	return func(rs *resp) error {
		switch rs.head.Name {
		case "EXISTS", "EXPUNGE", "FETCH", "VANISHED":
			if count != nil {
				count.Add(1)
			}
		}
		return protoErr(mc.v.apply(rs))
	}
}

// connectAndResync opens a session for the client and resyncs its view:
// with QRESYNC from its last state, or in full. The caller holds a slot of
// sem while it runs.
func (r *runner) connectAndResync(mc *mixedClient, useQ bool, st *mixedStats) (*conn, time.Duration, error) {
	c, err := r.login(mc.id, r.cfg.Target)
	if err != nil {
		return nil, 0, err
	}
	c.keepLits = true
	c.trace = &trace{}
	// A client in IDLE waits up to IdleMax for a push.
	c.readExtra.Store(int64(r.cfg.IdleMax))
	c.startPump()
	if useQ {
		if _, err := c.do("ENABLE QRESYNC", nil); err != nil {
			c.close()
			return nil, 0, err
		}
	}
	at := r.now()
	in0 := c.wireIn()
	if useQ && mc.have {
		var q qresyncSelect
		q.exists = -1
		_, err := c.do(fmt.Sprintf("SELECT INBOX (QRESYNC (%d %d))", mc.v.uidValidity, mc.v.modseq), q.collect)
		if err == nil && q.uidValidity != mc.v.uidValidity {
			err = fmt.Errorf("UIDVALIDITY changed from %d to %d", mc.v.uidValidity, q.uidValidity)
		}
		var nv view
		if err == nil {
			nv, err = q.resynced(mc.v)
		}
		if err != nil {
			c.close()
			return nil, 0, withTrace(protoErr(err), c)
		}
		st.qresyncs.Add(1)
		st.note(&st.resyncBytes, float64(c.wireIn()-in0))
		st.note(&st.resyncMs, ms(r.now()-at))
		mc.v = nv
	} else {
		v, err := fullSync(c, "INBOX", nil)
		if err != nil {
			c.close()
			return nil, 0, withTrace(protoErr(err), c)
		}
		st.fullResyncs.Add(1)
		st.note(&st.fullBytes, float64(c.wireIn()-in0))
		st.note(&st.fullResyncT, ms(r.now()-at))
		mc.v = v
	}
	mc.have = useQ && mc.v.modseq > 0
	return c, at, nil
}

// mixedCycle is one connection of a client: connect, resync, check, fetch
// bodies, IDLE (answering new mail as a phone does), then drop the link or
// log out.
func (r *runner) mixedCycle(mc *mixedClient, useQ bool, end time.Time, sem chan struct{}, st *mixedStats) (err error) {
	cfg := r.cfg
	select {
	case sem <- struct{}{}:
	case <-r.ctx.Done():
		return nil
	}
	c, at, err := r.connectAndResync(mc, useQ, st)
	<-sem
	if err != nil {
		return err
	}
	st.connected.Add(1)
	defer st.connected.Add(-1)
	defer c.close()
	defer func() { err = withTrace(err, c) }()
	apply := r.applier(mc, nil)
	if err := protoErr(mc.v.settle(c, apply)); err != nil {
		return err
	}
	if err := r.check(mc, c, at, "after resync", st); err != nil {
		return err
	}
	if err := r.checkBodies(mc, c, apply, st); err != nil {
		return err
	}

	// IDLE until idleEnd; new mail is fetched at once, as phones do.
	d := cfg.IdleMin + time.Duration(mc.rng.Int64N(int64(cfg.IdleMax-cfg.IdleMin)+1))
	idleEnd := time.Now().Add(d)
	if idleEnd.After(end) {
		idleEnd = end
	}
	pushApply := r.applier(mc, &st.pushes)
	tag, err := c.idle(pushApply)
	if err != nil {
		return err
	}
	timer := time.NewTimer(time.Until(idleEnd))
	defer timer.Stop()
	inIdle := true
	leave := func() error {
		if !inIdle {
			return nil
		}
		inIdle = false
		if err := c.write("DONE\r\n"); err != nil {
			return err
		}
		_, err := c.await(tag, "IDLE", pushApply)
		return err
	}
wait:
	for {
		select {
		case p, ok := <-c.pump:
			if !ok {
				return errors.New("connection closed in IDLE")
			}
			if p.err != nil {
				return fmt.Errorf("in IDLE: %w", p.err)
			}
			if p.r.head.Tag != "*" {
				return protoErr(fmt.Errorf("in IDLE: %s %s %s", p.r.head.Tag, p.r.head.Name, p.r.head.Text))
			}
			if p.r.head.Name == "BYE" {
				return fmt.Errorf("in IDLE: BYE %s", p.r.head.Text)
			}
			if err := pushApply(p.r); err != nil {
				return err
			}
			if mc.v.placeholders() > 0 && time.Until(idleEnd) > 0 {
				if err := leave(); err != nil {
					return err
				}
				if err := protoErr(mc.v.fill(c, apply)); err != nil {
					return err
				}
				if tag, err = c.idle(pushApply); err != nil {
					return err
				}
				inIdle = true
			}
		case <-timer.C:
			break wait
		}
	}
	// Check the view at a point where it must be a state the mailbox had
	// (in the middle of a burst of pushes it need not be).
	checkAt := r.now()
	if err := leave(); err != nil {
		return err
	}
	if err := protoErr(mc.v.settle(c, apply)); err != nil {
		return err
	}
	if err := r.check(mc, c, checkAt, "after IDLE", st); err != nil {
		return err
	}
	if mc.rng.IntN(2) == 0 {
		// Back to IDLE, and the link drops: no DONE, no LOGOUT.
		if _, err := c.idle(pushApply); err != nil {
			return err
		}
		st.drops.Add(1)
		return nil // the deferred close drops the link
	}
	if _, err := c.do("LOGOUT", nil); err != nil {
		return err
	}
	st.logouts.Add(1)
	return nil
}

// checkBodies fetches up to three of the tool's own messages in the view
// and compares them with what was appended.
func (r *runner) checkBodies(mc *mixedClient, c *conn, apply func(*resp) error, st *mixedStats) error {
	m := mc.m
	var want []uint32
	serial := map[uint32]int{}
	m.mu.Lock()
	for _, x := range mc.v.msgs {
		if s, ok := m.serial[x.uid]; ok {
			want = append(want, x.uid)
			serial[x.uid] = s
		}
	}
	m.mu.Unlock()
	mc.rng.Shuffle(len(want), func(i, j int) { want[i], want[j] = want[j], want[i] })
	want = want[:min(3, len(want))]
	if len(want) == 0 {
		return nil
	}
	slices.Sort(want)
	got := map[uint32]bool{}
	var bad error
	_, err := c.do("UID FETCH "+formatUIDSet(want)+" (BODY.PEEK[])", func(rs *resp) error {
		if rs.head.Name == "FETCH" {
			d, err := parseFetch(rs)
			if err != nil {
				return protoErr(err)
			}
			if d.hasBody && !d.nilBody && slices.Contains(want, d.uid) {
				got[d.uid] = true
				st.bodies.Add(1)
				if exp := message(mc.acct, serial[d.uid], r.cfg.Size, "mixed"); !bytes.Equal(d.body, exp) && bad == nil {
					bad = fmt.Errorf("UID %d: body of %d bytes differs from the %d bytes appended", d.uid, len(d.body), len(exp))
				}
			}
		}
		return apply(rs)
	})
	if err != nil {
		return err
	}
	if bad != nil {
		r.errs.add("body", "client %d (%s): %v", mc.id, r.cfg.Accounts[mc.acct].User, bad)
		return errCheck
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range want {
		if _, exists := m.state[u]; exists && !got[u] && !m.broken {
			r.errs.add("body", "client %d (%s): UID FETCH %d (BODY.PEEK[]) returned no body, and the message was not expunged", mc.id, r.cfg.Accounts[mc.acct].User, u)
			return errCheck
		}
	}
	return nil
}

// finalCheck: after the changes stopped, the client reconnects until its
// view is the last version, for at most Settle+MaxLag.
func (r *runner) finalCheck(mc *mixedClient, useQ bool, sem chan struct{}, st *mixedStats) {
	deadline := time.Now().Add(r.cfg.Settle + r.cfg.MaxLag)
	var last string
	for {
		ok, detail, err := r.finalAttempt(mc, useQ, sem)
		if ok {
			st.converged.Add(1)
			return
		}
		if err != nil {
			detail = err.Error()
			mc.have = false
		}
		last = detail
		if time.Now().After(deadline) || !r.sleep(250*time.Millisecond) {
			break
		}
	}
	r.errs.add("final", "client %d (%s) did not converge on the last version within %v after the changes stopped: %s",
		mc.id, r.cfg.Accounts[mc.acct].User, r.cfg.Settle+r.cfg.MaxLag, last)
}

func (r *runner) finalAttempt(mc *mixedClient, useQ bool, sem chan struct{}) (bool, string, error) {
	select {
	case sem <- struct{}{}:
	case <-r.ctx.Done():
		return false, "", r.ctx.Err()
	}
	c, _, err := r.connectAndResync(mc, useQ, &mixedStats{})
	<-sem
	if err != nil {
		return false, "", err
	}
	defer c.close()
	if err := mc.v.settle(c, r.applier(mc, nil)); err != nil {
		return false, "", err
	}
	c.do("LOGOUT", nil)
	state, err := mc.v.state()
	if err != nil {
		return false, "", err
	}
	m := mc.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken {
		return true, "", nil
	}
	if mc.v.hash() == m.hash && len(mc.v.msgs) == len(m.state) {
		return true, "", nil
	}
	return false, m.describe(state), nil
}

// cleanupMixed expunges the messages the tool appended.
func (r *runner) cleanupMixed(models []*acctModel) {
	r.setPhase("cleaning up", nil)
	r.forEach(len(models), r.cfg.OutsideConns, func(a int) {
		m := models[a]
		if m == nil {
			return
		}
		m.mu.Lock()
		own := slices.Sorted(slices.Values(m.own))
		m.mu.Unlock()
		if len(own) == 0 {
			return
		}
		oc, err := r.outside().get(a, "INBOX")
		if err != nil {
			return
		}
		set := formatUIDSet(own)
		_, err = oc.do("UID STORE "+set+" +FLAGS.SILENT (\\Deleted)", nil)
		if err == nil {
			_, err = oc.do("UID EXPUNGE "+set, nil)
		}
		r.outside().put(oc, err != nil)
	})
}
