package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/load"
)

// TestPlots writes results like the series' and plots them in both
// formats.
func TestPlots(t *testing.T) {
	dir := t.TempDir()
	write := func(r *load.Result) {
		t.Helper()
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%s-%d-%d.json", r.Scenario, r.Label, r.Params.Clients, r.Params.Messages)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := r.WriteJSON(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{1000, 5000, 10000} {
		write(&load.Result{Scenario: "idle", Label: "proxy", Params: load.Params{Clients: n}, Metrics: []load.Metric{
			{Name: "target-rss-per-session", Value: 30000}, {Name: "dovecot-pss-per-session", Value: 160000},
			{Name: "target-rss+dovecot-pss-per-session", Value: 190000}, {Name: "upstream-connections-per-session", Value: 0.3}}})
		write(&load.Result{Scenario: "idle", Label: "dovecot", Params: load.Params{Clients: n}, Metrics: []load.Metric{
			{Name: "dovecot-pss-per-session", Value: 550000}, {Name: "upstream-connections-per-session", Value: 1}}})
		write(&load.Result{Scenario: "push", Label: "proxy", Params: load.Params{Clients: n}, Metrics: []load.Metric{
			{Name: "push-latency-p50", Value: 500}, {Name: "push-latency-p99", Value: 510}}})
	}
	for _, m := range []int{1000, 10000, 100000} {
		write(&load.Result{Scenario: "resync", Label: "proxy", Params: load.Params{Clients: 1, Messages: m}, Metrics: []load.Metric{
			{Name: "messages", Value: float64(m)}, {Name: "qresync-bytes-p50", Value: 1100}, {Name: "full-resync-bytes-p50", Value: float64(43 * m)},
			{Name: "qresync-time-p50", Value: 20}, {Name: "full-resync-time-p50", Value: float64(m) / 100}}})
	}
	write(&load.Result{Scenario: "fetch", Label: "proxy", Params: load.Params{Clients: 4}, Metrics: []load.Metric{{Name: "throughput", Value: 80}, {Name: "target-cpu-per-MB", Value: 9}, {Name: "dovecot-cpu-per-MB", Value: 5}}})
	write(&load.Result{Scenario: "fetch", Label: "dovecot", Params: load.Params{Clients: 4}, Metrics: []load.Metric{{Name: "throughput", Value: 90}, {Name: "dovecot-cpu-per-MB", Value: 5}}})
	os.WriteFile(filepath.Join(dir, "other.json"), []byte(`{"not":"a result"}`), 0o644)

	for _, format := range []string{"svg", "png"} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"-dir", dir, "-format", format}, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		files := strings.Fields(stdout.String())
		if len(files) != 7 {
			t.Errorf("%s: wrote %d plots, want 7: %v", format, len(files), files)
		}
		for _, f := range files {
			if st, err := os.Stat(f); err != nil || st.Size() < 1000 {
				t.Errorf("%s: %v", f, err)
			}
		}
		if !strings.Contains(stderr.String(), "other.json") {
			t.Errorf("no warning about other.json: %q", stderr.String())
		}
	}
	if code := run([]string{"-dir", t.TempDir()}, &bytes.Buffer{}, &bytes.Buffer{}); code != 1 {
		t.Errorf("empty directory: exit %d, want 1", code)
	}
}
