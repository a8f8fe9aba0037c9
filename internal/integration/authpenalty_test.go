package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestDovecotAuthPenaltyPerClient: Dovecot slows down every login from
// an address after failed ones (its auth penalty, on by default: 4.5 s
// after one failure, 8 s after two), and every login through the proxy
// came from the proxy's address, so two wrong passwords of one client
// delayed another client's right password by 8 s; login_trusted_networks
// alone does not exempt it (Dovecot 2.3.19). With
// upstream-forward-client-ip the proxy tells Dovecot each login's client
// address (ID x-originating-ip), which a Dovecot that trusts the proxy
// logs and keeps its penalty by.
func TestDovecotAuthPenaltyPerClient(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{AuthPenalty: true, LoginTrustedNetworks: "127.0.0.0/8"})
	var n atomic.Int32
	p := imaptest.StartProxy(t, dc.Addr, proxy.Config{
		Upstream:           upstream.Config{Timeout: 30 * time.Second, ForwardClientAddr: true},
		AllowPlaintextAuth: true,
		AuthFailureDelay:   10 * time.Millisecond,
		LoginCacheWindow:   -1,
	}, imaptest.RemoteIPFunc(func() net.IP { return net.IPv4(198, 51, 100, byte(n.Add(1))) }))
	for i := range 2 {
		c := dialRaw(t, p.Addr)
		c.ExpectDo("a", fmt.Sprintf("LOGIN alice wrong%d", i), "a NO [AUTHENTICATIONFAILED] Authentication failed.")
		c.Close()
	}
	c := dialRaw(t, p.Addr)
	start := time.Now()
	c.LoginTagged("bob", "bobpass")
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("bob's login after two failures of another client took %v; want no penalty of the proxy's address", el)
	}
	// Dovecot's log process writes the line after the login is answered:
	// it is waited for, not expected at once.
	const want = "Login: user=<bob>, method=PLAIN, rip=198.51.100.3,"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		log, err := os.ReadFile(filepath.Join(dc.Dir, "dovecot.log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(log), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot did not log bob's client address 198.51.100.3:\n%s", log)
		}
	}
}
