package load

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
)

// runFetch: a mailbox of Messages messages of Size bytes; each client
// fetches every body (UID FETCH 1:* (BODY.PEEK[])) over and over for
// Duration. Reports body throughput, bytes on the wire (compression) and
// CPU per MB of the tool, the target and Dovecot.
func (r *runner) runFetch() error {
	cfg, res := r.cfg, r.res
	res.Params.Mailbox, res.Params.Messages, res.Params.Size = cfg.Mailbox, cfg.Messages, cfg.Size
	res.Params.Duration = cfg.Duration.Seconds()
	have, err := r.fillMailbox(cfg.Mailbox, cfg.Messages, cfg.Size, "fetch")
	if err != nil {
		return fmt.Errorf("filling %s: %w", cfg.Mailbox, err)
	}
	if have > cfg.Messages {
		res.Notes = append(res.Notes, fmt.Sprintf("%s holds %d messages (more than -messages %d): all are fetched", cfg.Mailbox, have, cfg.Messages))
	}

	conns := make([]*conn, cfg.Clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	var opened atomic.Int64
	r.setPhase("opening sessions", func() string { return fmt.Sprintf("%d/%d", opened.Load(), cfg.Clients) })
	var firstErr atomic.Pointer[error]
	r.forEach(cfg.Clients, cfg.Concurrency, func(i int) {
		c, err := r.login(0, cfg.Target)
		if err == nil {
			if _, err = c.do("EXAMINE "+astring(cfg.Mailbox), nil); err != nil {
				c.close()
			}
		}
		if err != nil {
			firstErr.CompareAndSwap(nil, &err)
			return
		}
		conns[i] = c
		opened.Add(1)
	})
	if p := firstErr.Load(); p != nil {
		return *p
	}

	var bodies, wire, plain, passes atomic.Int64
	var mu sync.Mutex
	var passTimes []float64
	start := time.Now()
	end := start.Add(cfg.Duration)
	r.setPhase("fetching", func() string {
		el := time.Since(start).Seconds()
		return fmt.Sprintf("%d passes, %.1f MB/s", passes.Load(), float64(bodies.Load())/1e6/max(el, 0.001))
	})
	cpuS0, cpuT0, cpuD0 := cpustat.Self(), cpuOf(cfg.TargetPID), treeCPU(cfg.DovecotPID)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			// At least one pass each, however short the duration.
			for first := true; (first || time.Now().Before(end)) && r.ctx.Err() == nil; first = false {
				w0, p0, t := c.wireIn(), c.plainIn(), time.Now()
				var got int64
				n := 0
				_, err := c.do("UID FETCH 1:* (BODY.PEEK[])", func(rs *resp) error {
					if rs.head.Name == "FETCH" {
						got += rs.litBytes
						n++
					}
					return nil
				})
				if err != nil {
					r.errs.add("fetch", "client %d: %v", i, err)
					return
				}
				if n < cfg.Messages {
					r.errs.add("fetch", "client %d: %d bodies, want %d", i, n, cfg.Messages)
				}
				bodies.Add(got)
				wire.Add(c.wireIn() - w0)
				plain.Add(c.plainIn() - p0)
				passes.Add(1)
				mu.Lock()
				passTimes = append(passTimes, ms(time.Since(t)))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	cpuS1, cpuT1, cpuD1 := cpustat.Self(), cpuOf(cfg.TargetPID), treeCPU(cfg.DovecotPID)
	mb := float64(bodies.Load()) / 1e6
	res.add("passes", float64(passes.Load()), "FETCH 1:*")
	res.add("pass-time-p50", summarize(passTimes).p50, "ms")
	res.add("body-bytes", float64(bodies.Load()), "B")
	res.add("throughput", mb/el.Seconds(), "MB/s")
	res.add("wire-bytes", float64(wire.Load()), "B")
	if cfg.Compress && plain.Load() > 0 {
		res.add("compressed-share", 100*float64(wire.Load())/float64(plain.Load()), "%")
		res.add("compression-ratio", float64(plain.Load())/float64(max(wire.Load(), 1)), "x")
	}
	if mb > 0 {
		res.add("tool-cpu-per-MB", float64(cpuS1-cpuS0)/float64(time.Millisecond)/mb, "ms")
		if cfg.TargetPID != 0 {
			res.add("target-cpu-per-MB", float64(cpuT1-cpuT0)/float64(time.Millisecond)/mb, "ms")
		}
		if cfg.DovecotPID != 0 {
			res.add("dovecot-cpu-per-MB", float64(cpuDelta(cpuD0, cpuD1))/float64(time.Millisecond)/mb, "ms")
		}
	}
	return nil
}
