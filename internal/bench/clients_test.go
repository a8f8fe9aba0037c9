package bench

// The client side of the idle benchmarks runs in a child process (the test
// binary re-executed with clientEnv set), so that the proxy's process holds
// only server-side sockets and its RSS and heap mean something.
//
// The child opens Sessions connections to Addr from the loopback addresses
// 127.0.0.2, 127.0.0.3, ... (one ephemeral port range each), logs session i
// in as account i % Users (and, with Compress, turns on COMPRESS=DEFLATE),
// selects INBOX and starts IDLE, then prints "READY n seconds". Then it obeys commands on its standard input, one a
// line:
//
//	ROUND  APPEND one message to every account's INBOX directly on Dovecot
//	       (one connection per account, from 127.0.0.254, opened at the
//	       first round), wait until every session saw an EXISTS, and print
//	       "ROUND got missing append-ms round-ms p50 p90 p99 max probe-p50
//	       probe-p99" (the end-to-end latencies in microseconds: from the
//	       APPEND's tagged OK to the session's "* n EXISTS"; and the round
//	       trip of a NOOP on a connection with INBOX selected, sent over and
//	       over during the round: how quickly a loaded Dovecot answers).
//	STATS  print "STATS count p50 p90 p99 max closed probe-p50 probe-p99"
//	       over all rounds.
//
// It exits when its standard input closes.

import (
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// clientEnv carries the JSON clientSpec to the child process.
const clientEnv = "LEMONPROXY_BENCH_CLIENT"

// appenderIP is the source address of the appending connections, so that
// counting the sockets to Dovecot can leave them out.
var appenderIP = net.IPv4(127, 0, 0, 254)

type clientSpec struct {
	Addr        string // where the sessions connect: the proxy or Dovecot
	Dovecot     string // Dovecot, for the appending connections
	Sessions    int
	Users       int
	Sources     int // loopback source addresses for the sessions
	Concurrency int // sessions being opened at once
	Appenders   int // APPENDs in flight at once during a round
	// AppendRate paces a round's APPENDs (per second, all accounts
	// together); 0 sends them as fast as Appenders connections can.
	AppendRate float64
	// Compress: each session sends COMPRESS DEFLATE after LOGIN.
	Compress bool
	// TLS: the sessions (not the appenders, which talk to Dovecot) speak
	// implicit TLS to Addr, as phones do on port 993. The certificate
	// is the benchmark's own, not verified.
	TLS bool
}

func userName(i int) string { return fmt.Sprintf("u%05d", i) }
func userPass(i int) string { return fmt.Sprintf("p%05d", i) }

// setupTimeout bounds each step of opening a session; logins queue up
// behind each other when thousands arrive at once.
const setupTimeout = 2 * time.Minute

// roundTimeout bounds how long a round waits for the last EXISTS.
const roundTimeout = time.Minute

var epoch = time.Now()

// now is a monotonic clock in nanoseconds, comparable across goroutines.
func now() int64 { return int64(time.Since(epoch)) }

type idleSession struct {
	account  int
	nc       net.Conn
	existsAt atomic.Int64 // now() of the latest "* n EXISTS"
}

type clientState struct {
	spec      clientSpec
	sessions  []*idleSession
	got       atomic.Int64 // EXISTS received, all sessions together
	closed    atomic.Int64 // sessions whose connection ended
	appenders []*lineConn
	probe     *lineConn // measures Dovecot's command latency during rounds
	all       []int64   // end-to-end latencies of every round, ns
	probeAll  []int64   // the probe's round trips in every round, ns
	round     int
}

func clientMain() int {
	var spec clientSpec
	if err := json.Unmarshal([]byte(os.Getenv(clientEnv)), &spec); err != nil {
		fmt.Println("FAIL bad spec:", err)
		return 1
	}
	c := &clientState{spec: spec, sessions: make([]*idleSession, spec.Sessions)}
	start := time.Now()
	if err := c.openSessions(); err != nil {
		fmt.Println("FAIL", err)
		return 1
	}
	fmt.Printf("READY %d %.1f\n", len(c.sessions), time.Since(start).Seconds())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "ROUND":
			if err := c.runRound(); err != nil {
				fmt.Println("FAIL", err)
				return 1
			}
		case "STATS":
			s, p := summarize(c.all), summarize(c.probeAll)
			fmt.Printf("STATS %d %d %d %d %d %d %d %d\n", len(c.all), s.p50/1000, s.p90/1000, s.p99/1000, s.max/1000, c.closed.Load(), p.p50/1000, p.p99/1000)
		}
	}
	for _, s := range c.sessions {
		s.nc.Close()
	}
	for _, a := range c.appenders {
		a.nc.Close()
	}
	return 0
}

// lineConn is a minimal IMAP client connection.
type lineConn struct {
	nc  net.Conn
	r   *bufio.Reader
	w   io.Writer // nc, or a deflate layer on it
	seq int
}

// compress turns on COMPRESS=DEFLATE (RFC 4978). The client's commands go
// out as stored deflate blocks, which any inflater must accept and which
// need no compressor state: a stateful deflater per session would cost
// the client process about 1 MB each. The responses are inflated.
func (c *lineConn) compress() error {
	if err := c.cmd("COMPRESS DEFLATE", false); err != nil {
		return err
	}
	// The proxy sends nothing after the OK before the next command, but
	// whatever was read ahead belongs to the compressed stream.
	ahead, _ := c.r.Peek(c.r.Buffered())
	in := io.MultiReader(bytes.NewReader(bytes.Clone(ahead)), c.nc)
	c.r = bufio.NewReaderSize(flate.NewReader(in), 1024)
	c.w = storedBlocks{c.nc}
	return nil
}

// storedBlocks writes each Write as non-final stored deflate blocks.
type storedBlocks struct{ w io.Writer }

func (s storedBlocks) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		n := min(len(p), 0xffff)
		// BFINAL 0, BTYPE 00, padding to the byte; LEN and NLEN.
		block := append([]byte{0, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}, p[:n]...)
		if _, err := s.w.Write(block); err != nil {
			return done, err
		}
		done += n
		p = p[n:]
	}
	return done, nil
}

func dialFrom(ip net.IP, addr string) (*lineConn, error) {
	return dial(ip, addr, false)
}

// dial opens a connection from ip to addr, with implicit TLS if useTLS,
// and reads the greeting.
func dial(ip net.IP, addr string, useTLS bool) (*lineConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: setupTimeout}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if useTLS {
		nc = tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
	}
	c := &lineConn{nc: nc, r: bufio.NewReaderSize(nc, 1024), w: nc}
	nc.SetDeadline(time.Now().Add(setupTimeout))
	if _, err := c.readLine(); err != nil { // greeting
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *lineConn) readLine() (string, error) {
	line, err := c.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// cmd sends a command and reads up to its tagged response, which must be
// OK; wantCont stops at a continuation request instead (IDLE).
func (c *lineConn) cmd(text string, wantCont bool) error {
	c.seq++
	tag := fmt.Sprintf("b%d", c.seq)
	if _, err := io.WriteString(c.w, tag+" "+text+"\r\n"); err != nil {
		return err
	}
	return c.await(tag, wantCont)
}

func (c *lineConn) await(tag string, wantCont bool) error {
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		switch {
		case wantCont && strings.HasPrefix(line, "+"):
			return nil
		case strings.HasPrefix(line, tag+" "):
			if !strings.HasPrefix(line[len(tag)+1:], "OK") {
				return fmt.Errorf("%s", line)
			}
			return nil
		}
	}
}

func (c *clientState) openSessions() error {
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	next := atomic.Int64{}
	for range c.spec.Concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= c.spec.Sessions {
					return
				}
				s, err := c.openSession(i)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("session %d: %w", i, err)
					}
					mu.Unlock()
					next.Store(int64(c.spec.Sessions)) // stop the others
					return
				}
				c.sessions[i] = s
			}
		})
	}
	wg.Wait()
	return firstErr
}

func (c *clientState) openSession(i int) (*idleSession, error) {
	ip := net.IPv4(127, 0, 0, byte(2+i%c.spec.Sources))
	acct := i % c.spec.Users
	var err error
	for try := 0; try < 5; try++ {
		if try > 0 {
			time.Sleep(time.Duration(try) * 200 * time.Millisecond)
		}
		var lc *lineConn
		lc, err = dial(ip, c.spec.Addr, c.spec.TLS)
		if err != nil {
			continue
		}
		err = lc.cmd("LOGIN "+userName(acct)+" "+userPass(acct), false)
		if err == nil && c.spec.Compress {
			err = lc.compress()
		}
		if err == nil {
			err = lc.cmd("SELECT INBOX", false)
		}
		if err == nil {
			err = lc.cmd("IDLE", true)
		}
		if err != nil {
			lc.nc.Close()
			continue
		}
		lc.nc.SetDeadline(time.Time{})
		s := &idleSession{account: acct, nc: lc.nc}
		go c.watchSession(s, lc.r)
		return s, nil
	}
	return nil, err
}

// watchSession reads an idling session's pushes and notes each EXISTS.
func (c *clientState) watchSession(s *idleSession, r *bufio.Reader) {
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			c.closed.Add(1)
			return
		}
		line = bytes.TrimRight(line, "\r\n")
		if bytes.HasPrefix(line, []byte("* ")) && bytes.HasSuffix(line, []byte(" EXISTS")) {
			s.existsAt.Store(now())
			c.got.Add(1)
		}
	}
}

func (c *clientState) openAppenders() error {
	c.appenders = make([]*lineConn, c.spec.Users)
	var wg sync.WaitGroup
	errs := make([]error, c.spec.Users)
	sem := make(chan struct{}, 32)
	for a := range c.spec.Users {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			lc, err := dialFrom(appenderIP, c.spec.Dovecot)
			if err == nil {
				if err = lc.cmd("LOGIN "+userName(a)+" "+userPass(a), false); err != nil {
					lc.nc.Close()
				}
			}
			if err != nil {
				errs[a] = fmt.Errorf("appender %d: %w", a, err)
				return
			}
			lc.nc.SetDeadline(time.Time{})
			c.appenders[a] = lc
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	lc, err := dialFrom(appenderIP, c.spec.Dovecot)
	if err == nil {
		err = lc.cmd("LOGIN "+userName(0)+" "+userPass(0), false)
	}
	if err == nil {
		err = lc.cmd("SELECT INBOX", false)
	}
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	c.probe = lc
	return nil
}

// runProbe sends NOOP on a connection with INBOX selected, one after the
// other, until stop is closed, and returns the round-trip times: how long
// Dovecot takes to answer a command like the watchers' while the round's
// load is on.
func (c *clientState) runProbe(stop chan struct{}) []int64 {
	var rtts []int64
	for {
		select {
		case <-stop:
			return rtts
		case <-time.After(5 * time.Millisecond):
		}
		t := now()
		c.probe.nc.SetDeadline(time.Now().Add(roundTimeout))
		if err := c.probe.cmd("NOOP", false); err != nil {
			return rtts
		}
		rtts = append(rtts, now()-t)
	}
}

func (c *clientState) appendOne(a int) error {
	lc := c.appenders[a]
	msg := fmt.Sprintf("From: bench <bench@example.org>\r\nTo: %s@example.org\r\nSubject: round %d\r\nMessage-ID: <r%d.u%d.%d@example.org>\r\n\r\nHello.\r\n",
		userName(a), c.round, c.round, a, now())
	lc.seq++
	tag := fmt.Sprintf("a%d", lc.seq)
	lc.nc.SetDeadline(time.Now().Add(roundTimeout))
	if _, err := fmt.Fprintf(lc.nc, "%s APPEND INBOX {%d+}\r\n%s\r\n", tag, len(msg), msg); err != nil {
		return err
	}
	return lc.await(tag, false)
}

func (c *clientState) runRound() error {
	if c.appenders == nil {
		if err := c.openAppenders(); err != nil {
			return err
		}
	}
	n := c.spec.Sessions
	c.round++
	roundStart := now()
	base := c.got.Load()
	appendDone := make([]int64, c.spec.Users)
	stopProbe := make(chan struct{})
	probeDone := make(chan []int64)
	go func() { probeDone <- c.runProbe(stopProbe) }()
	work := make(chan int)
	go func() {
		t0 := time.Now()
		for a := range c.spec.Users {
			if r := c.spec.AppendRate; r > 0 {
				time.Sleep(time.Until(t0.Add(time.Duration(float64(a) / r * float64(time.Second)))))
			}
			work <- a
		}
		close(work)
	}()
	var wg sync.WaitGroup
	var appendErr atomic.Pointer[error]
	for range c.spec.Appenders {
		wg.Go(func() {
			for a := range work {
				if err := c.appendOne(a); err != nil {
					err = fmt.Errorf("APPEND for %s: %w", userName(a), err)
					appendErr.CompareAndSwap(nil, &err)
				}
				appendDone[a] = now()
			}
		})
	}
	wg.Wait()
	if p := appendErr.Load(); p != nil {
		return *p
	}
	appendEnd := now()
	deadline := time.Now().Add(roundTimeout)
	for c.got.Load() < base+int64(n) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	roundEnd := now()
	close(stopProbe)
	rtts := <-probeDone
	c.probeAll = append(c.probeAll, rtts...)
	probe := summarize(rtts)
	var lat []int64
	missing := 0
	for _, s := range c.sessions {
		t := s.existsAt.Load()
		if t <= roundStart {
			missing++
			continue
		}
		lat = append(lat, max(t-appendDone[s.account], 0))
	}
	c.all = append(c.all, lat...)
	st := summarize(lat)
	fmt.Printf("ROUND %d %d %.1f %.1f %d %d %d %d %d %d\n", len(lat), missing,
		float64(appendEnd-roundStart)/1e6, float64(roundEnd-roundStart)/1e6,
		st.p50/1000, st.p90/1000, st.p99/1000, st.max/1000, probe.p50/1000, probe.p99/1000)
	return nil
}

type latencySummary struct{ p50, p90, p99, max int64 }

// summarize returns percentiles (nearest rank) of samples, in their unit.
func summarize(samples []int64) latencySummary {
	if len(samples) == 0 {
		return latencySummary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	at := func(p float64) int64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return latencySummary{at(0.50), at(0.90), at(0.99), s[len(s)-1]}
}
