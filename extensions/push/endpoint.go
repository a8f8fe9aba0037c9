package push

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The HTTP side every channel shares: which endpoints may be contacted,
// and a client that holds to it. A push endpoint may come from a client
// (a Web Push subscription names any URL), so without a policy the proxy
// would POST wherever a user asks, inside the operator's network too
// (server-side request forgery). The policy is checked twice: on the URL
// when a registration arrives (a clear refusal, nothing stored), and on
// every address the client connects to, in the dialer itself, after name
// resolution: a name that resolved to a public address at registration
// and to 127.0.0.1 later (DNS rebinding) is refused at connect time.

// ErrEndpoint refuses an endpoint the policy does not allow.
var ErrEndpoint = errors.New("push: endpoint not allowed")

// Default limits of EndpointPolicy.
const (
	DefaultHTTPTimeout = 30 * time.Second
	DefaultMaxResponse = 64 << 10
	// MaxURL bounds an endpoint URL (RFC 8030 endpoints are well under 1 KiB).
	MaxURL = 2048
)

// EndpointPolicy says which HTTP endpoints push may contact. The zero
// value is the production policy: https only, public addresses only.
type EndpointPolicy struct {
	// AllowPrivate allows loopback, private (RFC 1918, RFC 4193),
	// link-local, shared (RFC 6598) and other non-public addresses, and
	// plain http to loopback addresses: for tests, or for an operator
	// whose push service runs inside their own network.
	AllowPrivate bool
	// Timeout bounds one request, from dial to the end of the body.
	// Default 30 s.
	Timeout time.Duration
	// MaxResponse bounds the response body read (the rest is discarded
	// and the connection closed). Default 64 KiB.
	MaxResponse int64
}

func (p EndpointPolicy) withDefaults() EndpointPolicy {
	if p.Timeout <= 0 {
		p.Timeout = DefaultHTTPTimeout
	}
	if p.MaxResponse <= 0 {
		p.MaxResponse = DefaultMaxResponse
	}
	return p
}

// CheckURL parses an endpoint URL and checks it against the policy: an
// absolute https URL (http only to a loopback address where AllowPrivate)
// with a host, no user information, no fragment, a numeric port if any,
// at most MaxURL bytes, and a host that is not a non-public address (IP
// literals are checked here, names when the client connects; "localhost"
// is refused by name). Errors wrap ErrEndpoint and say why.
func (p EndpointPolicy) CheckURL(raw string) (*url.URL, error) {
	if len(raw) > MaxURL {
		return nil, fmt.Errorf("%w: URL longer than %d bytes", ErrEndpoint, MaxURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEndpoint, err)
	}
	switch {
	case u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%w: not an absolute URL with a host", ErrEndpoint)
	case u.User != nil:
		return nil, fmt.Errorf("%w: user information in the URL", ErrEndpoint)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return nil, fmt.Errorf("%w: fragment in the URL", ErrEndpoint)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%w: bad port %q", ErrEndpoint, port)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, fmt.Errorf("%w: empty port", ErrEndpoint)
	}
	host := u.Hostname()
	addr, isIP := parseHost(host)
	if !isIP && strings.ContainsAny(host, "%[]") {
		return nil, fmt.Errorf("%w: bad host %q", ErrEndpoint, host)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !p.AllowPrivate || !(isIP && addr.IsLoopback() || isLocalhost(host)) {
			return nil, fmt.Errorf("%w: not https (plain http only to a loopback address, for tests)", ErrEndpoint)
		}
	default:
		return nil, fmt.Errorf("%w: scheme %q is not https", ErrEndpoint, u.Scheme)
	}
	if p.AllowPrivate {
		return u, nil
	}
	if isIP {
		if err := CheckAddr(addr); err != nil {
			return nil, err
		}
	} else if isLocalhost(host) {
		return nil, fmt.Errorf("%w: %s is a loopback name", ErrEndpoint, host)
	}
	return u, nil
}

// parseHost reads an IP literal host (without zone: a zone names an
// interface of this machine).
func parseHost(host string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// isLocalhost reports names that resolve to loopback by convention (RFC
// 6761 6.3), however the resolver is set up.
func isLocalhost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// nonPublic lists the ranges CheckAddr refuses beyond netip's own
// classes (loopback, private, link-local, multicast, unspecified).
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network" (RFC 1122)
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space, carrier NAT (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation (RFC 5737)
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast (RFC 7526)
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking (RFC 2544)
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and the broadcast address
	netip.MustParsePrefix("::/8"),            // IPv4-compatible, NAT64 (64:ff9b::/96) and other reserved
	netip.MustParsePrefix("100::/64"),        // discard-only (RFC 6666)
	netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments: Teredo, ORCHID, benchmarking (RFC 6890)
	netip.MustParsePrefix("2001:db8::/32"),   // documentation (RFC 3849)
	netip.MustParsePrefix("2002::/16"),       // 6to4: an IPv4 address inside
	netip.MustParsePrefix("3fff::/20"),       // documentation (RFC 9637)
	netip.MustParsePrefix("5f00::/16"),       // segment routing (RFC 9602)
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
}

// CheckAddr refuses an address that is not a public unicast address:
// loopback, private, link-local, multicast, unspecified and the ranges of
// nonPublic. Addresses that embed an IPv4 address (6to4, NAT64, Teredo,
// IPv4-compatible) are refused outright rather than judged by the address
// inside: a push service has no reason to be reached through them. The
// error wraps ErrEndpoint.
func CheckAddr(a netip.Addr) error {
	a = a.Unmap()
	if !a.IsValid() || a.Zone() != "" {
		return fmt.Errorf("%w: no address", ErrEndpoint)
	}
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return fmt.Errorf("%w: %s is not a public address", ErrEndpoint, a)
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return fmt.Errorf("%w: %s is not a public address (%s)", ErrEndpoint, a, p)
		}
	}
	return nil
}

// control is the dialer's check of every address it connects to, after
// name resolution.
func (p EndpointPolicy) control(network, address string, _ syscall.RawConn) error {
	if p.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot read the address %q", ErrEndpoint, address)
	}
	return CheckAddr(ap.Addr())
}

// Client is an HTTP client that holds to an EndpointPolicy: every request's
// URL is checked (CheckURL), every connection's address too (in the
// dialer, after resolution, so DNS cannot point it elsewhere), redirects
// are not followed (a 3xx is an answer, not a new endpoint), no proxy from
// the environment is used (it would connect for us, past the dialer's
// check), requests are bounded by the policy's Timeout and responses by
// its MaxResponse. Safe for concurrent use; one per channel keeps its
// connections to the push services alive between pushes.
type Client struct {
	policy EndpointPolicy
	hc     *http.Client
}

// NewClient returns a client for the policy.
func (p EndpointPolicy) NewClient() *Client {
	p = p.withDefaults()
	dialer := &net.Dialer{Timeout: min(p.Timeout, 10*time.Second), Control: p.control}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    min(p.Timeout, 10*time.Second),
		ResponseHeaderTimeout:  p.Timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 16 << 10,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &Client{policy: p, hc: &http.Client{
		Transport: tr,
		Timeout:   p.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// HTTPClient returns the client's *http.Client, for a channel that makes
// its requests itself (webpush's Sender): every connection's address is
// still checked by the dialer, no proxy from the environment is used,
// redirects are not followed, and the policy's Timeout bounds each
// request; the URL check (CheckURL, at registration) and the bound on
// answers are then the channel's.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// Response is an HTTP response read whole (up to the policy's MaxResponse).
type Response struct {
	StatusCode int
	Header     http.Header
	Body       []byte
}

// Do checks req's URL, sends it and reads the response body (at most
// MaxResponse bytes; a longer body is an error). A refused URL or address
// wraps ErrEndpoint.
func (c *Client) Do(req *http.Request) (*Response, error) {
	if _, err := c.policy.CheckURL(req.URL.String()); err != nil {
		return nil, err
	}
	return c.do(req)
}

// do sends without the URL check (tests of the dialer's check).
func (c *Client) do(req *http.Request) (*Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		// Not the URL: a Web Push endpoint's path is a capability.
		return nil, fmt.Errorf("push: %s to %s: %w", req.Method, req.URL.Host, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.policy.MaxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("push: reading the answer of %s: %w", req.URL.Host, err)
	}
	if int64(len(body)) > c.policy.MaxResponse {
		return nil, fmt.Errorf("push: the answer of %s is larger than %d bytes", req.URL.Host, c.policy.MaxResponse)
	}
	return &Response{StatusCode: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// unwrapURL drops url.Error's quoting of the whole URL, which may hold a
// secret path (a Web Push endpoint is a capability).
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// CloseIdle closes the client's idle connections.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

// Post sends body to endpoint with the given headers (Content-Type among
// them) under ctx; see Do.
func (c *Client) Post(ctx context.Context, endpoint string, header http.Header, body []byte) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEndpoint, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return c.Do(req)
}

// Outcome sorts a push service's answer for the queue: nil for 2xx;
// ErrGone for 404 and 410 (the registration no longer exists: RFC 8030
// 7.3, and chatmail's notification proxy); a *RetryError for 408, 425,
// 429 and 5xx (with the Retry-After the service asked for); ErrRejected
// for any other status (the service refused this push for good: a bad
// token, a payload too large; retrying would not help).
func Outcome(r *Response) error {
	switch code := r.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusNotFound || code == http.StatusGone:
		return fmt.Errorf("%w: HTTP %d", ErrGone, code)
	case code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests || code >= 500:
		return &RetryError{Err: fmt.Errorf("push: HTTP %d", code), After: retryAfter(r.Header.Get("Retry-After"))}
	default:
		return fmt.Errorf("%w: HTTP %d %s", ErrRejected, code, snippet(r.Body))
	}
}

// snippet is the start of a body for a log line, printable ASCII only.
func snippet(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	out := []byte{}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '.'
		}
		out = append(out, c)
	}
	return strconv.Quote(string(out))
}

// retryAfter reads a Retry-After header (seconds, or an HTTP date); 0
// when absent or unreadable, at most an hour.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), time.Hour)
}

// RetryError is a failure worth retrying, after at least After (0: the
// queue's own backoff).
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return e.Err.Error() }
func (e *RetryError) Unwrap() error { return e.Err }
