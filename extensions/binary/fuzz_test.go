package binary

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzReencode: any message either fails to re-encode or re-encodes, in
// bounded size, into one whose parts need no further re-encoding.
func FuzzReencode(f *testing.F) {
	f.Add([]byte("Subject: x\r\nContent-Transfer-Encoding: binary\r\n\r\na\x00b\nc"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
		"Content-Type: message/rfc822\r\n\r\nContent-Type: application/x\r\n\r\n\x00\x01\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c--\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var out bytes.Buffer
		done := make(chan error, 1)
		go func() { done <- reencode(&out, msg) }()
		select {
		case err := <-done:
			if err != nil {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("reencode hangs on %q", msg)
		}
		if out.Len() > 2*len(msg)+4096 {
			t.Fatalf("%d bytes re-encoded into %d", len(msg), out.Len())
		}
		var again bytes.Buffer
		go func() { done <- reencode(&again, out.Bytes()) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("re-encoded message unreadable: %v\n%q", err, out.Bytes())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("reencode hangs on its own output %q (of %q)", out.Bytes(), msg)
		}
	})
}

// FuzzBodyStructure: any FETCH item and BODYSTRUCTURE the upstream sends
// is resolved without a panic.
func FuzzBodyStructure(f *testing.F) {
	f.Add(`(("text" "plain" NIL NIL NIL "quoted-printable" 24 1)("application" "octet-stream" NIL NIL NIL "base64" 2802) "mixed")`, "BINARY[2]<0.10>")
	f.Add(`("message" "rfc822" NIL NIL NIL "7bit" 100 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" NIL NIL NIL "base64" 10 1) 3)`, "BINARY.SIZE[1.1]")
	f.Add(`("text" "plain" NIL NIL NIL "base64" 10 1)`, "BINARY.PEEK[]")
	f.Fuzz(func(t *testing.T, bs, it string) {
		if strings.ContainsAny(bs, "\r\n") {
			return
		}
		segs := []imapcodec.Segment{{Text: []byte("* 1 FETCH (UID 1 BODYSTRUCTURE " + bs + ")")}}
		_, l, ok := bodypart.FetchList(bodypart.SpaceParts(segs))
		if !ok || len(l) < 4 {
			return
		}
		i, isItem, err := parseItem(it)
		if !isItem || err != nil {
			return
		}
		p := bodypart.Resolve(l[3], i.section)
		if p.Found && p.Section != i.section && p.Section != "TEXT" && p.Section != "" {
			t.Fatalf("section %q read as %q", i.section, p.Section)
		}
	})
}
