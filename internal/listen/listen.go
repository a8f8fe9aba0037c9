// Package listen prepares the proxy's client listeners.
package listen

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// ParsePrefixes parses a comma-separated list of CIDR prefixes or single
// addresses ("10.0.0.0/8, 192.0.2.7").
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("listen: bad address %q: %w", f, err)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("listen: bad prefix %q: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ProxyProtocol wraps ln so that connections from the trusted load
// balancers must start with a PROXY protocol header (v1 or v2), whose
// client address then becomes the connection's RemoteAddr: logs, the
// loopback check for plaintext logins and per-address limits see the real
// client. Connections from anywhere else are served as they are, and a
// PROXY header they send is not believed. A trusted peer that sends no
// valid header within 5 seconds is dropped.
func ProxyProtocol(ln net.Listener, trusted []netip.Prefix) net.Listener {
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: 5 * time.Second,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if ap, err := netip.ParseAddrPort(o.Upstream.String()); err == nil {
				a := ap.Addr().Unmap()
				for _, p := range trusted {
					if p.Contains(a) {
						return proxyproto.REQUIRE, nil
					}
				}
			}
			return proxyproto.SKIP, nil
		},
	}
}
