package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestBulkDownloadSplice: mbsync pulls a mailbox of messages larger than
// the proxy holds in memory (64 KiB) through the proxy in front of
// Dovecot's Legacy profile, and every message arrives byte for byte.
// Without COMPRESS the bodies move from Dovecot's socket to mbsync's by
// splice(2) (the proxy's counters say so); with COMPRESS, which mbsync
// turns on when offered, they are copied through the compressor.
func TestBulkDownloadSplice(t *testing.T) {
	mbsync := requireTool(t, "mbsync")
	dc := dovecottest.Start(t, dovecottest.Legacy)
	want := map[string][]byte{}
	dc.FillMailbox(t, "alice", "Bulk", 12, func(i int) []byte {
		m, _ := imaptest.TextMessage(70<<10+i*23<<10, uint64(i+1))
		want[fmt.Sprintf("<text%d@example.org>", i+1)] = m
		return m
	})
	tuid := regexp.MustCompile(`(?m)^X-TUID: .*\n`)
	for _, tc := range []struct {
		name     string
		compress bool
	}{{"plain", false}, {"COMPRESS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := proxy.Config{Upstream: upstream.Config{Timeout: 10 * time.Second}}
			if tc.compress {
				cfg.Extensions = []proxy.Extension{compress.New()}
			}
			p := imaptest.StartProxy(t, dc.Addr, cfg)
			cmd := bulkMbsync(t, mbsync, p.Addr, nil)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("mbsync: %v\n%s", err, out)
			}
			got := map[string][]byte{}
			filepath.Walk(cmd.Dir, func(path string, info os.FileInfo, err error) error {
				if err != nil || info.IsDir() || !strings.Contains(path, "/cur/") && !strings.Contains(path, "/new/") {
					return nil
				}
				b, _ := os.ReadFile(path)
				b = tuid.ReplaceAll(b, nil) // mbsync's own header
				for id := range want {
					if bytes.Contains(b, []byte("Message-ID: "+id+"\n")) {
						got[id] = b
					}
				}
				return nil
			})
			for id, m := range want {
				// mbsync stores messages with LF line ends.
				lf := bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))
				if !bytes.Equal(got[id], lf) {
					i := 0
					for i < min(len(got[id]), len(lf)) && got[id][i] == lf[i] {
						i++
					}
					t.Errorf("message %s: synced copy differs from byte %d (%d bytes, want %d): %q, want %q", id, i, len(got[id]), len(lf), got[id][i:min(i+40, len(got[id]))], lf[i:min(i+40, len(lf))])
				}
			}
			st := p.Srv.Stats()
			t.Logf("literal bytes spliced %d, copied %d", st.LiteralBytesSpliced, st.LiteralBytesCopied)
			if tc.compress && (st.LiteralBytesSpliced != 0 || st.LiteralBytesCopied == 0) {
				t.Errorf("with COMPRESS: %d bytes spliced, %d copied; want all copied", st.LiteralBytesSpliced, st.LiteralBytesCopied)
			}
			if !tc.compress && (st.LiteralBytesSpliced == 0 || st.LiteralBytesCopied != 0) {
				t.Errorf("plain: %d bytes spliced, %d copied; want all spliced", st.LiteralBytesSpliced, st.LiteralBytesCopied)
			}
		})
	}
}
