package compress_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// burstWriter is a compressor under test: Write a burst, then Flush.
type burstWriter interface {
	io.Writer
	Flush() error
}

// stateless is the writer the proxy had before issue 20, for comparison:
// each burst compressed on its own with flate.StatelessDeflate (about
// level 1 with an 8 KiB window), primed with the last dictSize bytes of
// plaintext sent.
type stateless struct {
	dst      io.Writer
	dictSize int
	dict     []byte
	buf      []byte
}

func (p *stateless) Write(b []byte) (int, error) { p.buf = append(p.buf, b...); return len(b), nil }

func (p *stateless) Flush() error {
	err := flate.StatelessDeflate(p.dst, p.buf, false, p.dict)
	all := append(p.dict, p.buf...)
	p.dict = append(p.dict[:0:0], all[max(0, len(all)-p.dictSize):]...)
	p.buf = p.buf[:0]
	return err
}

type variant struct {
	name string
	mk   func(io.Writer) burstWriter
}

// compressors returns the pool of deflaters at level the benchmarks share.
var compressors = sync.OnceValue(func() map[int]*deflate.Compressors {
	m := map[int]*deflate.Compressors{}
	for _, l := range []int{1, 4, 5, 6} {
		m[l], _ = deflate.NewCompressors(l, 0)
	}
	return m
})

// klauspost returns a stateful klauspost writer at level, reused from one
// benchmark iteration to the next (allocating one is not what is
// measured).
func klauspost(level int) func(io.Writer) burstWriter {
	var fw *flate.Writer
	return func(w io.Writer) burstWriter {
		if fw == nil {
			fw, _ = flate.NewWriter(w, level)
		} else {
			fw.Reset(w)
		}
		return fw
	}
}

func variants() []variant {
	writer := func(level, dict int, hold bool) func(io.Writer) burstWriter {
		return func(w io.Writer) burstWriter {
			return deflate.NewWriter(w, deflate.WriterOptions{DictSize: dict, Compressors: compressors()[level], Hold: hold})
		}
	}
	return []variant{
		{"before-stateless-dict2k", func(w io.Writer) burstWriter { return &stateless{dst: w, dictSize: 2 << 10} }},
		{"writer-L1-dict2k", writer(1, 2<<10, false)},
		{"writer-L4-dict2k", writer(4, 2<<10, false)},
		{"writer-L5-dict0", writer(5, -1, false)},
		{"writer-L5-dict1k", writer(5, 1<<10, false)},
		{"writer-L5-dict2k", writer(5, 2<<10, false)},
		{"writer-L5-dict4k", writer(5, 4<<10, false)},
		{"writer-L5-dict8k", writer(5, 8<<10, false)},
		{"writer-L6-dict2k", writer(6, 2<<10, false)},
		{"writer-L6-held", writer(6, 2<<10, true)},
		{"stateful-huffman-only", klauspost(flate.HuffmanOnly)},
		{"stateful-level1", klauspost(1)},
		{"stateful-level5", klauspost(5)},
		{"stateful-level6", klauspost(6)},
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// BenchmarkMobileSync compresses the server side of the recorded mobile
// sync burst by burst, as the proxy sends it, with each candidate. It
// reports the ratio (plaintext / compressed), the compressed size in % and
// the CPU cost in ms per MB of plaintext.
func BenchmarkMobileSync(b *testing.B) {
	rec := mobileSync()
	c, srv := rec.size()
	b.Logf("recording: %d commands (%d bytes), %d response bursts (%d bytes)", len(rec.client), c, len(rec.server), srv)
	// server-4k cuts the server side into bursts of at most 4 KiB, as the
	// proxy flushes during IDLE after every read from the upstream: there
	// the dictionary carried between bursts matters.
	var small [][]byte
	for _, s := range rec.server {
		for len(s) > 4096 {
			small = append(small, s[:4096])
			s = s[4096:]
		}
		small = append(small, s)
	}
	for _, dir := range []string{"server", "server-4k", "client"} {
		bursts := rec.server
		switch dir {
		case "server-4k":
			bursts = small
		case "client":
			bursts = rec.client
		}
		for _, v := range variants() {
			b.Run(dir+"/"+v.name, func(b *testing.B) { benchBursts(b, v, bursts) })
		}
	}
}

// benchBursts compresses bursts with v, a Flush after each, and reports
// the ratio (plaintext / compressed), the compressed size in % of the
// plaintext and the CPU cost in ms per MB of plaintext.
func benchBursts(b *testing.B, v variant, bursts [][]byte) {
	plain := 0
	for _, c := range bursts {
		plain += len(c)
	}
	b.SetBytes(int64(plain))
	var out countWriter
	cpu0 := cpustat.Self()
	for b.Loop() {
		out.n = 0
		w := v.mk(&out)
		for _, burst := range bursts {
			w.Write(burst)
			w.Flush()
		}
		if r, ok := w.(interface{ Release() }); ok {
			r.Release()
		}
	}
	b.ReportMetric(float64(plain)/float64(out.n), "ratio")
	b.ReportMetric(100*float64(out.n)/float64(plain), "%size")
	b.ReportMetric(float64(out.n), "bytes")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(plain)*(1<<20)/1e6, "ms/MB")
	// The process's CPU time, less sensitive than the elapsed time to
	// other work on a shared machine (garbage collection included).
	b.ReportMetric(float64((cpustat.Self()-cpu0).Nanoseconds())/float64(b.N)/float64(plain)*(1<<20)/1e6, "cpu-ms/MB")
}

// BenchmarkBodies compresses message downloads as the proxy sends them,
// one FETCH response each (one burst): a 300 KB message with a base64
// attachment and a 209 KB text message (imaptest.AttachmentMessage,
// imaptest.TextMessage).
func BenchmarkBodies(b *testing.B) {
	text, source := imaptest.TextMessage(209<<10, 0)
	b.Logf("text message: %s", source)
	fetch := func(m []byte) [][]byte {
		return [][]byte{fmt.Appendf(nil, "* 1 FETCH (UID 7 BODY[] {%d}\r\n%s)\r\nA7 OK Fetch completed.\r\n", len(m), m)}
	}
	for _, in := range []struct {
		name   string
		bursts [][]byte
	}{
		{"attachment-300k", fetch(imaptest.AttachmentMessage(300<<10, 1))},
		{"text-209k", fetch(text)},
	} {
		for _, v := range variants() {
			b.Run(in.name+"/"+v.name, func(b *testing.B) { benchBursts(b, v, in.bursts) })
		}
	}
}

// BenchmarkInflate compares reading a client's stream (zlib-style, a sync
// flush after each command, 1 MB literal writes) with package deflate's
// releasable reader and with a plain inflater.
func BenchmarkInflate(b *testing.B) {
	rec := mobileSync()
	var z bytes.Buffer
	fw, _ := flate.NewWriter(&z, 6)
	var plain int
	for range 20 {
		for _, c := range rec.client {
			fw.Write(c)
			fw.Flush()
			plain += len(c)
		}
	}
	body := rec.serverBytes() // a large literal, sent in one write
	fw.Write(body)
	fw.Flush()
	plain += len(body)
	stream := z.Bytes()
	buf := make([]byte, 4096)
	b.Run("deflate.Reader", func(b *testing.B) {
		b.SetBytes(int64(plain))
		for b.Loop() {
			r := deflate.NewReader(bytes.NewReader(stream), nil)
			for {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
		}
	})
	b.Run("flate.NewReader", func(b *testing.B) {
		b.SetBytes(int64(plain))
		for b.Loop() {
			r := flate.NewReader(bytes.NewReader(stream))
			for {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
		}
	})
}

// BenchmarkIdleSessionHeap measures what an idle session costs the proxy
// with and without COMPRESS: N clients (default 10,000; BENCH_SESSIONS
// overrides) in a child process each log in through a real proxy over
// loopback, select INBOX, fetch the envelopes of 20 messages, leave the
// mailbox and then sit idle. The proxy's heap (runtime.MemStats after GC)
// is measured with every session idle, once per mode, and the difference
// per session reported. Run with -benchtime=1x.
func BenchmarkIdleSessionHeap(b *testing.B) {
	n := 10000
	if s := os.Getenv("BENCH_SESSIONS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	raiseFileLimit()
	var heap, stack [2]float64
	for b.Loop() {
		for i, mode := range []string{"plain", "compress"} {
			heap[i], stack[i] = idleHeap(b, n, mode)
		}
	}
	b.ReportMetric(heap[0], "B-heap/plain-session")
	b.ReportMetric(heap[1], "B-heap/compressed-session")
	b.ReportMetric(heap[1]-heap[0], "B-heap-extra/compressed-session")
	b.ReportMetric(stack[1]-stack[0], "B-stack-extra/compressed-session")
}

func raiseFileLimit() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

func memNow() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse
}

// idleHeap returns the heap and stack per idle session in mode.
func idleHeap(b *testing.B, n int, mode string) (heap, stack float64) {
	e := newEnv(b, envOpts{})
	for i := range 20 {
		e.up.Append("alice", "INBOX", nil, []byte(message(i, textBody(rand.New(rand.NewPCG(uint64(i), 1)), 3000))))
	}
	// Warm up pools and the upstream connection, then take the baseline.
	warm := dial(b, e.addr)
	warm.MustOK("LOGIN alice secret")
	warm.MustOK("SELECT INBOX")
	warm.MustOK("CLOSE")
	h0, s0 := memNow()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClients$", "-test.v")
	cmd.Env = append(os.Environ(), "LEMON_IDLE_CLIENTS="+fmt.Sprintf("%s %d %s", e.addr, n, mode))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	sc := bufio.NewScanner(stdout)
	var out []string
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "READY") {
			ready = sc.Text() == fmt.Sprintf("READY %d", n)
			break
		}
		out = append(out, sc.Text())
	}
	if !ready {
		b.Fatalf("client process failed:\n%.2000s", strings.Join(out, "\n"))
	}
	go io.Copy(io.Discard, stdout)
	time.Sleep(500 * time.Millisecond) // let the proxy settle
	h1, s1 := memNow()
	if mode == "compress" {
		if st := e.ext.Stats(); st.Active != int64(n) || st.Compressors != 0 {
			b.Fatalf("%d compressed sessions (want %d), %d compressors lent out (want 0)", st.Active, n, st.Compressors)
		}
	}
	heap = (float64(h1) - float64(h0)) / float64(n)
	stack = (float64(s1) - float64(s0)) / float64(n)
	b.Logf("%s: %d sessions: heap %.0f B/session, stack %.0f B/session", mode, n, heap, stack)
	return heap, stack
}

// TestIdleClients is the client side of BenchmarkIdleSessionHeap, run in a
// child process (LEMON_IDLE_CLIENTS="addr n mode"): it opens the sessions,
// prints READY and holds them until its standard input closes.
func TestIdleClients(t *testing.T) {
	spec := os.Getenv("LEMON_IDLE_CLIENTS")
	if spec == "" {
		t.Skip("only run by BenchmarkIdleSessionHeap")
	}
	var addr, mode string
	var n int
	fmt.Sscan(spec, &addr, &n, &mode)
	raiseFileLimit()
	conns := make([]net.Conn, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := dial(t, addr)
			c.MustOK("LOGIN alice secret")
			if mode == "compress" {
				c.MustOK("COMPRESS DEFLATE")
				c.StartLightCompression()
			}
			c.MustOK("SELECT INBOX")
			c.MustOK("FETCH 1:20 (FLAGS ENVELOPE)")
			c.MustOK("CLOSE")
			c.MustOK("NOOP")
			mu.Lock()
			conns = append(conns, c.Conn)
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Println("READY", len(conns))
	io.Copy(io.Discard, os.Stdin)
}
