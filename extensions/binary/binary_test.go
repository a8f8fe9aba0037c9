package binary_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// attachment is binary data with NULs, CR and LF.
func attachment(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}

// wrap76 breaks base64 into 76-character lines.
func wrap76(s string) string {
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	b.WriteString(s + "\r\n")
	return b.String()
}

func mixed(att []byte) string {
	return "From: a@example.org\r\nTo: b@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n" +
		"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Caf=C3=A9 =3D ok=\r\n soft\r\n" +
		"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		wrap76(base64.StdEncoding.EncodeToString(att)) +
		"--XX\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n" +
		"begin 644 x\r\n`\r\nend\r\n" +
		"--XX--\r\n"
}

const single = "From: a@example.org\r\nSubject: single\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
	"aGVsbG8Kd29ybGQK\r\n" // "hello\nworld\n"

var (
	small = attachment(300)
	big   = attachment(200 << 10)
)

type env struct {
	up  *memupstream.Server
	p   *imaptest.Proxy
	ext *binary.Extension
}

func newEnv(t *testing.T) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{mixed(small), mixed(big), single} {
		if err := up.Append("alice", "INBOX", nil, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	ext := binary.New()
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{compress.New(), condstore.New(), ext},
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
	return &env{up: up, p: p, ext: ext}
}

// item finds name's value in FETCH response lines: a literal's data, or
// the atom; lit tells which literal form ("~{" or "{").
func item(t *testing.T, lines []string, name string) (val string, lit string) {
	t.Helper()
	for _, l := range lines {
		i := strings.Index(l, " "+name+" ")
		if i < 0 {
			i = strings.Index(l, "("+name+" ")
		}
		if i < 0 {
			continue
		}
		rest := l[i+len(name)+2:]
		if m := regexp.MustCompile(`^(~?\{)(\d+)\}\r\n`).FindStringSubmatch(rest); m != nil {
			n, _ := strconv.Atoi(m[2])
			return rest[len(m[0]) : len(m[0])+n], m[1]
		}
		end := strings.IndexAny(rest, " )")
		return rest[:end], ""
	}
	var short []string
	for _, l := range lines {
		short = append(short, l[:min(len(l), 120)])
	}
	t.Fatalf("no %s in %q", name, short)
	return "", ""
}

func TestBinaryFetch(t *testing.T) {
	e := newEnv(t)
	c := imaptest.Login(t, e.p.Addr, "alice", "secret")
	caps := strings.Join(c.MustOK("CAPABILITY"), " ")
	if !strings.Contains(caps, " BINARY") {
		t.Fatalf("BINARY not advertised: %s", caps)
	}
	c.MustOK("SELECT INBOX")

	// base64 with NULs: literal8; PEEK leaves \Seen alone.
	lines := c.MustOK("UID FETCH 1 (BINARY.PEEK[2])")
	if v, lit := item(t, lines, "BINARY[2]"); v != string(small) || lit != "~{" {
		t.Fatalf("BINARY[2]: %s %d bytes, want ~{ %d", lit, len(v), len(small))
	}
	if !strings.Contains(lines[0], "UID 1 ") {
		t.Fatalf("UID FETCH without UID: %q", lines[0])
	}
	if f := c.MustOK("FETCH 1 (FLAGS)"); strings.Contains(f[0], `\Seen`) {
		t.Fatalf("BINARY.PEEK set \\Seen: %q", f)
	}

	// quoted-printable text: decoded, a normal literal; sets \Seen.
	lines = c.MustOK("FETCH 1 (BINARY[1])")
	if v, lit := item(t, lines, "BINARY[1]"); v != "Café = ok soft" || lit != "{" {
		t.Fatalf("BINARY[1]: %s %q", lit, v)
	}
	if f := c.MustOK("FETCH 1 (FLAGS)"); !strings.Contains(strings.Join(f, " "), `\Seen`) {
		t.Fatalf("BINARY did not set \\Seen: %q", f)
	}

	// partial on decoded data; the response names the origin only.
	lines = c.MustOK("FETCH 1 (BINARY.PEEK[2]<3.10>)")
	if v, _ := item(t, lines, "BINARY[2]<3>"); v != string(small[3:13]) {
		t.Fatalf("partial: %q", v)
	}
	lines = c.MustOK("FETCH 1 (BINARY.PEEK[2]<290.100>)")
	if v, _ := item(t, lines, "BINARY[2]<290>"); v != string(small[290:]) {
		t.Fatalf("partial past the end: %q", v)
	}

	// sizes
	lines = c.MustOK("FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1])")
	if v, _ := item(t, lines, "BINARY.SIZE[2]"); v != strconv.Itoa(len(small)) {
		t.Fatalf("BINARY.SIZE[2] = %s", v)
	}
	if v, _ := item(t, lines, "BINARY.SIZE[1]"); v != strconv.Itoa(len("Café = ok soft")) {
		t.Fatalf("BINARY.SIZE[1] = %s", v)
	}

	// an encoding the proxy does not know
	if got := imaptest.Tagged(c.Cmd("FETCH 1 (BINARY.PEEK[3])")); !strings.HasPrefix(got, "NO [UNKNOWN-CTE]") {
		t.Fatalf("x-uuencode: %q", got)
	}
	// a section the message lacks, a malformed one
	if v, _ := item(t, c.MustOK("FETCH 1 (BINARY.PEEK[9])"), "BINARY[9]"); v != "NIL" {
		t.Fatalf("missing section: %q", v)
	}
	if got := imaptest.Tagged(c.Cmd("FETCH 1 (BINARY[1.0])")); !strings.HasPrefix(got, "BAD") {
		t.Fatalf("BINARY[1.0]: %q", got)
	}

	// mixed with other items: those are relayed.
	lines = c.MustOK("FETCH 1 (FLAGS BINARY.PEEK[1] RFC822.SIZE)")
	item(t, lines, "BINARY[1]")
	if j := strings.Join(lines, " "); !strings.Contains(j, "FLAGS (") || !strings.Contains(j, "RFC822.SIZE ") {
		t.Fatalf("other items lost: %q", lines)
	}

	// a single-part base64 message: BINARY[] has the header with
	// Content-Transfer-Encoding binary and the decoded body, text with CRLF.
	lines = c.MustOK("FETCH 3 (BINARY.PEEK[] BINARY.PEEK[1])")
	if v, _ := item(t, lines, "BINARY[1]"); v != "hello\r\nworld\r\n" {
		t.Fatalf("BINARY[1] of single part: %q", v)
	}
	v, _ := item(t, lines, "BINARY[]")
	if !strings.Contains(v, "Content-Transfer-Encoding: binary\r\n") || !strings.HasSuffix(v, "\r\n\r\nhello\r\nworld\r\n") || !strings.Contains(v, "From: a@example.org\r\n") {
		t.Fatalf("BINARY[]: %q", v)
	}
}

// TestBinaryLarge: a part larger than a chunk is counted, then streamed.
func TestBinaryLarge(t *testing.T) {
	e := newEnv(t)
	c := imaptest.Login(t, e.p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	lines := c.MustOK("FETCH 2 (BINARY.PEEK[2] BINARY.SIZE[2])")
	if v, lit := item(t, lines, "BINARY[2]"); v != string(big) || lit != "~{" {
		t.Fatalf("large part: %s %d bytes", lit, len(v))
	}
	if v, _ := item(t, lines, "BINARY.SIZE[2]"); v != strconv.Itoa(len(big)) {
		t.Fatalf("BINARY.SIZE: %s", v)
	}
	lines = c.MustOK("UID FETCH 2 (BINARY.PEEK[2]<100000.5000>)")
	if v, _ := item(t, lines, "BINARY[2]<100000>"); v != string(big[100000:105000]) {
		t.Fatalf("large partial: %d bytes", len(v))
	}
}

// TestBinaryCompressCondstore: through COMPRESS, with CONDSTORE enabled,
// MODSEQ still comes for each message.
func TestBinaryCompressCondstore(t *testing.T) {
	e := newEnv(t)
	c := imaptest.Login(t, e.p.Addr, "alice", "secret")
	c.Compress()
	c.MustOK("ENABLE CONDSTORE")
	c.MustOK("SELECT INBOX")
	lines := c.MustOK("FETCH 1:2 (BINARY[2])")
	if v, _ := item(t, lines, "BINARY[2]"); v != string(small) {
		t.Fatalf("through COMPRESS: %d bytes", len(v))
	}
	j := strings.Join(lines, "\n")
	if n := strings.Count(j, "MODSEQ ("); n < 2 {
		t.Fatalf("MODSEQ missing: %q", lines)
	}
	if !bytes.Contains([]byte(j), []byte(`\Seen`)) {
		t.Fatalf("\\Seen not reported: %q", lines)
	}
	lines = c.MustOK("FETCH 1:2 (BINARY.PEEK[1] MODSEQ)")
	if n := strings.Count(strings.Join(lines, "\n"), "MODSEQ ("); n != 2 {
		t.Fatalf("MODSEQ asked for: %q", lines)
	}
	// CHANGEDSINCE: condstore, before binary in the chain, narrows the
	// set; binary answers for the changed message only.
	c.MustOK(`STORE 2 +FLAGS.SILENT (\Flagged)`)
	ms := regexp.MustCompile(`MODSEQ \((\d+)\)`).FindStringSubmatch(strings.Join(c.MustOK("FETCH 1 (MODSEQ)"), " "))
	lines = c.MustOK("FETCH 1:2 (BINARY.PEEK[1]) (CHANGEDSINCE " + ms[1] + ")")
	if j := strings.Join(lines, "\n"); strings.Contains(j, "* 1 FETCH") || !strings.Contains(j, "* 2 FETCH (BINARY[1]") {
		t.Fatalf("CHANGEDSINCE: %q", lines)
	}
}

// TestCapabilities: BINARY after login, only where the upstream lacks it.
func TestCapabilities(t *testing.T) {
	e := binary.New()
	if caps := e.Capabilities(proxy.StateNotAuthenticated, nil); len(caps) != 0 {
		t.Fatalf("before login: %v", caps)
	}
	if caps := e.Capabilities(proxy.StateAuthenticated, upstream.ParseCaps("IMAP4rev1 IDLE")); len(caps) != 1 || caps[0] != "BINARY" {
		t.Fatalf("legacy upstream: %v", caps)
	}
	if caps := e.Capabilities(proxy.StateSelected, upstream.ParseCaps("IMAP4rev1 BINARY")); len(caps) != 0 {
		t.Fatalf("upstream with BINARY: %v", caps)
	}
}

// TestBinaryAppend: a literal8 APPEND to an upstream without BINARY is
// re-encoded (the binary part in base64) and reads back the same through
// BINARY; one over the limit is refused before the client sends it.
func TestBinaryAppend(t *testing.T) {
	e := newEnv(t)
	c := imaptest.Login(t, e.p.Addr, "alice", "secret")
	att := attachment(3000)
	if !bytes.Contains(att, []byte{0}) || !bytes.Contains(att, []byte{'\n'}) {
		t.Fatal("attachment without NUL or LF")
	}
	msg := "From: a@example.org\r\nSubject: up\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"ZZ\"\r\n\r\n" +
		"preamble\r\n--ZZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n" +
		"--ZZ\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n" + string(att) + "\r\n--ZZ--\r\n"
	lines := c.MustOK(fmt.Sprintf("APPEND INBOX (\\Flagged) ~{%d}", len(msg)), msg)
	if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		t.Fatalf("APPEND: %q", lines)
	}
	c.MustOK("SELECT INBOX")
	lines = c.MustOK("FETCH 4 (FLAGS BINARY.PEEK[2] BINARY.PEEK[1] BODY.PEEK[2.MIME])")
	if v, lit := item(t, lines, "BINARY[2]"); v != string(att) || lit != "~{" {
		t.Fatalf("BINARY[2] after APPEND: %s %d bytes", lit, len(v))
	}
	if v, _ := item(t, lines, "BINARY[1]"); v != "hello" {
		t.Fatalf("BINARY[1] after APPEND: %q", v)
	}
	if v, _ := item(t, lines, "BODY[2.MIME]"); !strings.Contains(v, "Content-Transfer-Encoding: base64") {
		t.Fatalf("binary part not re-encoded: %q", v)
	}
	if j := strings.Join(lines, " "); !strings.Contains(j, `\Flagged`) {
		t.Fatalf("flags lost: %.300q", j)
	}

	// A plain literal is relayed as it is.
	plain := "Subject: plain\r\n\r\nbody\r\n"
	c.MustOK(fmt.Sprintf("APPEND INBOX {%d}", len(plain)), plain)
	if v, _ := item(t, c.MustOK("FETCH 5 (BODY.PEEK[])"), "BODY[]"); v != plain {
		t.Fatalf("plain APPEND: %q", v)
	}

	// Over the limit: NO [TOOBIG], the literal never invited.
	binary.SetMaxAppend(e.ext, 100)
	got := c.Cmd(fmt.Sprintf("APPEND INBOX ~{%d}", len(msg)))
	if !strings.HasPrefix(imaptest.Tagged(got), "NO [TOOBIG]") {
		t.Fatalf("over the limit: %q", got)
	}
	c.MustOK("NOOP")
}

// TestBinaryMultiappendRefused: several messages in one APPEND whose
// first is a literal8, over an upstream without MULTIAPPEND: the command
// used to go upstream as it was (the re-encoded first message, then the
// second), and go-imap's server stored the first and dropped the
// connection, so the client heard NO for a message that was stored. Now
// it is refused with nothing stored.
func TestBinaryMultiappendRefused(t *testing.T) {
	e := newEnv(t)
	c := imaptest.Login(t, e.p.Addr, "alice", "secret")
	first, second := "Subject: one\r\n\r\nfirst\r\n", "Subject: two\r\n\r\nsecond\r\n"
	lines := c.Cmd(fmt.Sprintf("APPEND INBOX ~{%d+}", len(first)), first+fmt.Sprintf(" {%d+}", len(second)), second)
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO [CANNOT] ") {
		t.Fatalf("MULTIAPPEND with a literal8 first: %q", lines)
	}
	if st := c.MustOK("STATUS INBOX (MESSAGES)")[0]; st != "* STATUS INBOX (MESSAGES 3)" {
		t.Errorf("after the refused MULTIAPPEND: %q, want the 3 messages of before", st)
	}
	// One literal8 message alone still goes.
	if got := imaptest.Tagged(c.MustOK(fmt.Sprintf("APPEND INBOX ~{%d}", len(first)), first)); !strings.HasPrefix(got, "OK") {
		t.Errorf("single literal8 APPEND: %q", got)
	}
}

// TestRelayedWithUpstreamBinary: where the upstream advertises BINARY the
// extension does nothing and the upstream answers.
func TestRelayedWithUpstreamBinary(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus, imap.CapBinary}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	if err := up.Append("alice", "INBOX", nil, []byte(mixed(small))); err != nil {
		t.Fatal(err)
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New(), binary.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	if caps := strings.Join(c.MustOK("CAPABILITY"), " "); strings.Count(caps, " BINARY") != 1 {
		t.Fatalf("BINARY advertised %d times: %s", strings.Count(caps, " BINARY"), caps)
	}
	c.MustOK("SELECT INBOX")
	// BINARY[2] must be right anyway; BINARY[3] tells that the command
	// was relayed: go-imap's server answers an x-uuencode part with an
	// empty literal8 where the proxy's own answer is NO [UNKNOWN-CTE].
	if v, _ := item(t, c.MustOK("FETCH 1 (BINARY.PEEK[2])"), "BINARY[2]"); v != string(small) {
		t.Fatalf("relayed BINARY[2]: %d bytes", len(v))
	}
	if got := c.Cmd("FETCH 1 (BINARY.PEEK[3])"); !strings.HasPrefix(imaptest.Tagged(got), "OK") {
		t.Fatalf("BINARY[3] not relayed: %q", got)
	}
}

// TestBinaryAppendNoLiteralPlus: over an upstream without LITERAL+ the
// re-encoded message still goes upstream (the relay waits for its
// continuation requests), re-encoded, with its flags and date, and gets
// the upstream's APPENDUID.
func TestBinaryAppendNoLiteralPlus(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapUIDPlus}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{condstore.New(), binary.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	msg := "Subject: raw\r\nContent-Transfer-Encoding: binary\r\n\r\na\x00b\nc"
	lines := c.MustOK(fmt.Sprintf("APPEND INBOX (\\Seen) \"02-Nov-2026 10:00:00 +0000\" ~{%d}", len(msg)), msg)
	if !strings.HasPrefix(imaptest.Tagged(lines), "OK [APPENDUID ") {
		t.Fatalf("APPEND: %q", lines)
	}
	c.MustOK("SELECT INBOX")
	want := "Mime-Version: 1.0\r\nSubject: raw\r\nContent-Transfer-Encoding: base64\r\n\r\nYQBiCmM=\r\n"
	lines = c.MustOK("FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")
	if v, _ := item(t, lines, "BODY[]"); v != want {
		t.Fatalf("upstream holds %q, want %q", v, want)
	}
	if j := strings.Join(lines, " "); !strings.Contains(j, `\Seen`) || !strings.Contains(j, `2-Nov-2026 10:00:00 +0000"`) {
		t.Fatalf("flags or date lost: %q", j)
	}
}
