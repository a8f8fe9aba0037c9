package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"github.com/lemonproxy/lemonproxy/internal/cpustat"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// BenchmarkCompressBodies measures COMPRESS=DEFLATE on message bodies, the
// proxy's (in front of Dovecot's Full profile, its upstream connection
// uncompressed on loopback) beside Dovecot's own (imap_zlib) on the same
// mailboxes, and beside klauspost/compress's stateful level 1 on the same
// plaintext with the same flushes:
//
//   - bytes on the wire for one download (UID FETCH BODY.PEEK[]) of a
//     300 KB message with a base64 attachment and of a 209 KB text
//     message, each in a mailbox of its own, by a client that turned
//     COMPRESS on before (the response alone is counted);
//   - bytes on the wire for mbsync's full sync of an INBOX of 60 messages
//     (15 with attachments, 45 of prose; 3.9 MB) into an empty maildir
//     (everything the server sent, greeting included);
//   - CPU per MB of plaintext while a Python client (zlib) downloads one of
//     the two messages over and over, with COMPRESS and without: the
//     proxy's own process CPU (through the proxy; Dovecot's behind it is
//     reported too) and Dovecot's processes' (directly).
//
// Run it with -benchtime 1x and several -count: every figure is one run.
//
//	go test ./internal/integration -run '^$' -bench CompressBodies -benchtime 1x -count 3
func BenchmarkCompressBodies(b *testing.B) {
	mbsync := requireTool(b, "mbsync")
	py := requireTool(b, "python3")
	dc := dovecottest.Start(b, dovecottest.Full)
	att := imaptest.AttachmentMessage(300<<10, 1)
	text, source := imaptest.TextMessage(209<<10, 0)
	b.Logf("text message: %s", source)
	dc.Append(b, "alice", "alicepass", "Attachment", nil, att)
	dc.Append(b, "alice", "alicepass", "Text", nil, text)
	corpus := 0
	for i := range 60 {
		var m []byte
		if i%4 == 0 {
			m = imaptest.AttachmentMessage(60<<10+(i*53<<10)%(240<<10), uint64(100+i))
		} else {
			m, _ = imaptest.TextMessage(4<<10+(i*7<<10)%(40<<10), uint64(100+i))
		}
		corpus += len(m)
		dc.Append(b, "alice", "alicepass", "INBOX", nil, m)
	}
	b.Logf("mbsync corpus: 60 messages, %d bytes", corpus)
	proxyAddr, _ := startCompressProxy(b, upstream.Config{Addr: dc.Addr})
	targets := []struct{ name, addr string }{{"proxy", proxyAddr}, {"dovecot", dc.Addr}}
	messages := []struct {
		name, mailbox string
		msg           []byte
		loops         int
	}{{"attachment", "Attachment", att, 60}, {"text", "Text", text, 80}}

	for b.Loop() {
		b.Logf("load average before: %s", loadAverage())
		for _, m := range messages {
			var plain []byte
			for _, tg := range targets {
				wire, p := downloadWire(b, tg.addr, m.mailbox, m.msg)
				plain = p
				b.Logf("%s download, %s: %d bytes on the wire for %d of plaintext (%.1f %% saved)", m.name, tg.name, wire, len(p), 100*(1-float64(wire)/float64(len(p))))
				b.ReportMetric(float64(wire), m.name+"-"+tg.name+"-B")
			}
			l1 := deflateL1(plain, nil)
			b.Logf("%s download, klauspost level 1 on the same plaintext: %d bytes", m.name, l1)
			b.ReportMetric(float64(l1), m.name+"-L1-B")
			b.ReportMetric(float64(len(plain)), m.name+"-plain-B")
		}
		for _, tg := range targets {
			r := mbsyncWire(b, mbsync, tg.addr)
			l1 := deflateL1(r.plain, r.flushes)
			total := r.pre + len(r.plain)
			b.Logf("mbsync full sync, %s: %d bytes on the wire for %d of plaintext (%.1f %% saved, %d flushes); klauspost level 1 on the same plaintext and flushes: %d bytes (%.1f %% saved)",
				tg.name, r.wire, total, 100*(1-float64(r.wire)/float64(total)), len(r.flushes), r.pre+l1, 100*(1-float64(r.pre+l1)/float64(total)))
			b.ReportMetric(float64(r.wire), "mbsync-"+tg.name+"-B")
			b.ReportMetric(float64(r.pre+l1), "mbsync-"+tg.name+"-L1-B")
			b.ReportMetric(float64(total), "mbsync-"+tg.name+"-plain-B")
		}
		for _, m := range messages {
			for _, tg := range targets {
				for _, on := range []bool{false, true} {
					r := cpuLoop(b, py, tg.addr, m.mailbox, m.loops, on, dc)
					mode := "plain"
					if on {
						mode = "compress"
					}
					mb := r.plain / (1 << 20)
					b.Logf("%s x%d, %s, %s: %.1f MB in %.2f s, %.1f MB on the wire; proxy CPU %.2f ms/MB, Dovecot CPU %.2f ms/MB",
						m.name, m.loops, tg.name, mode, mb, r.seconds, r.wire/(1<<20), msPerMB(r.proxy, mb), msPerMB(r.dovecot, mb))
					if tg.name == "proxy" {
						b.ReportMetric(msPerMB(r.proxy, mb), m.name+"-proxycpu-"+mode+"-ms/MB")
						b.ReportMetric(msPerMB(r.dovecot, mb), m.name+"-upstreamcpu-"+mode+"-ms/MB")
					} else {
						b.ReportMetric(msPerMB(r.dovecot, mb), m.name+"-dovecotcpu-"+mode+"-ms/MB")
					}
				}
			}
		}
		b.Logf("load average after: %s", loadAverage())
	}
}

func msPerMB(d time.Duration, mb float64) float64 { return float64(d.Microseconds()) / 1000 / mb }

// downloadWire fetches the one message of mailbox with COMPRESS on and
// returns the compressed bytes of the FETCH's responses on the wire and
// their plaintext. The message must arrive exactly.
func downloadWire(b *testing.B, addr, mailbox string, want []byte) (int, []byte) {
	rec := startRecorder(b, addr)
	c := dialRaw(b, rec.addr())
	defer c.Close()
	mustOK(b, c.Cmd("LOGIN alice alicepass"))
	c.Compress()
	mustOK(b, c.Cmd("SELECT "+mailbox))
	before := len(rec.received(0))
	lines := mustOK(b, c.Cmd("UID FETCH 1:* BODY.PEEK[]"))
	wire := len(rec.received(0)) - before
	if len(lines) != 2 || !strings.HasSuffix(lines[0], fmt.Sprintf("{%d}\r\n%s)", len(want), want)) {
		b.Fatalf("download from %s: %d lines, not the message", addr, len(lines))
	}
	mustOK(b, c.Cmd("LOGOUT"))
	return wire, []byte(strings.Join(lines, "\r\n") + "\r\n")
}

// deflateL1 returns the size of plain compressed by one stateful klauspost
// level-1 deflater, with a sync flush at each offset of flushes and at the
// end.
func deflateL1(plain []byte, flushes []int64) int {
	var out countingWriter
	fw, _ := flate.NewWriter(&out, 1)
	var at int64
	for _, f := range append(flushes, int64(len(plain))) {
		if f < at || f > int64(len(plain)) {
			continue
		}
		fw.Write(plain[at:f])
		fw.Flush()
		at = f
	}
	return out.n
}

type countingWriter struct{ n int }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

type mbsyncResult struct {
	wire    int     // everything the server sent
	pre     int     // of it, before compression started
	plain   []byte  // the rest, inflated
	flushes []int64 // plaintext offsets at which the server flushed
}

var compressCmd = regexp.MustCompile(`(?m)^(\S+) COMPRESS DEFLATE\r\n`)

// mbsyncWire runs mbsync's full sync of INBOX into an empty maildir
// through a recorder and takes apart what the server sent.
func mbsyncWire(b *testing.B, bin, addr string) mbsyncResult {
	rec := startRecorder(b, addr)
	m := newMbsync(b, bin, rec.addr(), mbsyncOpts{})
	if out, err := m.try(); err != nil {
		b.Fatalf("mbsync: %v\n%.2000s", err, out)
	}
	sent := rec.streams()
	if len(sent) != 1 {
		b.Fatalf("mbsync opened %d connections, want 1", len(sent))
	}
	recv := rec.received(0)
	cmd := compressCmd.FindSubmatch(sent[0])
	if cmd == nil {
		b.Fatalf("mbsync did not send COMPRESS")
	}
	at := bytes.Index(recv, append(append([]byte("\r\n"), cmd[1]...), " OK"...))
	end := -1
	if at >= 0 {
		end = bytes.Index(recv[at+2:], []byte("\r\n"))
	}
	if end < 0 {
		b.Fatalf("no OK to COMPRESS in %.500q", recv)
	}
	pre := at + 2 + end + 2
	plain, flushes, err := inflateFlushes(recv[pre:])
	if err != nil {
		b.Fatalf("inflating what the server sent: %v", err)
	}
	return mbsyncResult{wire: len(recv), pre: pre, plain: plain, flushes: flushes}
}

// inflateFlushes inflates a raw deflate stream that the server flushed
// now and then, and returns the plaintext offsets of its sync (or full)
// flushes: the empty stored block a flush ends with is a block that adds
// no plaintext.
func inflateFlushes(stream []byte) ([]byte, []int64, error) {
	var flushes []int64
	last := int64(-1)
	fr := flate.NewReaderOpts(bytes.NewReader(stream), flate.WithEobCallback(func(cp flate.InflateCheckpoint) {
		if cp.UncompressedOffset == last && (len(flushes) == 0 || flushes[len(flushes)-1] != last) {
			flushes = append(flushes, last)
		}
		last = cp.UncompressedOffset
	}))
	plain, err := io.ReadAll(fr)
	if err == io.ErrUnexpectedEOF {
		err = nil // the session ended without a final block
	}
	return plain, flushes, err
}

type cpuResult struct {
	proxy, dovecot time.Duration
	plain, wire    float64 // bytes received by the client
	seconds        float64
}

// cpuLoop has the Python client download every message of mailbox loops
// times and returns the CPU this process (the proxy) and Dovecot used
// meanwhile.
func cpuLoop(b *testing.B, py, addr, mailbox string, loops int, compress bool, dc *dovecottest.Server) cpuResult {
	host, port, _ := net.SplitHostPort(addr)
	on := "off"
	if compress {
		on = "on"
	}
	cmd := exec.Command(py, "testdata/compress_client.py", host, port, "alice", "alicepass", "loop", strconv.Itoa(loops), on, mailbox)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	out := bufio.NewReader(stdout)
	line := func() string {
		l, err := out.ReadString('\n')
		if err != nil {
			b.Fatalf("compress_client.py loop: %v\n%s", err, stderr.Bytes())
		}
		return l
	}
	if l := line(); l != "READY\n" {
		b.Fatalf("compress_client.py loop: %q", l)
	}
	p0, d0 := cpustat.Self(), dc.CPU()
	io.WriteString(stdin, "go\n")
	var res map[string]any
	if err := json.Unmarshal([]byte(line()), &res); err != nil || res["ok"] != true {
		b.Fatalf("compress_client.py loop: %v %v", res, err)
	}
	p1, d1 := cpustat.Self(), dc.CPU()
	io.WriteString(stdin, "done\n")
	return cpuResult{proxy: p1 - p0, dovecot: d1 - d0, plain: res["plain_in"].(float64), wire: res["wire_in"].(float64), seconds: res["seconds"].(float64)}
}

// loadAverage returns /proc/loadavg's first three fields.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
