package load

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
)

// idler is one session of the idle and push scenarios: logged in, INBOX
// selected, in IDLE, its pushes read by a goroutine of its own.
type idler struct {
	id, acct int
	c        *conn
	setup    time.Duration // from dialling to IDLE's continuation request
	initial  uint32        // EXISTS after SELECT

	mu    sync.Mutex
	last  uint32
	times []time.Duration // when the k-th new message was announced
}

// openIdler opens session i, retrying a failed attempt twice.
func (r *runner) openIdler(i int, retries *atomic.Int64) (*idler, error) {
	var err error
	for try := range 3 {
		if try > 0 {
			retries.Add(1)
			if !r.sleep(time.Duration(try) * 500 * time.Millisecond) {
				break
			}
		}
		var s *idler
		if s, err = r.tryIdler(i); err == nil {
			return s, nil
		}
		if r.ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

func (r *runner) tryIdler(i int) (*idler, error) {
	start := r.now()
	acct, _ := r.account(i)
	c, err := r.login(i, r.cfg.Target)
	if err != nil {
		return nil, err
	}
	s := &idler{id: i, acct: acct, c: c}
	exists := int64(-1)
	_, err = c.do("SELECT INBOX", func(rs *resp) error {
		if rs.head.Name == "EXISTS" && rs.head.HasNum {
			exists = int64(rs.head.Num)
		}
		return nil
	})
	if err == nil && exists < 0 {
		err = errors.New("SELECT INBOX: no EXISTS")
	}
	if err == nil {
		_, err = c.idle(nil)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	s.initial, s.last = uint32(exists), uint32(exists)
	s.setup = r.now() - start
	// Pushes may be minutes apart: reads wait until the run's end.
	c.readExtra.Store(int64(r.cfg.RunTimeout))
	return s, nil
}

// readPushes reads an idling session's responses and notes when each new
// message was announced.
func (r *runner) readPushes(s *idler, closed *atomic.Int64) {
	for {
		s.c.r.Release()
		rs, err := s.c.readDirect()
		if err != nil {
			if !s.c.closing.Load() {
				closed.Add(1)
				r.errs.add("closed", "session %d (%s): %v", s.id, r.cfg.Accounts[s.acct].User, err)
			}
			return
		}
		switch {
		case rs.head.Tag == "*" && rs.head.Name == "EXISTS" && rs.head.HasNum:
			t := r.now()
			s.mu.Lock()
			for n := s.last + 1; n <= rs.head.Num; n++ {
				if n > s.initial {
					s.times = append(s.times, t)
				}
			}
			s.last = max(s.last, rs.head.Num)
			s.mu.Unlock()
		case rs.head.Tag == "*" && rs.head.Name == "BYE":
			closed.Add(1)
			r.errs.add("closed", "session %d (%s): BYE %s", s.id, r.cfg.Accounts[s.acct].User, rs.head.Text)
			s.c.closing.Store(true) // the read error that follows is expected
		}
	}
}

// targetMem is a snapshot of the target's and Dovecot's memory and the
// upstream connections.
type targetMem struct {
	rss          int64
	heapInuse    float64 // the proxy's HeapInuse (Config.TargetMetrics)
	heapLive     float64 // the heap its last GC found live
	pss          int64
	procs        int
	upconns      int
	toolRSS      int64
	toolHeap     uint64
	toolStacks   uint64
	toolRoutines int
}

func (r *runner) measureMem() targetMem {
	var m targetMem
	if r.cfg.TargetPID != 0 {
		m.rss = rssOf(r.cfg.TargetPID)
	}
	if r.cfg.TargetMetrics != "" {
		v, err := scrapeMetrics(r.cfg.TargetMetrics, heapInuseMetric, heapLiveMetric)
		if err != nil {
			r.errs.add("metrics", "%v", err)
		}
		m.heapInuse, m.heapLive = v[heapInuseMetric], v[heapLiveMetric]
	}
	if r.cfg.DovecotPID != 0 {
		m.pss, m.procs = treeMem(r.cfg.DovecotPID)
	}
	if r.cfg.Upstream != "" {
		m.upconns = establishedTo(r.cfg.Upstream, r.ownAddrs(), r.cfg.TargetPID)
		if m.upconns < 0 {
			r.errs.add("upstream", "cannot read the open sockets of -target-pid %d (/proc/%d/fd) to count its connections to %s", r.cfg.TargetPID, r.cfg.TargetPID, r.cfg.Upstream)
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.toolRSS = rssOf(selfPID)
	m.toolHeap, m.toolStacks, m.toolRoutines = ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
	return m
}

// The Go collector's names for the proxy's heap figures.
const (
	heapInuseMetric = "go_memstats_heap_inuse_bytes"
	heapLiveMetric  = "go_gc_heap_live_bytes"
)

// runIdle runs the idle scenario, and with push the push scenario on top
// of it.
func (r *runner) runIdle(push bool) error {
	cfg, res := r.cfg, r.res
	res.Params.Duration = cfg.Duration.Seconds()
	res.Params.Rate = cfg.Rate

	m0 := r.measureMem()
	sessions := make([]*idler, cfg.Clients)
	var opened, failed, closed, retries atomic.Int64
	var firstErr atomic.Pointer[error]
	r.setPhase("opening sessions", func() string {
		return fmt.Sprintf("%d/%d idle, %d failed, %d retried", opened.Load(), cfg.Clients, failed.Load(), retries.Load())
	})
	var readers sync.WaitGroup
	defer func() {
		r.setPhase("closing sessions", nil)
		for _, s := range sessions {
			if s != nil {
				s.c.close()
			}
		}
		readers.Wait()
	}()
	pace := &pacer{start: time.Now()}
	if !push {
		pace.rate = cfg.Rate
	}
	start := r.now()
	r.forEach(cfg.Clients, cfg.Concurrency, func(i int) {
		if pace.wait(r.ctx) < 0 {
			return
		}
		s, err := r.openIdler(i, &retries)
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
			r.errs.add("setup", "session %d: %v", i, err)
			return
		}
		sessions[i] = s
		opened.Add(1)
		readers.Go(func() { r.readPushes(s, &closed) })
	})
	setupTime := r.now() - start
	n := int(opened.Load())
	if n == 0 {
		if p := firstErr.Load(); p != nil {
			return fmt.Errorf("no session could be opened: %w", *p)
		}
		return errors.New("no session could be opened")
	}
	var setups []float64
	for _, s := range sessions {
		if s != nil {
			setups = append(setups, ms(s.setup))
		}
	}
	res.add("sessions", float64(n), "sessions")
	res.add("setup-time", setupTime.Seconds(), "s")
	sum := summarize(setups)
	res.add("session-setup-p50", sum.p50, "ms")
	res.add("session-setup-p99", sum.p99, "ms")
	res.add("setup-retries", float64(retries.Load()), "attempts")

	r.setPhase("settling", func() string { return fmt.Sprintf("%d idle, %d closed", n-int(closed.Load()), closed.Load()) })
	if !r.sleep(cfg.Settle) {
		return nil
	}
	m1 := r.measureMem()
	per := func(a, b int64) float64 { return float64(a-b) / float64(n) }
	// perMem adds a memory-per-session figure, or if the memory fell while
	// the sessions opened, a note instead: the process freed more than
	// the sessions took (garbage or caches from before the run, such as
	// the previous run's sessions on a target that was not restarted),
	// and the difference says nothing about a session's cost.
	perMem := func(name, what string, after, before int64) {
		if after < before {
			res.Notes = append(res.Notes, fmt.Sprintf("%s left out: %s fell by %.1f MiB while %d sessions opened (memory freed from before the run; measure a freshly started process)",
				name, what, float64(before-after)/(1<<20), n))
			return
		}
		res.add(name, per(after, before), "B")
	}
	if cfg.TargetPID != 0 {
		perMem("target-rss-per-session", "the target's RSS", m1.rss, m0.rss)
		res.add("target-rss", float64(m1.rss), "B")
	}
	if cfg.TargetMetrics != "" {
		// HeapInuse counts garbage not yet collected, live heap only what
		// the last GC marked (possibly before the last sessions opened):
		// an upper and a lower figure.
		res.add("target-heap-inuse-per-session", (m1.heapInuse-m0.heapInuse)/float64(n), "B")
		res.add("target-heap-live-per-session", (m1.heapLive-m0.heapLive)/float64(n), "B")
		res.add("target-heap-inuse", m1.heapInuse, "B")
	}
	if cfg.DovecotPID != 0 {
		perMem("dovecot-pss-per-session", "Dovecot's PSS", m1.pss, m0.pss)
		res.add("dovecot-pss", float64(m1.pss), "B")
		res.add("dovecot-processes", float64(m1.procs), "processes")
	}
	if cfg.TargetPID != 0 && cfg.DovecotPID != 0 {
		perMem("target-rss+dovecot-pss-per-session", "the target's RSS and Dovecot's PSS together", m1.rss+m1.pss, m0.rss+m0.pss)
	}
	if cfg.Upstream != "" {
		res.add("upstream-connections", float64(m1.upconns-m0.upconns), "connections")
		res.add("upstream-connections-per-session", per(int64(m1.upconns), int64(m0.upconns)), "connections")
	}
	perMem("tool-rss-per-session", "the tool's own RSS", m1.toolRSS, m0.toolRSS)

	if push {
		if err := r.runPush(sessions); err != nil {
			return err
		}
	} else {
		in0 := int64(0)
		for _, s := range sessions {
			if s != nil {
				in0 += s.c.wireIn()
			}
		}
		holdEnd := time.Now().Add(cfg.Duration)
		r.setPhase("holding", func() string {
			return fmt.Sprintf("%d idle, %d closed, %.0fs left", n-int(closed.Load()), closed.Load(), time.Until(holdEnd).Seconds())
		})
		if !r.sleep(cfg.Duration) {
			return nil
		}
		in1 := int64(0)
		for _, s := range sessions {
			if s != nil {
				in1 += s.c.wireIn()
			}
		}
		res.add("bytes-to-client-per-session-while-idle", per(in1, in0), "B")
	}
	res.add("sessions-closed", float64(closed.Load()), "sessions")
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runPush APPENDs from outside at cfg.Rate for cfg.Duration, one account
// after the other, and measures from each APPEND's tagged OK to every
// session of that account reading the new message's EXISTS.
func (r *runner) runPush(sessions []*idler) error {
	cfg, res := r.cfg, r.res
	byAcct := map[int][]*idler{}
	var accts []int
	for _, s := range sessions {
		if s == nil {
			continue
		}
		if byAcct[s.acct] == nil {
			accts = append(accts, s.acct)
		}
		byAcct[s.acct] = append(byAcct[s.acct], s)
	}
	total := int(cfg.Rate * cfg.Duration.Seconds())
	if total < 1 {
		total = 1
	}
	type acctState struct {
		mu  sync.Mutex
		oks []time.Duration // tagged OK of the k-th APPEND
	}
	states := make(map[int]*acctState, len(accts))
	for _, a := range accts {
		states[a] = &acctState{}
	}
	var warmed atomic.Int64
	r.setPhase("opening the appending connections", func() string { return fmt.Sprintf("%d/%d", warmed.Load(), min(len(accts), cfg.OutsideConns)) })
	if err := r.outside().warm(accts, &warmed); err != nil {
		return fmt.Errorf("appending connections: %w", err)
	}
	res.add("appending-connections", float64(warmed.Load()), "connections")
	var mu sync.Mutex
	var rtts, slips []float64
	var done, failedAppends atomic.Int64
	r.setPhase("appending", func() string {
		return fmt.Sprintf("%d/%d APPENDs, %d failed", done.Load(), total, failedAppends.Load())
	})
	cpuT0, cpuD0, cpuS0 := cpuOf(r.cfg.TargetPID), treeCPU(r.cfg.DovecotPID), cpustat.Self()
	pace := &pacer{start: time.Now(), rate: cfg.Rate}
	r.forEach(total, cfg.OutsideConns, func(int) {
		k := pace.wait(r.ctx)
		if k < 0 {
			return
		}
		scheduled := pace.start.Add(time.Duration(float64(k) / cfg.Rate * float64(time.Second)))
		a := accts[int(k)%len(accts)]
		st := states[a]
		// One APPEND per account at a time, so that the k-th new message
		// is the k-th APPEND's.
		st.mu.Lock()
		defer st.mu.Unlock()
		slip := time.Since(scheduled)
		oc, err := r.outside().get(a, "")
		if err != nil {
			failedAppends.Add(1)
			r.errs.add("append", "%v", err)
			return
		}
		t := r.now()
		_, err = oc.appendMsg("INBOX", "", message(a, len(st.oks), 600, "push"))
		ok := r.now()
		r.outside().put(oc, err != nil)
		if err != nil {
			failedAppends.Add(1)
			r.errs.add("append", "account %s: %v", cfg.Accounts[a].User, err)
			return
		}
		st.oks = append(st.oks, ok)
		done.Add(1)
		mu.Lock()
		rtts = append(rtts, ms(ok-t))
		slips = append(slips, ms(max(slip, 0)))
		mu.Unlock()
	})
	cpuT1, cpuD1, cpuS1 := cpuOf(r.cfg.TargetPID), treeCPU(r.cfg.DovecotPID), cpustat.Self()

	// Wait for the last pushes.
	want := func(s *idler) int { st := states[s.acct]; st.mu.Lock(); defer st.mu.Unlock(); return len(st.oks) }
	missing := func() (n int) {
		for _, s := range sessions {
			if s == nil {
				continue
			}
			s.mu.Lock()
			got := len(s.times)
			s.mu.Unlock()
			n += max(want(s)-got, 0)
		}
		return n
	}
	deadline := time.Now().Add(cfg.Settle + cfg.MaxLag)
	r.setPhase("waiting for the last pushes", func() string { return fmt.Sprintf("%d missing", missing()) })
	for missing() > 0 && time.Now().Before(deadline) && r.sleep(10*time.Millisecond) {
	}

	var lat []float64
	early, miss := 0, 0
	for _, s := range sessions {
		if s == nil {
			continue
		}
		st := states[s.acct]
		st.mu.Lock()
		oks := st.oks
		st.mu.Unlock()
		s.mu.Lock()
		for k, ok := range oks {
			if k >= len(s.times) {
				miss++
				continue
			}
			d := s.times[k] - ok
			if d < 0 {
				early++
				d = 0
			}
			lat = append(lat, ms(d))
		}
		s.mu.Unlock()
	}
	if miss > 0 {
		r.errs.addN("missing-push", int64(miss), "%d of %d pushes never arrived (waited %v after the last APPEND)", miss, miss+len(lat), cfg.Settle+cfg.MaxLag)
	}
	appends := done.Load()
	res.add("appends", float64(appends), "APPENDs")
	res.add("appends-failed", float64(failedAppends.Load()), "APPENDs")
	res.add("pushes", float64(len(lat)), "EXISTS")
	res.add("pushes-missing", float64(miss), "EXISTS")
	res.add("pushes-before-append-ok", float64(early), "EXISTS")
	res.addSummary("push-latency", summarize(lat), "ms")
	s := summarize(rtts)
	res.add("append-rtt-p50", s.p50, "ms")
	res.add("append-rtt-p99", s.p99, "ms")
	res.add("append-schedule-slip-max", summarize(slips).max, "ms")
	if appends > 0 {
		if cfg.TargetPID != 0 {
			res.add("target-cpu-per-append", float64(cpuT1-cpuT0)/float64(time.Microsecond)/float64(appends), "µs")
		}
		if cfg.DovecotPID != 0 {
			res.add("dovecot-cpu-per-append", float64(cpuDelta(cpuD0, cpuD1))/float64(time.Microsecond)/float64(appends), "µs")
		}
		res.add("tool-cpu-per-append", float64(cpuS1-cpuS0)/float64(time.Microsecond)/float64(appends), "µs")
	}
	return nil
}
