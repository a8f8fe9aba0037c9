package load

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Measurements of other processes come from /proc (Linux). Where /proc is
// missing they read as zero and the metrics are left out.

var selfPID = os.Getpid()

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// procField returns the value of a "Key:   value" line of a /proc file
// (key with its colon), trimmed, or "".
func procField(path, key string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// procKB returns the value of a "Key:   123 kB" line of a /proc file, in
// bytes, or 0.
func procKB(path, key string) int64 {
	if f := strings.Fields(procField(path, key)); len(f) > 0 {
		v, _ := strconv.ParseInt(f[0], 10, 64)
		return v * 1024
	}
	return 0
}

// rssOf returns a process's resident set size (VmRSS), bytes. A variable
// for the tests.
var rssOf = func(pid int) int64 { return procKB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

// procStat holds the fields of /proc/PID/stat the tool uses.
type procStat struct {
	ppid  int
	state byte
	cpu   time.Duration // utime + stime
	// reaped is the CPU of its children that have ended and been waited
	// for (cutime + cstime): Dovecot's master reaps its imap processes,
	// so a process tree's CPU includes sessions that ended meanwhile.
	reaped time.Duration
}

func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	// The command name is in parentheses and may contain anything.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return procStat{}, false
	}
	f := strings.Fields(string(data[i+2:]))
	// state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
	// cmajflt utime stime cutime cstime ...
	if len(f) < 15 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cut, _ := strconv.ParseInt(f[13], 10, 64)
	cst, _ := strconv.ParseInt(f[14], 10, 64)
	return procStat{ppid: ppid, state: f[0][0], cpu: time.Duration(ut+st) * clockTick, reaped: time.Duration(cut+cst) * clockTick}, true
}

// cpuOf returns a process's CPU time (user and system).
func cpuOf(pid int) time.Duration {
	st, _ := readStat(pid)
	return st.cpu
}

// treePIDs returns root and all its live descendants.
func treePIDs(root int) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	children := map[int][]int{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok && st.state != 'Z' {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", root)); err != nil {
		return nil
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// treeMem sums the proportional set size (Pss in smaps_rollup) of a
// process tree, bytes, and counts its processes.
func treeMem(root int) (pss int64, procs int) {
	pids := treePIDs(root)
	// Reading smaps_rollup of 20,000 processes takes seconds: in parallel.
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan int)
	for range min(8, runtime.GOMAXPROCS(0)*2) {
		wg.Go(func() {
			for pid := range work {
				p := procKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
				if p == 0 {
					continue // gone, or a kernel thread
				}
				mu.Lock()
				pss += p
				procs++
				mu.Unlock()
			}
		})
	}
	for _, pid := range pids {
		work <- pid
	}
	close(work)
	wg.Wait()
	return pss, procs
}

// treeCPU returns the CPU time of each process of a tree, with that of its
// children that ended.
func treeCPU(root int) map[int]time.Duration {
	out := map[int]time.Duration{}
	for _, pid := range treePIDs(root) {
		if st, ok := readStat(pid); ok {
			out[pid] = st.cpu + st.reaped
		}
	}
	return out
}

// cpuDelta is the CPU the processes of a tree used between two treeCPU
// snapshots. A process that appeared meanwhile counts from zero. One that
// ended meanwhile was reaped by its parent in the tree, whose figure now
// holds all of its CPU, so what it had used before is taken off again.
func cpuDelta(before, after map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range after {
		d += t - before[pid]
	}
	for pid, t := range before {
		if _, ok := after[pid]; !ok {
			d -= t
		}
	}
	return d
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() [3]float64 {
	var out [3]float64
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return out
	}
	f := strings.Fields(string(data))
	for i := 0; i < 3 && i < len(f); i++ {
		out[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return out
}

// LoadAvg1 returns the one-minute load average (0 without /proc).
func LoadAvg1() float64 { return loadAvg()[0] }

// procAddr renders an address the way /proc/net/tcp and tcp6 write it:
// the address's 32-bit words in native byte order, in hex, then the port.
func procAddr(ap netip.AddrPort) string {
	a := ap.Addr().Unmap()
	var b strings.Builder
	if a.Is4() {
		v := a.As4()
		fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(v[:]))
	} else {
		v := a.As16()
		for i := 0; i < 16; i += 4 {
			fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(v[i:i+4]))
		}
	}
	fmt.Fprintf(&b, ":%04X", ap.Port())
	return b.String()
}

// establishedTo counts ESTABLISHED TCP connections whose remote end is
// addr, leaving out those whose local end is in skip. The remote address
// must match as a whole (address and port): a client port may equal the
// upstream's port number. With pid not 0, only the sockets that process
// holds open count (the target's, not every program's on the machine:
// Dovecot's own tests, another proxy); it is -1 if its descriptors cannot
// be read.
func establishedTo(addr string, skip map[string]bool, pid int) int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return -1
	}
	var owned map[string]bool
	if pid != 0 {
		if owned = socketInodes(pid); owned == nil {
			return -1
		}
	}
	want4 := procAddr(ap)
	want6 := procAddr(netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()))
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "01" {
				continue
			}
			if fields[2] != want4 && fields[2] != want6 {
				continue
			}
			if skip[fields[1]] {
				continue
			}
			if owned != nil && (len(fields) < 10 || !owned[fields[9]]) {
				continue
			}
			n++
		}
		f.Close()
	}
	return n
}

// socketInodes returns the inodes of the sockets process pid holds open,
// as /proc/net/tcp's inode column writes them, or nil if its descriptors
// cannot be read (no such process, or not ours to read).
func socketInodes(pid int) map[string]bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			out[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return out
}

// localProcAddr is a connection's local address as /proc/net/tcp writes
// it, for establishedTo's skip set.
func localProcAddr(nc net.Conn) string {
	ap, err := netip.ParseAddrPort(nc.LocalAddr().String())
	if err != nil {
		return ""
	}
	return procAddr(ap)
}

// fileLimit returns the soft open-file limit after raising it to the hard
// limit.
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return rl.Cur
}

// ownedProcess reports whether pid exists, for the -target-pid and
// -dovecot checks.
func processExists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// Machine describes where a run happened.
type Machine struct {
	CPUs        int        `json:"cpus"`
	CPUModel    string     `json:"cpu_model,omitempty"`
	MemoryBytes int64      `json:"memory_bytes,omitempty"`
	Kernel      string     `json:"kernel,omitempty"`
	GoVersion   string     `json:"go_version"`
	FileLimit   uint64     `json:"file_limit"`
	LoadBefore  [3]float64 `json:"load_before"`
	LoadAfter   [3]float64 `json:"load_after"`
	// BusyPercent is how busy the machine's CPUs were during the run
	// (/proc/stat), all processes together.
	BusyPercent float64 `json:"busy_percent"`
}

func machineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), FileLimit: fileLimit(), LoadBefore: loadAvg()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	m.MemoryBytes = procKB("/proc/meminfo", "MemTotal:")
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	return m
}

// cpuJiffies returns the machine's busy and total time from /proc/stat.
func cpuJiffies() (busy, total uint64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 5 {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// scrapeMetrics reads the named gauges from a Prometheus text endpoint
// (a lemonproxy's -metrics listener). Metrics it lacks are left out of
// the map; an unreachable endpoint is an error.
func scrapeMetrics(url string, names ...string) (map[string]float64, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	out := make(map[string]float64, len(names))
	for _, name := range names {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) == 0 {
			continue
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			out[name] = m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			out[name] = m.GetUntyped().GetValue()
		case m.GetCounter() != nil:
			out[name] = m.GetCounter().GetValue()
		}
	}
	return out, nil
}
