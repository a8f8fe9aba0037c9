// Package metrics exports what an operator of lemonproxy watches:
// Prometheus metrics, and the health and readiness endpoints a load
// balancer or an orchestrator probes. It runs on its own HTTP listener
// (-metrics ADDR), never on the IMAP ports.
//
// Most figures are read from the server when Prometheus scrapes (gauge and
// counter functions over proxy.Server.Stats and the extensions' counters), so
// sessions pay nothing for them; only the push latency and resync size
// histograms are observed as events happen.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Sources are what the metrics read. Server is required; the others are
// optional and their metrics are left out when nil.
type Sources struct {
	Server *proxy.Server
	// Compress returns the COMPRESS extension's byte counters.
	Compress func() (plainIn, compressedIn, plainOut, compressedOut, active int64)
	// CompressorsInUse returns how many of COMPRESS's pooled stateful
	// compressors are lent out (compress-max-compressors bounds them).
	CompressorsInUse func() int64
	// AccountWatchers returns the number of NOTIFY account watchers (one
	// upstream connection each).
	AccountWatchers func() int
	// Cluster returns cluster mode's figures (nil on a single node).
	Cluster func() ClusterStats
	// Synthesized returns the counters of what the proxy synthesized for
	// an upstream that lacks it, by what ("appenduid", "appenduid_omitted",
	// "move", ...): uidplus's Stats.
	Synthesized func() map[string]uint64
	// Push returns push's figures (extensions/push); its delivery
	// latencies come through ObservePushDelivery.
	Push func() PushStats
}

// PushStats are the figures of push (extensions/push.Stats): by channel
// where a map.
type PushStats struct {
	Registrations map[string]int
	// Accounts watched live, in the polling rotation, parked (no login
	// works until their user logs in through the proxy).
	LiveAccounts, PolledAccounts, ParkedAccounts int
	Pending                                      int
	// Since start: pushes delivered, delivery attempts that failed,
	// retries scheduled, pushes given up, registrations removed as gone.
	Sent, Failed, Retried, GivenUp, Gone map[string]uint64
}

// ClusterStats are the figures of cluster mode (package cluster).
type ClusterStats struct {
	// Owned counts the accounts this node serves now; Held those of them
	// kept here without a session (push's watched accounts).
	Owned, Held int
	// Takeovers counts accounts this node took from a node whose lease
	// had expired; FencedWrites, state writes refused because another
	// node had taken the account over; HandoffsIn, sessions other nodes
	// handed to this one; RenewFailures, failed lease renewals.
	Takeovers, FencedWrites, HandoffsIn, RenewFailures int64
}

// Metrics holds the registry and the histograms fed by events.
type Metrics struct {
	reg         *prometheus.Registry
	pushLatency prometheus.Histogram
	resyncBytes prometheus.Histogram
	pushDeliver *prometheus.HistogramVec
	dbLatency   *prometheus.HistogramVec
	dbOnce      sync.Once
	ready       atomic.Bool
}

const ns = "lemonproxy"

// New builds the metrics. Hook ObservePush into proxy.Config.PushLatency and
// ObserveResync into the condstore extension before the server starts, then
// call Register with the server.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	// Beside the MemStats figures, the heap the last GC found live
	// (go_gc_heap_live_bytes): with 100k idle sessions it is the figure
	// that says how much memory they need, garbage left out.
	gc := collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}))
	m.reg.MustRegister(gc, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.pushLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "push_latency_seconds",
		Help:    "The proxy's own latency of a push to an idling client: from the watcher reading the upstream's line to the client socket write.",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1},
	})
	m.resyncBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "qresync_answer_bytes",
		Help:    "Size of the answer to a QRESYNC SELECT or EXAMINE (HIGHESTMODSEQ, VANISHED (EARLIER), FETCH).",
		Buckets: prometheus.ExponentialBuckets(64, 4, 10),
	})
	m.pushDeliver = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Name: "push_delivery_seconds",
		Help:    "Latency of a push to a device (extensions/push), by channel: from the watcher reading the upstream's report of new mail to the push service accepting the push, retries included.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600},
	}, []string{"channel"})
	m.dbLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Name: "cluster_db_seconds",
		Help:    "Latency of the cluster's database operations by kind (cluster mode).",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"op"})
	m.reg.MustRegister(m.pushLatency, m.resyncBytes, m.pushDeliver)
	return m
}

// ObservePushDelivery records one delivered push (push's OnDelivered).
func (m *Metrics) ObservePushDelivery(channel string, d time.Duration) {
	m.pushDeliver.WithLabelValues(channel).Observe(d.Seconds())
}

// ObserveDB records the latency of one cluster database operation (the
// cluster's ObserveDB hook). The histogram is registered at the first
// observation, so single nodes do not export it.
func (m *Metrics) ObserveDB(op string, d time.Duration) {
	m.dbOnce.Do(func() { m.reg.MustRegister(m.dbLatency) })
	m.dbLatency.WithLabelValues(op).Observe(d.Seconds())
}

// ObservePush records one push latency (proxy.Config.PushLatency).
func (m *Metrics) ObservePush(total, upstream time.Duration) {
	m.pushLatency.Observe(total.Seconds())
}

// ObserveResync records the size of one QRESYNC answer.
func (m *Metrics) ObserveResync(bytes int) { m.resyncBytes.Observe(float64(bytes)) }

// Register adds the metrics read from the server and the extensions.
func (m *Metrics) Register(src Sources) {
	srv := src.Server
	// One Stats walk per scrape, shared by the functions below.
	var cached atomic.Pointer[statsAt]
	stats := func() proxy.Stats {
		if c := cached.Load(); c != nil && time.Since(c.at) < time.Second {
			return c.st
		}
		st := srv.Stats()
		cached.Store(&statsAt{st, time.Now()})
		return st
	}
	for st := proxy.StateNotAuthenticated; st <= proxy.StateLogout; st++ {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "sessions", Help: "Open client sessions by IMAP state.",
			ConstLabels: prometheus.Labels{"state": st.String()},
		}, func() float64 { return float64(stats().SessionsByState[st]) }))
	}
	role := func(name string, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "upstream_connections", Help: "Upstream connections by role: " + help,
			ConstLabels: prometheus.Labels{"role": name},
		}, f))
	}
	const roles = "leased (running a session's command), pooled (idle, kept for reuse), watcher (one per watched mailbox, IDLE or polling), account (NOTIFY's one per account)."
	role("leased", roles, func() float64 { return float64(stats().UpstreamLeased) })
	role("pooled", roles, func() float64 { return float64(stats().UpstreamIdle) })
	role("watcher", roles, func() float64 { return float64(stats().Watchers) })
	if src.AccountWatchers != nil {
		role("account", roles, func() float64 { return float64(src.AccountWatchers()) })
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "watchers", Help: "Mailbox watchers of the hub (one per watched account and mailbox).",
	}, func() float64 { return float64(stats().Watchers) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "sessions_opened_total", Help: "Client sessions accepted since start.",
	}, func() float64 { return float64(stats().SessionsOpened) }))
	// counters registers one counter of name per value of label.
	counters := func(name, help, label string, values map[string]func(proxy.Stats) int64) {
		for v, get := range values {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: ns, Name: name, Help: help, ConstLabels: prometheus.Labels{label: v},
			}, func() float64 { return float64(get(stats())) }))
		}
	}
	counters("response_literal_bytes_total",
		"Bytes of large response literals (message bodies) relayed by path: splice (from the upstream's socket to the client's by splice(2), not through the proxy) or copy (through it: TLS or COMPRESS on a side).",
		"path", map[string]func(proxy.Stats) int64{
			"splice": func(st proxy.Stats) int64 { return st.LiteralBytesSpliced },
			"copy":   func(st proxy.Stats) int64 { return st.LiteralBytesCopied },
		})
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "commands_ahead_total",
		Help: "Client commands (pipelined FETCHes and UID FETCHes that change nothing) sent upstream before the answers to the command before them were relayed.",
	}, func() float64 { return float64(stats().CommandsAhead) }))
	counters("catchups_total",
		"Commands in the selected state whose pooled connection lagged behind the mailbox: caught up with a NOOP first, or sent without one because they relied on nothing that changed.",
		"outcome", map[string]func(proxy.Stats) int64{
			"noop":    func(st proxy.Stats) int64 { return st.CatchUps },
			"skipped": func(st proxy.Stats) int64 { return st.CatchUpsSkipped },
		})
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "change_batches_total", Help: "Batches of mailbox changes the watchers fanned out.",
	}, func() float64 { c, _ := srv.Hub().Counts(); return float64(c) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "change_notifications_total", Help: "Sessions notified of a batch of changes, summed.",
	}, func() float64 { _, n := srv.Hub().Counts(); return float64(n) }))
	for _, p := range recovery.Places() {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: ns, Name: "panics_recovered_total",
			Help:        "Panics recovered by place (session, watcher, account_watcher, pool_janitor, statestore, push): each closed only what it affected; any is a bug or a damaged state file.",
			ConstLabels: prometheus.Labels{"place": p.String()},
		}, func() float64 { return float64(recovery.Count(p)) }))
	}
	for _, k := range proxy.ErrorKinds() {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: ns, Name: "errors_total", Help: "Errors by kind.",
			ConstLabels: prometheus.Labels{"kind": k.String()},
		}, func() float64 { return float64(stats().Errors[k]) }))
	}
	if src.Cluster != nil {
		m.registerCluster(src.Cluster, func() float64 { return float64(stats().Forwarded) })
	}
	if src.Synthesized != nil {
		for what := range src.Synthesized() {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: ns, Name: "synthesized_total",
				Help:        "What the proxy did itself for an upstream that lacks it: APPENDUID/COPYUID found (appenduid, copyuid) or left out because the UIDs were not certain (appenduid_omitted, copyuid_omitted), MOVEs made of COPY, STORE and UID EXPUNGE (move, and move_incomplete: copied but not removed, answered NO).",
				ConstLabels: prometheus.Labels{"what": what},
			}, func() float64 { return float64(src.Synthesized()[what]) }))
		}
	}
	if src.Push != nil {
		m.registerPush(src.Push)
	}
	if src.Compress != nil {
		bytes := func(dir, form string, pick func(pi, ci, po, co int64) int64) {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: ns, Name: "compress_bytes_total",
				Help:        "Bytes through COMPRESS=DEFLATE sessions, by direction and form (plain or compressed), counted when a session flushes or ends.",
				ConstLabels: prometheus.Labels{"direction": dir, "form": form},
			}, func() float64 { pi, ci, po, co, _ := src.Compress(); return float64(pick(pi, ci, po, co)) }))
		}
		bytes("in", "plain", func(pi, _, _, _ int64) int64 { return pi })
		bytes("in", "compressed", func(_, ci, _, _ int64) int64 { return ci })
		bytes("out", "plain", func(_, _, po, _ int64) int64 { return po })
		bytes("out", "compressed", func(_, _, _, co int64) int64 { return co })
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "compress_sessions", Help: "Sessions with COMPRESS=DEFLATE on.",
		}, func() float64 { _, _, _, _, a := src.Compress(); return float64(a) }))
	}
	if src.CompressorsInUse != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "compress_compressors_in_use",
			Help: "COMPRESS=DEFLATE compressors lent out to sessions sending a burst (bounded by compress-max-compressors).",
		}, func() float64 { return float64(src.CompressorsInUse()) }))
	}
}

// registerPush adds push's metrics, for the channels it has at start.
func (m *Metrics) registerPush(f func() PushStats) {
	var cached atomic.Pointer[pushAt]
	st := func() PushStats {
		if c := cached.Load(); c != nil && time.Since(c.at) < time.Second {
			return c.st
		}
		s := f()
		cached.Store(&pushAt{s, time.Now()})
		return s
	}
	first := f()
	for ch := range first.Registrations {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "push_registrations", Help: "Devices registered for push, by channel.",
			ConstLabels: prometheus.Labels{"channel": ch},
		}, func() float64 { return float64(st().Registrations[ch]) }))
	}
	for _, mode := range []string{"live", "polled", "parked"} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Name: "push_accounts",
			Help:        "Registered accounts by how they are watched: live (one upstream connection each, IDLE), polled (STATUS in rotation over a bounded pool; live accounts with further mailboxes too), parked (no login works until the user logs in through the proxy).",
			ConstLabels: prometheus.Labels{"mode": mode},
		}, func() float64 {
			s := st()
			return float64(map[string]int{"live": s.LiveAccounts, "polled": s.PolledAccounts, "parked": s.ParkedAccounts}[mode])
		}))
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "push_pending", Help: "Pushes waiting for delivery (kept on disk until delivered or given up).",
	}, func() float64 { return float64(st().Pending) }))
	counters := []struct {
		name, help string
		pick       func(PushStats) map[string]uint64
	}{
		{"push_sent_total", "Pushes delivered, by channel.", func(s PushStats) map[string]uint64 { return s.Sent }},
		{"push_failed_attempts_total", "Delivery attempts that failed, by channel.", func(s PushStats) map[string]uint64 { return s.Failed }},
		{"push_retries_total", "Failed pushes scheduled again with backoff, by channel.", func(s PushStats) map[string]uint64 { return s.Retried }},
		{"push_given_up_total", "Pushes given up (after the give-up time, or refused for good by the push service; channel \"unknown\": unreadable records), by channel: each is logged at ERROR.", func(s PushStats) map[string]uint64 { return s.GivenUp }},
		{"push_gone_total", "Registrations removed because their push service said they are gone (404, 410), by channel.", func(s PushStats) map[string]uint64 { return s.Gone }},
	}
	channels := map[string]bool{"": true}
	for ch := range first.Registrations {
		channels[ch] = true
	}
	for _, c := range counters {
		for ch := range channels {
			label := ch
			if label == "" {
				label = "unknown"
				if c.name != "push_given_up_total" {
					continue
				}
			}
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: ns, Name: c.name, Help: c.help,
				ConstLabels: prometheus.Labels{"channel": label},
			}, func() float64 { return float64(c.pick(st())[ch]) }))
		}
	}
}

type pushAt struct {
	st PushStats
	at time.Time
}

// registerCluster adds cluster mode's metrics.
func (m *Metrics) registerCluster(cl func() ClusterStats, forwarded func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "cluster_accounts_owned", Help: "Accounts this node serves now (cluster mode).",
	}, func() float64 { return float64(cl().Owned) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "cluster_accounts_held", Help: "Accounts this node keeps without a session (push watches them here), with or without sessions (cluster mode).",
	}, func() float64 { return float64(cl().Held) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "cluster_forwarded_sessions", Help: "Sessions whose clients connected here and which another node serves: this node copies their bytes.",
	}, forwarded))
	counter := func(name, help string, f func(ClusterStats) int64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: ns, Name: name, Help: help,
		}, func() float64 { return float64(f(cl())) }))
	}
	counter("cluster_takeovers_total", "Accounts taken over from a node whose lease had expired.", func(c ClusterStats) int64 { return c.Takeovers })
	counter("cluster_fenced_writes_total", "State writes refused because another node had taken the account over.", func(c ClusterStats) int64 { return c.FencedWrites })
	counter("cluster_handoffs_in_total", "Sessions other nodes handed to this node.", func(c ClusterStats) int64 { return c.HandoffsIn })
	counter("cluster_lease_renew_failures_total", "Failed renewals of this node's lease.", func(c ClusterStats) int64 { return c.RenewFailures })
}

type statsAt struct {
	st proxy.Stats
	at time.Time
}

// SetReady sets what /readyz answers: ready once the IMAP listeners are up,
// not ready while shutting down.
func (m *Metrics) SetReady(ok bool) { m.ready.Store(ok) }

// Handler serves /metrics, /healthz (the process answers) and /readyz (it
// accepts IMAP connections).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !m.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// idleTimeout closes a keep-alive connection to the metrics server that
// stays silent between requests: without it each one a client opened and
// left held a descriptor and a goroutine for good. A variable for tests.
var idleTimeout = 60 * time.Second

// Serve serves Handler on ln until ctx ends. Every phase of a connection
// has a deadline: its request's header (10 s), the whole request (30 s),
// the answer (30 s), and the wait for the next request (idleTimeout).
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	hs := &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	})
	defer stop()
	log.Info("metrics listening", "addr", ln.Addr().String())
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
