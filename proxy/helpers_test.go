package proxy_test

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestMain fails the package if any test leaves a goroutine behind: every
// server, upstream and client a test starts is shut down in its Cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startUpstream starts an in-memory upstream with the given users
// ("name", "password", ...) and stops it when the test ends.
func startUpstream(t testing.TB, opt memupstream.Options, userPass ...string) *memupstream.Server {
	t.Helper()
	return memupstream.StartForTest(t, opt, userPass...)
}

// baseConfig is the configuration most tests use, against upstream addr.
func baseConfig(addr string) proxy.Config {
	return proxy.Config{
		Upstream:         upstream.Config{Addr: addr, Timeout: 5 * time.Second},
		AuthFailureDelay: 10 * time.Millisecond,
		Extensions:       []proxy.Extension{idle.New()},
		Logger:           imaptest.Logger(),
	}
}

// startProxy starts a server for cfg, whose upstream address is already
// set (baseConfig), with the harness's options.
func startProxy(t testing.TB, cfg proxy.Config, opts ...imaptest.Option) *imaptest.Proxy {
	t.Helper()
	return imaptest.StartProxy(t, cfg.Upstream.Addr, cfg, opts...)
}

// client is the harness's scripted client, under the name the tests use.
type client = imaptest.Client

// literalSize recognises a "{n}" at the end of a line, for fakeUpstream's
// APPEND.
func literalSize(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(line[i+1:len(line)-1], 10, 64)
	return n, err == nil
}

// fakeUpstream is a tiny raw-TCP IMAP server for what memupstream cannot
// do: advertise no UNSELECT, and take or serve huge literals without storing
// them. It logs in anyone.
type fakeUpstream struct {
	t    testing.TB
	ln   net.Listener
	caps string // capabilities after login
	// bodySize and chunk describe the one message FETCH 1 BODY[] serves:
	// chunk repeated up to bodySize bytes.
	bodySize int64
	chunk    []byte
	// paced makes it send the body a chunk per write with a pause after
	// each, so that the literal reaches the proxy in many reads.
	paced bool

	mu       sync.Mutex
	commands []string   // every command line received (tags stripped)
	byConn   [][]string // the same, per connection
	appended []appendRecord
	conns    atomic.Int64
	wg       sync.WaitGroup
	open     map[net.Conn]struct{}
	closed   bool
}

type appendRecord struct {
	size int64
	sum  [32]byte
}

func startFakeUpstream(t testing.TB, caps string) *fakeUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{t: t, ln: ln, caps: caps, open: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeUpstream) addr() string { return f.ln.Addr().String() }

func (f *fakeUpstream) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.open {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// connCommands returns the commands received on each connection, in the
// order the connections were accepted.
func (f *fakeUpstream) connCommands() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]string, len(f.byConn))
	for i, l := range f.byConn {
		out[i] = append([]string(nil), l...)
	}
	return out
}

func (f *fakeUpstream) appends() []appendRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]appendRecord(nil), f.appended...)
}

func (f *fakeUpstream) serve() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			nc.Close()
			return
		}
		f.open[nc] = struct{}{}
		id := len(f.byConn)
		f.byConn = append(f.byConn, nil)
		f.mu.Unlock()
		f.conns.Add(1)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.open, nc)
				f.mu.Unlock()
				nc.Close()
			}()
			f.session(nc, id)
		}()
	}
}

// session serves one connection. It is deliberately simple: one command at
// a time, literals only at the end of APPEND.
func (f *fakeUpstream) session(nc net.Conn, id int) {
	br := bufio.NewReader(nc)
	bw := bufio.NewWriter(nc)
	fmt.Fprintf(bw, "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] fake ready\r\n")
	bw.Flush()
	selected := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		tag, rest, _ := strings.Cut(line, " ")
		name, args, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		if name != "APPEND" {
			// Literals of other commands are taken whole, inviting
			// synchronising ones, and recorded with the command.
			var ok bool
			if rest, ok = f.readLiterals(br, bw, rest); !ok {
				return
			}
		}
		f.mu.Lock()
		f.commands = append(f.commands, rest)
		f.byConn[id] = append(f.byConn[id], rest)
		f.mu.Unlock()
		switch name {
		case "CAPABILITY":
			fmt.Fprintf(bw, "* CAPABILITY %s\r\n%s OK done\r\n", f.caps, tag)
		case "AUTHENTICATE", "LOGIN":
			fmt.Fprintf(bw, "%s OK logged in\r\n", tag)
		case "LIST":
			fmt.Fprintf(bw, "* LIST () \"/\" INBOX\r\n%s OK LIST done\r\n", tag)
		case "NOOP", "CHECK":
			fmt.Fprintf(bw, "%s OK %s done\r\n", tag, name)
		case "SELECT", "EXAMINE":
			if !strings.EqualFold(strings.Trim(args, `"`), "INBOX") {
				// The fake's one mailbox is INBOX. As RFC 3501 6.3.1
				// has it, a failed SELECT leaves no mailbox selected.
				selected = ""
				fmt.Fprintf(bw, "%s NO [NONEXISTENT] no such mailbox\r\n", tag)
				break
			}
			selected = args
			code := "READ-WRITE"
			if name == "EXAMINE" {
				code = "READ-ONLY"
			}
			fmt.Fprintf(bw, "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n* FLAGS (\\Seen)\r\n%s OK [%s] %s done\r\n", tag, code, name)
		case "CLOSE", "UNSELECT":
			if selected == "" {
				fmt.Fprintf(bw, "%s BAD no mailbox selected\r\n", tag)
			} else {
				selected = ""
				fmt.Fprintf(bw, "%s OK %s done\r\n", tag, name)
			}
		case "FETCH", "UID":
			if selected == "" {
				fmt.Fprintf(bw, "%s BAD no mailbox selected\r\n", tag)
				break
			}
			// The one message has sequence number 1 and UID 1.
			if strings.HasPrefix(strings.ToUpper(args), "SEARCH ") {
				fmt.Fprintf(bw, "* SEARCH 1\r\n%s OK SEARCH done\r\n", tag)
				break
			}
			if !strings.Contains(strings.ToUpper(args), "BODY[]") {
				fmt.Fprintf(bw, "* 1 FETCH (UID 1 FLAGS ())\r\n%s OK %s done\r\n", tag, name)
				break
			}
			fmt.Fprintf(bw, "* 1 FETCH (UID 1 BODY[] {%d}\r\n", f.bodySize)
			for left := f.bodySize; left > 0; {
				n := min(left, int64(len(f.chunk)))
				bw.Write(f.chunk[:n])
				left -= n
				if f.paced {
					bw.Flush()
					time.Sleep(time.Millisecond)
				}
			}
			fmt.Fprintf(bw, ")\r\n%s OK FETCH done\r\n", tag)
		case "APPEND":
			n, ok := literalSize(strings.Replace(line, "+}", "}", 1))
			if !ok {
				fmt.Fprintf(bw, "%s BAD APPEND needs a literal\r\n", tag)
				break
			}
			nonSync := strings.HasSuffix(line, "+}")
			if strings.HasPrefix(args, "NoSuchBox ") {
				// Refused before the literal; a non-synchronising one
				// comes anyway and is skipped.
				if nonSync {
					if _, err := io.CopyN(io.Discard, br, n); err != nil {
						return
					}
					if _, err := br.ReadString('\n'); err != nil {
						return
					}
				}
				fmt.Fprintf(bw, "%s NO [TRYCREATE] no such mailbox\r\n", tag)
				break
			}
			if !nonSync {
				fmt.Fprintf(bw, "+ go ahead\r\n")
				bw.Flush()
			}
			h := newSummer()
			if _, err := io.CopyN(h, br, n); err != nil {
				return
			}
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			f.mu.Lock()
			f.appended = append(f.appended, appendRecord{n, h.sum()})
			f.mu.Unlock()
			fmt.Fprintf(bw, "%s OK [APPENDUID 1 %d] APPEND done\r\n", tag, len(f.appends()))
		case "LOGOUT":
			fmt.Fprintf(bw, "* BYE bye\r\n%s OK LOGOUT done\r\n", tag)
			bw.Flush()
			return
		default:
			fmt.Fprintf(bw, "%s BAD unknown command\r\n", tag)
		}
		if err := bw.Flush(); err != nil {
			return
		}
	}
}

// readLiterals completes a command line that ends in literals: it
// invites each synchronising one with "+ go ahead" and returns the whole
// command, literal headers and data in place. It returns false when the
// connection failed.
func (f *fakeUpstream) readLiterals(br *bufio.Reader, bw *bufio.Writer, cmd string) (string, bool) {
	for line := cmd; ; {
		n, ok := literalSize(strings.Replace(line, "+}", "}", 1))
		if !ok {
			return cmd, true
		}
		if !strings.HasSuffix(line, "+}") {
			fmt.Fprintf(bw, "+ go ahead\r\n")
			if bw.Flush() != nil {
				return "", false
			}
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			return "", false
		}
		next, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		line = strings.TrimRight(next, "\r\n")
		cmd += "\r\n" + string(data) + line
	}
}

// summer hashes what is written to it.
type summer struct{ hash.Hash }

func newSummer() *summer { return &summer{sha256.New()} }

func (s *summer) sum() (out [32]byte) {
	copy(out[:], s.Sum(nil))
	return out
}

// forwarder is a TCP relay in front of an upstream that counts the
// connections the proxy opens.
type forwarder struct {
	ln     net.Listener
	target string
	dials  atomic.Int64
	refuse atomic.Bool // hang up on new connections at once
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]struct{}
}

func startForwarder(t testing.TB, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, open: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.open {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

// cut closes every forwarded connection, as an upstream restart would.
func (f *forwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.open {
		c.Close()
		delete(f.open, c)
	}
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open == nil {
		return false
	}
	f.open[c] = struct{}{}
	return true
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		for c := range f.open {
			c.Close()
		}
		f.open = nil
		f.mu.Unlock()
	}()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.dials.Add(1)
		if f.refuse.Load() {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		if !f.track(c) || !f.track(u) {
			c.Close()
			u.Close()
			return
		}
		f.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer f.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}
