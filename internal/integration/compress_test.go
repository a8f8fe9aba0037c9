package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// startCompressProxy runs a proxy with the COMPRESS and IDLE extensions in
// front of the upstream ucfg describes and returns its address and the
// COMPRESS extension (whose counters tell whether clients used it).
func startCompressProxy(t testing.TB, ucfg upstream.Config) (string, *compress.Extension) {
	t.Helper()
	if ucfg.Timeout == 0 {
		ucfg.Timeout = 20 * time.Second
	}
	ext := compress.New()
	p := imaptest.StartProxy(t, ucfg.Addr, proxy.Config{
		Upstream:   ucfg,
		Extensions: []proxy.Extension{ext, idle.New()},
	})
	return p.Addr, ext
}

// runPython runs testdata/compress_client.py in mode (with args) and
// decodes its JSON.
func runPython(t *testing.T, addr, mode string, args ...string) map[string]any {
	t.Helper()
	py := requireTool(t, "python3")
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(py, append([]string{"testdata/compress_client.py", host, port, "alice", "alicepass", mode}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("compress_client.py %s: %v\n%s%s", mode, err, out, stderr.Bytes())
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("compress_client.py %s: %v: %s", mode, err, out)
	}
	t.Logf("%s: %s", mode, bytes.TrimSpace(out))
	if res["ok"] != true {
		t.Fatalf("compress_client.py %s failed: %s", mode, out)
	}
	return res
}

// TestCompressPythonZlib drives the proxy with a hand-written client that
// uses zlib raw deflate: a 10 MB APPEND and FETCH, an IDLE push, and input
// that is not (raw) deflate.
func TestCompressPythonZlib(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, ext := startCompressProxy(t, upstream.Config{Addr: dc.Addr})
	t.Run("interleave", func(t *testing.T) {
		// Downloads that each borrow a compressor and give it back when
		// the client pauses, with IDLE pushes between them: zlib reads
		// the session as one stream, so every return to the pool must
		// leave it exactly where it was.
		text, _ := imaptest.TextMessage(209<<10, 0)
		var args []string
		for _, m := range [][]byte{imaptest.AttachmentMessage(300<<10, 1), text,
			append(imaptest.AttachmentMessage(80<<10, 2), text[:120<<10]...), sampleMessage(1, "short")} {
			uid := dc.Append(t, "alice", "alicepass", "INBOX", nil, m)
			args = append(args, fmt.Sprintf("%d:%x", uid, sha256.Sum256(m)))
		}
		before := ext.Stats()
		runPython(t, addr, "interleave", args...)
		after := ext.Stats()
		if plain, wire := after.PlainOut-before.PlainOut, after.CompressedOut-before.CompressedOut; plain < 3*700<<10 || float64(wire) > 0.65*float64(plain) {
			t.Errorf("%d bytes of responses compressed to %d", plain, wire)
		}
		if after.Compressors != 0 {
			t.Errorf("%d compressors lent out after the session", after.Compressors)
		}
	})
	t.Run("big", func(t *testing.T) {
		res := runPython(t, addr, "big")
		// The body is 60% text and 40% base64 of random bytes: the wire
		// must carry clearly less than the plaintext both ways.
		for _, dir := range []string{"out", "in"} {
			wire, plain := res["wire_"+dir].(float64), res["plain_"+dir].(float64)
			if plain < 10<<20 || wire > 0.8*plain {
				t.Errorf("%s: %v bytes on the wire for %v of plaintext", dir, wire, plain)
			}
		}
	})
	t.Run("idle", func(t *testing.T) {
		res := runPython(t, addr, "idle")
		// Dovecot itself waits about 0.5 s before telling an idling
		// client; anything beyond a few seconds means a missing flush.
		if lat := res["push_latency_s"].(float64); lat > 3 {
			t.Errorf("push took %.1f s", lat)
		}
	})
	before := ext.Stats().Corrupt
	for _, mode := range []string{"corrupt", "zlib"} {
		t.Run(mode, func(t *testing.T) {
			res := runPython(t, addr, mode)
			want := "* BYE Corrupt compressed data."
			if mode == "zlib" {
				want = "* BYE Compressed data starts with a zlib header"
			}
			if last := res["last"].(string); !strings.HasPrefix(last, want) {
				t.Errorf("last line %q, want %q", last, want)
			}
		})
	}
	if st := ext.Stats(); st.Activations < 4 || st.Corrupt != before+2 {
		t.Errorf("stats %+v", st)
	}
}

// TestCompressMbsync syncs through the proxy with mbsync, which turns on
// COMPRESS by itself, and checks every message arrives intact.
func TestCompressMbsync(t *testing.T) {
	mbsync := requireTool(t, "mbsync")
	dc := dovecottest.Start(t, dovecottest.Full)
	want := map[string][]byte{}
	for i := 1; i <= 30; i++ {
		m := sampleMessage(i, strings.Repeat(fmt.Sprintf("line %d of message %d, compressible text\r\n", i, i), i*20))
		dc.Append(t, "alice", "alicepass", "INBOX", nil, m)
		want[fmt.Sprintf("<m%d@example.org>", i)] = m
	}
	m := sampleMessage(100, "in a folder")
	dc.Append(t, "alice", "alicepass", "Work", []string{`\Seen`}, m)
	want["<m100@example.org>"] = m
	// Large bodies: a base64 attachment (Huffman-only blocks) and prose
	// longer than a compression chunk.
	att := imaptest.AttachmentMessage(300<<10, 1)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, att)
	want["<att1@example.org>"] = att
	text, _ := imaptest.TextMessage(209<<10, 3)
	dc.Append(t, "alice", "alicepass", "INBOX", nil, text)
	want["<text3@example.org>"] = text

	addr, ext := startCompressProxy(t, upstream.Config{Addr: dc.Addr})
	sync := newMbsync(t, mbsync, addr, mbsyncOpts{folder: "*"})
	sync.run()
	if st := ext.Stats(); st.Activations == 0 {
		t.Fatalf("mbsync did not use COMPRESS: %+v", st)
	}
	sync.checkSynced(want)
	// Upload through compression.
	sync.upload(sampleMessage(200, strings.Repeat("written on the phone\r\n", 500)))
	sync.run()
	c := dialRaw(t, dc.Addr)
	mustOK(t, c.Cmd("LOGIN alice alicepass"))
	mustOK(t, c.Cmd("SELECT INBOX"))
	lines := mustOK(t, c.Cmd(`UID SEARCH HEADER Message-ID "<m200@example.org>"`))
	if lines[0] == "* SEARCH" {
		t.Fatalf("uploaded message not on the server: %q", lines)
	}
	st := ext.Stats()
	t.Logf("compress stats: %+v", st)
	if st.Activations < 2 || st.PlainOut < 2*st.CompressedOut {
		t.Errorf("stats %+v", st)
	}
}

// imapflowSync runs the ImapFlow script against addr.
func imapflowSync(t *testing.T, addr string) map[string]any {
	t.Helper()
	node := requireImapFlow(t)
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(node, "imapflow_sync.mjs", host, port, "alice", "alicepass")
	cmd.Dir = "testdata/node"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("imapflow: %v\n%s", err, stderr.Bytes())
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("imapflow output: %v: %.300s", err, out)
	}
	return res
}

// TestCompressImapFlow syncs with ImapFlow (which turns on COMPRESS when
// offered) through the proxy and directly, and compares the two.
func TestCompressImapFlow(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	var seeded []string
	for i := 1; i <= 40; i++ {
		m := sampleMessage(i, strings.Repeat(fmt.Sprintf("body line %d\r\n", i), 50+i*10))
		dc.Append(t, "alice", "alicepass", "INBOX", nil, m)
		seeded = append(seeded, string(m))
	}
	// Large bodies: a base64 attachment (Huffman-only blocks) and prose
	// longer than a compression chunk.
	text, _ := imaptest.TextMessage(209<<10, 5)
	for _, m := range [][]byte{imaptest.AttachmentMessage(300<<10, 1), text} {
		dc.Append(t, "alice", "alicepass", "INBOX", nil, m)
		seeded = append(seeded, string(m))
	}
	dc.Append(t, "alice", "alicepass", "Work", []string{`\Flagged`}, sampleMessage(41, "work"))
	addr, ext := startCompressProxy(t, upstream.Config{Addr: dc.Addr})

	proxied := imapflowSync(t, addr)
	direct := imapflowSync(t, dc.Addr)
	if proxied["compressed"] != true {
		t.Fatalf("ImapFlow did not use COMPRESS through the proxy")
	}
	if st := ext.Stats(); st.Activations != 1 {
		t.Fatalf("stats %+v", st)
	}
	msgs, _ := proxied["messages"].([]any)
	if len(msgs) != 43 {
		t.Fatalf("ImapFlow saw %d messages through the proxy, want 43", len(msgs))
	}
	var sources []string
	for _, m := range msgs[:42] {
		mm := m.(map[string]any)
		src, _ := base64.StdEncoding.DecodeString(mm["source"].(string))
		sources = append(sources, string(src))
	}
	if !reflect.DeepEqual(sources, seeded) {
		t.Errorf("sources through the proxy differ from what was stored")
	}
	// \Recent goes to whichever session saw a message first.
	for _, res := range []map[string]any{proxied, direct} {
		for _, m := range res["messages"].([]any) {
			mm := m.(map[string]any)
			var flags []any
			for _, f := range mm["flags"].([]any) {
				if f != `\Recent` {
					flags = append(flags, f)
				}
			}
			mm["flags"] = flags
		}
	}
	if !reflect.DeepEqual(proxied["messages"], direct["messages"]) || !reflect.DeepEqual(proxied["mailboxes"], direct["mailboxes"]) {
		pj, _ := json.Marshal(proxied)
		dj, _ := json.Marshal(direct)
		t.Errorf("proxied and direct syncs differ:\nproxied %.500s\ndirect  %.500s", pj, dj)
	}
}

// recorder is a TCP forwarder that records what each connection sends
// upstream and what it receives.
type recorder struct {
	ln    net.Listener
	mu    sync.Mutex
	sent  []*bytes.Buffer
	recv  []*bytes.Buffer
	conns []net.Conn
	wg    sync.WaitGroup
}

func startRecorder(t testing.TB, target string) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			buf, back := new(bytes.Buffer), new(bytes.Buffer)
			r.mu.Lock()
			r.conns = append(r.conns, c, u)
			r.sent = append(r.sent, buf)
			r.recv = append(r.recv, back)
			r.mu.Unlock()
			r.wg.Add(2)
			go func() {
				defer r.wg.Done()
				io.Copy(u, io.TeeReader(c, lockedWriter{&r.mu, buf}))
				u.Close()
			}()
			go func() {
				defer r.wg.Done()
				// What the client receives is recorded before it is
				// passed on: once the client has read it, it is here.
				io.Copy(c, io.TeeReader(u, lockedWriter{&r.mu, back}))
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// streams returns what each connection has sent so far.
func (r *recorder) streams() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, b := range r.sent {
		out = append(out, append([]byte(nil), b.Bytes()...))
	}
	return out
}

// received returns what connection i has received so far.
func (r *recorder) received(i int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.recv) {
		return nil
	}
	return append([]byte(nil), r.recv[i].Bytes()...)
}

// addr is where clients connect.
func (r *recorder) addr() string { return r.ln.Addr().String() }

// TestCompressUpstream turns on compression towards Dovecot and checks on
// the wire that the proxy's commands after login travel compressed, while
// clients (one compressing, one not) see the same mailbox as directly.
func TestCompressUpstream(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	for i := 1; i <= 10; i++ {
		dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(i, strings.Repeat("compress me\r\n", 100)))
	}
	rec := startRecorder(t, dc.Addr)
	addr, _ := startCompressProxy(t, upstream.Config{Addr: rec.ln.Addr().String(), Compress: upstream.CompressOn})

	res := runPython(t, addr, "big") // compressed client, compressed upstream
	if res["size"].(float64) != 10<<20 {
		t.Fatalf("result %v", res)
	}
	c := dialRaw(t, addr) // plain client, compressed upstream
	mustOK(t, c.Cmd("LOGIN alice alicepass"))
	mustOK(t, c.Cmd("SELECT INBOX"))
	lines := mustOK(t, c.Cmd("FETCH 1:10 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
	if len(lines) != 11 || !strings.Contains(lines[9], "Subject: message 10") {
		t.Fatalf("FETCH through a compressed upstream: %q", lines)
	}
	mustOK(t, c.Cmd("LOGOUT"))

	// Every connection the proxy opened turned compression on right
	// after login, and what followed inflates to its commands.
	var all []byte
	for i, wire := range rec.streams() {
		at := bytes.Index(wire, []byte(" COMPRESS DEFLATE\r\n"))
		if at < 0 {
			t.Fatalf("connection %d never sent COMPRESS: %.300q", i, wire)
		}
		after := wire[at+len(" COMPRESS DEFLATE\r\n"):]
		plain, err := io.ReadAll(flate.NewReader(bytes.NewReader(after)))
		if err != io.ErrUnexpectedEOF && err != nil {
			t.Fatalf("connection %d: inflating what it sent: %v", i, err)
		}
		// (Short commands may travel in stored blocks, so plaintext on
		// the wire proves nothing; that it all inflates does.)
		if len(plain) == 0 {
			t.Fatalf("connection %d: %d bytes sent after COMPRESS inflate to nothing", i, len(after))
		}
		all = append(all, plain...)
	}
	for _, cmd := range []string{"APPEND INBOX", "SELECT INBOX", "FETCH 1:10 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"} {
		if !bytes.Contains(all, []byte(cmd)) {
			t.Errorf("%q not found in the inflated upstream streams", cmd)
		}
	}
}
