package integration

import (
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestNotifySetDuringGrace: a NOTIFY SET that comes while the account's
// watcher, left without subscribers (by NOTIFY NONE here, or by another
// session's), waits out its grace period joins it after a poll that starts
// then. The grace period ended during that poll and stopped the watcher
// under it: NOTIFY SET was answered NO [UNAVAILABLE]. The test holds the
// poll's LSUB answer until the grace period is well over.
func TestNotifySetDuringGrace(t *testing.T) {
	e := ntStartDovecot(t, dovecottest.Legacy, 1)
	fn := faultnet.Start(t, e.dc.Addr)
	const grace = 300 * time.Millisecond
	ext := notify.New(notify.Config{Accounts: accountwatch.Config{PollInterval: time.Hour, Grace: grace}})
	addr, _ := startProxy(t, fn.Addr(), func(c *proxy.Config) {
		c.Extensions = []proxy.Extension{idle.New(), condstore.New(), ext}
	})
	px := &ntProxy{addr: addr, ext: ext}
	u := e.user(t)
	c := px.login(t, u)
	c.MustOK("NOTIFY SET (personal (MailboxName))")
	hold := fn.Add(faultnet.Fault{Match: []byte(`LSUB "" "*"`), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient, Action: faultnet.Hold})
	c.MustOK("NOTIFY NONE")
	c.Write("n1 NOTIFY SET (personal (MailboxName))\r\n")
	waitFault(t, hold)
	c.silent(3 * grace)
	hold.Release()
	c.expect("n1 OK NOTIFY completed.")
	px.login(t, u).MustOK("CREATE After") // a poke: the poll interval is long
	c.expect(`* LIST ` + e.leaf() + ` "." After`)
}
