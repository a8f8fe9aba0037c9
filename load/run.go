package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Run runs one scenario and returns its result. A non-nil error means the
// run could not do what it was asked (no session could be opened, the
// mailbox could not be filled...); the result, if not nil, holds what was
// measured until then. Errors found while running (lost sessions, missing
// pushes, inconsistent views) are counted in Result.Errors instead.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Scenario == "push" && cfg.OutsideConns == 0 {
		// One appending connection per account where the open-file
		// limit allows: logging in for every APPEND would load the
		// server with logins.
		budget := int(fileLimit()) - max(cfg.Clients, 10) - 200
		cfg.OutsideConns = max(16, min(len(cfg.Accounts), max(cfg.Clients, 10), budget, 4000))
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	need := uint64(cfg.Clients + cfg.OutsideConns + 64)
	if lim := fileLimit(); lim > 0 && lim < need {
		return nil, fmt.Errorf("%d clients need about %d open files; the limit is %d (ulimit -n)", cfg.Clients, need, lim)
	}
	if cfg.TargetPID != 0 && !processExists(cfg.TargetPID) {
		return nil, fmt.Errorf("target process %d not found", cfg.TargetPID)
	}
	if cfg.DovecotPID != 0 && !processExists(cfg.DovecotPID) {
		return nil, fmt.Errorf("no Dovecot process %d", cfg.DovecotPID)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.RunTimeout)
	defer cancel()

	r := &runner{cfg: cfg, ctx: ctx, t0: time.Now(), own: map[string]bool{}}
	r.res = &Result{
		Scenario: cfg.Scenario, Label: cfg.Label, Target: cfg.Target, Start: r.t0.UTC().Truncate(time.Second),
		Params: Params{
			Clients: cfg.Clients, Accounts: min(len(cfg.Accounts), cfg.Clients), Compress: cfg.Compress,
			Sources: len(cfg.Sources), Concurrency: cfg.Concurrency,
		},
		Machine: machineInfo(),
		Notes:   cfg.Notes,
	}
	if cfg.Outside != cfg.Target {
		r.res.Outside = cfg.Outside
	}
	busy0, total0 := cpuJiffies()
	stopProgress := r.startProgress()

	var err error
	switch cfg.Scenario {
	case "idle":
		err = r.runIdle(false)
	case "push":
		err = r.runIdle(true)
	case "resync":
		err = r.runResync()
	case "fetch":
		err = r.runFetch()
	case "mixed":
		err = r.runMixed()
	}
	stopProgress()
	r.outside().closeAll()

	busy1, total1 := cpuJiffies()
	if total1 > total0 {
		r.res.Machine.BusyPercent = float64(int(1000*float64(busy1-busy0)/float64(total1-total0))) / 10
	}
	r.res.Machine.LoadAfter = loadAvg()
	r.res.Seconds = float64(time.Since(r.t0).Round(100*time.Millisecond)) / float64(time.Second)
	if ctx.Err() != nil && err == nil {
		err = fmt.Errorf("run stopped: %w (run timeout %v)", context.Cause(ctx), cfg.RunTimeout)
	}
	r.errs.fill(r.res)
	return r.res, err
}

// runner is one run's shared state.
type runner struct {
	cfg  Config
	ctx  context.Context
	t0   time.Time
	res  *Result
	errs errorLog

	phase    atomic.Pointer[string]
	status   atomic.Pointer[func() string]
	pool     *outsidePool
	poolOnce sync.Once

	ownMu sync.Mutex
	own   map[string]bool // local addresses of the tool's outside connections
}

// now is the time since the run started, a monotonic clock comparable
// across goroutines.
func (r *runner) now() time.Duration { return time.Since(r.t0) }

func (r *runner) setPhase(p string, status func() string) {
	r.phase.Store(&p)
	r.status.Store(&status)
}

// startProgress prints a progress line to cfg.Progress until stopped: on
// a terminal one line rewritten in place, elsewhere a line at a time.
func (r *runner) startProgress() (stop func()) {
	w := r.cfg.Progress
	if w == nil {
		return func() {}
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	every := r.cfg.ProgressEvery
	if !tty {
		every = max(every, 5*time.Second)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	line := func() string {
		s := fmt.Sprintf("load %s %5.0fs", r.cfg.Scenario, r.now().Seconds())
		if p := r.phase.Load(); p != nil {
			s += " " + *p
		}
		if f := r.status.Load(); f != nil && *f != nil {
			s += ": " + (*f)()
		}
		return s + fmt.Sprintf("; errors %d; load %.2f", r.errs.count(), LoadAvg1())
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if tty {
					fmt.Fprintf(w, "\r\033[K%s\n", line())
				} else {
					fmt.Fprintln(w, line())
				}
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r\033[K%s", line())
				} else {
					fmt.Fprintln(w, line())
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// source returns the local address of client i.
func (r *runner) source(i int) net.IP {
	if len(r.cfg.Sources) == 0 {
		return nil
	}
	return r.cfg.Sources[i%len(r.cfg.Sources)]
}

func (r *runner) account(i int) (int, Account) {
	a := i % len(r.cfg.Accounts)
	return a, r.cfg.Accounts[a]
}

// login opens a session for client i: connect, LOGIN and, with -compress,
// COMPRESS.
func (r *runner) login(i int, addr string) (*conn, error) {
	_, acct := r.account(i)
	c, err := dial(r.ctx, r.source(i), addr, r.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	if err := c.login(acct.User, acct.Pass); err != nil {
		c.close()
		return nil, fmt.Errorf("%s: %w", acct.User, err)
	}
	if r.cfg.Compress {
		if !c.has("COMPRESS=DEFLATE") {
			c.close()
			return nil, errors.New("-compress: the target does not offer COMPRESS=DEFLATE")
		}
		if err := c.startCompress(); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

// sleep waits for d or until the run ends; it reports whether the run
// goes on.
func (r *runner) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// pacer hands out start times at rate per second (0: at once).
type pacer struct {
	start time.Time
	rate  float64
	n     atomic.Int64
}

// wait blocks until the next slot and returns its number, or -1 when ctx
// ended.
func (p *pacer) wait(ctx context.Context) int64 {
	k := p.n.Add(1) - 1
	if p.rate <= 0 {
		return k
	}
	at := p.start.Add(time.Duration(float64(k) / p.rate * float64(time.Second)))
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return -1
		}
	}
	return k
}

// forEach runs f(i) for i in [0, n) on workers goroutines, stopping early
// when the run ends.
func (r *runner) forEach(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for r.ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// outsidePool holds logged-in connections to cfg.Outside, at most
// OutsideConns at once, reused per account: push's appenders and mixed's
// changes come "from someone else".
type outsidePool struct {
	r    *runner
	sem  chan struct{}
	mu   sync.Mutex
	idle map[int]*outConn
	tick int64
}

type outConn struct {
	*conn
	acct     int
	selected string
	used     int64
}

func (r *runner) outside() *outsidePool {
	r.poolOnce.Do(func() {
		r.pool = &outsidePool{r: r, sem: make(chan struct{}, r.cfg.OutsideConns), idle: map[int]*outConn{}}
	})
	return r.pool
}

// get returns a connection logged in as account acct (with mailbox
// selected, if not ""), opening one if none is idle.
func (p *outsidePool) get(acct int, mailbox string) (*outConn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-p.r.ctx.Done():
		return nil, p.r.ctx.Err()
	}
	p.mu.Lock()
	oc := p.idle[acct]
	delete(p.idle, acct)
	var evict *outConn
	if oc == nil && len(p.idle)+len(p.sem) > cap(p.sem) {
		for _, c := range p.idle {
			if evict == nil || c.used < evict.used {
				evict = c
			}
		}
		delete(p.idle, evict.acct)
	}
	p.mu.Unlock()
	if evict != nil {
		p.drop(evict, true)
	}
	if oc == nil {
		c, err := dial(p.r.ctx, nil, p.r.cfg.Outside, p.r.cfg.Timeout)
		if err != nil {
			<-p.sem
			return nil, fmt.Errorf("outside connection: %w", err)
		}
		p.r.ownMu.Lock()
		p.r.own[localProcAddr(c.nc)] = true
		p.r.ownMu.Unlock()
		oc = &outConn{conn: c, acct: acct}
		a := p.r.cfg.Accounts[acct]
		if err := c.login(a.User, a.Pass); err != nil {
			p.drop(oc, false)
			<-p.sem
			return nil, fmt.Errorf("outside connection: %w", err)
		}
	}
	if mailbox != "" && oc.selected != mailbox {
		if _, err := oc.do("SELECT "+astring(mailbox), nil); err != nil {
			p.drop(oc, false)
			<-p.sem
			return nil, fmt.Errorf("outside connection: %w", err)
		}
		oc.selected = mailbox
	}
	return oc, nil
}

// warm opens connections for accounts (as many as the pool holds) before
// a measurement, so that its figures do not include the logins.
func (p *outsidePool) warm(accts []int, done *atomic.Int64) error {
	accts = accts[:min(len(accts), cap(p.sem))]
	var firstErr atomic.Pointer[error]
	p.r.forEach(len(accts), min(32, cap(p.sem)), func(i int) {
		oc, err := p.get(accts[i], "")
		if err != nil {
			firstErr.CompareAndSwap(nil, &err)
			return
		}
		p.put(oc, false)
		done.Add(1)
	})
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return nil
}

// put gives a connection back; a connection that failed is closed.
func (p *outsidePool) put(oc *outConn, failed bool) {
	if failed {
		p.drop(oc, false)
	} else {
		p.mu.Lock()
		p.tick++
		oc.used = p.tick
		if old := p.idle[oc.acct]; old != nil {
			p.mu.Unlock()
			p.drop(oc, true)
		} else {
			p.idle[oc.acct] = oc
			p.mu.Unlock()
		}
	}
	<-p.sem
}

func (p *outsidePool) drop(oc *outConn, logout bool) {
	if logout {
		oc.timeout = min(oc.timeout, 5*time.Second)
		oc.do("LOGOUT", nil)
	}
	local := localProcAddr(oc.nc)
	oc.close()
	p.r.ownMu.Lock()
	delete(p.r.own, local)
	p.r.ownMu.Unlock()
}

func (p *outsidePool) closeAll() {
	p.mu.Lock()
	all := p.idle
	p.idle = map[int]*outConn{}
	p.mu.Unlock()
	for _, oc := range all {
		p.drop(oc, true)
	}
}

// ownAddrs returns a copy of the tool's own outside connections' local
// addresses, for establishedTo.
func (r *runner) ownAddrs() map[string]bool {
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	out := make(map[string]bool, len(r.own))
	for k := range r.own {
		out[k] = true
	}
	return out
}

// message returns a test message for account acct, number serial, of
// about size bytes: text that compresses like mail does.
func message(acct, serial, size int, tag string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Load Tool <load@example.org>\r\nTo: user%d@example.org\r\nSubject: %s message %d for account %d\r\nMessage-ID: <%s.%d.%d@lemonload.example.org>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		acct, tag, serial, acct, tag, acct, serial)
	x := uint64(acct)*1_000_003 + uint64(serial)*7919 + 1
	col := 0
	for b.Len() < size-2 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		w := words[x%uint64(len(words))]
		if col+len(w) > 72 {
			b.WriteString("\r\n")
			col = 0
		} else if col > 0 {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w)
		col += len(w)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

var words = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when if so no
what will more about out up them some could said into than time only other new then do its two may
meeting tomorrow report attached please find invoice project deadline thanks regards update review
server mailbox message phone battery sync account password calendar lunch office weekend schedule
quarterly budget customer contract delivery shipment order payment reminder confirmation question`)
