package conformance

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Security is how a connection to an endpoint is protected.
type Security int

const (
	// Plain is a TCP connection without TLS.
	Plain Security = iota
	// ImplicitTLS starts TLS with the first byte (port 993 style).
	ImplicitTLS
	// StartTLS connects in plain text and issues STARTTLS before anything
	// else.
	StartTLS
)

// String names the security mode as the CLI spells it.
func (s Security) String() string {
	switch s {
	case ImplicitTLS:
		return "tls"
	case StartTLS:
		return "starttls"
	}
	return "plain"
}

// Endpoint is a server to connect to.
type Endpoint struct {
	Addr     string // host:port
	Security Security
	// Insecure skips certificate verification, for test servers with
	// self-signed certificates.
	Insecure bool
}

// limits bound everything a server may send to the test client. Responses
// to the suite's commands are small (mailboxes of a few messages, bodies of
// at most about 200 KB), so anything beyond these is a server fault, not
// something to buffer.
var limits = imapcodec.Limits{
	MaxLine:          256 * 1024,
	MaxLiteral:       4 * 1024 * 1024,
	MaxInlineLiteral: 1024 * 1024,
	MaxDepth:         16,
}

// maxQueued is how many responses the reading goroutine may hold before it
// stops reading: a server that floods the connection is slowed down, not
// buffered without limit.
const maxQueued = 512

// Client is a raw IMAP client: it sends command lines exactly as given and
// returns every response as read, so scenarios can check the wire form
// (order of responses, response codes, which items a FETCH carries) that a
// higher-level library would hide or reject.
//
// One goroutine reads and parses responses into a bounded queue; the
// scenario's goroutine writes commands and takes responses off the queue
// with timeouts. Reading in a goroutine lets a scenario wait for "something
// within d, or nothing" without read deadlines, which would corrupt a
// compressed stream (a deflate reader's errors are sticky).
type Client struct {
	conn    net.Conn
	w       io.Writer     // conn, or fw once COMPRESS is active
	fw      *flate.Writer // non-nil once COMPRESS is active
	timeout time.Duration
	tagN    int
	name    string // for transcripts: "main", "outside", ...

	respc chan item
	stop  chan struct{}
	done  chan struct{}

	mu          sync.Mutex
	compressTag string // tag of a pending COMPRESS command, read by the pump
	closed      bool

	Greeting *Response
	tr       *transcript
}

type item struct {
	r   *Response
	err error
}

// errTimeout is returned when an expected response does not come in time.
var errTimeout = errors.New("timed out")

// Dial connects to ep, sets up TLS as asked and reads the greeting.
func Dial(ep Endpoint, timeout time.Duration, tr *transcript, name string) (*Client, error) {
	return dial(context.Background(), ep, timeout, tr, name)
}

// dial is Dial that gives up when ctx ends, whatever it is waiting for
// (the TCP connection, the TLS handshake, the greeting): the run's
// deadline must not wait out a timeout on a server that went silent.
func dial(ctx context.Context, ep Endpoint, timeout time.Duration, tr *transcript, name string) (client *Client, err error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("connecting to %s: %w", ep.Addr, err)
	}
	// Until the reading goroutine runs, reads are synchronous: closing the
	// connection is what ends them when ctx does.
	raw := conn
	cut := context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if cut() {
			return // ctx did not end while dialling
		}
		if client != nil {
			client.Close()
			client = nil
		}
		err = fmt.Errorf("connecting to %s: %w", ep.Addr, context.Cause(ctx))
	}()
	host, _, _ := net.SplitHostPort(ep.Addr)
	tlsConfig := &tls.Config{ServerName: host, InsecureSkipVerify: ep.Insecure}
	if ep.Security == ImplicitTLS {
		tc := tls.Client(conn, tlsConfig)
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", ep.Addr, err)
		}
		tc.SetDeadline(time.Time{})
		conn = tc
	}
	c := &Client{conn: conn, w: conn, timeout: timeout, name: name, tr: tr,
		respc: make(chan item, maxQueued), stop: make(chan struct{}), done: make(chan struct{})}
	r := imapcodec.NewReader(conn, limits)
	// The greeting and STARTTLS are read synchronously, before the reading
	// goroutine exists: the TLS handshake needs the raw connection to itself.
	conn.SetReadDeadline(time.Now().Add(timeout))
	g, err := readResponse(r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	c.Greeting = g
	c.tr.add(c.name, "S: ", g.Line)
	// Only an IMAP greeting goes on: anything else (an SMTP or HTTP
	// server, a wrong port) would get the LOGIN command, password
	// included, and the run would wait for a tagged answer that never
	// comes; a BYE says the server refuses the connection.
	switch {
	case g.Tag == "*" && g.Name == "BYE":
		conn.Close()
		return nil, fmt.Errorf("%s refused the connection: %q", ep.Addr, g.Line)
	case g.Tag != "*" || (g.Name != "OK" && g.Name != "PREAUTH"):
		conn.Close()
		return nil, fmt.Errorf("%s is not an IMAP server: it greeted with %q", ep.Addr, g.Line)
	}
	if ep.Security == StartTLS {
		c.tagN++
		tag := c.tag()
		if err := c.writeLine(tag + " STARTTLS"); err != nil {
			conn.Close()
			return nil, err
		}
		for {
			resp, err := readResponse(r)
			if err != nil {
				conn.Close()
				return nil, fmt.Errorf("STARTTLS: %w", err)
			}
			c.tr.add(c.name, "S: ", resp.Line)
			if resp.Tag != tag {
				continue
			}
			if resp.Name != "OK" {
				conn.Close()
				return nil, fmt.Errorf("STARTTLS refused: %s", resp.Line)
			}
			break
		}
		if r.Buffered() > 0 {
			conn.Close()
			return nil, errors.New("STARTTLS: server sent data after its OK, before the TLS handshake")
		}
		tc := tls.Client(conn, tlsConfig)
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("STARTTLS handshake: %w", err)
		}
		tc.SetDeadline(time.Time{})
		conn = tc
		c.conn, c.w = tc, tc
		r = imapcodec.NewReader(tc, limits)
	}
	conn.SetReadDeadline(time.Time{})
	go c.pump(r)
	return c, nil
}

// readResponse reads one whole response, literals included, and parses it.
func readResponse(r *imapcodec.Reader) (*Response, error) {
	segs, err := r.ReadSegments(nil)
	if err != nil {
		return nil, err
	}
	return parseResponse(segs), nil
}

// pump reads responses until the connection fails or Close is called. When
// the tagged OK of a COMPRESS command arrives it switches to inflating
// before it reads another byte: compression starts right after that CRLF.
func (c *Client) pump(r *imapcodec.Reader) {
	defer close(c.done)
	defer close(c.respc)
	var fr io.ReadCloser
	defer func() {
		if fr != nil {
			fr.Close()
		}
	}()
	for {
		resp, err := readResponse(r)
		if err != nil {
			if fr != nil && !errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("reading the compressed stream: %w", err)
			}
			select {
			case c.respc <- item{err: err}:
			case <-c.stop:
			}
			return
		}
		c.mu.Lock()
		switchNow := c.compressTag != "" && resp.Tag == c.compressTag && resp.Name == "OK"
		if resp.Tag == c.compressTag {
			c.compressTag = ""
		}
		c.mu.Unlock()
		if switchNow {
			rest := r.TakeBuffered()
			fr = flate.NewReader(io.MultiReader(bytes.NewReader(rest), c.conn))
			r = imapcodec.NewReader(fr, limits)
		}
		select {
		case c.respc <- item{r: resp}:
		case <-c.stop:
			return
		}
	}
}

// Close closes the connection and waits for the reading goroutine to end.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) tag() string { return "C" + strconv.Itoa(c.tagN) }

// NextTag allocates a tag for a command written with WriteLine.
func (c *Client) NextTag() string {
	c.tagN++
	return c.tag()
}

// WriteLine writes one line (CRLF added) and flushes it, compressed if
// COMPRESS is active.
func (c *Client) WriteLine(line string) error { return c.writeLine(line) }

func (c *Client) writeLine(line string) error {
	c.tr.add(c.name, "C: ", redact(line))
	return c.write([]byte(line + "\r\n"))
}

// write sends b. With compression every write ends in a sync flush: the
// server must see the whole command now, not when more input arrives.
func (c *Client) write(b []byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	defer c.conn.SetWriteDeadline(time.Time{})
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if c.fw != nil {
		if err := c.fw.Flush(); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
	}
	return nil
}

// Next returns the next response, waiting at most d.
func (c *Client) Next(d time.Duration) (*Response, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case it, ok := <-c.respc:
		if !ok {
			return nil, errors.New("connection closed")
		}
		if it.err != nil {
			if errors.Is(it.err, io.EOF) || errors.Is(it.err, io.ErrUnexpectedEOF) {
				return nil, errors.New("server closed the connection")
			}
			return nil, it.err
		}
		c.tr.add(c.name, "S: ", it.r.Line)
		return it.r, nil
	case <-t.C:
		return nil, errTimeout
	}
}

// Reply is everything a command produced.
type Reply struct {
	Cmd      string
	Tag      string
	Status   *Response   // the tagged completion
	Untagged []*Response // untagged responses read while waiting, in order
}

// OK reports whether the command completed with OK.
func (r *Reply) OK() bool { return r.Status != nil && r.Status.Name == "OK" }

// Do sends "TAG cmd" and collects responses up to the tagged completion.
// A NO or BAD is not an error; failing to get an answer in time is.
func (c *Client) Do(cmd string) (*Reply, error) {
	tag := c.NextTag()
	if err := c.writeLine(tag + " " + cmd); err != nil {
		return nil, err
	}
	return c.Wait(tag, cmd)
}

// Wait collects responses until the one tagged tag.
func (c *Client) Wait(tag, cmd string) (*Reply, error) {
	res := &Reply{Cmd: cmd, Tag: tag}
	deadline := time.Now().Add(c.timeout)
	for {
		r, err := c.Next(time.Until(deadline))
		if err != nil {
			if err == errTimeout {
				return res, fmt.Errorf("%s: no tagged response within %v", firstWord(cmd), c.timeout)
			}
			return res, fmt.Errorf("%s: %w", firstWord(cmd), err)
		}
		if r.Tag == tag {
			res.Status = r
			return res, nil
		}
		if r.Tag == "+" {
			return res, fmt.Errorf("%s: unexpected continuation request %q", firstWord(cmd), r.Line)
		}
		res.Untagged = append(res.Untagged, r)
	}
}

// Collect gathers every response that arrives within d.
func (c *Client) Collect(d time.Duration) ([]*Response, error) {
	var out []*Response
	deadline := time.Now().Add(d)
	for {
		r, err := c.Next(time.Until(deadline))
		if err == errTimeout {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

// WaitFor reads responses until match returns true or d passes; it returns
// everything read, the matching response last. found tells whether match
// succeeded.
func (c *Client) WaitFor(d time.Duration, match func(*Response) bool) (got []*Response, found bool, err error) {
	deadline := time.Now().Add(d)
	for {
		r, err := c.Next(time.Until(deadline))
		if err == errTimeout {
			return got, false, nil
		}
		if err != nil {
			return got, false, err
		}
		got = append(got, r)
		if match(r) {
			return got, true, nil
		}
	}
}

// Compress sends COMPRESS DEFLATE and, on OK, compresses both directions
// from then on.
func (c *Client) Compress() (*Reply, error) {
	return c.compress("DEFLATE")
}

func (c *Client) compress(mech string) (*Reply, error) {
	tag := c.NextTag()
	c.mu.Lock()
	c.compressTag = tag
	c.mu.Unlock()
	cmd := "COMPRESS " + mech
	if err := c.writeLine(tag + " " + cmd); err != nil {
		return nil, err
	}
	res, err := c.Wait(tag, cmd)
	if err != nil || !res.OK() {
		return res, err
	}
	if c.fw == nil {
		fw, err := flate.NewWriter(c.conn, flate.BestSpeed)
		if err != nil {
			return res, err
		}
		c.fw, c.w = fw, fw
	}
	return res, nil
}

// Append sends APPEND with a synchronising literal, waiting for the
// server's continuation request before sending the message.
func (c *Client) Append(mailbox, flags string, msg []byte) (*Reply, error) {
	return c.AppendDated(mailbox, flags, "", msg)
}

// AppendDated is Append with an INTERNALDATE (RFC 3501's date-time, such
// as "17-Jul-1996 02:44:25 -0700"), or the server's choice if date is "".
func (c *Client) AppendDated(mailbox, flags, date string, msg []byte) (*Reply, error) {
	tag := c.NextTag()
	cmd := "APPEND " + quote(mailbox)
	if flags != "" {
		cmd += " (" + flags + ")"
	}
	if date != "" {
		cmd += ` "` + date + `"`
	}
	cmd += " {" + strconv.Itoa(len(msg)) + "}"
	if err := c.writeLine(tag + " " + cmd); err != nil {
		return nil, err
	}
	res := &Reply{Cmd: cmd, Tag: tag}
	deadline := time.Now().Add(c.timeout)
	for {
		r, err := c.Next(time.Until(deadline))
		if err != nil {
			if err == errTimeout {
				return res, fmt.Errorf("APPEND: no continuation request or tagged response within %v", c.timeout)
			}
			return res, fmt.Errorf("APPEND: %w", err)
		}
		if r.Tag == tag {
			res.Status = r // refused before the literal was sent
			return res, nil
		}
		if r.Tag == "+" {
			break
		}
		res.Untagged = append(res.Untagged, r)
	}
	c.tr.add(c.name, "C: ", fmt.Sprintf("(%d bytes of message)", len(msg)))
	if err := c.write(append(append([]byte(nil), msg...), '\r', '\n')); err != nil {
		return res, err
	}
	more, err := c.Wait(tag, cmd)
	res.Status = more.Status
	res.Untagged = append(res.Untagged, more.Untagged...)
	return res, err
}

// redact hides the credentials of a LOGIN command from transcripts,
// which end up in reports.
func redact(line string) string {
	tag, rest, _ := strings.Cut(line, " ")
	if len(rest) >= 6 && strings.EqualFold(rest[:6], "LOGIN ") {
		return tag + " LOGIN (credentials hidden)"
	}
	return line
}

// firstWord returns a command's name for error messages.
func firstWord(cmd string) string {
	w, rest, _ := strings.Cut(cmd, " ")
	if strings.EqualFold(w, "UID") {
		w2, _, _ := strings.Cut(rest, " ")
		return w + " " + w2
	}
	return w
}

// quote returns s as an IMAP quoted string.
func quote(s string) string { return string(imapcodec.AppendQuoted(nil, s)) }
