package link

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/internal/secretfile"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	secret      = []byte("0123456789abcdef-cluster-secret")
	otherSecret = []byte("0123456789abcdef-another-secret")
)

// allBytes is every byte value, invalid UTF-8 included.
var allBytes = func() string {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return string(b)
}()

var handoff = proxy.Handoff{
	Account: "joe@example.org",
	Tag:     "a1",
	User:    "Joe\xff\xfe\x00 \"é\"\r\n",
	Pass:    allBytes,
	Addr:    netip.MustParseAddr("fe80::1%eth0"),
	TLS:     true,
	Via:     "node-b",
}

// serve runs fn on the first connection accepted on a new loopback
// listener and returns the listener's address and a wait function.
func serve(t *testing.T, fn func(net.Conn)) (addr string, wait func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fn(c)
	}()
	wait = func() { ln.Close(); wg.Wait() }
	t.Cleanup(wait)
	return ln.Addr().String(), wait
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestHandshake runs a full handshake over loopback TCP and then the
// session's bytes both ways, the owner's first line right behind OK.
func TestHandshake(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB each way
	type result struct {
		req *Request
		got []byte
		err error
	}
	res := make(chan result, 1)
	addr, wait := serve(t, func(c net.Conn) {
		req, err := Accept(context.Background(), c, secret)
		if err != nil {
			res <- result{err: err}
			return
		}
		raw, err := req.Reply(Reply{Kind: ReplyOK})
		if err != nil {
			res <- result{err: err}
			return
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(20 * time.Second))
		wrote := make(chan error, 1)
		go func() {
			_, err := raw.Write(append([]byte("a1 OK LOGIN done\r\n"), big...))
			wrote <- err
		}()
		got, err := io.ReadAll(raw)
		if werr := <-wrote; err == nil {
			err = werr
		}
		res <- result{req: req, got: got, err: err}
	})
	conn, rep, err := Dial(ctxTimeout(t, 10*time.Second), addr, secret, "node-b", handoff)
	if err != nil {
		t.Fatal(err)
	}
	if rep != (Reply{Kind: ReplyOK}) || conn == nil {
		t.Fatalf("reply %+v, conn %v", rep, conn)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	var wg sync.WaitGroup
	wg.Add(1)
	var got []byte
	var rerr error
	go func() {
		defer wg.Done()
		got, rerr = io.ReadAll(io.LimitReader(conn, int64(len("a1 OK LOGIN done\r\n")+len(big))))
	}()
	if _, err := conn.Write(append([]byte("a2 NOOP\r\n"), big...)); err != nil {
		t.Fatal(err)
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Error(err)
	}
	wg.Wait()
	conn.Close()
	if rerr != nil || !bytes.Equal(got, append([]byte("a1 OK LOGIN done\r\n"), big...)) {
		t.Fatalf("dialer read %d bytes, %v", len(got), rerr)
	}
	r := <-res
	wait()
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.req.Handoff != handoff || r.req.From != "node-b" {
		t.Fatalf("handoff %+v from %q, want %+v", r.req.Handoff, r.req.From, handoff)
	}
	if !bytes.Equal(r.got, append([]byte("a2 NOOP\r\n"), big...)) {
		t.Fatalf("listener read %d bytes", len(r.got))
	}
}

// TestHandoffRoundTrip: every field comes back exactly, whatever its
// bytes.
func TestHandoffRoundTrip(t *testing.T) {
	for _, h := range []proxy.Handoff{
		{},
		handoff,
		{Account: allBytes, Tag: allBytes, User: allBytes, Pass: allBytes, Via: allBytes},
		{Account: "a", Tag: "*", User: "\x80", Pass: "", Addr: netip.MustParseAddr("192.0.2.1")},
		{Addr: netip.MustParseAddr("::ffff:192.0.2.1")},
		{Addr: netip.MustParseAddr("2001:db8::1"), TLS: true},
	} {
		js, err := encodeHandoff(h)
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		back, err := decodeHandoff(string(js))
		if err != nil || back != h {
			t.Fatalf("%+v came back as %+v, %v (%s)", h, back, err, js)
		}
		if bytes.ContainsAny(js, "\r\n") {
			t.Fatalf("JSON with a line end: %s", js)
		}
	}
	// A zone that JSON cannot carry exactly is refused, not altered.
	h := proxy.Handoff{Addr: netip.MustParseAddr("fe80::1%e\xfft")}
	if _, err := encodeHandoff(h); err == nil {
		t.Fatal("non-UTF-8 zone accepted")
	}
}

// TestDecodeHandoffStrict: only the encoder's exact form is accepted.
func TestDecodeHandoffStrict(t *testing.T) {
	good, _ := encodeHandoff(proxy.Handoff{Account: "a", Addr: netip.MustParseAddr("192.0.2.1")})
	g := string(good)
	for _, js := range []string{
		"",
		"null",
		"{}",
		" " + g,
		g + " ",
		g + "{}",
		strings.Replace(g, `"tls":false`, `"tls":false,"x":1`, 1),
		strings.Replace(g, `"account":"YQ=="`, `"account":null`, 1),
		strings.Replace(g, `"account":"YQ=="`, `"account":"YQ"`, 1),
		strings.Replace(g, `"account":"YQ=="`, `"account":"YR=="`, 1), // non-canonical padding bits
		strings.Replace(g, `"account":"YQ=="`, `"\u0061ccount":"YQ=="`, 1),
		strings.Replace(g, `"addr":"192.0.2.1"`, `"addr":"192.0.2.01"`, 1),
		strings.Replace(g, `,"via":""`, ``, 1),
		`{"account":"","tag":"","user":"","pass":"","addr":"","tls":false,"via":"","via":""}`,
	} {
		if h, err := decodeHandoff(js); err == nil {
			t.Errorf("%s accepted as %+v", js, h)
		} else if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v is not ErrProtocol", js, err)
		}
	}
}

// recorder keeps what a connection read.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.got.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// TestWrongSecretListener: a listener with another secret is refused, and
// it never received the handoff: only the greeting.
func TestWrongSecretListener(t *testing.T) {
	var rec *recorder
	var aerr error
	addr, wait := serve(t, func(c net.Conn) {
		rec = &recorder{Conn: c}
		_, aerr = Accept(ctxTimeout(t, 5*time.Second), rec, otherSecret)
	})
	conn, _, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff)
	if !errors.Is(err, ErrAuth) || conn != nil {
		t.Fatalf("Dial: %v, %v; want ErrAuth", conn, err)
	}
	wait()
	if aerr == nil {
		t.Fatal("Accept succeeded")
	}
	got := rec.got.String()
	if !strings.HasPrefix(got, Version+" ") || strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\r\n") {
		t.Fatalf("listener received %q, want the greeting only", got)
	}
	if strings.Contains(got, "node-b") || len(got) != len(Version)+1+2*NonceLen+2 {
		t.Fatalf("listener received more than the greeting: %q", got)
	}
}

// fakeDialer runs steps 1 and 2 as a dialer would, without checking the
// listener's proof.
type fakeDialer struct {
	conn           net.Conn
	br             *bufio.Reader
	nonceD, nonceL []byte
	greeting       string
}

func dialFake(t *testing.T, addr string, nonceD []byte) *fakeDialer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	f := &fakeDialer{conn: c, br: bufio.NewReader(c), nonceD: nonceD}
	f.greeting = Version + " " + hex.EncodeToString(nonceD) + "\r\n"
	if _, err := io.WriteString(c, f.greeting); err != nil {
		t.Fatal(err)
	}
	line, err := f.br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	nl, _, _ := strings.Cut(line, " ")
	if f.nonceL, err = hex.DecodeString(nl); err != nil {
		t.Fatalf("proof %q: %v", line, err)
	}
	return f
}

// step3 is a handoff line signed with key.
func (f *fakeDialer) step3(key []byte, rest string) string {
	return hex.EncodeToString(mac(key, labelDialer, f.nonceL, f.nonceD, rest)) + " " + rest + "\r\n"
}

func restFor(t *testing.T, h proxy.Handoff) string {
	t.Helper()
	rest, err := encodeRest(secret, "node-b", h)
	if err != nil {
		t.Fatal(err)
	}
	return rest
}

// acceptOnce serves one connection with Accept and returns the channel
// its result arrives on.
func acceptOnce(t *testing.T, key []byte, ctxTime time.Duration) (string, <-chan acceptResult) {
	res := make(chan acceptResult, 1)
	addr, _ := serve(t, func(c net.Conn) {
		req, err := Accept(ctxTimeout(t, ctxTime), c, key)
		res <- acceptResult{req, err}
	})
	return addr, res
}

type acceptResult struct {
	req *Request
	err error
}

func (r acceptResult) close() {
	if r.req != nil {
		r.req.Reply(Reply{Kind: ReplyUnavailable})
	}
}

// TestWrongSecretDialer: a dialer with another secret is refused by a
// real Dial's check of the listener, and a dialer that skips that check
// is refused by the listener.
func TestWrongSecretDialer(t *testing.T) {
	addr, res := acceptOnce(t, secret, 5*time.Second)
	_, _, err := Dial(ctxTimeout(t, 5*time.Second), addr, otherSecret, "node-b", handoff)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("Dial: %v; want ErrAuth", err)
	}
	if r := <-res; r.err == nil {
		r.close()
		t.Fatal("Accept succeeded")
	}

	addr, res = acceptOnce(t, secret, 5*time.Second)
	f := dialFake(t, addr, newNonce())
	io.WriteString(f.conn, f.step3(otherSecret, restFor(t, handoff)))
	r := <-res
	if !errors.Is(r.err, ErrAuth) {
		r.close()
		t.Fatalf("Accept: %v; want ErrAuth", r.err)
	}
	// Closed without a word.
	if b, err := io.ReadAll(f.br); len(b) != 0 || err != nil {
		t.Fatalf("after a bad MAC the dialer read %q, %v", b, err)
	}
}

// TestReplay: a handoff line recorded from one connection, with its
// greeting, is refused on another (a new listener nonce); so is one whose
// handoff was altered.
func TestReplay(t *testing.T) {
	nonceD := newNonce()
	addr, res := acceptOnce(t, secret, 5*time.Second)
	f := dialFake(t, addr, nonceD)
	line := f.step3(secret, restFor(t, handoff))
	io.WriteString(f.conn, line)
	r := <-res
	if r.err != nil {
		t.Fatalf("the original was refused: %v", r.err)
	}
	r.close()

	addr, res = acceptOnce(t, secret, 5*time.Second)
	g := dialFake(t, addr, nonceD)
	if bytes.Equal(g.nonceL, f.nonceL) {
		t.Fatal("the listener's nonce repeated")
	}
	io.WriteString(g.conn, line)
	if r := <-res; !errors.Is(r.err, ErrAuth) {
		r.close()
		t.Fatalf("replay: %v; want ErrAuth", r.err)
	}

	// The MAC covers the handoff.
	addr, res = acceptOnce(t, secret, 5*time.Second)
	g = dialFake(t, addr, nonceD)
	good := g.step3(secret, restFor(t, handoff))
	other := restFor(t, proxy.Handoff{Account: "eve@example.org", Tag: "a1", User: "eve", Pass: "x"})
	io.WriteString(g.conn, good[:2*32+1]+other+"\r\n")
	if r := <-res; !errors.Is(r.err, ErrAuth) {
		r.close()
		t.Fatalf("altered handoff: %v; want ErrAuth", r.err)
	}
}

// TestPipelinedToListener: bytes the dialer sends right behind the
// handoff line, in the same segment, reach the owner's stream.
func TestPipelinedToListener(t *testing.T) {
	addr, res := acceptOnce(t, secret, 5*time.Second)
	f := dialFake(t, addr, newNonce())
	io.WriteString(f.conn, f.step3(secret, restFor(t, handoff))+"a2 NOOP\r\na3 LOGOUT\r\n")
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	raw, err := r.req.Reply(Reply{Kind: ReplyOK})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if line, _ := f.br.ReadString('\n'); line != "OK\r\n" {
		t.Fatalf("reply %q", line)
	}
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	want := "a2 NOOP\r\na3 LOGOUT\r\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(raw, got); err != nil || string(got) != want {
		t.Fatalf("owner read %q, %v", got, err)
	}
	// And the stream goes on.
	io.WriteString(f.conn, "more")
	got = make([]byte, 4)
	if _, err := io.ReadFull(raw, got); err != nil || string(got) != "more" {
		t.Fatalf("owner read %q, %v", got, err)
	}
}

// fakeListener runs the listener's steps by hand, writing reply (and what
// follows it) in one write.
func fakeListener(t *testing.T, key []byte, reply string) (string, func()) {
	return serve(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		nonceD, _ := hex.DecodeString(strings.TrimSuffix(strings.TrimPrefix(line, Version+" "), "\r\n"))
		nonceL := newNonce()
		io.WriteString(c, hex.EncodeToString(nonceL)+" "+hex.EncodeToString(mac(key, labelListener, nonceD, nonceL, ""))+"\r\n")
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		io.WriteString(c, reply)
		io.Copy(io.Discard, br)
	})
}

// TestPipelinedToDialer: what the owner writes right behind OK, in the
// same segment, reaches the dialer's stream.
func TestPipelinedToDialer(t *testing.T) {
	want := "a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n* 3 EXISTS\r\n"
	addr, _ := fakeListener(t, secret, "OK\r\n"+want)
	conn, rep, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff)
	if err != nil || rep.Kind != ReplyOK {
		t.Fatalf("Dial: %+v, %v", rep, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != want {
		t.Fatalf("dialer read %q, %v", got, err)
	}
}

// TestReplies: NOTOWNER and UNAVAILABLE reach the dialer with their text;
// the connection is closed on both sides.
func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		sent, got Reply
	}{
		{Reply{ReplyNotOwner, "node-c 10.0.0.3:7993"}, Reply{ReplyNotOwner, "node-c 10.0.0.3:7993"}},
		{Reply{ReplyNotOwner, ""}, Reply{ReplyNotOwner, ""}},
		{Reply{ReplyUnavailable, "fenced\r\nOK"}, Reply{ReplyUnavailable, "fenced  OK"}},
		{Reply{ReplyUnavailable, strings.Repeat("x", 2*MaxLine)}, Reply{ReplyUnavailable, strings.Repeat("x", MaxLine-len("UNAVAILABLE")-3)}},
	} {
		addr, res := acceptOnce(t, secret, 5*time.Second)
		done := make(chan error, 1)
		go func() {
			r := <-res
			if r.err != nil {
				done <- r.err
				return
			}
			raw, err := r.req.Reply(tc.sent)
			if raw != nil {
				err = errors.New("a conn after " + tc.sent.Kind.String())
			}
			if _, err2 := r.req.Reply(tc.sent); err2 == nil {
				err = errors.New("a second Reply succeeded")
			}
			done <- err
		}()
		conn, rep, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff)
		if err != nil || conn != nil || rep != tc.got {
			t.Errorf("sent %+v: got %v %.40q, %v", tc.sent.Kind, rep.Kind, rep.Text, err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestReplyUnknownKind: the zero Reply is no answer: refused and closed.
func TestReplyUnknownKind(t *testing.T) {
	addr, res := acceptOnce(t, secret, 5*time.Second)
	f := dialFake(t, addr, newNonce())
	io.WriteString(f.conn, f.step3(secret, restFor(t, handoff)))
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if raw, err := r.req.Reply(Reply{}); err == nil || raw != nil {
		t.Fatalf("Reply{}: %v, %v", raw, err)
	}
	if b, _ := io.ReadAll(f.br); len(b) != 0 {
		t.Fatalf("dialer read %q", b)
	}
}

// TestSilentPeer: a peer that says nothing ends in the deadline, the
// context's or StepTimeout.
func TestSilentPeer(t *testing.T) {
	silent := func(c net.Conn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
	}
	check := func(what string, start time.Time, err error) {
		t.Helper()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: %v; want a deadline", what, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v", what, d)
		}
	}

	// Dialer, the listener silent, the context's deadline.
	addr, wait := serve(t, silent)
	start := time.Now()
	_, _, err := Dial(ctxTimeout(t, 200*time.Millisecond), addr, secret, "node-b", handoff)
	check("Dial", start, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial: %v does not say the context ended", err)
	}
	wait()

	// Listener, the dialer silent.
	addr, res := acceptOnce(t, secret, 200*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	r := <-res
	check("Accept", start, r.err)
	c.Close()

	// Listener, the dialer silent after the greeting.
	addr, res = acceptOnce(t, secret, 200*time.Millisecond)
	dialFake(t, addr, newNonce())
	start = time.Now()
	r = <-res
	check("Accept after the greeting", start, r.err)

	// Dialer, the owner never replies: StepTimeout, no context deadline.
	defer func(d time.Duration) { StepTimeout = d }(StepTimeout)
	StepTimeout = 200 * time.Millisecond
	addr, res = acceptOnce(t, secret, 5*time.Second)
	start = time.Now()
	_, _, err = Dial(context.Background(), addr, secret, "node-b", handoff)
	check("Dial waiting for the reply", start, err)
	(<-res).close()
}

// TestCancel: cancelling the context ends a handshake at once.
func TestCancel(t *testing.T) {
	addr, _ := serve(t, func(c net.Conn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := Dial(ctx, addr, secret, "node-b", handoff)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Fatalf("Dial: %v after %v", err, time.Since(start))
	}
	// Already cancelled: nothing is tried.
	if _, _, err := Dial(ctx, addr, secret, "node-b", handoff); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled context: %v", err)
	}
}

// TestOversize: a line longer than MaxLine is refused on either side, and
// a handoff too large for a line is refused before any connection.
func TestOversize(t *testing.T) {
	addr, res := acceptOnce(t, secret, 5*time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write(bytes.Repeat([]byte("A"), MaxLine+1))
	if r := <-res; !errors.Is(r.err, ErrProtocol) {
		t.Fatalf("Accept: %v; want ErrProtocol", r.err)
	}

	addr, _ = fakeListener(t, secret, strings.Repeat("NOTOWNER ", MaxLine)+"\r\n")
	if _, _, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Dial: %v; want ErrProtocol", err)
	}

	h := handoff
	h.Pass = strings.Repeat("p", MaxLine)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, _, err := Dial(ctxTimeout(t, 5*time.Second), ln.Addr().String(), secret, "node-b", h); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Dial: %v; want ErrTooLarge", err)
	}
	// The largest password that fits goes through.
	h.Pass = strings.Repeat("p", 23<<10)
	addr, res = acceptOnce(t, secret, 5*time.Second)
	res2 := make(chan error, 1)
	go func() {
		r := <-res
		if r.err == nil && r.req.Handoff != h {
			r.err = errors.New("handoff differs")
		}
		if r.req != nil {
			r.req.Reply(Reply{Kind: ReplyNotOwner})
		}
		res2 <- r.err
	}()
	if _, rep, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", h); err != nil || rep.Kind != ReplyNotOwner {
		t.Fatalf("Dial with a 23 KiB password: %v, %v", rep, err)
	}
	if err := <-res2; err != nil {
		t.Fatal(err)
	}
}

// TestMalformed: malformed greetings and handoffs are refused with BAD;
// a handoff line is checked only after its MAC.
func TestMalformed(t *testing.T) {
	nonce := hex.EncodeToString(newNonce())
	for _, greeting := range []string{
		"LPLINK2 " + nonce + "\r\n",
		"LPLINK1\r\n",
		"LPLINK1 \r\n",
		"LPLINK1 " + nonce[:62] + "\r\n",
		"LPLINK1 " + nonce + "00\r\n",
		"LPLINK1 " + nonce[:62] + "zz\r\n",
		"LPLINK1 " + nonce + " \r\n",
		"LPLINK1  " + nonce + "\r\n",
		"lplink1 " + nonce + "\r\n",
		"GET / HTTP/1.0\r\n",
	} {
		addr, res := acceptOnce(t, secret, 5*time.Second)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, greeting)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if r := <-res; !errors.Is(r.err, ErrProtocol) {
			r.close()
			t.Errorf("%q: %v; want ErrProtocol", greeting, r.err)
		}
		if !strings.HasPrefix(string(b), "BAD ") {
			t.Errorf("%q: the dialer read %q", greeting, b)
		}
	}
	// A line ended by LF alone.
	addr, res := acceptOnce(t, secret, 5*time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "LPLINK1 "+nonce+"\n")
	if r := <-res; !errors.Is(r.err, ErrProtocol) {
		t.Errorf("LF: %v; want ErrProtocol", r.err)
	}
	c.Close()

	good := restFor(t, handoff)
	for _, rest := range []string{
		"",
		"node-b",
		"node-b ",
		" " + strings.SplitN(good, " ", 2)[1],
		"node\x01b " + strings.SplitN(good, " ", 2)[1],
		"node-b  " + strings.SplitN(good, " ", 2)[1],
		good + " ",
		"node-b {}",
	} {
		addr, res := acceptOnce(t, secret, 5*time.Second)
		f := dialFake(t, addr, newNonce())
		io.WriteString(f.conn, f.step3(secret, rest))
		if r := <-res; !errors.Is(r.err, ErrProtocol) {
			r.close()
			t.Errorf("%.60q: %v; want ErrProtocol", rest, r.err)
		}
		if b, _ := io.ReadAll(f.br); !strings.HasPrefix(string(b), "BAD ") {
			t.Errorf("%.60q: the dialer read %q", rest, b)
		}
	}

	// The dialer refuses a malformed proof and reports BAD.
	for _, tc := range []struct{ proof, want string }{
		{"BAD unsupported version\r\n", "unsupported version"},
		{"hello\r\n", "malformed"},
		{nonce + " " + nonce + "\r\n", "does not match"},
	} {
		addr, _ := serve(t, func(c net.Conn) {
			defer c.Close()
			io.WriteString(c, tc.proof)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c)
		})
		if _, _, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("proof %q: %v", tc.proof, err)
		}
	}
	// And an unknown reply.
	for _, reply := range []string{"YES\r\n", "OK \r\n", "OK\n", "BAD no\r\n", "\r\n"} {
		addr, _ := fakeListener(t, secret, reply)
		if _, _, err := Dial(ctxTimeout(t, 5*time.Second), addr, secret, "node-b", handoff); !errors.Is(err, ErrProtocol) {
			t.Errorf("reply %q: %v; want ErrProtocol", reply, err)
		}
	}
}

// TestRefusedArguments: short secrets and bad node names are refused.
func TestRefusedArguments(t *testing.T) {
	short := []byte("fifteen-bytes!!")
	if _, _, err := Dial(context.Background(), "127.0.0.1:1", short, "node-b", handoff); !errors.Is(err, ErrSecret) {
		t.Errorf("Dial with a short secret: %v", err)
	}
	for _, name := range []string{"", "node b", "nöde", strings.Repeat("n", 256)} {
		if _, _, err := Dial(context.Background(), "127.0.0.1:1", secret, name, handoff); !errors.Is(err, ErrProtocol) {
			t.Errorf("Dial as %q: %v", name, err)
		}
	}
	a, b := net.Pipe()
	defer b.Close()
	if _, err := Accept(context.Background(), a, short); !errors.Is(err, ErrSecret) {
		t.Errorf("Accept with a short secret: %v", err)
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Error("Accept left the connection open")
	}
}

func TestLoadSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		return p
	}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string // "" for an error
	}{
		{"ok", "0123456789abcdef0123\n", 0o600, "0123456789abcdef0123"},
		{"group", " 0123456789abcdef \r\n\t\n", 0o640, " 0123456789abcdef"},
		{"short", "0123456789abcde\n\n", 0o600, ""},
		{"world", "0123456789abcdef0123\n", 0o644, ""},
		{"worldwrite", "0123456789abcdef0123\n", 0o602, ""},
		{"large", strings.Repeat("s", secretfile.MaxSize+1), 0o600, ""},
	} {
		got, err := LoadSecret(write(tc.name, tc.content, tc.mode))
		if string(got) != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := LoadSecret(dir); err == nil {
		t.Error("a directory accepted")
	}
	if _, err := LoadSecret(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}
