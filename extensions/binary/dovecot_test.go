package binary_test

import (
	"strings"
	"testing"

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
