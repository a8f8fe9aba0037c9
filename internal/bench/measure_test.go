package bench

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
)

// procMem is what the benchmark's own process (the proxy) uses.
type procMem struct {
	heapInuse, heapAlloc, stack uint64
	// stackSettled is StackInuse once further GCs shrink no more stacks:
	// each GC halves at most once a stack that uses under a quarter of
	// itself, so a stack grown by a burst of work shrinks over several
	// GCs (a long-running proxy has one at least every two minutes).
	stackSettled      uint64
	rss, rssScavenged uint64 // VmRSS after GC, and after FreeOSMemory
	rssAnon, rssFile  uint64 // of rssScavenged: anonymous, and file pages (the stores' mmaps)
	// What the Go runtime holds from the OS after FreeOSMemory: Sys less
	// HeapReleased, and of it the heap's free spans kept (HeapIdle less
	// HeapReleased) and the runtime's own structures (GC metadata, spans,
	// profiling buckets, other).
	held, heapIdleKept, runtimeOwn uint64
	goroutines                     int
}

func measureSelf() procMem {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := procMem{heapInuse: ms.HeapInuse, heapAlloc: ms.HeapAlloc, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
	m.rss = statusKB("/proc/self/status", "VmRSS:") * 1024
	m.stackSettled = ms.StackInuse
	for range 8 {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		if ms.StackInuse == m.stackSettled {
			break
		}
		m.stackSettled = ms.StackInuse
	}
	debug.FreeOSMemory()
	m.rssScavenged = statusKB("/proc/self/status", "VmRSS:") * 1024
	m.rssAnon = statusKB("/proc/self/status", "RssAnon:") * 1024
	runtime.ReadMemStats(&ms)
	m.held = ms.Sys - ms.HeapReleased
	m.heapIdleKept = ms.HeapIdle - ms.HeapReleased
	m.runtimeOwn = ms.MSpanSys + ms.MCacheSys + ms.BuckHashSys + ms.GCSys + ms.OtherSys
	m.rssFile = statusKB("/proc/self/status", "RssFile:") * 1024
	return m
}

// statusKB returns the value of a "Key:   123 kB" line of a /proc file.
func statusKB(path, key string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseUint(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// procsMem sums the PSS and RSS of processes (smaps_rollup), in bytes.
func procsMem(pids []int) (pss, rss uint64, n int) {
	for _, pid := range pids {
		path := fmt.Sprintf("/proc/%d/smaps_rollup", pid)
		p := statusKB(path, "Pss:")
		r := statusKB(path, "Rss:")
		if r == 0 {
			continue // gone, or a kernel thread
		}
		pss += p * 1024
		rss += r * 1024
		n++
	}
	return pss, rss, n
}

// establishedTo counts ESTABLISHED TCP connections (IPv4) to addr (Dovecot's
// IP and port), leaving out those from skip (the appenders). The remote
// address must match as a whole: the client process binds 127.0.0.2 and
// up, port 0, and may be given Dovecot's port number on those addresses,
// so the proxy's side of such a client connection also has that number as
// its remote port.
func establishedTo(addr string, skip net.IP) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return -1
	}
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf("%s:%04X", hexIP(net.ParseIP(host)), p)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return -1
	}
	defer f.Close()
	skipHex := hexIP(skip)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "01" {
			continue
		}
		local, remote := fields[1], fields[2]
		if remote != want || strings.HasPrefix(local, skipHex+":") {
			continue
		}
		n++
	}
	return n
}

// hexIP is an IPv4 address as /proc/net/tcp writes it: the address's
// bytes read as a native-endian word, in hex.
func hexIP(ip net.IP) string {
	return fmt.Sprintf("%08X", binary.NativeEndian.Uint32(ip.To4()))
}

// raiseLimits lifts what stands between a test and thousands of
// connections: the open-file limit (to its hard limit) and, as root, the
// inotify instances Dovecot needs per IDLE process (fs.inotify.*).
func raiseLimits(b testing.TB, sessions int) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	raiseSysctl(b, "/proc/sys/fs/inotify/max_user_instances", max(4*sessions, 8192))
	raiseSysctl(b, "/proc/sys/fs/inotify/max_user_watches", max(40*sessions, 200000))
}

func raiseSysctl(b testing.TB, path string, want int) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	cur, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if cur >= want {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
		b.Logf("cannot raise %s from %d to %d (%v): Dovecot may fall back to polling", path, cur, want, err)
		return
	}
	b.Logf("raised %s from %d to %d", path, cur, want)
}

// checkFileLimit skips a benchmark whose sockets would not fit in the
// process's open-file limit.
func checkFileLimit(b *testing.B, need int) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < uint64(need) {
		b.Skipf("needs %d open files, limit is %d (ulimit -n)", need, rl.Cur)
	}
}

// cpuTimes returns this process's CPU time and the machine's busy and total
// jiffies (from /proc/stat), to tell how much of the machine the rounds
// took and how much of that was the proxy's.
func cpuTimes() (self time.Duration, busy, total uint64) {
	self = cpustat.Self()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return self, 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return self, busy, total
}

// liveProcs counts the processes that are not zombies.
func liveProcs(pids []int) int {
	n := 0
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		n++
	}
	return n
}
