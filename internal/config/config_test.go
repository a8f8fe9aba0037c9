package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parse(t *testing.T, args ...string) Settings {
	t.Helper()
	s, err := Parse(newFlagSet(), args)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return s
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	want := Settings{
		Listen:                 "127.0.0.1:1143",
		UpstreamSecurity:       "none",
		UpstreamTimeout:        Duration{30 * time.Second},
		PoolIdlePerAccount:     2,
		PoolIdleTotal:          1000,
		PoolIdleTimeout:        Duration{5 * time.Minute},
		Data:                   "./lemonproxy-data",
		LogLevel:               "info",
		MaxLine:                imapcodec.DefaultMaxLine,
		MaxLiteral:             imapcodec.DefaultMaxInlineLiteral,
		MaxAppend:              64 << 20,
		MaxDepth:               imapcodec.DefaultMaxDepth,
		AuthFailureDelay:       Duration{2 * time.Second},
		LoginCache:             Duration{30 * time.Second},
		FetchAhead:             32,
		PreAuthTimeout:         Duration{60 * time.Second},
		IdleTimeout:            Duration{30 * time.Minute},
		PollInterval:           Duration{30 * time.Second},
		WatchGrace:             Duration{10 * time.Second},
		IdleRenew:              Duration{25 * time.Minute},
		NotifyPollInterval:     Duration{30 * time.Second},
		ContextMaxBytes:        64 << 20,
		SpoolMaxBytes:          1 << 30,
		SearchMaxBytes:         256 << 20,
		CompressLevel:          6,
		CompressMaxCompressors: 256,
		ConnsPerIP:             2000,
		SessionsPerUser:        50,
		PreAuthCommands:        25,
		AuthFailureMaxDelay:    Duration{30 * time.Second},
		ExpungeLogMax:          10000,
		ExpungeLogMaxAge:       Duration{720 * time.Hour},
		UsernameFormat:         "%Lu",
		ClusterLeaseTTL:        Duration{10 * time.Second},
		ClusterRelease:         Duration{time.Minute},
		PushMailboxes:          "INBOX",
		PushLiveWatchers:       10000,
		PushPollConns:          4,
		PushPollInterval:       Duration{time.Minute},
		PushMaxRegistrations:   20,
		PushGiveUp:             Duration{6 * time.Hour},
	}
	if got := Defaults(); got != want {
		t.Errorf("Defaults() = %+v\nwant %+v", got, want)
	}
	if got := parse(t); got != want {
		t.Errorf("Parse() without arguments = %+v\nwant the defaults %+v", got, want)
	}
}

// TestEveryFieldHasFlagAndKey checks that every setting has a flag and a
// toml key of the same name, so that the file mirrors the flags.
func TestEveryFieldHasFlagAndKey(t *testing.T) {
	var s Settings
	fs := newFlagSet()
	s.Flags(fs)
	typ := reflect.TypeFor[Settings]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		key := f.Tag.Get("toml")
		if key == "" {
			t.Errorf("field %s has no toml key", f.Name)
			continue
		}
		if fs.Lookup(key) == nil {
			t.Errorf("field %s: no flag -%s", f.Name, key)
		}
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n != typ.NumField() {
		t.Errorf("%d flags for %d settings", n, typ.NumField())
	}
}

func TestParseFlags(t *testing.T) {
	s := parse(t, "-listen", "0.0.0.0:143", "-upstream", "imap.example.org:993", "-upstream-security", "tls",
		"-upstream-timeout", "5s", "-allow-plaintext-auth", "-max-append", "1048576", "-log-level", "debug")
	want := Defaults()
	want.Listen = "0.0.0.0:143"
	want.Upstream = "imap.example.org:993"
	want.UpstreamSecurity = "tls"
	want.UpstreamTimeout = Duration{5 * time.Second}
	want.AllowPlaintextAuth = true
	want.MaxAppend = 1 << 20
	want.LogLevel = "debug"
	if s != want {
		t.Errorf("Parse = %+v\nwant %+v", s, want)
	}
}

const fullFile = `
listen = "10.0.0.1:143"
listen-tls = "10.0.0.1:993"
tls-cert = "/etc/lemonproxy/cert.pem"
tls-key = "/etc/lemonproxy/key.pem"
allow-plaintext-auth = true
upstream = "imap.example.org:993"
upstream-security = "tls"
upstream-ca = "/etc/ssl/ca.pem"
upstream-server-name = "mail.example.org"
upstream-insecure-skip-verify = true
upstream-timeout = "45s"
pool-idle-per-account = 3
pool-idle-total = 50
pool-idle-timeout = "90s"
data = "/var/lib/lemonproxy"
log-level = "warn"
max-line = 100000
max-literal = 200000
max-append = 300000
max-command-bytes = 400000
max-depth = 12
auth-failure-delay = "500ms"
login-cache = "10s"
fetch-ahead = 4
preauth-timeout = "20s"
idle-timeout = "31m"
poll-interval = "45s"
watch-grace = "3s"
idle-renew = "20m"
idle-keepalive = "10m"
notify-poll-interval = "2m"
context-max-bytes = 1048576
search-max-bytes = 2097152
compress-level = 9
compress-max-compressors = 16
expunge-log-max = 500
expunge-log-max-age = "48h"
username-format = "%u"
push-gateway = "https://notifications.example.org/notify"
push-gateway-secret = "/etc/lemonproxy/gateway.secret"
upstream-master-user = "pushmaster"
upstream-master-password-file = "/etc/lemonproxy/master.pass"
push-credentials-key = "/etc/lemonproxy/push.key"
push-mailboxes = "INBOX,Chats"
push-live-watchers = 500
push-poll-conns = 2
push-poll-interval = "2m"
push-max-registrations = 5
push-give-up = "1h"
push-allow-private-endpoints = true
`

var fullFileSettings = Settings{
	Listen:                 "10.0.0.1:143",
	ListenTLS:              "10.0.0.1:993",
	TLSCert:                "/etc/lemonproxy/cert.pem",
	TLSKey:                 "/etc/lemonproxy/key.pem",
	AllowPlaintextAuth:     true,
	Upstream:               "imap.example.org:993",
	UpstreamSecurity:       "tls",
	UpstreamCA:             "/etc/ssl/ca.pem",
	UpstreamServerName:     "mail.example.org",
	UpstreamInsecure:       true,
	UpstreamTimeout:        Duration{45 * time.Second},
	PoolIdlePerAccount:     3,
	PoolIdleTotal:          50,
	PoolIdleTimeout:        Duration{90 * time.Second},
	Data:                   "/var/lib/lemonproxy",
	LogLevel:               "warn",
	MaxLine:                100000,
	MaxLiteral:             200000,
	MaxAppend:              300000,
	MaxCommandBytes:        400000,
	MaxDepth:               12,
	AuthFailureDelay:       Duration{500 * time.Millisecond},
	LoginCache:             Duration{10 * time.Second},
	FetchAhead:             4,
	PreAuthTimeout:         Duration{20 * time.Second},
	IdleTimeout:            Duration{31 * time.Minute},
	PollInterval:           Duration{45 * time.Second},
	WatchGrace:             Duration{3 * time.Second},
	IdleRenew:              Duration{20 * time.Minute},
	IdleKeepAlive:          Duration{10 * time.Minute},
	NotifyPollInterval:     Duration{2 * time.Minute},
	ContextMaxBytes:        1 << 20,
	SpoolMaxBytes:          1 << 30,
	SearchMaxBytes:         2 << 20,
	CompressLevel:          9,
	CompressMaxCompressors: 16,
	ConnsPerIP:             2000,
	SessionsPerUser:        50,
	PreAuthCommands:        25,
	AuthFailureMaxDelay:    Duration{30 * time.Second},
	ExpungeLogMax:          500,
	ExpungeLogMaxAge:       Duration{48 * time.Hour},
	UsernameFormat:         "%u",
	ClusterLeaseTTL:        Duration{10 * time.Second},
	ClusterRelease:         Duration{time.Minute},

	PushGateway:                "https://notifications.example.org/notify",
	PushGatewaySecret:          "/etc/lemonproxy/gateway.secret",
	UpstreamMasterUser:         "pushmaster",
	UpstreamMasterPasswordFile: "/etc/lemonproxy/master.pass",
	PushCredentialsKey:         "/etc/lemonproxy/push.key",
	PushMailboxes:              "INBOX,Chats",
	PushLiveWatchers:           500,
	PushPollConns:              2,
	PushPollInterval:           Duration{2 * time.Minute},
	PushMaxRegistrations:       5,
	PushGiveUp:                 Duration{time.Hour},
	PushAllowPrivateEndpoints:  true,
}

func TestParseFile(t *testing.T) {
	path := writeFile(t, "lemonproxy.toml", fullFile)
	if s := parse(t, "-config", path); s != fullFileSettings {
		t.Errorf("Parse(-config) = %+v\nwant %+v", s, fullFileSettings)
	}
	// A partial file keeps the defaults for what it does not set.
	path = writeFile(t, "partial.toml", "upstream = \"u:143\"\n")
	want := Defaults()
	want.Upstream = "u:143"
	if s := parse(t, "-config", path); s != want {
		t.Errorf("Parse(-config partial) = %+v\nwant %+v", s, want)
	}
}

func TestParseFlagsOverrideFile(t *testing.T) {
	path := writeFile(t, "lemonproxy.toml", fullFile)
	for _, args := range [][]string{
		{"-config", path, "-listen", "B:1", "-upstream-timeout", "7s", "-allow-plaintext-auth=false", "-max-depth", "3"},
		// The position of -config does not matter.
		{"-listen", "B:1", "-upstream-timeout", "7s", "-config", path, "-allow-plaintext-auth=false", "-max-depth", "3"},
	} {
		s := parse(t, args...)
		want := fullFileSettings
		want.Listen = "B:1"
		want.UpstreamTimeout = Duration{7 * time.Second}
		want.AllowPlaintextAuth = false
		want.MaxDepth = 3
		if s != want {
			t.Errorf("Parse(%q) = %+v\nwant %+v", args, s, want)
		}
	}
}

// TestParseFlagEqualToDefaultOverridesFile checks that a flag given on the
// command line wins even when its value is the default.
func TestParseFlagEqualToDefaultOverridesFile(t *testing.T) {
	path := writeFile(t, "lemonproxy.toml", "listen = \"A:1\"\nlog-level = \"debug\"\n")
	s := parse(t, "-config", path, "-listen", Defaults().Listen, "-log-level", "info")
	if s.Listen != Defaults().Listen || s.LogLevel != "info" {
		t.Errorf("Listen %q LogLevel %q; want the command line's %q and info", s.Listen, s.LogLevel, Defaults().Listen)
	}
	// An empty flag value (disable the plain listener) wins too.
	s = parse(t, "-config", path, "-listen", "")
	if s.Listen != "" {
		t.Errorf("Listen %q; want the command line's empty value", s.Listen)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		args       []string
		want       []string
	}{
		{name: "unknown key", file: "listen = \"a:1\"\nlistne = \"b:2\"\n", want: []string{"unknown settings", "listne"}},
		{name: "unknown keys", file: "foo = 1\nbar = 2\n", want: []string{"unknown settings", "foo", "bar"}},
		{name: "unknown table", file: "[upstream-pool]\nsize = 3\n", want: []string{"unknown settings", "upstream-pool"}},
		{name: "bad duration in file", file: "upstream-timeout = \"soon\"\n", want: []string{"soon"}},
		{name: "duration without unit", file: "idle-timeout = \"30\"\n", want: []string{"missing unit"}},
		{name: "wrong type", file: "max-line = \"big\"\n", want: []string{"max-line"}},
		{name: "syntax", file: "listen = \n", want: []string{"config:"}},
		{name: "bad duration flag", args: []string{"-upstream-timeout", "soon"}, want: []string{"upstream-timeout", "soon"}},
		{name: "bad duration flag over file", file: "listen = \"a:1\"\n", args: []string{"-idle-timeout", "x"}, want: []string{"idle-timeout"}},
		{name: "bad int flag", args: []string{"-max-line", "many"}, want: []string{"max-line"}},
		{name: "unknown flag", args: []string{"-listne", "a:1"}, want: []string{"listne"}},
		{name: "missing file", args: []string{"-config", "/nonexistent/lemonproxy.toml"}, want: []string{"/nonexistent/lemonproxy.toml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"-config", writeFile(t, "c.toml", tc.file)}, args...)
			}
			_, err := Parse(newFlagSet(), args)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded", args)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseHelp(t *testing.T) {
	if _, err := Parse(newFlagSet(), []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("Parse(-h) = %v; want flag.ErrHelp", err)
	}
}

func TestDecode(t *testing.T) {
	s := Defaults()
	if err := Decode("max-append = 5\nupstream-timeout = \"1m30s\"\n", &s); err != nil {
		t.Fatal(err)
	}
	if s.MaxAppend != 5 || s.UpstreamTimeout.Duration != 90*time.Second || s.Listen != Defaults().Listen {
		t.Errorf("Decode: %+v", s)
	}
	b, err := s.UpstreamTimeout.MarshalText()
	if err != nil || string(b) != "1m30s" {
		t.Errorf("MarshalText = %q, %v", b, err)
	}
}

func TestLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
		"DEBUG": slog.LevelDebug, "Warn": slog.LevelWarn,
	} {
		s := Settings{LogLevel: in}
		got, err := s.Level()
		if err != nil || got != want {
			t.Errorf("Level(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "verbose", "trace"} {
		s := Settings{LogLevel: in}
		_, err := s.Level()
		if err == nil {
			t.Errorf("Level(%q) succeeded", in)
			continue
		}
		if want := `log-level "` + in + `"`; !strings.Contains(err.Error(), want) {
			t.Errorf("Level(%q) error %q does not contain %q", in, err, want)
		}
	}
}

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestProxyConfig(t *testing.T) {
	s := Defaults()
	s.Upstream = "imap.example.org:143"
	s.AllowPlaintextAuth = true
	s.MaxLine, s.MaxLiteral, s.MaxAppend, s.MaxDepth, s.MaxCommandBytes = 1000, 2000, 3000, 7, 4000
	s.PoolIdlePerAccount, s.PoolIdleTotal = 4, 40
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.Addr != "imap.example.org:143" || cfg.Upstream.Security != upstream.SecurityNone || cfg.Upstream.TLS != nil {
		t.Errorf("Upstream = %+v; want plain imap.example.org:143 without TLS", cfg.Upstream)
	}
	if cfg.Upstream.Timeout != 30*time.Second {
		t.Errorf("Upstream.Timeout = %v", cfg.Upstream.Timeout)
	}
	if cfg.Upstream.ForwardClientAddr {
		t.Error("client addresses forwarded by default")
	}
	if s := parse(t, "-upstream", "imap.example.org:143", "-upstream-forward-client-ip"); !s.UpstreamForwardClientIP {
		t.Error("-upstream-forward-client-ip not parsed")
	} else if cfg, err := s.ProxyConfig(nil, discardLog); err != nil || !cfg.Upstream.ForwardClientAddr {
		t.Errorf("-upstream-forward-client-ip: ForwardClientAddr %v, %v", cfg.Upstream.ForwardClientAddr, err)
	}
	if cfg.TLS != nil {
		t.Error("client TLS configured without certificates")
	}
	if cfg.Pool != (upstream.PoolConfig{MaxIdlePerAccount: 4, MaxIdle: 40, IdleTimeout: 5 * time.Minute}) {
		t.Errorf("Pool = %+v", cfg.Pool)
	}
	if cfg.Limits != (imapcodec.Limits{MaxLine: 1000, MaxInlineLiteral: 2000, MaxDepth: 7}) || cfg.MaxAppendLiteral != 3000 || cfg.MaxCommandBytes != 4000 {
		t.Errorf("Limits = %+v, MaxAppendLiteral %d, MaxCommandBytes %d", cfg.Limits, cfg.MaxAppendLiteral, cfg.MaxCommandBytes)
	}
	if !cfg.AllowPlaintextAuth || cfg.AuthFailureDelay != 2*time.Second || cfg.PreAuthTimeout != time.Minute || cfg.IdleTimeout != 30*time.Minute {
		t.Errorf("cfg = %+v", cfg)
	}
	if cfg.Logger != discardLog {
		t.Error("Logger not passed on")
	}
	if cfg.LoginCacheWindow != 30*time.Second {
		t.Errorf("LoginCacheWindow = %v, want the default 30s", cfg.LoginCacheWindow)
	}
	if cfg.FetchAhead != 32 {
		t.Errorf("FetchAhead = %d, want the default 32", cfg.FetchAhead)
	}
	s.LoginCache = Duration{0} // off
	s.FetchAhead = 0           // off
	if cfg, err = s.ProxyConfig(nil, discardLog); err != nil || cfg.LoginCacheWindow >= 0 || cfg.FetchAhead >= 0 {
		t.Errorf("login-cache 0, fetch-ahead 0: LoginCacheWindow = %v, FetchAhead %d (%v), want negative (off)", cfg.LoginCacheWindow, cfg.FetchAhead, err)
	}
}

func TestProxyConfigErrors(t *testing.T) {
	emptyCA := writeFile(t, "empty.pem", "no certificates here\n")
	for _, tc := range []struct {
		name string
		edit func(*Settings)
		want string
	}{
		{"no upstream", func(s *Settings) { s.Upstream = "" }, "no upstream"},
		{"bad security", func(s *Settings) { s.UpstreamSecurity = "ssl" }, `"ssl"`},
		{"CA without certificates", func(s *Settings) { s.UpstreamSecurity = "tls"; s.UpstreamCA = emptyCA }, "no certificates found"},
		{"missing CA file", func(s *Settings) { s.UpstreamSecurity = "starttls"; s.UpstreamCA = "/nonexistent/ca.pem" }, "/nonexistent/ca.pem"},
		// The extensions' settings too, so that a reload checks them.
		{"compress level", func(s *Settings) { s.CompressLevel = 0 }, "compress-level 0: want 1 (fastest) to 9 (smallest)"},
		{"spool below max-append", func(s *Settings) { s.SpoolMaxBytes = 1000 }, "spool-max-bytes 1000 is below max-append 67108864"},
		{"bad submission server", func(s *Settings) { s.URLAuthSubmitFrom = "10.0.0.0/33" }, `urlauth-submit-from: listen: bad prefix "10.0.0.0/33"`},
		// Listen addresses as net.Listen takes them, so that a reload
		// refuses one the restart would fail on.
		{"listen without port", func(s *Settings) { s.Listen = "127.0.0.1" }, `listen "127.0.0.1": missing port in address; want HOST:PORT`},
		{"listen-tls port", func(s *Settings) { s.ListenTLS = "[::1]:65536" }, `listen-tls "[::1]:65536": port "65536": want a number from 0 to 65535 or a service name`},
		{"metrics service", func(s *Settings) { s.Metrics = ":no-such-service" }, `metrics ":no-such-service": port "no-such-service"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Defaults()
			s.Upstream = "imap.example.org:993"
			tc.edit(&s)
			_, err := s.ProxyConfig(nil, discardLog)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ProxyConfig: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestProxyConfigTLS(t *testing.T) {
	certA, keyA, caPEM := writeCert(t, "a")
	caFile := writeFile(t, "ca.pem", string(caPEM))
	certs, err := NewCertReloader(certA, keyA)
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range []string{"tls", "starttls", "TLS"} {
		s := Defaults()
		s.Upstream = "imap.example.org:993"
		s.UpstreamSecurity = sec
		s.UpstreamCA = caFile
		s.UpstreamServerName = "mail.example.org"
		s.UpstreamInsecure = true
		cfg, err := s.ProxyConfig(certs, discardLog)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := upstream.ParseSecurity(sec)
		if cfg.Upstream.Security != want {
			t.Errorf("%s: Security = %q", sec, cfg.Upstream.Security)
		}
		ut := cfg.Upstream.TLS
		if ut == nil {
			t.Fatalf("%s: no upstream TLS config", sec)
		}
		if ut.MinVersion != tls.VersionTLS12 {
			t.Errorf("%s: upstream MinVersion = %x; want TLS 1.2", sec, ut.MinVersion)
		}
		if ut.ServerName != "mail.example.org" || !ut.InsecureSkipVerify {
			t.Errorf("%s: upstream ServerName %q InsecureSkipVerify %v", sec, ut.ServerName, ut.InsecureSkipVerify)
		}
		if ut.RootCAs == nil || !ut.RootCAs.Equal(poolOf(t, caPEM)) {
			t.Errorf("%s: upstream RootCAs are not the -upstream-ca file's", sec)
		}
		if cfg.TLS == nil || cfg.TLS.MinVersion != tls.VersionTLS12 || cfg.TLS.GetCertificate == nil {
			t.Fatalf("%s: client TLS = %+v; want MinVersion TLS 1.2 and GetCertificate", sec, cfg.TLS)
		}
		c, err := cfg.TLS.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || c == nil || commonName(t, c) != "a" {
			t.Errorf("%s: GetCertificate = %v, %v; want certificate a", sec, c, err)
		}
	}
	// Without -upstream-ca the system roots are used.
	s := Defaults()
	s.Upstream = "imap.example.org:993"
	s.UpstreamSecurity = "tls"
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.TLS == nil || cfg.Upstream.TLS.RootCAs != nil || cfg.Upstream.TLS.InsecureSkipVerify {
		t.Errorf("upstream TLS = %+v; want system roots, verified", cfg.Upstream.TLS)
	}
}

func TestCertReloader(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyCert := func(name string) {
		c, k, _ := writeCert(t, name)
		for src, dst := range map[string]string{c: certFile, k: keyFile} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	current := func(r *CertReloader) string {
		c, err := r.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return commonName(t, c)
	}

	if _, err := NewCertReloader(certFile, keyFile); err == nil {
		t.Fatal("NewCertReloader succeeded without files")
	}
	copyCert("a")
	r, err := NewCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := current(r); got != "a" {
		t.Fatalf("certificate %q; want a", got)
	}
	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Errorf("Reload of a broken file: %v; want an error naming %s", err, certFile)
	}
	if got := current(r); got != "a" {
		t.Errorf("after a failed reload: certificate %q; want a kept", got)
	}
	copyCert("b")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := current(r); got != "b" {
		t.Errorf("after reload: certificate %q; want b", got)
	}
}

// TestMaxCommandBytes: the setting's flag and key; 0 (the default) leaves
// the proxy's default, max-append + max-literal, in force.
func TestMaxCommandBytes(t *testing.T) {
	if d := Defaults().MaxCommandBytes; d != 0 {
		t.Errorf("default max-command-bytes %d; want 0", d)
	}
	if s := parse(t, "-max-command-bytes", "123456"); s.MaxCommandBytes != 123456 {
		t.Errorf("flag: MaxCommandBytes %d", s.MaxCommandBytes)
	}
	path := writeFile(t, "c.toml", "max-command-bytes = 654321\n")
	if s := parse(t, "-config", path); s.MaxCommandBytes != 654321 {
		t.Errorf("file: MaxCommandBytes %d", s.MaxCommandBytes)
	}
	if s := parse(t, "-config", path, "-max-command-bytes", "7"); s.MaxCommandBytes != 7 {
		t.Errorf("flag over file: MaxCommandBytes %d", s.MaxCommandBytes)
	}
	if _, err := Parse(newFlagSet(), []string{"-max-command-bytes", "lots"}); err == nil {
		t.Error("-max-command-bytes lots accepted")
	}
	s := Defaults()
	s.Upstream = "u:143"
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil || cfg.MaxCommandBytes != 0 {
		t.Errorf("ProxyConfig: MaxCommandBytes %d, %v; want 0 (the proxy's default)", cfg.MaxCommandBytes, err)
	}
}

func TestReload(t *testing.T) {
	cur := Defaults()
	cur.Upstream = "u:143"
	cur.TLSCert, cur.TLSKey = "/a/cert.pem", "/a/key.pem"
	next := cur
	if merged, applied, restart := Reload(cur, next); merged != cur || applied != nil || restart != nil {
		t.Errorf("unchanged: %+v %q %q", merged, applied, restart)
	}
	next.LogLevel = "debug"
	next.SessionsPerUser = 3
	next.Listen = "0.0.0.0:143"
	next.TLSCert = "/b/cert.pem"
	next.Upstream = "v:143"
	next.MaxCommandBytes = 99
	merged, applied, restart := Reload(cur, next)
	if want := []string{"listen", "tls-cert", "upstream", "log-level", "max-command-bytes", "sessions-per-user"}; !slices.Equal(Diff(cur, next), want) {
		t.Errorf("Diff = %q; want %q", Diff(cur, next), want)
	}
	if want := []string{"tls-cert", "log-level", "max-command-bytes", "sessions-per-user"}; !slices.Equal(applied, want) {
		t.Errorf("applied %q; want %q", applied, want)
	}
	if want := []string{"listen", "upstream"}; !slices.Equal(restart, want) {
		t.Errorf("restart %q; want %q", restart, want)
	}
	want := cur
	want.LogLevel, want.SessionsPerUser, want.TLSCert, want.MaxCommandBytes = "debug", 3, "/b/cert.pem", 99
	if merged != want {
		t.Errorf("merged %+v\nwant %+v", merged, want)
	}

	// Turning TLS on or off needs a restart.
	plain := cur
	plain.TLSCert, plain.TLSKey = "", ""
	if _, applied, restart := Reload(plain, cur); applied != nil || !slices.Equal(restart, []string{"tls-cert", "tls-key"}) {
		t.Errorf("TLS on: applied %q restart %q", applied, restart)
	}
	if merged, applied, restart := Reload(cur, plain); merged != cur || applied != nil || !slices.Equal(restart, []string{"tls-cert", "tls-key"}) {
		t.Errorf("TLS off: merged %+v applied %q restart %q", merged, applied, restart)
	}

	// Every reloadable name is a setting.
	keys := map[string]bool{}
	typ := reflect.TypeFor[Settings]()
	for i := range typ.NumField() {
		keys[typ.Field(i).Tag.Get("toml")] = true
	}
	for k := range reloadable {
		if !keys[k] || !Reloadable(k) {
			t.Errorf("reloadable %q is not a setting", k)
		}
	}
	if Reloadable("listen") || Reloadable("data") {
		t.Error("listen or data reloadable")
	}
}

func TestCertReloaderLoad(t *testing.T) {
	certA, keyA, _ := writeCert(t, "a")
	certB, keyB, _ := writeCert(t, "b")
	r, err := NewCertReloader(certA, keyA)
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		c, _ := r.GetCertificate(nil)
		return commonName(t, c)
	}
	if err := r.Load(certB, keyB+".missing"); err == nil || current() != "a" {
		t.Errorf("Load of a missing key: %v, serving %s; want an error and a kept", err, current())
	}
	if err := r.Load(certB, keyB); err != nil || current() != "b" {
		t.Fatalf("Load(b): %v, serving %s", err, current())
	}
	// Reload now reads b's files.
	if err := os.Remove(keyB); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), certB) || current() != "b" {
		t.Errorf("Reload after b's key went: %v, serving %s; want an error naming %s, b kept", err, current(), certB)
	}
}

// writeCert writes a self-signed certificate with common name cn and its
// key to PEM files, and returns their paths and the certificate's PEM.
func writeCert(t *testing.T, cn string) (certFile, keyFile string, certPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              []string{cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certFile = writeFile(t, cn+"-cert.pem", string(certPEM))
	keyFile = writeFile(t, cn+"-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile, certPEM
}

func poolOf(t *testing.T, pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no certificates")
	}
	return p
}

func commonName(t *testing.T, c *tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

// FuzzDecode checks that no configuration text makes Decode panic, and
// that a successful decode leaves settings that survive a second decode of
// the same text unchanged.
func FuzzDecode(f *testing.F) {
	f.Add(fullFile)
	f.Fuzz(func(t *testing.T, text string) {
		s := Defaults()
		if err := Decode(text, &s); err != nil {
			return
		}
		again := Defaults()
		if err := Decode(text, &again); err != nil {
			t.Fatalf("second Decode failed: %v", err)
		}
		if s != again {
			t.Fatalf("Decode is not deterministic: %+v vs %+v", s, again)
		}
		_, _ = s.Level()
	})
}

// TestSampleConfig: the sample in docs/deploy parses and sets what it says.
func TestSampleConfig(t *testing.T) {
	s := parse(t, "-config", "../../docs/deploy/lemonproxy.toml")
	if s.Upstream != "imap.internal.example:993" || s.UpstreamSecurity != "tls" || s.Metrics != "127.0.0.1:9143" ||
		s.ListenTLS != "0.0.0.0:993" || s.Data != "/var/lib/lemonproxy" {
		t.Fatalf("sample parsed as %+v", s)
	}
	d := Defaults()
	if s.PollInterval != d.PollInterval || s.MaxAppend != d.MaxAppend || s.PoolIdleTotal != d.PoolIdleTotal || s.NotifyPollInterval != d.NotifyPollInterval {
		t.Fatalf("sample's documented defaults differ from the code's: %+v", s)
	}
}

// TestSampleConfigChoices: where the sample's comment lists a setting's
// values ("a | b | c"), each of them starts the proxy; and the settings
// with a closed set of values list them (the sample once suggested an
// upstream-compress value that refused to start).
func TestSampleConfigChoices(t *testing.T) {
	data, err := os.ReadFile("../../docs/deploy/lemonproxy.toml")
	if err != nil {
		t.Fatal(err)
	}
	choices := regexp.MustCompile(`^([a-z-]+) = .*#\s*([a-z]+(?: \| [a-z]+)+)\b`)
	listed := map[string]bool{}
	for line := range strings.SplitSeq(string(data), "\n") {
		m := choices.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		listed[m[1]] = true
		for _, v := range strings.Split(m[2], " | ") {
			s := Defaults()
			if err := Decode(fmt.Sprintf("upstream = \"u:143\"\n%s = %q\n", m[1], v), &s); err != nil {
				t.Errorf("%s = %q, as the sample suggests: %v", m[1], v, err)
				continue
			}
			if _, err := s.Level(); err != nil {
				t.Errorf("%s = %q, as the sample suggests: %v", m[1], v, err)
			}
			if _, err := s.ProxyConfig(nil, slog.New(slog.DiscardHandler)); err != nil {
				t.Errorf("%s = %q, as the sample suggests: %v", m[1], v, err)
			}
		}
	}
	for _, key := range []string{"upstream-security", "upstream-compress", "log-level"} {
		if !listed[key] {
			t.Errorf("the sample does not list the values of %s in its comment", key)
		}
	}
}

// FuzzParseFile: any configuration file parses or is refused with an error.
func FuzzParseFile(f *testing.F) {
	f.Add(fullFile)
	f.Add("upstream = \"u:143\"\n")
	f.Add("max-line = -1\npoll-interval = \"-5s\"\n")
	f.Add("[[x]]\ny = 1")
	f.Fuzz(func(t *testing.T, text string) {
		path := filepath.Join(t.TempDir(), "f.toml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		Parse(fs, []string{"-config", path})
	})
}

// TestUpstreamAddressChecked: an upstream address that cannot be dialled
// is refused at start (issue #16 item 21).
func TestUpstreamAddressChecked(t *testing.T) {
	for addr, want := range map[string]string{
		"imap.example":       `config: upstream "imap.example": missing port in address; want HOST:PORT`,
		"imap.example:99999": `config: upstream "imap.example:99999": port "99999": want a number from 1 to 65535`,
		"imap.example:0":     `config: upstream "imap.example:0": port "0": want a number from 1 to 65535`,
		"imap.example:imap":  `config: upstream "imap.example:imap": port "imap": want a number from 1 to 65535`,
		":143":               `config: upstream ":143": no host; want HOST:PORT`,
		"imap example:143":   `config: upstream "imap example:143": the host holds a space or control character`,
		"[::1:143":           `config: upstream "[::1:143": missing ']' in address; want HOST:PORT`,
	} {
		s := Defaults()
		s.Upstream = addr
		if _, err := s.ProxyConfig(nil, nil); err == nil || err.Error() != want {
			t.Errorf("upstream %q: %v, want %q", addr, err, want)
		}
	}
	for _, addr := range []string{"imap.example:143", "127.0.0.1:993", "[::1]:143"} {
		s := Defaults()
		s.Upstream = addr
		if _, err := s.ProxyConfig(nil, nil); err != nil {
			t.Errorf("upstream %q: %v", addr, err)
		}
	}
}

func TestWarnings(t *testing.T) {
	for _, c := range []struct {
		edit func(*Settings)
		warn bool
	}{
		{func(s *Settings) {}, false}, // 127.0.0.1:1143
		{func(s *Settings) { s.Listen = "0.0.0.0:143" }, true},
		{func(s *Settings) { s.Listen = ":143" }, true},
		{func(s *Settings) { s.Listen = "192.0.2.1:143" }, true},
		{func(s *Settings) { s.Listen = "localhost:143" }, false},
		{func(s *Settings) { s.Listen = "[::1]:143" }, false},
		{func(s *Settings) { s.Listen = "" }, false},
		{func(s *Settings) { s.Listen, s.AllowPlaintextAuth = ":143", true }, false},
		{func(s *Settings) { s.Listen, s.TLSCert, s.TLSKey = ":143", "c", "k" }, false},
	} {
		s := Defaults()
		c.edit(&s)
		if w := s.Warnings(); (len(w) > 0) != c.warn {
			t.Errorf("listen %q: warnings %q", s.Listen, w)
		}
	}
}

// TestClusterSettings: cluster mode needs its four settings together.
func TestClusterSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{nil, ""},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n1", "-cluster-listen", "10.0.0.1:7143", "-cluster-secret", "/etc/lp/secret"}, ""},
		{[]string{"-node", "n1"}, "need cluster-db"},
		{[]string{"-cluster-db", "postgres://db/lp", "-cluster-listen", "10.0.0.1:7143", "-cluster-secret", "/s"}, "needs node"},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n 1", "-cluster-listen", "10.0.0.1:7143", "-cluster-secret", "/s"}, "no spaces"},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n1", "-cluster-secret", "/s"}, "needs cluster-listen"},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n1", "-cluster-listen", "10.0.0.1:7143"}, "needs cluster-secret"},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n1", "-cluster-listen", "10.0.0.1:7143", "-cluster-secret", "/s", "-cluster-lease-ttl", "500ms"}, "at least 1s"},
		{[]string{"-cluster-db", "postgres://db/lp", "-node", "n1", "-cluster-listen", "10.0.0.1:7143", "-cluster-secret", "/s", "-cluster-advertise", "nohost"}, "cluster-advertise"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		s, err := Parse(fs, append([]string{"-upstream", "imap.example.org:143"}, tc.args...))
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.ProxyConfig(nil, slog.Default())
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: err %v, want %q", tc.args, err, tc.err)
		}
	}
}

// TestPushSettings: push needs a way to log in without the user, its
// master user needs its password file; it works in cluster mode too.
func TestPushSettings(t *testing.T) {
	base := Defaults()
	base.Upstream = "u:143"
	for _, tc := range []struct {
		name string
		edit func(*Settings)
		ok   bool
	}{
		{"off", func(s *Settings) {}, true},
		{"master", func(s *Settings) {
			s.PushGateway, s.UpstreamMasterUser, s.UpstreamMasterPasswordFile = "https://g/n", "m", "/f"
		}, true},
		{"key", func(s *Settings) { s.PushGateway, s.PushCredentialsKey = "https://g/n", "/k" }, true},
		{"no login", func(s *Settings) { s.PushGateway = "https://g/n" }, false},
		{"master without password", func(s *Settings) {
			s.PushGateway, s.UpstreamMasterUser, s.PushCredentialsKey = "https://g/n", "m", "/k"
		}, false},
		{"password without master", func(s *Settings) { s.UpstreamMasterPasswordFile = "/f" }, false},
		{"cluster", func(s *Settings) {
			s.PushGateway, s.PushCredentialsKey = "https://g/n", "/k"
			s.ClusterDB, s.Node, s.ClusterListen, s.ClusterSecret = "postgres://db", "n1", "127.0.0.1:7143", "/s"
		}, true},
		{"no registrations", func(s *Settings) {
			s.PushGateway, s.PushCredentialsKey, s.PushMaxRegistrations = "https://g/n", "/k", 0
		}, false},
		{"no mailboxes", func(s *Settings) { s.PushGateway, s.PushCredentialsKey, s.PushMailboxes = "https://g/n", "/k", " " }, false},
		{"fast polls", func(s *Settings) {
			s.PushGateway, s.PushCredentialsKey, s.PushPollInterval = "https://g/n", "/k", Duration{time.Millisecond}
		}, false},
	} {
		s := base
		tc.edit(&s)
		if _, err := s.ProxyConfig(nil, nil); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestNegativeValuesRefused: a negative duration, or a negative number
// where it means nothing, is an error at start (and so at reload), not
// the default in silence (a negative auth-failure-delay turned the
// failed-login delay off).
func TestNegativeValuesRefused(t *testing.T) {
	value := map[string]string{} // key: a negative value
	typ := reflect.TypeFor[Settings]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		switch key := f.Tag.Get("toml"); {
		case f.Type == reflect.TypeFor[Duration]():
			value[key] = "-1s"
		case f.Type.Kind() == reflect.Int || f.Type.Kind() == reflect.Int64:
			// Those where -1 means none keep it.
			switch key {
			case "upstream-conns-per-account", "conns-per-ip", "sessions-per-user", "preauth-commands",
				"push-live-watchers", "push-poll-conns", "push-max-registrations", "compress-level":
			default:
				value[key] = "-1"
			}
		}
	}
	if len(value) < 30 {
		t.Fatalf("only %d settings found: %v", len(value), value)
	}
	for key, value := range value {
		s := parse(t, "-upstream", "imap.example.org:143", "-"+key, value)
		_, err := s.ProxyConfig(nil, discardLog)
		if want := "config: " + key + " " + value + ": must not be negative"; err == nil || err.Error() != want {
			t.Errorf("-%s %s: %v; want %q", key, value, err, want)
		}
	}
	for _, key := range []string{"upstream-conns-per-account", "conns-per-ip", "sessions-per-user", "preauth-commands"} {
		s := parse(t, "-upstream", "imap.example.org:143", "-"+key, "-1")
		if _, err := s.ProxyConfig(nil, discardLog); err != nil {
			t.Errorf("-%s -1 (no limit): %v", key, err)
		}
	}
}

// TestSampleConfigDefaults: the sample file says its values are the
// defaults unless a comment says otherwise; a value that differs from
// the code's default must say "default" on its line. fetch-ahead = 16
// stood there while the default was 32, so an operator who started from
// the sample halved it unknowingly.
func TestSampleConfigDefaults(t *testing.T) {
	const path = "../../docs/deploy/lemonproxy.toml"
	s := parse(t, "-config", path)
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	dv := reflect.ValueOf(d)
	for _, key := range Diff(d, s) {
		// Numbers and durations the code gives a default of its own (a
		// zero one stands for a computed default, which the sample may
		// spell out); strings are where the sample is the operator's
		// (addresses, files).
		f := dv.FieldByIndex(fieldByKey(t, key).Index)
		if f.Kind() == reflect.String || f.IsZero() {
			continue
		}
		var line string
		for l := range strings.SplitSeq(string(text), "\n") {
			if strings.HasPrefix(l, key+" =") || strings.HasPrefix(l, "# "+key+" =") {
				line = l
			}
		}
		if !strings.Contains(line, "default") {
			t.Errorf("sample %s differs from the default without saying so: %q", key, line)
		}
	}
}

// fieldByKey is the Settings field of a toml key.
func fieldByKey(t *testing.T, key string) reflect.StructField {
	t.Helper()
	typ := reflect.TypeFor[Settings]()
	for i := range typ.NumField() {
		if typ.Field(i).Tag.Get("toml") == key {
			return typ.Field(i)
		}
	}
	t.Fatalf("no setting %q", key)
	return reflect.StructField{}
}

// TestSampleConfigComputedDefaults: a setting whose default is computed
// from others is 0 or absent in the sample, not the number it comes to:
// written out, it stays put when the operator changes what it was
// computed from. The sample's max-command-bytes = 67174400 (max-append +
// max-literal) had an operator who raised max-append to 128 MiB refuse
// every APPEND above 64 MiB.
func TestSampleConfigComputedDefaults(t *testing.T) {
	const path = "../../docs/deploy/lemonproxy.toml"
	s := parse(t, "-config", path, "-max-append", "134217728", "-upstream", "imap.example.org:143")
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxCommandBytes != 0 && cfg.MaxCommandBytes < cfg.MaxAppendLiteral {
		t.Errorf("the sample with max-append %d: max-command-bytes %d refuses the largest message", cfg.MaxAppendLiteral, cfg.MaxCommandBytes)
	}
	for _, key := range []string{"max-command-bytes", "spool-max-bytes-per-user"} {
		if v := reflect.ValueOf(s).FieldByIndex(fieldByKey(t, key).Index); !v.IsZero() {
			t.Errorf("sample %s = %v: its default is computed from other settings; write 0 or leave it out", key, v.Interface())
		}
	}
}
