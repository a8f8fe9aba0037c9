package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/internal/cpustat"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// BenchmarkBulkDownload times a real client's bulk download (issue 20):
// mbsync pulls a mailbox of 300 messages of 100 KiB (about 30 MB) into an
// empty maildir, directly from Dovecot's Legacy profile and through the
// proxy in front of it, alternately, LEMONPROXY_BULK_PAIRS pairs (default
// 5) per iteration. For each run it logs the wall time, the CPU of the
// proxy (this process: the benchmark itself only waits for mbsync), of
// Dovecot's processes and of mbsync, and the proxy's CPU per MB.
//
// The proxy runs the production chain (extensions/chain) without COMPRESS:
// mbsync 1.4.4 turns COMPRESS=DEFLATE on whenever a server offers it and
// cannot be told not to, and the Legacy profile offers no COMPRESS, so the
// two runs would not move the same bytes (COMPRESS has its own benchmark,
// BenchmarkCompressBodies).
//
// With LEMONPROXY_BULK_PIN=1 the proxy gets a vCPU of its own: run the
// benchmark under "taskset -c 1" and it moves Dovecot's processes and
// mbsync to CPU 0 (as the load tool's fetch-pinned series does).
// LEMONPROXY_BULK_CPUPROFILE=FILE writes a CPU profile of the proxy over all
// runs (it is idle during the direct ones).
//
//	go test ./internal/integration -run '^$' -bench BulkDownload -benchtime 1x -count 1 -v
//	LEMONPROXY_BULK_PIN=1 taskset -c 1 go test ./internal/integration -run '^$' -bench BulkDownload -benchtime 1x -v
func BenchmarkBulkDownload(b *testing.B) {
	mbsync := requireTool(b, "mbsync")
	pin := os.Getenv("LEMONPROXY_BULK_PIN") == "1"
	pairs := 5
	if v, err := strconv.Atoi(os.Getenv("LEMONPROXY_BULK_PAIRS")); err == nil && v > 0 {
		pairs = v
	}
	const messages, size = 300, 100 << 10
	dc := dovecottest.Start(b, dovecottest.Legacy)
	total := 0
	dc.FillMailbox(b, "alice", "Bulk", messages, func(i int) []byte {
		m, _ := imaptest.TextMessage(size, uint64(i+1))
		total += len(m)
		return m
	})
	var exts []proxy.Extension
	for _, e := range chain.Extensions(chain.Config{}) {
		if _, ok := e.(*compress.Extension); !ok {
			exts = append(exts, e)
		}
	}
	p := imaptest.StartProxy(b, dc.Addr, proxy.Config{
		Upstream:   upstream.Config{Timeout: 10 * time.Second},
		Extensions: exts,
	})
	var taskset []string
	if pin {
		for _, pid := range dc.PIDs() {
			if out, err := exec.Command("taskset", "-a", "-p", "-c", "0", strconv.Itoa(pid)).CombinedOutput(); err != nil {
				b.Fatalf("taskset Dovecot's %d: %v\n%s", pid, err, out)
			}
		}
		taskset = []string{"taskset", "-c", "0"}
	}
	var prof *os.File
	if path := os.Getenv("LEMONPROXY_BULK_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		prof = f
		defer f.Close()
	}
	mb := float64(total) / 1e6
	b.Logf("mailbox: %d messages, %d bytes; pinned: %v", messages, total, pin)

	run := func(addr string) bulkRun {
		m := bulkMbsync(b, mbsync, addr)
		cmd := m.command(taskset, os.Getenv("LEMONPROXY_BULK_TRACE") != "")
		// dc.CPU reads /proc for every process: outside the proxy's
		// figure.
		d0 := dc.CPU()
		p0 := cpustat.Self()
		start := time.Now()
		out, err := cmd.CombinedOutput()
		wall := time.Since(start)
		if err != nil {
			b.Fatalf("mbsync: %v\n%.2000s", err, out)
		}
		if os.Getenv("LEMONPROXY_BULK_TRACE") != "" {
			os.WriteFile(filepath.Join(os.Getenv("LEMONPROXY_BULK_TRACE"), strings.ReplaceAll(addr, ":", "_")), out, 0o600)
		}
		p1 := cpustat.Self()
		r := bulkRun{wall: wall, proxy: p1 - p0, dovecot: dc.CPU() - d0,
			client: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
		got := 0
		m.messageFiles("", func(string) { got++ })
		if got != messages {
			b.Fatalf("mbsync stored %d messages, want %d", got, messages)
		}
		return r
	}
	if prof != nil {
		// The direct runs leave the proxy idle: the profile is the
		// proxied runs'.
		pprof.StartCPUProfile(prof)
		defer pprof.StopCPUProfile()
	}
	for b.Loop() {
		b.Logf("load average before: %s", loadAverage())
		var ratios []float64
		for i := range pairs {
			d := run(dc.Addr)
			x := run(p.Addr)
			ratio := d.wall.Seconds() / x.wall.Seconds()
			ratios = append(ratios, ratio)
			b.Logf("pair %d: direct %.3f s (Dovecot %.0f ms, mbsync %.0f ms CPU); proxy %.3f s (proxy %.0f ms = %.2f ms/MB, Dovecot %.0f ms, mbsync %.0f ms CPU); proxy/direct throughput %.2fx",
				i+1, d.wall.Seconds(), ms(d.dovecot), ms(d.client),
				x.wall.Seconds(), ms(x.proxy), ms(x.proxy)/mb, ms(x.dovecot), ms(x.client), ratio)
		}
		slices.Sort(ratios)
		b.Logf("load average after: %s; ratios %v, median %.2fx", loadAverage(), fmtRatios(ratios), ratios[len(ratios)/2])
		b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
	}
}

type bulkRun struct{ wall, proxy, dovecot, client time.Duration }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtRatios(r []float64) string {
	s := make([]string, len(r))
	for i, v := range r {
		s[i] = fmt.Sprintf("%.2f", v)
	}
	return strings.Join(s, " ")
}

// bulkMbsync sets up mbsync to pull the mailbox Bulk at addr into an
// empty maildir, without fsyncs: with them, mbsync waits for the disk
// after every message and the disk, not the network path, sets the time.
func bulkMbsync(b testing.TB, bin, addr string) *mbsyncRun {
	return newMbsync(b, bin, addr, mbsyncOpts{folder: "Bulk", pull: true, noFSync: true})
}
