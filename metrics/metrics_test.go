package metrics_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/metrics"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetrics: the exported figures follow what the sessions do.
func TestMetrics(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.AddUser("alice", "secret")
	m := metrics.New()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions:       []proxy.Extension{idle.New()},
		PushLatency:      m.ObservePush,
		AuthFailureDelay: time.Millisecond,
	})
	m.Register(metrics.Sources{Server: p.Srv})
	hs := httptest.NewServer(m.Handler())
	defer hs.Close()

	if code, _ := get(t, hs.URL+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, _ := get(t, hs.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before ready: %d", code)
	}
	m.SetReady(true)
	if code, _ := get(t, hs.URL+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d", code)
	}

	a := imaptest.Login(t, p.Addr, "alice", "secret")
	a.MustOK("SELECT INBOX")
	// One catch-up NOOP (the mailbox changed since the SELECT, and the
	// FETCH wants flags), then one skipped (a new message, and a FETCH of
	// sizes of the old one).
	for i, fetch := range []string{"FETCH 1 (FLAGS)", "FETCH 1 (RFC822.SIZE)"} {
		if err := up.Append("alice", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
		if r := a.MustOK("NOOP"); !slices.Contains(r, fmt.Sprintf("* %d EXISTS", i+1)) {
			t.Fatalf("NOOP after an append: %q", r)
		}
		a.MustOK(fetch)
	}
	b := imaptest.Dial(t, p.Addr)
	b.MustGreetOK()
	if got := imaptest.Tagged(b.Cmd("LOGIN alice wrong")); !strings.HasPrefix(got, "NO") {
		t.Fatalf("bad login: %q", got)
	}
	time.Sleep(1100 * time.Millisecond) // the stats snapshot is cached for a second
	_, body := get(t, hs.URL+"/metrics")
	for _, want := range []string{
		`lemonproxy_sessions{state="selected"} 1`,
		`lemonproxy_sessions{state="not-authenticated"} 1`,
		`lemonproxy_errors_total{kind="auth_failed"} 1`,
		`lemonproxy_panics_recovered_total{place="watcher"} 0`,
		`lemonproxy_upstream_connections{role="watcher"} 1`,
		`lemonproxy_watchers 1`,
		`lemonproxy_sessions_opened_total 2`,
		`lemonproxy_response_literal_bytes_total{path="splice"} 0`,
		`lemonproxy_response_literal_bytes_total{path="copy"} 0`,
		`lemonproxy_push_latency_seconds_count 0`,
		`lemonproxy_catchups_total{outcome="noop"} 1`,
		`lemonproxy_catchups_total{outcome="skipped"} 1`,
		`go_goroutines`,
		`go_memstats_heap_inuse_bytes`,
		`go_gc_heap_live_bytes`,
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want+" ") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

// TestClusterMetrics: cluster mode's figures are exported from the source
// the node gives, the database latency from the hook; single nodes export
// neither.
func TestClusterMetrics(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{})
	single := metrics.New()
	single.Register(metrics.Sources{Server: p.Srv})
	m := metrics.New()
	m.Register(metrics.Sources{Server: p.Srv, Cluster: func() metrics.ClusterStats {
		return metrics.ClusterStats{Owned: 7, Held: 4, Takeovers: 2, FencedWrites: 1, HandoffsIn: 40, RenewFailures: 3}
	}, Synthesized: func() map[string]uint64 { return map[string]uint64{"move": 5, "appenduid_omitted": 1} }})
	m.ObserveDB("hold", 3*time.Millisecond)
	m.ObserveDB("hold", 4*time.Millisecond)
	for _, tc := range []struct {
		m    *metrics.Metrics
		want []string
		not  []string
	}{
		{m, []string{
			`lemonproxy_cluster_accounts_owned 7`,
			`lemonproxy_cluster_accounts_held 4`,
			`lemonproxy_cluster_forwarded_sessions 0`,
			`lemonproxy_cluster_takeovers_total 2`,
			`lemonproxy_cluster_fenced_writes_total 1`,
			`lemonproxy_cluster_handoffs_in_total 40`,
			`lemonproxy_cluster_lease_renew_failures_total 3`,
			`lemonproxy_cluster_db_seconds_count{op="hold"} 2`,
			`lemonproxy_synthesized_total{what="move"} 5`,
			`lemonproxy_synthesized_total{what="appenduid_omitted"} 1`,
		}, nil},
		{single, nil, []string{"lemonproxy_cluster_"}},
	} {
		hs := httptest.NewServer(tc.m.Handler())
		_, body := get(t, hs.URL+"/metrics")
		hs.Close()
		for _, want := range tc.want {
			if !strings.Contains(body, want+"\n") {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		for _, not := range tc.not {
			if strings.Contains(body, not) {
				t.Errorf("/metrics of a single node has %q", not)
			}
		}
	}
}

// TestPushMetrics: push's figures, by channel, and its delivery latency.
func TestPushMetrics(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{})
	m := metrics.New()
	m.Register(metrics.Sources{Server: p.Srv, Push: func() metrics.PushStats {
		return metrics.PushStats{
			Registrations: map[string]int{"devicetoken": 3, "webpush": 1},
			LiveAccounts:  2, PolledAccounts: 1, ParkedAccounts: 1, Pending: 4,
			Sent: map[string]uint64{"devicetoken": 10}, Failed: map[string]uint64{"devicetoken": 2},
			Retried: map[string]uint64{"devicetoken": 2}, GivenUp: map[string]uint64{"webpush": 1, "": 1},
			Gone: map[string]uint64{"devicetoken": 1},
		}
	}})
	m.ObservePushDelivery("devicetoken", 20*time.Millisecond)
	hs := httptest.NewServer(m.Handler())
	_, body := get(t, hs.URL+"/metrics")
	hs.Close()
	for _, want := range []string{
		`lemonproxy_push_registrations{channel="devicetoken"} 3`,
		`lemonproxy_push_registrations{channel="webpush"} 1`,
		`lemonproxy_push_accounts{mode="live"} 2`,
		`lemonproxy_push_accounts{mode="polled"} 1`,
		`lemonproxy_push_accounts{mode="parked"} 1`,
		`lemonproxy_push_pending 4`,
		`lemonproxy_push_sent_total{channel="devicetoken"} 10`,
		`lemonproxy_push_sent_total{channel="webpush"} 0`,
		`lemonproxy_push_failed_attempts_total{channel="devicetoken"} 2`,
		`lemonproxy_push_retries_total{channel="devicetoken"} 2`,
		`lemonproxy_push_given_up_total{channel="webpush"} 1`,
		`lemonproxy_push_given_up_total{channel="unknown"} 1`,
		`lemonproxy_push_gone_total{channel="devicetoken"} 1`,
		`lemonproxy_push_delivery_seconds_count{channel="devicetoken"} 1`,
		`lemonproxy_push_delivery_seconds_bucket{channel="devicetoken",le="0.025"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestCompressMetrics: COMPRESS's byte counters, sessions and the
// compressors lent out, as the extension reports them.
func TestCompressMetrics(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{})
	m := metrics.New()
	m.Register(metrics.Sources{Server: p.Srv,
		Compress:         func() (int64, int64, int64, int64, int64) { return 100, 40, 9000, 2000, 3 },
		CompressorsInUse: func() int64 { return 2 },
	})
	hs := httptest.NewServer(m.Handler())
	_, body := get(t, hs.URL+"/metrics")
	hs.Close()
	for _, want := range []string{
		`lemonproxy_compress_bytes_total{direction="in",form="plain"} 100`,
		`lemonproxy_compress_bytes_total{direction="in",form="compressed"} 40`,
		`lemonproxy_compress_bytes_total{direction="out",form="plain"} 9000`,
		`lemonproxy_compress_bytes_total{direction="out",form="compressed"} 2000`,
		`lemonproxy_compress_sessions 3`,
		`lemonproxy_compress_compressors_in_use 2`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestIdleKeepAliveClosed: after one request, a keep-alive connection to
// the metrics endpoint was kept for ever (ReadHeaderTimeout only bounds a
// request once its first byte came; there was no IdleTimeout): a client
// opening many and going quiet held a descriptor and a goroutine each,
// without bound (a reviewer's finding). It is closed after the idle
// timeout (here shortened to 200 ms).
func TestIdleKeepAliveClosed(t *testing.T) {
	defer metrics.SetIdleTimeout(200 * time.Millisecond)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		metrics.New().Serve(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() { cancel(); <-done })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err = br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle keep-alive connection 5 s after its request: %v, want it closed (EOF)", err)
	}
}
