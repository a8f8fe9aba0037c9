package compress_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

func hasCap(lines []string, c string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, "* CAPABILITY ") && strings.Contains(l+" ", " "+c+" ") {
			return true
		}
	}
	return false
}

func message(i int, body string) string {
	return fmt.Sprintf("From: Sender %d <s%d@example.org>\r\nTo: alice@example.org\r\nSubject: message %d\r\n"+
		"Date: Mon, 2 Nov 2026 10:%02d:00 +0000\r\nMessage-ID: <m%d@example.org>\r\n\r\n%s\r\n", i, i, i, i%60, i, body)
}

// TestSession runs a whole session through compression: capability
// advertisement, APPEND with a synchronising literal (whose continuation
// request must be flushed), SELECT, FETCH, a second COMPRESS, LOGOUT.
func TestCompressSession(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := dial(t, e.addr)
	if hasCap(c.Cmd("CAPABILITY"), "COMPRESS=DEFLATE") {
		t.Fatal("COMPRESS=DEFLATE advertised before authentication")
	}
	c.MustOK("LOGIN alice secret")
	if !hasCap(c.Cmd("CAPABILITY"), "COMPRESS=DEFLATE") {
		t.Fatal("COMPRESS=DEFLATE not advertised after authentication")
	}
	c.Compress()
	if !hasCap(c.Cmd("CAPABILITY"), "COMPRESS=DEFLATE") {
		t.Fatal("CAPABILITY fails after COMPRESS")
	}
	body := strings.Repeat("All work and no play makes Jack a dull boy.\r\n", 2000)
	msg := message(1, body)
	c.MustOK(fmt.Sprintf("APPEND INBOX (\\Seen) {%d}", len(msg)), msg)
	msg2 := message(2, "short")
	c.MustOK(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg2), msg2))
	c.MustOK("SELECT INBOX")
	lines := c.MustOK("FETCH 1:* (BODY[])")
	if !strings.HasSuffix(lines[0], msg+")") || !strings.HasSuffix(lines[1], msg2+")") {
		t.Fatalf("FETCH through compression: %d lines, %.200q", len(lines), lines)
	}
	if got := c.Cmd("COMPRESS DEFLATE"); imaptest.Tagged(got) != "NO [COMPRESSIONACTIVE] DEFLATE compression is already active." {
		t.Fatalf("second COMPRESS: %q", got)
	}
	c.Cmd("LOGOUT")
	st := e.ext.Stats()
	if st.Activations != 1 {
		t.Fatalf("stats %+v", st)
	}
	imaptest.WaitFor(t, "the session to end", func() bool { return e.ext.Stats().Active == 0 })
	st = e.ext.Stats()
	if st.CompressedOut == 0 || st.PlainOut < 10*st.CompressedOut || st.PlainIn < 2*st.CompressedIn {
		t.Fatalf("compression did not pay off: %+v", st)
	}
}

func TestCompressBadCommands(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := dial(t, e.addr)
	if got := imaptest.Tagged(c.Cmd("COMPRESS DEFLATE")); !strings.HasPrefix(got, "BAD ") {
		t.Fatalf("COMPRESS before login: %q, want BAD", got)
	}
	c.MustOK("LOGIN alice secret")
	for _, cmd := range []string{"COMPRESS", "COMPRESS GZIP", "COMPRESS DEFLATE DEFLATE", "COMPRESS (DEFLATE)"} {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, "BAD ") {
			t.Fatalf("%s: %q, want BAD", cmd, got)
		}
	}
	// Still uncompressed and working; lower case works too.
	c.MustOK("NOOP")
	c.MustOK("compress deflate")
	c.StartCompression(1)
	c.MustOK("NOOP")
}

// TestPipelined sends the first compressed command in the same packet as
// COMPRESS itself: the proxy must decode it as compressed.
func TestCompressPipelined(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := dial(t, e.addr)
	c.MustOK("LOGIN alice secret")
	var z bytes.Buffer
	fw, _ := flate.NewWriter(&z, 6)
	fw.Write([]byte("p1 NOOP\r\n"))
	fw.Flush()
	c.Conn.Write(append([]byte("p0 COMPRESS DEFLATE\r\n"), z.Bytes()...))
	if l := c.ReadLine(); l != "p0 OK DEFLATE active." {
		t.Fatalf("got %q", l)
	}
	c.InflateResponses()
	if l := c.ReadLine(); !strings.HasPrefix(l, "p1 OK") {
		t.Fatalf("pipelined command: %q", l)
	}
}

func TestCompressTLS(t *testing.T) {
	srvCfg, cliCfg := imaptest.SelfSignedTLS(t)
	e := newEnv(t, envOpts{tls: srvCfg})
	tc, err := tls.Dial("tcp", e.addr, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	c := imaptest.NewClient(t, tc)
	c.MustGreetOK()
	c.MustOK("LOGIN alice secret")
	c.Compress()
	c.MustOK("SELECT INBOX")
	c.MustOK("LOGOUT")
}

// TestIdlePush checks that a message arriving during IDLE reaches the
// client compressed, at once (the burst is flushed).
func TestCompressIdlePush(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := dial(t, e.addr)
	c.MustOK("LOGIN alice secret")
	c.Compress()
	c.MustOK("SELECT INBOX")
	c.WriteBytes([]byte("i1 IDLE\r\n"))
	if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("IDLE: %q", l)
	}
	// imapserver sends its "+" before it listens for updates: give it a
	// moment, or the APPEND may slip in unseen.
	time.Sleep(200 * time.Millisecond)
	other := dial(t, e.addr)
	other.MustOK("LOGIN alice secret")
	m := message(3, "pushed")
	other.MustOK(fmt.Sprintf("APPEND INBOX {%d}", len(m)), m)
	// imapmemserver tells idling sessions at once.
	if l := c.ReadLine(); l != "* 1 EXISTS" {
		t.Fatalf("during IDLE: %q", l)
	}
	c.WriteBytes([]byte("DONE\r\n"))
	for {
		l := c.ReadLine()
		if strings.HasPrefix(l, "i1 ") {
			if !strings.HasPrefix(l, "i1 OK") {
				t.Fatalf("IDLE ended with %q", l)
			}
			break
		}
	}
	c.MustOK("NOOP")
}

// TestCorruptInput sends bytes that are not raw deflate after COMPRESS:
// the session must end with a BYE that says so (compressed, since the
// client's side of the stream is unreadable but the proxy's is fine).
func TestCompressCorruptInput(t *testing.T) {
	cases := map[string][]byte{
		"reserved block type": {0xff, 0xff, 0xff, 0xff, 0xff},
		"zlib header":         nil, // filled below
		"plain text":          []byte("c3 NOOP\r\n"),
		"bad stored length":   {0x00, 0x05, 0x00, 0x05, 0x00, 'h', 'e', 'l', 'l', 'o'},
	}
	var zb bytes.Buffer
	zb.Write([]byte{0x78, 0x9c})
	fw, _ := flate.NewWriter(&zb, 6)
	fw.Write([]byte("c3 NOOP\r\n"))
	fw.Flush()
	cases["zlib header"] = zb.Bytes()
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			c := dial(t, e.addr)
			c.MustOK("LOGIN alice secret")
			c.MustOK("COMPRESS DEFLATE")
			c.InflateResponses()
			c.Conn.Write(data)
			bye := c.ExpectBye()
			want := "* BYE Corrupt compressed data."
			if name == "zlib header" {
				want = "* BYE Compressed data starts with a zlib header"
			}
			if !strings.HasPrefix(bye, want) {
				t.Fatalf("got %q, want %q", bye, want)
			}
			imaptest.WaitFor(t, "the session to end", func() bool { return e.ext.Stats().Active == 0 })
			if st := e.ext.Stats(); st.Corrupt != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestVanish: a client that turns compression on and disappears, at every
// point, leaves nothing behind (TestMain checks for goroutines).
func TestCompressVanish(t *testing.T) {
	e := newEnv(t, envOpts{})
	for i := range 4 {
		c := dial(t, e.addr)
		c.MustOK("LOGIN alice secret")
		switch i {
		case 0: // right after sending COMPRESS
			c.WriteBytes([]byte("z COMPRESS DEFLATE\r\n"))
		case 1: // after the OK
			c.Compress()
		case 2: // in the middle of a compressed command
			c.Compress()
			var z bytes.Buffer
			fw, _ := flate.NewWriter(&z, 1)
			fw.Write([]byte("x1 SELECT INB"))
			fw.Flush()
			c.Conn.Write(z.Bytes()[:z.Len()-3])
		case 3: // in the middle of a compressed literal
			c.Compress()
			c.WriteBytes([]byte("x2 APPEND INBOX {100000+}\r\n" + strings.Repeat("x", 5000)))
		}
		time.Sleep(20 * time.Millisecond)
		c.Conn.Close()
	}
	imaptest.WaitFor(t, "the sessions to end", func() bool { return e.ext.Stats().Active == 0 })
	if st := e.ext.Stats(); st.Activations != 4 || st.Corrupt != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLongLine checks that the decompressed side is bounded like the plain
// one: a compressed bomb of a line ends with "Line too long".
func TestCompressLongLine(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := dial(t, e.addr)
	c.MustOK("LOGIN alice secret")
	c.Compress()
	// 16 MiB of 'a' compress to ~16 KiB.
	line := bytes.Repeat([]byte("a"), 16<<20)
	go func() {
		c.TryWrite(line)
	}()
	if bye := c.ExpectBye(); bye != "* BYE Line too long." {
		t.Fatalf("got %q", bye)
	}
}

// TestReaderReleasedWhenIdle checks through a whole session that the
// inflater is not held between commands.
func TestCompressReaderReleasedWhenIdle(t *testing.T) {
	var src chanReader = make(chan []byte, 10)
	r := deflate.NewReader(src, nil)
	var z bytes.Buffer
	fw, _ := flate.NewWriter(&z, 6)
	buf := make([]byte, 4096)
	for i := range 20 {
		fmt.Fprintf(fw, "a%d UID FETCH 1:* (FLAGS)\r\n", i)
		fw.Flush()
		src <- append([]byte(nil), z.Bytes()...)
		z.Reset()
		n, err := r.Read(buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), fmt.Sprintf("a%d ", i)) {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		// The next read blocks in the source: the inflater must be gone.
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.Read(buf)
		}()
		// Give the reading goroutine time to get there, however loaded
		// the machine: the inflater must be dropped by the time it waits.
		for deadline := time.Now().Add(2 * time.Second); r.Active(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("command %d: inflater held while waiting for the client", i)
			}
		}
		src <- nil // wakes the read with a timeout
		<-done
	}
}

// chanReader returns the byte slices sent to it; nil is a timeout.
type chanReader chan []byte

func (c chanReader) Read(p []byte) (int, error) {
	b := <-c
	if b == nil {
		return 0, &net.OpError{Op: "read", Err: timeoutError{}}
	}
	return copy(p, b), nil
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// fetchBody fetches message seq's body and checks it is exactly want.
func fetchBody(t testing.TB, c *client, seq int, want []byte) {
	t.Helper()
	lines := c.MustOK(fmt.Sprintf("FETCH %d (BODY.PEEK[])", seq))
	if len(lines) != 2 || !strings.HasSuffix(lines[0], fmt.Sprintf("{%d}\r\n%s)", len(want), want)) {
		got := ""
		if len(lines) > 0 {
			got = lines[0]
		}
		t.Fatalf("FETCH %d: %d lines, first %d bytes (want the %d-byte message): %.120q...", seq, len(lines), len(got), len(want), got)
	}
}

// TestCompressBurstsAndIdle downloads large messages (a base64 attachment,
// prose, and a mix) between idle periods, pushes during IDLE and small
// commands: each download takes a compressor from the pool for as long as
// the session sends, and gives it back once the session waits for its
// client. The client inflates the whole session as one stream (a stateful
// inflater, as real clients have), so every byte must be where RFC 4978's
// one continuous stream puts it, across every return to the pool.
func TestCompressBurstsAndIdle(t *testing.T) {
	e := newEnv(t, envOpts{})
	text, _ := imaptest.TextMessage(209<<10, 0)
	msgs := [][]byte{imaptest.AttachmentMessage(300<<10, 1), text, []byte(message(3, "short")),
		append(imaptest.AttachmentMessage(100<<10, 4), text[:100<<10]...)}
	for _, m := range msgs {
		e.up.Append("alice", "INBOX", nil, m)
	}
	c := dial(t, e.addr)
	c.MustOK("LOGIN alice secret")
	c.Compress()
	c.MustOK("SELECT INBOX")
	idle := func(what string) {
		t.Helper()
		imaptest.WaitFor(t, "the compressor to go back to the pool "+what, func() bool { return e.ext.Stats().Compressors == 0 })
	}
	for round := range 3 {
		for i, m := range msgs {
			before := e.ext.Stats()
			fetchBody(t, c, i+1, m)
			after := e.ext.Stats()
			idle(fmt.Sprintf("after FETCH %d", i+1))
			plain, comp := after.PlainOut-before.PlainOut, after.CompressedOut-before.CompressedOut
			if i == 0 && float64(comp) > 0.8*float64(plain) {
				// Base64 leaves as Huffman-only blocks, at about 3/4.
				t.Errorf("round %d: the attachment message: %d bytes compressed to %d", round, plain, comp)
			}
		}
		// A push during IDLE: a small burst, compressed without a
		// compressor, between two that have one.
		c.WriteBytes([]byte(fmt.Sprintf("i%d IDLE\r\n", round)))
		if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
			t.Fatalf("IDLE: %q", l)
		}
		time.Sleep(100 * time.Millisecond) // imapmemserver listens after its "+"
		other := dial(t, e.addr)
		other.MustOK("LOGIN alice secret")
		m := message(10+round, "pushed")
		other.MustOK(fmt.Sprintf("APPEND INBOX {%d}", len(m)), m)
		other.Close()
		if l := c.ReadLine(); l != fmt.Sprintf("* %d EXISTS", len(msgs)+1+round) {
			t.Fatalf("during IDLE: %q", l)
		}
		idle("during IDLE")
		c.WriteBytes([]byte("DONE\r\n"))
		for {
			l := c.ReadLine()
			if strings.HasPrefix(l, fmt.Sprintf("i%d ", round)) {
				if !strings.HasPrefix(l, fmt.Sprintf("i%d OK", round)) {
					t.Fatalf("IDLE ended with %q", l)
				}
				break
			}
		}
		c.MustOK("NOOP")
		fetchBody(t, c, len(msgs)+1+round, []byte(m))
	}
	c.MustOK("LOGOUT")
	imaptest.WaitFor(t, "the session to end", func() bool { return e.ext.Stats().Active == 0 })
	if st := e.ext.Stats(); st.Compressors != 0 {
		t.Fatalf("stats after the session: %+v", st)
	}
}

// TestCompressConcurrentDownloads runs sessions that download at the same
// time with fewer compressors than sessions: those that find none compress
// statelessly, and every stream stays exact (run with -race).
func TestCompressConcurrentDownloads(t *testing.T) {
	e := newEnv(t, envOpts{maxCompressors: 2})
	text, _ := imaptest.TextMessage(150<<10, 7)
	msgs := [][]byte{imaptest.AttachmentMessage(150<<10, 2), text}
	for _, m := range msgs {
		e.up.Append("alice", "INBOX", nil, m)
	}
	const sessions = 6
	var wg sync.WaitGroup
	maxInUse := int64(0)
	var mu sync.Mutex
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, e.addr)
			defer c.Close() // also when a check fails (Fatalf ends this goroutine)
			c.MustOK("LOGIN alice secret")
			c.Compress()
			c.MustOK("SELECT INBOX")
			for i := range 4 {
				fetchBody(t, c, 1+i%2, msgs[i%2])
				mu.Lock()
				maxInUse = max(maxInUse, e.ext.Stats().Compressors)
				mu.Unlock()
			}
			c.MustOK("LOGOUT")
		}()
	}
	wg.Wait()
	imaptest.WaitFor(t, "the sessions to end", func() bool { return e.ext.Stats().Active == 0 })
	if st := e.ext.Stats(); st.Compressors != 0 || maxInUse > 2 {
		t.Fatalf("stats %+v, at most %d compressors seen lent out (bound 2)", st, maxInUse)
	}
}
