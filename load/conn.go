package load

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// limits bound what the tool accepts from a server. Bodies of the fetch
// scenario are streamed, never held, so MaxLiteral only has to exceed
// the largest message (Config.Size).
var limits = imapcodec.Limits{
	MaxLine:          1 << 20,
	MaxLiteral:       MaxSize + 1<<20,
	MaxInlineLiteral: 1 << 20,
	MaxDepth:         16,
}

// counter counts bytes passing through a reader or writer.
type counter struct {
	n atomic.Int64
}

type countReader struct {
	r io.Reader
	c *counter
}

func (r countReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.c.n.Add(int64(n))
	return n, err
}

type countWriter struct {
	w io.Writer
	c *counter
}

func (w countWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.c.n.Add(int64(n))
	return n, err
}

// resp is one server response: its first line's head and, where the
// caller asked for them, all of its segments (text and literals).
type resp struct {
	head imapcodec.ResponseHead
	segs []imapcodec.Segment
	// litBytes is the size of the literals read (kept or discarded).
	litBytes int64
}

// conn is one IMAP client connection.
//
// Used synchronously, each response is read with a deadline of Timeout.
// For the mixed scenario a goroutine reads instead (startPump) and the
// client takes responses off a channel: a deflate stream cannot survive a
// read deadline used to wake a reader (its errors are sticky), and a
// client in IDLE has to wake up at the time it chose.
type conn struct {
	nc      net.Conn
	wire    counter // bytes read from the network
	plain   counter // bytes read after decompression
	wireOut counter // bytes written to the network
	r       *imapcodec.Reader
	wmu     sync.Mutex
	w       io.Writer
	timeout time.Duration
	seq     int
	caps    map[string]bool
	// keepLits: responses are returned with their literals (mixed checks
	// bodies); otherwise literals are counted and discarded.
	keepLits bool

	compressed bool

	// trace, if not nil, keeps the last lines sent and received, for
	// describing a protocol error.
	trace *trace

	// pump, when running, delivers responses (or the reading error).
	pump     chan pumped
	pumpDone chan struct{}
	// readExtra is added to the pump's read deadline (a client in IDLE
	// waits longer than Timeout for the next push), in nanoseconds.
	readExtra atomic.Int64
	closing   atomic.Bool
}

type pumped struct {
	r   *resp
	err error
}

// dial connects to addr from src (nil: any) and reads the greeting.
func dial(ctx context.Context, src net.IP, addr string, timeout time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: timeout}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &conn{nc: nc, timeout: timeout}
	c.r = imapcodec.NewReader(countReader{nc, &c.wire}, limits)
	c.w = countWriter{nc, &c.wireOut}
	g, err := c.read()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if g.head.Tag != "*" || g.head.Name != "OK" {
		nc.Close()
		return nil, fmt.Errorf("greeting: %s %s", g.head.Name, g.head.Text)
	}
	if g.head.Code == "CAPABILITY" {
		c.setCaps(g.head.CodeArg)
	}
	return c, nil
}

func (c *conn) close() {
	c.closing.Store(true)
	c.nc.Close()
	if c.pumpDone != nil {
		<-c.pumpDone
	}
}

// wireIn returns the bytes read from the network so far.
func (c *conn) wireIn() int64 { return c.wire.n.Load() }

// plainIn returns the bytes of IMAP read so far (after decompression).
func (c *conn) plainIn() int64 {
	if c.compressed {
		return c.plain.n.Load()
	}
	return c.wire.n.Load()
}

func (c *conn) setCaps(list string) {
	c.caps = map[string]bool{}
	for _, f := range strings.Fields(list) {
		c.caps[strings.ToUpper(f)] = true
	}
}

func (c *conn) has(capName string) bool { return c.caps[capName] }

// read reads one response, with a deadline of Timeout (plus readExtra).
func (c *conn) read() (*resp, error) {
	if c.pump != nil {
		select {
		case p, ok := <-c.pump:
			if !ok {
				return nil, net.ErrClosed
			}
			return p.r, p.err
		case <-time.After(c.timeout + time.Duration(c.readExtra.Load())):
			return nil, fmt.Errorf("no response within %v", c.timeout+time.Duration(c.readExtra.Load()))
		}
	}
	return c.readDirect()
}

func (c *conn) readDirect() (*resp, error) {
	c.nc.SetReadDeadline(time.Now().Add(c.timeout + time.Duration(c.readExtra.Load())))
	r := &resp{}
	for {
		line, lit, err := c.r.ReadLine()
		if err != nil {
			return nil, err
		}
		if len(r.segs) == 0 {
			text := line
			if lit != nil {
				text = line[:lit.Start]
			}
			h, err := imapcodec.ParseResponseHead(bytes.TrimRight(text, " "))
			if err != nil {
				return nil, fmt.Errorf("%w: %q", err, truncate(string(line), 200))
			}
			r.head = h
		}
		if c.trace != nil {
			c.trace.add("S: ", line)
		}
		if lit == nil {
			r.segs = append(r.segs, imapcodec.Segment{Text: bytes.Clone(line)})
			return r, nil
		}
		seg := imapcodec.Segment{Text: bytes.Clone(line[:lit.Start]), Literal: lit}
		r.litBytes += lit.Size
		if c.keepLits && lit.Size <= limits.MaxInlineLiteral {
			seg.Data, err = c.r.ReadLiteral()
		} else {
			_, err = io.Copy(io.Discard, c.r.Literal())
		}
		if err != nil {
			return nil, err
		}
		r.segs = append(r.segs, seg)
		// A long literal may take a while: each part of the response gets
		// the full timeout.
		c.nc.SetReadDeadline(time.Now().Add(c.timeout))
	}
}

// startPump starts the reading goroutine; responses are then taken off a
// channel by read. It ends when the connection fails or is closed.
func (c *conn) startPump() {
	c.pump = make(chan pumped, 64)
	c.pumpDone = make(chan struct{})
	go func() {
		defer close(c.pumpDone)
		defer close(c.pump)
		for {
			r, err := c.readDirect()
			if err != nil {
				if !c.closing.Load() {
					select {
					case c.pump <- pumped{err: err}:
					case <-time.After(c.timeout):
					}
				}
				return
			}
			select {
			case c.pump <- pumped{r: r}:
			case <-time.After(c.timeout + time.Duration(c.readExtra.Load())):
				// Nobody takes responses any more: the client gave up.
				c.nc.Close()
				return
			}
		}
	}()
}

func (c *conn) write(s string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	if c.trace != nil {
		c.trace.add("C: ", []byte(strings.TrimRight(s, "\r\n")))
	}
	_, err := io.WriteString(c.w, s)
	return err
}

// trace is a ring of the last lines of a connection.
type trace struct {
	mu    sync.Mutex
	lines []string
	next  int
}

const traceLines = 60

func (t *trace) add(prefix string, line []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := prefix + truncate(string(line), 160)
	if len(t.lines) < traceLines {
		t.lines = append(t.lines, l)
		return
	}
	t.lines[t.next] = l
	t.next = (t.next + 1) % traceLines
}

func (t *trace) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(append(slices.Clone(t.lines[t.next:]), t.lines[:t.next]...), " | ")
}

func (c *conn) nextTag() string {
	c.seq++
	return "L" + strconv.Itoa(c.seq)
}

// statusError is a tagged NO or BAD.
type statusError struct {
	cmd  string
	head imapcodec.ResponseHead
}

func (e *statusError) Error() string {
	code := ""
	if e.head.Code != "" {
		code = "[" + e.head.Code + "] "
	}
	return fmt.Sprintf("%s: %s %s%s", truncate(e.cmd, 60), e.head.Name, code, e.head.Text)
}

// do sends a command and reads up to its tagged response, handing every
// untagged response to each (if not nil). A tagged NO or BAD is returned
// as a *statusError together with the head.
func (c *conn) do(cmd string, each func(*resp) error) (imapcodec.ResponseHead, error) {
	tag := c.nextTag()
	if err := c.write(tag + " " + cmd + "\r\n"); err != nil {
		return imapcodec.ResponseHead{}, err
	}
	return c.await(tag, cmd, each)
}

func (c *conn) await(tag, cmd string, each func(*resp) error) (imapcodec.ResponseHead, error) {
	for {
		r, err := c.read()
		if err != nil {
			return imapcodec.ResponseHead{}, fmt.Errorf("%s: %w", truncate(cmd, 60), err)
		}
		switch r.head.Tag {
		case tag:
			if r.head.Name != "OK" {
				return r.head, &statusError{cmd, r.head}
			}
			return r.head, nil
		case "*":
			if r.head.Name == "BYE" && !strings.HasPrefix(cmd, "LOGOUT") {
				return r.head, fmt.Errorf("%s: server said BYE: %s", truncate(cmd, 60), r.head.Text)
			}
			if each != nil {
				if err := each(r); err != nil {
					return r.head, err
				}
			}
		case "+":
			return r.head, fmt.Errorf("%s: unexpected continuation request", truncate(cmd, 60))
		default:
			return r.head, fmt.Errorf("%s: response with unknown tag %q", truncate(cmd, 60), r.head.Tag)
		}
	}
}

// login logs in and learns the capabilities.
func (c *conn) login(user, pass string) error {
	// Errors name the command; this one without its password.
	tag := c.nextTag()
	if err := c.write(tag + " LOGIN " + astring(user) + " " + astring(pass) + "\r\n"); err != nil {
		return err
	}
	head, err := c.await(tag, "LOGIN "+astring(user)+" ***", nil)
	if err != nil {
		return err
	}
	if head.Code == "CAPABILITY" {
		c.setCaps(head.CodeArg)
		return nil
	}
	_, err = c.do("CAPABILITY", func(r *resp) error {
		if r.head.Name == "CAPABILITY" {
			c.setCaps(r.head.Text)
		}
		return nil
	})
	return err
}

func astring(s string) string {
	if s != "" && imapcodec.IsAtom(s) {
		return s
	}
	return string(imapcodec.AppendQuoted(nil, s))
}

// startCompress turns on COMPRESS=DEFLATE (RFC 4978). Commands go out as
// stored deflate blocks, which every inflater accepts and which need no
// compressor state (a deflater per session would cost the tool about a
// megabyte each); responses are inflated.
func (c *conn) startCompress() error {
	if c.pump != nil {
		return errors.New("COMPRESS after the reader started")
	}
	if _, err := c.do("COMPRESS DEFLATE", nil); err != nil {
		return err
	}
	ahead := c.r.TakeBuffered()
	in := io.MultiReader(bytes.NewReader(ahead), countReader{c.nc, &c.wire})
	c.r = imapcodec.NewReader(countReader{flate.NewReader(in), &c.plain}, limits)
	c.plain.n.Store(c.wire.n.Load())
	c.w = storedBlocks{countWriter{c.nc, &c.wireOut}}
	c.compressed = true
	return nil
}

// storedBlocks writes each Write as non-final stored deflate blocks.
type storedBlocks struct{ w io.Writer }

func (s storedBlocks) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		n := min(len(p), 0xffff)
		block := append([]byte{0, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}, p[:n]...)
		if _, err := s.w.Write(block); err != nil {
			return done, err
		}
		done += n
		p = p[n:]
	}
	return done, nil
}

// idle sends IDLE and waits for the continuation request, handing
// untagged responses before it to each.
func (c *conn) idle(each func(*resp) error) (tag string, err error) {
	tag = c.nextTag()
	if err := c.write(tag + " IDLE\r\n"); err != nil {
		return "", err
	}
	for {
		r, err := c.read()
		if err != nil {
			return "", fmt.Errorf("IDLE: %w", err)
		}
		switch r.head.Tag {
		case "+":
			return tag, nil
		case "*":
			if each != nil {
				if err := each(r); err != nil {
					return "", err
				}
			}
		default:
			if r.head.Name != "OK" {
				return "", &statusError{"IDLE", r.head}
			}
			return "", errors.New("IDLE: tagged OK without a continuation request")
		}
	}
}

// appendMsg appends msg to mailbox with flags (e.g. `(\Seen)` or "") and
// returns the new UID from APPENDUID (0 if the server sent none).
func (c *conn) appendMsg(mailbox, flags string, msg []byte) (uint32, error) {
	tag := c.nextTag()
	var b strings.Builder
	b.WriteString(tag + " APPEND " + astring(mailbox))
	if flags != "" {
		b.WriteString(" " + flags)
	}
	if c.has("LITERAL+") {
		fmt.Fprintf(&b, " {%d+}\r\n", len(msg))
		b.Write(msg)
		b.WriteString("\r\n")
		if err := c.write(b.String()); err != nil {
			return 0, err
		}
	} else {
		fmt.Fprintf(&b, " {%d}\r\n", len(msg))
		if err := c.write(b.String()); err != nil {
			return 0, err
		}
		for {
			r, err := c.read()
			if err != nil {
				return 0, fmt.Errorf("APPEND: %w", err)
			}
			if r.head.Tag == "+" {
				break
			}
			if r.head.Tag == tag {
				return 0, &statusError{"APPEND", r.head}
			}
		}
		if err := c.write(string(msg) + "\r\n"); err != nil {
			return 0, err
		}
	}
	head, err := c.await(tag, "APPEND", nil)
	if err != nil {
		return 0, err
	}
	return appendUID(head), nil
}

// appendUID returns the UID of an "OK [APPENDUID v uid]" response.
func appendUID(h imapcodec.ResponseHead) uint32 {
	if h.Code != "APPENDUID" {
		return 0
	}
	f := strings.Fields(h.CodeArg)
	if len(f) != 2 {
		return 0
	}
	n, _ := strconv.ParseUint(f[1], 10, 32)
	return uint32(n)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
