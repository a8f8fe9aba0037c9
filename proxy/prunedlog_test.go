package proxy_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// TestDeliverAfterPrunedLog: when the expunge log is pruned past what a
// session's client was told (here: four expunges in one batch, a bound of
// two), the session still reports every expunge, found by comparing the
// client's view with the mailbox; before, it reported only those left in
// the log and the client's sequence numbers went wrong.
func TestDeliverAfterPrunedLog(t *testing.T) {
	up := startUpstream(t, memupstream.Options{}, "u", "p")
	for i := 0; i < 5; i++ {
		if err := up.Append("u", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := baseConfig(up.Addr)
	cfg.Hub.ExpungeLog = syncstate.LogLimits{MaxExpunges: 2}
	p := startProxy(t, cfg)
	a := imaptest.Login(t, p.Addr, "u", "p")
	a.MustOK("SELECT INBOX")
	b := imaptest.Login(t, p.Addr, "u", "p")
	b.MustOK("SELECT INBOX")
	b.MustOK(`STORE 1:4 +FLAGS.SILENT (\Deleted)`)
	b.MustOK("EXPUNGE")
	var expunges []string
	for _, l := range a.MustOK("NOOP") {
		if strings.HasSuffix(l, " EXPUNGE") {
			expunges = append(expunges, l)
		}
	}
	if want := "* 4 EXPUNGE,* 3 EXPUNGE,* 2 EXPUNGE,* 1 EXPUNGE"; strings.Join(expunges, ",") != want {
		t.Fatalf("expunges told: %q, want %q", expunges, want)
	}
	if got := a.MustOK("FETCH 1:* (UID)"); len(got) != 2 || got[0] != "* 1 FETCH (UID 5)" {
		t.Fatalf("after the expunges: %q, want message 1 to be UID 5", got)
	}
}

// prunedPastExpunges starts an upstream with four messages in INBOX and a
// proxy (exts, then condstore) whose expunge log keeps one expunge and
// whose watcher looks only when asked. A QRESYNC client learns the
// mailbox's HIGHESTMODSEQ h0; messages 1-3 are expunged outside; a second
// QRESYNC client, returned with INBOX selected, finds the log pruned past
// h0.
func prunedPastExpunges(t *testing.T, exts ...proxy.Extension) (up *memupstream.Server, h0 string, d *client) {
	t.Helper()
	up = startUpstream(t, memupstream.Options{}, "u", "p")
	for range 4 {
		if err := up.Append("u", "INBOX", nil, []byte("Subject: m\r\n\r\nHello.\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := baseConfig(up.Addr)
	cfg.Hub = hub.Config{PollInterval: time.Hour, ExpungeLog: syncstate.LogLimits{MaxExpunges: 1}}
	cfg.Extensions = append(append(cfg.Extensions, exts...), condstore.New())
	p := startProxy(t, cfg)
	c := imaptest.Login(t, p.Addr, "u", "p")
	c.MustOK("ENABLE QRESYNC")
	for _, l := range c.MustOK("SELECT INBOX") {
		if rest, ok := strings.CutPrefix(l, "* OK [HIGHESTMODSEQ "); ok {
			h0, _, _ = strings.Cut(rest, "]")
		}
	}
	if h0 == "" {
		t.Fatal("no HIGHESTMODSEQ")
	}
	outside := imaptest.Login(t, up.Addr, "u", "p")
	outside.MustOK("SELECT INBOX")
	outside.MustOK(`UID STORE 1:3 +FLAGS.SILENT (\Deleted)`)
	outside.MustOK("EXPUNGE")
	d = imaptest.Login(t, p.Addr, "u", "p")
	d.MustOK("ENABLE QRESYNC")
	d.MustOK("SELECT INBOX") // after the watcher's round trip: the log pruned
	return up, h0, d
}

// TestChangedSinceVanishedAfterPrunedLog: UID FETCH ... (CHANGEDSINCE m
// VANISHED) from a mod-sequence the expunge log was pruned past (a bound
// of one expunge, three made outside) took its VANISHED (EARLIER) from
// the log alone and reported nothing: the client kept three messages
// that were gone. It now reports the UIDs asked for that the mailbox does
// not have, as a QRESYNC SELECT from the same mod-sequence does.
func TestChangedSinceVanishedAfterPrunedLog(t *testing.T) {
	_, h0, d := prunedPastExpunges(t)
	for _, set := range []string{"1:*", "2:3", "*"} {
		var vanished []string
		for _, l := range d.MustOK("UID FETCH " + set + " (UID) (CHANGEDSINCE " + h0 + " VANISHED)") {
			if strings.HasPrefix(l, "* VANISHED") {
				vanished = append(vanished, l)
			}
		}
		want := map[string]string{"1:*": "* VANISHED (EARLIER) 1:3", "2:3": "* VANISHED (EARLIER) 2:3", "*": ""}[set]
		if got := strings.Join(vanished, ","); got != want {
			t.Errorf("UID FETCH %s (CHANGEDSINCE %s VANISHED): %q, want %q", set, h0, got, want)
		}
	}
}

// beforeCommand is an extension that runs a function, once, as a command
// it names reaches it, before the extensions after it and the core.
type beforeCommand struct {
	names []string
	mu    sync.Mutex
	run   func(s *proxy.Session)
}

func (*beforeCommand) Name() string         { return "beforecommand" }
func (b *beforeCommand) Commands() []string { return b.names }
func (b *beforeCommand) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	b.mu.Lock()
	f := b.run
	b.run = nil
	b.mu.Unlock()
	if f != nil {
		f(x.Session())
	}
	return next(ctx, x)
}

// TestChangedSinceVanishedKeepsNewMessage: the fix above took every UID up
// to the largest the state knew that the client's view lacks for gone;
// a message the watcher recorded after the delivery that precedes the
// command is one of those, and was told vanished, then told to exist in
// the same answer (a second reviewer's finding).
func TestChangedSinceVanishedKeepsNewMessage(t *testing.T) {
	bc := &beforeCommand{names: []string{"UID FETCH"}}
	up, h0, d := prunedPastExpunges(t, bc)
	bc.mu.Lock()
	bc.run = func(s *proxy.Session) {
		if err := up.Append("u", "INBOX", nil, []byte("Subject: new\r\n\r\nNew.\r\n")); err != nil {
			t.Error(err)
		}
		if err := s.Mailbox().Sync(context.Background(), 5*time.Second); err != nil {
			t.Error(err)
		}
	}
	bc.mu.Unlock()
	lines := d.MustOK("UID FETCH 1:* (UID) (CHANGEDSINCE " + h0 + " VANISHED)")
	imaptest.AssertLines(t, "UID FETCH with UID 5 appended during it", lines,
		[]string{"* VANISHED (EARLIER) 1:3", "* 2 EXISTS", "* 1 RECENT", "*"})
}
