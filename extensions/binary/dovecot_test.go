package binary_test

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// nested is a message with a message/rfc822 part whose own body is a
// base64 text with bare LFs.
const nested = "From: a@example.org\r\nSubject: nested\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"N1\"\r\n\r\n" +
	"--N1\r\nContent-Type: text/plain\r\n\r\nouter\r\n" +
	"--N1\r\nContent-Type: message/rfc822\r\n\r\n" +
	"Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
	"aGVsbG8Kd29ybGQK\r\n" +
	"--N1--\r\n"

// TestDovecotCompare compares the answers the proxy synthesizes in front
// of Dovecot's legacy profile (no BINARY advertised) with Dovecot's own
// BINARY (full profile) for the same messages.
func TestDovecotCompare(t *testing.T) {
	full := dovecottest.Start(t, dovecottest.Full)
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	noUnknown := strings.Replace(mixed(small), "x-uuencode", "7bit", 1)
	noUnknownBig := strings.Replace(mixed(big), "x-uuencode", "7bit", 1)
	for _, m := range []string{noUnknown, noUnknownBig, single, nested, mixed(small)} {
		full.Append(t, "alice", "alicepass", "INBOX", nil, []byte(m))
		legacy.Append(t, "alice", "alicepass", "INBOX", nil, []byte(m))
	}
	px := imaptest.StartProxy(t, legacy.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New(), binary.New()}})
	want := imaptest.Login(t, full.Addr, "alice", "alicepass")
	got := imaptest.Login(t, px.Addr, "alice", "alicepass")
	if !strings.Contains(strings.Join(got.MustOK("CAPABILITY"), " "), " BINARY") {
		t.Fatal("BINARY not advertised in front of the legacy profile")
	}
	want.MustOK("SELECT INBOX")
	got.MustOK("SELECT INBOX")
	for _, tc := range []struct {
		cmd      string
		items    []string
		crlf     map[string]bool
		crlfSize map[string]string
	}{
		{"FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[3])", []string{"BINARY[1]", "BINARY[2]", "BINARY[3]"}, nil, nil},
		{"FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])", []string{"BINARY.SIZE[1]", "BINARY.SIZE[2]"}, nil, nil},
		{"FETCH 1 (BINARY.PEEK[2]<7.40>)", []string{"BINARY[2]<7>"}, nil, nil},
		{"FETCH 2 (BINARY.PEEK[2] BINARY.SIZE[2])", []string{"BINARY[2]", "BINARY.SIZE[2]"}, nil, nil},
		{"FETCH 2 (BINARY.PEEK[2]<150000.1000>)", []string{"BINARY[2]<150000>"}, nil, nil},
		{"FETCH 3 (BINARY.PEEK[1] BINARY.SIZE[1])", []string{"BINARY[1]", "BINARY.SIZE[1]"},
			map[string]bool{"BINARY[1]": true}, map[string]string{"BINARY.SIZE[1]": "14"}},
		{"FETCH 4 (BINARY.PEEK[1] BINARY.PEEK[2.1] BINARY.SIZE[2.1])", []string{"BINARY[1]", "BINARY[2.1]", "BINARY.SIZE[2.1]"},
			map[string]bool{"BINARY[2.1]": true}, map[string]string{"BINARY.SIZE[2.1]": "14"}},
	} {
		w, g := want.MustOK(tc.cmd), got.MustOK(tc.cmd)
		for _, it := range tc.items {
			wv, wl := item(t, w, it)
			gv, gl := item(t, g, it)
			if tc.crlf[it] {
				// Dovecot sends a base64 text's bare LFs as they are;
				// the proxy as CRLF (RFC 3516 4.3, see the package
				// comment).
				wv = crlf(wv)
			}
			if sz, ok := tc.crlfSize[it]; ok {
				wv = sz
			}
			if wv != gv {
				t.Errorf("%s %s: proxy %q (%d bytes), Dovecot %q (%d bytes)", tc.cmd, it, trunc(gv), len(gv), trunc(wv), len(wv))
			}
			// Dovecot sends every decoded section as a literal8;
			// RFC 3516 4.3 has a string where there is no NUL, as the
			// proxy does. With a NUL both must send a literal8.
			if strings.Contains(wv, "\x00") && (wl != "~{" || gl != "~{") {
				t.Errorf("%s %s: data with NUL in a %q literal (Dovecot %q)", tc.cmd, it, gl, wl)
			}
		}
	}
	for _, cmd := range []string{"FETCH 5 (BINARY.PEEK[3])", "FETCH 5 (BINARY.SIZE[3])"} {
		w, g := imaptest.Tagged(want.Cmd(cmd)), imaptest.Tagged(got.Cmd(cmd))
		if !strings.HasPrefix(w, "NO [UNKNOWN-CTE]") || !strings.HasPrefix(g, "NO [UNKNOWN-CTE]") {
			t.Errorf("%s: proxy %q, Dovecot %q", cmd, g, w)
		}
	}
	// BINARY[] of an encoded single-part message: the header with
	// Content-Transfer-Encoding binary in its place, the decoded body.
	w, g := want.MustOK("FETCH 3 (BINARY.PEEK[])"), got.MustOK("FETCH 3 (BINARY.PEEK[])")
	wv, _ := item(t, w, "BINARY[]")
	gv, _ := item(t, g, "BINARY[]")
	if crlf(wv) != gv {
		t.Errorf("BINARY[] of a base64 single part: Dovecot %q, proxy %q", wv, gv)
	}
	// Multipart BINARY[]: the message as it is, in both.
	w, g = want.MustOK("FETCH 1 (BINARY.PEEK[])"), got.MustOK("FETCH 1 (BINARY.PEEK[])")
	wv, _ = item(t, w, "BINARY[]")
	gv, _ = item(t, g, "BINARY[]")
	if wv != gv {
		t.Logf("BINARY[] of a multipart: Dovecot %q, proxy %q", trunc(wv), trunc(gv))
	}
}

// crlf turns bare LFs into CRLF.
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

func trunc(s string) string { return s[:min(len(s), 60)] }

// TestDovecotAppendLarge: a literal8 APPEND of a message with a 20 MiB
// binary attachment, over Dovecot's legacy profile, is spooled and
// re-encoded without the message ever being in the proxy's memory: the
// bytes allocated while it passes (the whole process's, client included,
// which writes from one buffer) stay far below one copy of it. Dovecot then
// holds the attachment in base64 and decodes it (its own BINARY, which it
// executes unadvertised) to exactly what was sent.
func TestDovecotAppendLarge(t *testing.T) {
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	px := imaptest.StartProxy(t, legacy.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New(), binary.New()}})
	att := attachment(20 << 20)
	var mb bytes.Buffer
	mb.WriteString("From: a@example.org\r\nSubject: large\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"LL\"\r\n\r\n" +
		"--LL\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--LL\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n")
	mb.Write(att)
	mb.WriteString("\r\n--LL--\r\n")
	msg := mb.Bytes()

	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	c.Timeout = 60 * time.Second
	runtime.GC()
	var before, peak, after runtime.MemStats
	runtime.ReadMemStats(&before)
	peak = before
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.HeapInuse {
				peak = m
			}
		}
	}()
	c.Send(fmt.Sprintf("A1 APPEND INBOX ~{%d}", len(msg)))
	if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("literal not invited: %q", l)
	}
	c.WriteBytes(msg)
	c.Send("")
	lines := c.ReadUntilTagged("A1")
	runtime.ReadMemStats(&after)
	close(stop)
	<-sampled
	if tagged := imaptest.Tagged(lines); !strings.HasPrefix(tagged, "OK [APPENDUID ") {
		t.Fatalf("APPEND: %q", lines)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	growth := int64(peak.HeapInuse) - int64(before.HeapInuse)
	t.Logf("APPEND of %d bytes: %d bytes allocated, heap in use grew by at most %d", len(msg), alloc, growth)
	if alloc > uint64(len(att))/2 {
		t.Errorf("%d bytes allocated for a %d-byte APPEND: the message was held in memory", alloc, len(msg))
	}

	d := imaptest.Login(t, legacy.Addr, "alice", "alicepass")
	d.Timeout = 60 * time.Second
	d.MustOK("EXAMINE INBOX")
	mime, _ := item(t, d.MustOK("FETCH 1 (BODY.PEEK[2.MIME] BINARY.SIZE[2])"), "BODY[2.MIME]")
	if !strings.Contains(mime, "Content-Transfer-Encoding: base64") {
		t.Fatalf("attachment not re-encoded: %q", mime)
	}
	if v, _ := item(t, d.MustOK("FETCH 1 (BINARY.PEEK[2])"), "BINARY[2]"); v != string(att) {
		t.Fatalf("attachment as Dovecot decodes it: %d bytes, want the %d sent", len(v), len(att))
	}
}

// TestDovecotMultiappendLiteral8: over an upstream that advertises
// MULTIAPPEND (Legacy with it added), several messages with a literal8
// first go upstream as one MULTIAPPEND, the literal8 re-encoded.
func TestDovecotMultiappendLiteral8(t *testing.T) {
	legacy := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{ExtraCaps: []string{"MULTIAPPEND"}})
	px := imaptest.StartProxy(t, legacy.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New(), binary.New()}})
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	att := attachment(1000)
	first := "Subject: one\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n" + string(att)
	second := "Subject: two\r\n\r\nsecond\r\n"
	if lines := c.Cmd(fmt.Sprintf("APPEND INBOX ~{%d+}", len(first)), first+fmt.Sprintf(" (\\Flagged) {%d+}", len(second)), second); !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		t.Fatalf("MULTIAPPEND: %q", lines)
	}
	d := imaptest.Login(t, legacy.Addr, "alice", "alicepass")
	d.MustOK("EXAMINE INBOX")
	if v, _ := item(t, d.MustOK("FETCH 1 (BINARY.PEEK[1])"), "BINARY[1]"); v != string(att) {
		t.Errorf("first message's data as Dovecot decodes it: %d bytes, want the %d sent", len(v), len(att))
	}
	lines := d.MustOK("FETCH 2 (FLAGS BODY.PEEK[])")
	if v, _ := item(t, lines, "BODY[]"); v != second || !strings.Contains(lines[0], `\Flagged`) {
		t.Errorf("second message: %q", lines)
	}
}

// TestDovecotSeenWithGaps: BINARY[] (not .PEEK) of every message of a
// mailbox of 12,000 messages with a gap between each two UIDs, in front
// of Dovecot's legacy profile. The proxy sets \Seen itself with UID
// STOREs of the messages it read; one STORE of all of them would be a
// 67 KB line, which Dovecot refuses, and the flags were never set.
func TestDovecotSeenWithGaps(t *testing.T) {
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	legacy.FillWithGaps(t, "alice", "alicepass", "Big", 12000, func(i int) []byte {
		return fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i+1, i+1)
	})
	px := imaptest.StartProxy(t, legacy.Addr, proxy.Config{Extensions: []proxy.Extension{binary.New()}})
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	c.MustOK("SELECT Big")
	if got := imaptest.Tagged(c.Cmd("UID FETCH 1:* (BINARY[1])")); !strings.HasPrefix(got, "OK") {
		t.Fatalf("UID FETCH BINARY: %q", got)
	}
	if got := c.MustOK("UID SEARCH UNSEEN"); len(got) != 2 || got[0] != "* SEARCH" {
		t.Errorf("messages left without \\Seen: %.300q", got)
	}
}
