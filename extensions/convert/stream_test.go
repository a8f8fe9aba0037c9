package convert_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"mime/quotedprintable"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// TestLargePartStreams converts a 12 MB quoted-printable ISO-8859-1 part
// to UTF-8 in front of Dovecot's legacy profile (a process of its own, so
// this process's heap is the proxy's and the client's) and checks that the
// proxy's memory stays far below the part's size while it is counted and
// streamed, and that every byte arrives converted.
func TestLargePartStreams(t *testing.T) {
	const lines = 240000 // 50 bytes a line: 12 MB
	line := "Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade: 0123456789\n"
	utf8Line := "Café crème brûlée, naïve façade: 0123456789\r\n"

	var msg strings.Builder
	msg.WriteString("From: a@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	qp := quotedprintable.NewWriter(&msg)
	for i := 0; i < lines; i++ {
		io.WriteString(qp, line)
	}
	qp.Close()
	d := dovecottest.Start(t, dovecottest.Legacy)
	d.Append(t, "alice", "alicepass", "INBOX", nil, []byte(msg.String()))
	msg.Reset()
	want := sha256.New()
	for i := 0; i < lines; i++ {
		io.WriteString(want, utf8Line)
	}
	wantSize := int64(lines * len(utf8Line))

	e := startProxy(t, d.Addr, "alice", "alicepass")
	c := e.login(t)

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()

	for _, item := range []string{"BINARY.SIZE[1]", "BINARY[1]"} {
		c.Write("big CONVERT 1 (\"text/plain\" (\"charset\" \"utf-8\")) " + item + "\r\n")
		r := c.R
		head, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if item == "BINARY.SIZE[1]" {
			if want := fmt.Sprintf("* 1 CONVERTED (TAG \"big\") (BINARY.SIZE[1] %d)\r\n", wantSize); head != want {
				t.Fatalf("got %q, want %q", head, want)
			}
		} else {
			prefix := "* 1 CONVERTED (TAG \"big\") (BINARY[1] {"
			if !strings.HasPrefix(head, prefix) || !strings.HasSuffix(head, "}\r\n") {
				t.Fatalf("got %q", head)
			}
			n, _ := strconv.ParseInt(head[len(prefix):len(head)-3], 10, 64)
			if n != wantSize {
				t.Fatalf("literal of %d bytes, want %d", n, wantSize)
			}
			got := sha256.New()
			if _, err := io.CopyN(got, r, n); err != nil {
				t.Fatal(err)
			}
			if string(got.Sum(nil)) != string(want.Sum(nil)) {
				t.Fatal("converted data differs")
			}
			if rest, _ := r.ReadString('\n'); rest != ")\r\n" {
				t.Fatalf("after the literal: %q", rest)
			}
		}
		if l := c.ReadLine(); l != "big OK CONVERT completed." {
			t.Fatalf("tagged: %q", l)
		}
	}
	close(stop)
	wg.Wait()
	grew := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use grew by %d KiB at most while converting %d KiB", grew>>10, wantSize>>10)
	if grew > 6<<20 {
		t.Fatalf("heap in use grew by %d MiB converting a %d MiB part: not streamed", grew>>20, wantSize>>20)
	}
}
