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

	"github.com/lemonproxy/lemonproxy/internal/deflate"
)

// burstWriter is a compressor under test: Write a burst, then Flush.
type burstWriter interface {
	io.Writer
	Flush() error
}

// pooledDict compresses each burst with a stateful writer taken from a
// shared pool and reset with the last dictSize bytes of plaintext: per
// session only the dictionary is kept, like the stateless writer.
type pooledDict struct {
	dst      io.Writer
	level    int
	dictSize int
	dict     []byte
	buf      []byte
}

var levelPools sync.Map // level -> *sync.Pool

func (p *pooledDict) Write(b []byte) (int, error) { p.buf = append(p.buf, b...); return len(b), nil }

func (p *pooledDict) Flush() error {
	pl, _ := levelPools.LoadOrStore(p.level, &sync.Pool{})
	pool := pl.(*sync.Pool)
	fw, _ := pool.Get().(*flate.Writer)
	if fw == nil {
		fw, _ = flate.NewWriter(p.dst, p.level)
	}
	fw.ResetDict(p.dst, p.dict)
	fw.Write(p.buf)
	err := fw.Flush()
	pool.Put(fw)
	all := append(p.dict, p.buf...)
	p.dict = append([]byte(nil), all[max(0, len(all)-p.dictSize):]...)
	p.buf = p.buf[:0]
	return err
}

type variant struct {
	name string
	mk   func(io.Writer) burstWriter
}

func variants() []variant {
	level := func(l int) func(io.Writer) burstWriter {
		return func(w io.Writer) burstWriter { fw, _ := flate.NewWriter(w, l); return fw }
	}
	return []variant{
		{"stateless-dict0", func(w io.Writer) burstWriter { return deflate.NewWriter(w, -1) }},
		{"stateless-dict512", func(w io.Writer) burstWriter { return deflate.NewWriter(w, 512) }},
		{"stateless-dict1k", func(w io.Writer) burstWriter { return deflate.NewWriter(w, 1<<10) }},
		{"stateless-dict2k", func(w io.Writer) burstWriter { return deflate.NewWriter(w, 2<<10) }},
		{"stateless-dict4k", func(w io.Writer) burstWriter { return deflate.NewWriter(w, 4<<10) }},
		{"stateless-dict8k", func(w io.Writer) burstWriter { return deflate.NewWriter(w, 8<<10) }},
		{"pooled-level1-dict2k", func(w io.Writer) burstWriter { return &pooledDict{dst: w, level: 1, dictSize: 2 << 10} }},
		{"pooled-level5-dict8k", func(w io.Writer) burstWriter { return &pooledDict{dst: w, level: 5, dictSize: 8 << 10} }},
		{"stateful-huffman-only", level(flate.HuffmanOnly)},
		{"stateful-level1", level(1)},
		{"stateful-level6", level(6)},
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
	var plain int
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
		plain = 0
		for _, c := range bursts {
			plain += len(c)
		}
		for _, v := range variants() {
			b.Run(dir+"/"+v.name, func(b *testing.B) {
				b.SetBytes(int64(plain))
				var out countWriter
				for b.Loop() {
					out.n = 0
					w := v.mk(&out)
					for _, burst := range bursts {
						w.Write(burst)
						w.Flush()
					}
				}
				b.ReportMetric(float64(plain)/float64(out.n), "ratio")
				b.ReportMetric(100*float64(out.n)/float64(plain), "%size")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(plain)*(1<<20)/1e6, "ms/MB")
			})
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
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "READY") {
			ready = true
			break
		}
	}
	if !ready {
		b.Fatal("client process failed")
	}
	go io.Copy(io.Discard, stdout)
	time.Sleep(500 * time.Millisecond) // let the proxy settle
	h1, s1 := memNow()
	if mode == "compress" {
		if a := e.ext.Stats().Active; a != int64(n) {
			b.Fatalf("%d compressed sessions, want %d", a, n)
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
