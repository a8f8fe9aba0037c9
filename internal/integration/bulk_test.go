package integration

import (
	"fmt"
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
			m := bulkMbsync(t, mbsync, p.Addr)
			if out, err := m.command(nil, false).CombinedOutput(); err != nil {
				t.Fatalf("mbsync: %v\n%s", err, out)
			}
			m.checkSynced(want)
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
