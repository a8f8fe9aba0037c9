package binary_test

import (
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// BenchmarkFetch20MB fetches a 20 MB base64 attachment through the proxy
// in front of go-imap's in-memory server: BODY.PEEK[2] (relayed, the
// encoded 27 MB) beside BINARY.PEEK[2] (synthesized, decoded 20 MB; the
// first fetch counts in a first pass, later ones take the size from the
// cache) and BINARY.SIZE[2] (cached after the first).
func BenchmarkFetch20MB(b *testing.B) {
	att := attachment(20 << 20)
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		b.Fatal(err)
	}
	if err := up.Append("alice", "INBOX", nil, []byte(mixed(att))); err != nil {
		b.Fatal(err)
	}
	p := imaptest.StartProxy(b, up.Addr, proxy.Config{Extensions: []proxy.Extension{binary.New()}})
	c := imaptest.Login(b, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	for _, tc := range []struct{ name, item string }{
		{"BODY", "BODY.PEEK[2]"},
		{"BINARY", "BINARY.PEEK[2]"},
		{"BINARY.SIZE", "BINARY.SIZE[2]"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var n int64
			for b.Loop() {
				n = fetchDiscard(b, c, "FETCH 1 ("+tc.item+")")
			}
			b.SetBytes(n)
		})
	}
}

// fetchDiscard runs a FETCH and reads its answer without keeping the
// literal; it returns the literal's size.
func fetchDiscard(b *testing.B, c *imaptest.Client, cmd string) int64 {
	tag := "b" + strconv.Itoa(b.N)
	c.Write(tag + " " + cmd + "\r\n")
	r := c.R
	var size int64
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if i := strings.LastIndexByte(line, '{'); i >= 0 && strings.HasSuffix(line, "}\r\n") {
			n, err := strconv.ParseInt(line[i+1:len(line)-3], 10, 64)
			if err != nil {
				b.Fatalf("%q", line)
			}
			size = n
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				b.Fatal(err)
			}
			continue
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				b.Fatalf("%s: %s", cmd, line)
			}
			return size
		}
	}
}
