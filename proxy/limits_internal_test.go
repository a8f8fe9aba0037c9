package proxy

import (
	"net/netip"
	"testing"
)

// TestClientKeyIPv4Mapped: an IPv4 address written as IPv6
// (::ffff:a.b.c.d, as a caller of ServeHandoff or a dual-stack socket may
// give it) is the IPv4 client it names. Taken for IPv6 and cut to its
// /64, every such address was the one key "::": all IPv4 clients shared
// one conns-per-ip count and one failed-login delay.
func TestClientKeyIPv4Mapped(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"::ffff:198.51.100.1", "198.51.100.1"},
		{"::ffff:127.0.0.1", "127.0.0.1"},
		{"198.51.100.1", "198.51.100.1"},
		{"2001:db8:0:1:2:3:4:5", "2001:db8:0:1::"},
		{"fe80::1%eth0", "fe80::"},
		{"::1", "::1"},
	} {
		if got := clientKey(netip.MustParseAddr(tc.in)); got != netip.MustParseAddr(tc.want) {
			t.Errorf("clientKey(%s) = %s; want %s", tc.in, got, tc.want)
		}
	}
	l := newLimiter(AbuseLimits{ConnsPerIP: 1})
	if !l.connect(netip.MustParseAddr("::ffff:198.51.100.1")) {
		t.Fatal("first connection refused")
	}
	if !l.connect(netip.MustParseAddr("::ffff:203.0.113.9")) {
		t.Error("a connection of another IPv4 client refused: counted as the first one's")
	}
}
