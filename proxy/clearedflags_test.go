package proxy_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// duringFetch is a ChangeReporter that runs a function, once, while the
// core translates the answer to a client's FETCH (the first answer it adds
// items to): what the function does happens while that FETCH is in
// flight, after the core reported what it knew before the command.
type duringFetch struct {
	mu  sync.Mutex
	run func(s *proxy.Session)
}

func (*duringFetch) Name() string { return "duringfetch" }

func (d *duringFetch) FetchItems(s *proxy.Session, _ uint32, unsolicited bool) []byte {
	d.mu.Lock()
	f := d.run
	if !unsolicited {
		d.run = nil
	}
	d.mu.Unlock()
	if f != nil && !unsolicited {
		f(s)
	}
	return nil
}

func (*duringFetch) ReportExpunged(_ *proxy.Session, b []byte, _, _ []uint32) ([]byte, bool) {
	return b, false
}
func (*duringFetch) ExpungesHeld(*proxy.Session) []byte { return nil }
func (*duringFetch) BatchDone(_ *proxy.Session, _ *proxy.Exchange, b []byte, _ bool) []byte {
	return b
}

// TestChangeToNoFlagsDuringFetch: another client removes every flag of
// message 1 while this client's FETCH of message 2's flags is in flight;
// the change reaches the state before the FETCH's tagged answer, which
// must report it. The core skips, in that report, the flags the command's
// own answers just told the client, and it looked them up by UID in a map
// whose missing entries read as "": a message whose flags became the empty
// list was taken for one the answer had told, and the client never heard
// of the change (load's TestMixed: a QRESYNC client kept \Seen on a message
// that had no flags any more, and no later push or resync from its
// mod-sequence could repair it).
func TestChangeToNoFlagsDuringFetch(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "u", "p")
	for range 2 {
		if err := up.Append("u", "INBOX", []imap.Flag{imap.FlagSeen}, []byte("Subject: m\r\n\r\nHello.\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	d := &duringFetch{}
	cfg := baseConfig(up.Addr)
	cfg.Extensions = append(cfg.Extensions, d)
	// The watcher looks only when asked: the change reaches the state by
	// the round trip below, at a known point.
	cfg.Hub = hub.Config{PollInterval: time.Hour}
	p := startProxy(t, cfg)
	outside := imaptest.Login(t, up.Addr, "u", "p")
	outside.MustOK("SELECT INBOX")

	for _, tc := range []struct {
		store, want string
	}{
		{`(\Flagged)`, `* 1 FETCH (FLAGS (\Flagged))`},
		{`()`, `* 1 FETCH (FLAGS ())`},
	} {
		c := imaptest.Login(t, p.Addr, "u", "p")
		c.MustOK("SELECT INBOX")
		d.mu.Lock()
		d.run = func(s *proxy.Session) {
			// On the session's goroutine: no Fatal here.
			if l := outside.Cmd("UID STORE 1 FLAGS.SILENT " + tc.store); !strings.HasPrefix(imaptest.Tagged(l), "OK") {
				t.Errorf("outside STORE: %q", l)
			}
			if err := s.Mailbox().Sync(context.Background(), 5*time.Second); err != nil {
				t.Error(err)
			}
		}
		d.mu.Unlock()
		lines := c.MustOK("FETCH 2 (FLAGS)")
		if !slices.Contains(lines, `* 2 FETCH (FLAGS (\Seen))`) || !slices.Contains(lines, tc.want) {
			t.Errorf("STORE 1 FLAGS %s made during FETCH 2 (FLAGS): answered %q, want %q among them", tc.store, lines, tc.want)
		}
		c.MustOK("LOGOUT")
		outside.MustOK(`UID STORE 1 FLAGS.SILENT (\Seen)`)
	}
}
