package push

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestCheckURL: the endpoints a registration may name.
func TestCheckURL(t *testing.T) {
	strict, lax := EndpointPolicy{}, EndpointPolicy{AllowPrivate: true}
	for _, tc := range []struct {
		url        string
		strict, ok bool // allowed by the production policy; by the lax one
	}{
		{"https://push.example.org/send/abc", true, true},
		{"https://push.example.org:8443/x", true, true},
		{"https://93.184.216.34/x", true, true},
		{"https://[2606:2800:220:1:248:1893:25c8:1946]/x", true, true},
		{"http://push.example.org/x", false, false},
		{"http://127.0.0.1:8080/x", false, true},
		{"http://[::1]:8080/x", false, true},
		{"http://localhost:8080/x", false, true},
		{"http://10.0.0.1/x", false, false}, // plain http only to loopback
		{"https://127.0.0.1/x", false, true},
		{"https://127.1.2.3/x", false, true},
		{"https://localhost/x", false, true},
		{"https://a.localhost./x", false, true},
		{"https://10.1.2.3/x", false, true},
		{"https://172.16.0.1/x", false, true},
		{"https://192.168.1.1/x", false, true},
		{"https://169.254.169.254/latest/meta-data", false, true},
		{"https://100.64.0.1/x", false, true},
		{"https://0.0.0.0/x", false, true},
		{"https://[::]/x", false, true},
		{"https://[::1]/x", false, true},
		{"https://[fe80::1]/x", false, true},
		{"https://[fd00::1]/x", false, true},
		{"https://[::ffff:127.0.0.1]/x", false, true},
		{"https://[::ffff:10.0.0.1]/x", false, true},
		{"https://[64:ff9b::a00:1]/x", false, true},
		{"https://[2002:a00:1::]/x", false, true},
		{"https://224.0.0.1/x", false, true},
		{"https://255.255.255.255/x", false, true},
		{"https://[fe80::1%25eth0]/x", false, false},
		{"https://user:pw@push.example.org/x", false, false},
		{"https://push.example.org/x#frag", false, false},
		{"https://push.example.org:0/x", false, false},
		{"https://push.example.org:99999/x", false, false},
		{"https://push.example.org:/x", false, false},
		{"ftp://push.example.org/x", false, false},
		{"file:///etc/passwd", false, false},
		{"javascript:alert(1)", false, false},
		{"/relative", false, false},
		{"https:///nohost", false, false},
		{"https://push.example.org/" + strings.Repeat("a", MaxURL), false, false},
		{"https://exa mple.org/", false, false},
	} {
		for _, p := range []struct {
			policy EndpointPolicy
			want   bool
		}{{strict, tc.strict}, {lax, tc.ok}} {
			_, err := p.policy.CheckURL(tc.url)
			if (err == nil) != p.want {
				t.Errorf("CheckURL(%q) with AllowPrivate=%v: %v; want allowed=%v", tc.url, p.policy.AllowPrivate, err, p.want)
			}
			if err != nil && !errors.Is(err, ErrEndpoint) {
				t.Errorf("CheckURL(%q): %v does not wrap ErrEndpoint", tc.url, err)
			}
		}
	}
}

// TestCheckAddr: the address classes refused at connect time.
func TestCheckAddr(t *testing.T) {
	for _, a := range []string{"8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2a00:1450:4001:82b::200e"} {
		if err := CheckAddr(netip.MustParseAddr(a)); err != nil {
			t.Errorf("%s refused: %v", a, err)
		}
	}
	for _, a := range []string{"127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254", "100.64.0.1",
		"0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "224.0.0.1",
		"::", "::1", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:192.168.1.1",
		"64:ff9b::7f00:1", "2002:7f00:1::1", "2001::1", "2001:db8::1", "fec0::1", "::127.0.0.1"} {
		if err := CheckAddr(netip.MustParseAddr(a)); !errors.Is(err, ErrEndpoint) {
			t.Errorf("%s allowed (%v)", a, err)
		}
	}
	if err := CheckAddr(netip.Addr{}); err == nil {
		t.Error("the zero address allowed")
	}
}

// TestClientRefusesAtConnect: whatever a URL looks like, the client
// connects to no loopback or private address under the production
// policy: the check is in the dialer, after resolution (a name that
// resolves there, by DNS rebinding or otherwise, is refused the same).
func TestClientRefusesAtConnect(t *testing.T) {
	hit := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit <- struct{}{} }))
	defer srv.Close()
	c := EndpointPolicy{}.NewClient()
	defer c.CloseIdle()
	port := srv.URL[strings.LastIndexByte(srv.URL, ':'):]
	for _, u := range []string{srv.URL, "http://localhost" + port} {
		req, _ := http.NewRequest(http.MethodPost, u, nil)
		_, err := c.do(req) // past CheckURL: only the dialer stands in the way
		if !errors.Is(err, ErrEndpoint) {
			t.Errorf("%s: %v; want ErrEndpoint", u, err)
		}
		if err == nil {
			t.Errorf("%s: connected", u)
		}
		if strings.Contains(err.Error(), "/") && strings.Contains(err.Error(), u) {
			t.Errorf("%s: the error shows the URL: %v", u, err)
		}
	}
	// And Do checks the URL first.
	req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
	if _, err := c.Do(req); !errors.Is(err, ErrEndpoint) {
		t.Errorf("Do(%s): %v", srv.URL, err)
	}
	select {
	case <-hit:
		t.Fatal("the loopback server was reached")
	default:
	}
}

// TestClientBounds: redirects are answers, not followed; a body over
// MaxResponse is an error; a slow server times out.
func TestClientBounds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, "http://169.254.169.254/", http.StatusFound)
		case "/big":
			w.Write([]byte(strings.Repeat("x", 2000)))
		case "/slow":
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		default:
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte("ok"))
		}
	}))
	defer srv.Close()
	c := EndpointPolicy{AllowPrivate: true, MaxResponse: 1000, Timeout: 300 * time.Millisecond}.NewClient()
	defer c.CloseIdle()
	ctx := context.Background()
	r, err := c.Post(ctx, srv.URL+"/redirect", nil, []byte("tok"))
	if err != nil || r.StatusCode != http.StatusFound {
		t.Fatalf("redirect: %v %v", r, err)
	}
	if err := Outcome(r); !errors.Is(err, ErrRejected) {
		t.Errorf("a redirect's outcome: %v", err)
	}
	if _, err := c.Post(ctx, srv.URL+"/big", nil, nil); err == nil || !strings.Contains(err.Error(), "larger than 1000") {
		t.Errorf("big answer: %v", err)
	}
	start := time.Now()
	if _, err := c.Post(ctx, srv.URL+"/slow", nil, nil); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("slow answer: %v after %v", err, time.Since(start))
	}
	r, err = c.Post(ctx, srv.URL+"/", http.Header{"Content-Type": {"text/plain"}}, []byte("tok"))
	if err != nil || r.StatusCode != http.StatusCreated || string(r.Body) != "ok" || Outcome(r) != nil {
		t.Fatalf("plain POST: %v %v", r, err)
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		code  int
		retry string
		want  error // nil, ErrGone, ErrRejected, or errRetry
		after time.Duration
	}{
		{200, "", nil, 0}, {201, "", nil, 0}, {204, "", nil, 0},
		{404, "", ErrGone, 0}, {410, "", ErrGone, 0},
		{400, "", ErrRejected, 0}, {401, "", ErrRejected, 0}, {403, "", ErrRejected, 0}, {413, "", ErrRejected, 0}, {301, "", ErrRejected, 0},
		{408, "", errRetry, 0}, {425, "", errRetry, 0}, {429, "7", errRetry, 7 * time.Second}, {500, "", errRetry, 0},
		{503, "99999", errRetry, time.Hour}, {502, "soon", errRetry, 0},
	} {
		h := http.Header{}
		if tc.retry != "" {
			h.Set("Retry-After", tc.retry)
		}
		err := Outcome(&Response{StatusCode: tc.code, Header: h})
		var re *RetryError
		switch {
		case tc.want == nil && err != nil, tc.want == errRetry && !errors.As(err, &re), tc.want != nil && tc.want != errRetry && !errors.Is(err, tc.want):
			t.Errorf("%d: %v; want %v", tc.code, err, tc.want)
		case re != nil && re.After != tc.after:
			t.Errorf("%d Retry-After %q: after %v; want %v", tc.code, tc.retry, re.After, tc.after)
		}
	}
}

var errRetry = errors.New("retry")

// FuzzCheckURL: no URL makes the check panic, and what the production
// policy accepts is https to a host that is no non-public IP literal,
// without user information or fragment.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{"https://push.example.org/x", "http://127.0.0.1:1/x", "https://[::1]/", "https://user@h/", "https://10.0.0.1/", "https://h:99999/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := EndpointPolicy{}.CheckURL(raw)
		if err != nil {
			if !errors.Is(err, ErrEndpoint) {
				t.Fatalf("%q: %v does not wrap ErrEndpoint", raw, err)
			}
			return
		}
		if u.Scheme != "https" || u.User != nil || u.Fragment != "" || u.Host == "" || len(raw) > MaxURL {
			t.Fatalf("accepted %q: %+v", raw, u)
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil && CheckAddr(a) != nil {
			t.Fatalf("accepted %q with a non-public address", raw)
		}
		if isLocalhost(u.Hostname()) {
			t.Fatalf("accepted %q: localhost", raw)
		}
		EndpointPolicy{AllowPrivate: true}.CheckURL(raw)
	})
}
