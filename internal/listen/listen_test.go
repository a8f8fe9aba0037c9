package listen_test

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/listen"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// serveWith starts a proxy on a PROXY-protocol listener trusting trusted.
func serveWith(t *testing.T, trusted string) string {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	srv, err := proxy.NewServer(proxy.Config{Upstream: upstream.Config{Addr: up.Addr, Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	prefixes, err := listen.ParsePrefixes(trusted)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(listen.ProxyProtocol(ln, prefixes), false) }()
	t.Cleanup(func() {
		srv.Shutdown(t.Context())
		<-done
	})
	return ln.Addr().String()
}

// greeting connects, sends pre (a PROXY header or nothing) and returns the
// server's greeting line.
func greeting(t *testing.T, addr, pre string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if pre != "" {
		c.Write([]byte(pre))
	}
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return l
}

// The proxy allows plaintext LOGIN on loopback only, and says so in its
// greeting: LOGINDISABLED shows whether it believed a PROXY header.
func TestProxyProtocol(t *testing.T) {
	addr := serveWith(t, "127.0.0.0/8")
	// Trusted peer, real client elsewhere: LOGIN is disabled for it.
	g := greeting(t, addr, "PROXY TCP4 203.0.113.7 127.0.0.1 50000 143\r\n")
	if !strings.Contains(g, "LOGINDISABLED") {
		t.Errorf("client behind the balancer: %q", g)
	}
	// Trusted peer, real client on loopback.
	if g := greeting(t, addr, "PROXY TCP4 127.0.0.9 127.0.0.1 50000 143\r\n"); strings.Contains(g, "LOGINDISABLED") || !strings.HasPrefix(g, "* OK") {
		t.Errorf("loopback client behind the balancer: %q", g)
	}
	// Trusted peer without a header: dropped.
	if g := greeting(t, addr, "a1 CAPABILITY\r\n"); strings.HasPrefix(g, "* OK") {
		t.Errorf("trusted peer without a PROXY header was served: %q", g)
	}

	// An untrusted peer's header is not believed.
	addr = serveWith(t, "192.0.2.0/24")
	if g := greeting(t, addr, ""); !strings.HasPrefix(g, "* OK") || strings.Contains(g, "LOGINDISABLED") {
		t.Errorf("untrusted loopback client: %q", g)
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := listen.ParsePrefixes(" 10.0.0.0/8, 192.0.2.7 ,::1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("::1/128")}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: %v, want %v", i, got[i], want[i])
		}
	}
	if _, err := listen.ParsePrefixes("10.0.0.0/33"); err == nil {
		t.Error("bad prefix accepted")
	}
}

// TestProxyProtocolSilentPeer: a trusted balancer connection that sends
// nothing holds up no one: the next client's greeting comes at once,
// Stats answers, and Shutdown does not wait for the PROXY header's
// 5-second timeout (issue #16 item 7: the header was read in the accept
// loop under the server's lock, delaying every new connection by up to
// 5 s).
func TestProxyProtocolSilentPeer(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	srv, err := proxy.NewServer(proxy.Config{Upstream: upstream.Config{Addr: up.Addr, Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(listen.ProxyProtocol(ln, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), false)
	}()
	addr := ln.Addr().String()

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(50 * time.Millisecond) // let the proxy accept it first
	start := time.Now()
	g := greeting(t, addr, "PROXY TCP4 127.0.0.9 127.0.0.1 50000 143\r\n")
	if el := time.Since(start); !strings.HasPrefix(g, "* OK") || el > time.Second {
		t.Errorf("greeting %q after %v behind a silent balancer connection", g, el)
	}
	start = time.Now()
	srv.Stats()
	if el := time.Since(start); el > time.Second {
		t.Errorf("Stats took %v", el)
	}
	start = time.Now()
	if err := srv.Shutdown(t.Context()); err != nil {
		t.Error(err)
	}
	<-done
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Shutdown took %v with a PROXY header pending", el)
	}
}
