// Package config holds lemonproxy's settings: their names, defaults and
// documentation, the command-line flags and the TOML configuration file that
// mirrors them (same names; flags given on the command line win over the file).
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/internal/listen"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Settings are the values an operator sets. The toml keys are the flag
// names.
type Settings struct {
	Listen             string `toml:"listen"`
	ListenTLS          string `toml:"listen-tls"`
	TLSCert            string `toml:"tls-cert"`
	TLSKey             string `toml:"tls-key"`
	AllowPlaintextAuth bool   `toml:"allow-plaintext-auth"`

	Upstream           string   `toml:"upstream"`
	UpstreamSecurity   string   `toml:"upstream-security"`
	UpstreamCA         string   `toml:"upstream-ca"`
	UpstreamServerName string   `toml:"upstream-server-name"`
	UpstreamInsecure   bool     `toml:"upstream-insecure-skip-verify"`
	UpstreamTimeout    Duration `toml:"upstream-timeout"`
	UpstreamCompress   string   `toml:"upstream-compress"`
	// UpstreamForwardClientIP is upstream.Config.ForwardClientAddr:
	// logins tell the upstream the client's address (ID
	// x-originating-ip), which Dovecot believes from
	// login_trusted_networks.
	UpstreamForwardClientIP bool `toml:"upstream-forward-client-ip"`

	PoolIdlePerAccount int      `toml:"pool-idle-per-account"`
	PoolIdleTotal      int      `toml:"pool-idle-total"`
	PoolIdleTimeout    Duration `toml:"pool-idle-timeout"`

	// Upstream connections one account may have open at once; 0 selects
	// the default (10), -1 none.
	UpstreamConnsPerAccount int `toml:"upstream-conns-per-account"`

	Data     string `toml:"data"`
	LogLevel string `toml:"log-level"`

	MaxLine          int      `toml:"max-line"`
	MaxLiteral       int64    `toml:"max-literal"`
	MaxAppend        int64    `toml:"max-append"`
	MaxCommandBytes  int64    `toml:"max-command-bytes"`
	MaxDepth         int      `toml:"max-depth"`
	AuthFailureDelay Duration `toml:"auth-failure-delay"`
	// LoginCache is proxy.Config.LoginCacheWindow; 0 turns the cache off.
	LoginCache Duration `toml:"login-cache"`
	// FetchAhead is proxy.Config.FetchAhead; 0 turns it off.
	FetchAhead     int      `toml:"fetch-ahead"`
	PreAuthTimeout Duration `toml:"preauth-timeout"`
	IdleTimeout    Duration `toml:"idle-timeout"`

	// Literal bytes of one command other than APPEND after login, and of
	// one command before login; 0 selects the proxy's default.
	MaxOtherCommandBytes   int64 `toml:"max-other-command-bytes"`
	MaxPreAuthCommandBytes int64 `toml:"max-preauth-command-bytes"`

	PollInterval  Duration `toml:"poll-interval"`
	WatchGrace    Duration `toml:"watch-grace"`
	IdleRenew     Duration `toml:"idle-renew"`
	IdleKeepAlive Duration `toml:"idle-keepalive"`

	NotifyPollInterval Duration `toml:"notify-poll-interval"`

	// UpstreamSearchCasemap states that the upstream's SEARCH compares
	// strings with i;unicode-casemap (Dovecot's does): the proxy then
	// relays searches rather than evaluating their substring keys itself
	// for I18NLEVEL=1 (extensions/casesearch, docs/i18nlevel.md).
	UpstreamSearchCasemap bool `toml:"upstream-search-casemap"`

	// SearchMaxBytes bounds what the proxy reads from the upstream to
	// evaluate one command's substring search keys; 0 selects
	// the extension's default.
	SearchMaxBytes int64 `toml:"search-max-bytes"`

	// CompressLevel is the deflate level (1-9) of the compressor a
	// COMPRESS=DEFLATE session borrows for a burst of output
	// (extensions/compress, docs/compress.md): higher saves more bytes on
	// message bodies for more CPU.
	CompressLevel int `toml:"compress-level"`
	// CompressMaxCompressors bounds the compressors lent out at once
	// (about 1 MB each); bursts beyond it are compressed by the session's
	// small stateless writer. 0: no bound (negative: refused).
	CompressMaxCompressors int `toml:"compress-max-compressors"`

	// ContextMaxBytes is the memory all sessions' updating searches and
	// sorts (RFC 5267 CONTEXT=SEARCH, CONTEXT=SORT) may hold together
	// (extensions/contextsearch, docs/context.md); 0 selects the
	// extension's default.
	ContextMaxBytes int64 `toml:"context-max-bytes"`

	// SpoolMaxBytes is the disk all messages being put together (CATENATE,
	// MULTIAPPEND and BINARY's APPEND over an upstream without them) and
	// URLFETCH's answers being read may take at once; past it such an
	// APPEND is refused NO [LIMIT] and a URLFETCH answers NIL; 0
	// selects the default (1 GiB).
	SpoolMaxBytes int64 `toml:"spool-max-bytes"`
	// SpoolMaxBytesPerUser is the part of SpoolMaxBytes one account's
	// messages may take at once (a URLFETCH's: the account whose message
	// it is), so that one account cannot hold it all; 0 selects
	// a quarter of SpoolMaxBytes, at least MaxAppend (256 MiB with the
	// defaults), so that a configuration made before it existed keeps
	// working.
	SpoolMaxBytesPerUser int64 `toml:"spool-max-bytes-per-user"`

	ExpungeLogMax    int      `toml:"expunge-log-max"`
	ExpungeLogMaxAge Duration `toml:"expunge-log-max-age"`

	Metrics       string `toml:"metrics"`
	ProxyProtocol string `toml:"proxy-protocol"`

	// URLHosts and URLAuthSubmitFrom: IMAP URLs (CATENATE, URLAUTH).
	URLHosts          string `toml:"url-hosts"`
	URLAuthSubmitFrom string `toml:"urlauth-submit-from"`

	ConnsPerIP          int      `toml:"conns-per-ip"`
	SessionsPerUser     int      `toml:"sessions-per-user"`
	PreAuthCommands     int      `toml:"preauth-commands"`
	AuthFailureMaxDelay Duration `toml:"auth-failure-max-delay"`

	UsernameFormat string `toml:"username-format"`

	// Cluster mode (docs/cluster.md): empty ClusterDB is one node.
	ClusterDB        string   `toml:"cluster-db"`
	Node             string   `toml:"node"`
	ClusterListen    string   `toml:"cluster-listen"`
	ClusterAdvertise string   `toml:"cluster-advertise"`
	ClusterSecret    string   `toml:"cluster-secret"`
	ClusterLeaseTTL  Duration `toml:"cluster-lease-ttl"`
	ClusterRelease   Duration `toml:"cluster-release-after"`

	// Push to devices (extensions/push, docs/push.md): the device-token
	// gateway turns it on; the files hold secrets (read at start).
	PushGateway                string   `toml:"push-gateway"`
	PushGatewaySecret          string   `toml:"push-gateway-secret"`
	UpstreamMasterUser         string   `toml:"upstream-master-user"`
	UpstreamMasterPasswordFile string   `toml:"upstream-master-password-file"`
	PushCredentialsKey         string   `toml:"push-credentials-key"`
	PushMailboxes              string   `toml:"push-mailboxes"`
	PushLiveWatchers           int      `toml:"push-live-watchers"`
	PushPollConns              int      `toml:"push-poll-conns"`
	PushPollInterval           Duration `toml:"push-poll-interval"`
	PushMaxRegistrations       int      `toml:"push-max-registrations"`
	PushGiveUp                 Duration `toml:"push-give-up"`
	PushAllowPrivateEndpoints  bool     `toml:"push-allow-private-endpoints"`
	PushWebPush                bool     `toml:"push-webpush"`
	PushVAPIDSubject           string   `toml:"push-vapid-subject"`
}

// Duration is a time.Duration written "30s" in the file and on the command
// line.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Defaults returns the default settings.
func Defaults() Settings {
	return Settings{
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
		LoginCache:             Duration{proxy.DefaultLoginCacheWindow},
		FetchAhead:             proxy.DefaultFetchAhead,
		PreAuthTimeout:         Duration{60 * time.Second},
		IdleTimeout:            Duration{30 * time.Minute},
		PollInterval:           Duration{30 * time.Second},
		NotifyPollInterval:     Duration{30 * time.Second},
		ContextMaxBytes:        64 << 20,
		SpoolMaxBytes:          1 << 30,
		SearchMaxBytes:         256 << 20,
		CompressLevel:          deflate.DefaultLevel,
		CompressMaxCompressors: compress.DefaultMaxCompressors,
		ConnsPerIP:             2000,
		SessionsPerUser:        50,
		PreAuthCommands:        25,
		AuthFailureMaxDelay:    Duration{30 * time.Second},
		UsernameFormat:         proxy.UsernameLower,
		WatchGrace:             Duration{10 * time.Second},
		IdleRenew:              Duration{25 * time.Minute},
		ExpungeLogMax:          10000,
		ExpungeLogMaxAge:       Duration{30 * 24 * time.Hour},
		ClusterLeaseTTL:        Duration{10 * time.Second},
		ClusterRelease:         Duration{60 * time.Second},
		PushMailboxes:          "INBOX",
		PushLiveWatchers:       10000,
		PushPollConns:          4,
		PushPollInterval:       Duration{60 * time.Second},
		PushMaxRegistrations:   20,
		PushGiveUp:             Duration{6 * time.Hour},
	}
}

// Flags registers a flag for every setting on fs, bound to s.
func (s *Settings) Flags(fs *flag.FlagSet) {
	fs.StringVar(&s.Listen, "listen", s.Listen, "plain IMAP listen address (STARTTLS offered when a certificate is set); empty disables")
	fs.StringVar(&s.ListenTLS, "listen-tls", s.ListenTLS, "implicit-TLS IMAP listen address (port 993 style); needs -tls-cert and -tls-key")
	fs.StringVar(&s.TLSCert, "tls-cert", s.TLSCert, "PEM certificate chain file; re-read on SIGHUP")
	fs.StringVar(&s.TLSKey, "tls-key", s.TLSKey, "PEM private key file; re-read on SIGHUP")
	fs.BoolVar(&s.AllowPlaintextAuth, "allow-plaintext-auth", s.AllowPlaintextAuth, "allow passwords over unencrypted non-loopback connections")
	fs.StringVar(&s.Upstream, "upstream", s.Upstream, "upstream IMAP server HOST:PORT")
	fs.StringVar(&s.UpstreamSecurity, "upstream-security", s.UpstreamSecurity, "upstream transport: none, starttls or tls")
	fs.StringVar(&s.UpstreamCA, "upstream-ca", s.UpstreamCA, "PEM file of CA certificates to verify the upstream with (default: system roots)")
	fs.StringVar(&s.UpstreamServerName, "upstream-server-name", s.UpstreamServerName, "name to verify the upstream certificate against (default: host of -upstream)")
	fs.BoolVar(&s.UpstreamInsecure, "upstream-insecure-skip-verify", s.UpstreamInsecure, "do not verify the upstream's certificate (testing only)")
	fs.TextVar(&s.UpstreamTimeout, "upstream-timeout", s.UpstreamTimeout, "timeout for dialling the upstream and for each upstream response")
	fs.StringVar(&s.UpstreamCompress, "upstream-compress", s.UpstreamCompress, "COMPRESS=DEFLATE towards the upstream when it offers it: auto (the default, empty: only if the upstream is not on loopback), on or off")
	fs.BoolVar(&s.UpstreamForwardClientIP, "upstream-forward-client-ip", s.UpstreamForwardClientIP, "tell the upstream each login's client address (ID \"x-originating-ip\") where it offers ID; Dovecot believes it from login_trusted_networks, then logs the client's address and keeps its auth penalty per client instead of delaying every login through the proxy")
	fs.IntVar(&s.PoolIdlePerAccount, "pool-idle-per-account", s.PoolIdlePerAccount, "idle upstream connections kept per account")
	fs.IntVar(&s.PoolIdleTotal, "pool-idle-total", s.PoolIdleTotal, "idle upstream connections kept in total")
	fs.TextVar(&s.PoolIdleTimeout, "pool-idle-timeout", s.PoolIdleTimeout, "close idle upstream connections after this long")
	fs.IntVar(&s.UpstreamConnsPerAccount, "upstream-conns-per-account", s.UpstreamConnsPerAccount, "most upstream connections one account may have open at once (login, leased, pooled, watchers); 0: 10; -1: no limit")
	fs.StringVar(&s.Data, "data", s.Data, "directory for persistent state")
	fs.StringVar(&s.LogLevel, "log-level", s.LogLevel, "log level: debug, info, warn or error")
	fs.IntVar(&s.MaxLine, "max-line", s.MaxLine, "longest command line a client may send, in bytes")
	fs.Int64Var(&s.MaxLiteral, "max-literal", s.MaxLiteral, "largest literal in any command but APPEND, in bytes")
	fs.Int64Var(&s.MaxAppend, "max-append", s.MaxAppend, "largest message an APPEND may carry, in bytes")
	fs.Int64Var(&s.MaxCommandBytes, "max-command-bytes", s.MaxCommandBytes, "most literal bytes one APPEND may carry in all (MULTIAPPEND, CATENATE); 0: max-append + max-literal")
	fs.Int64Var(&s.MaxOtherCommandBytes, "max-other-command-bytes", s.MaxOtherCommandBytes, "most literal bytes any command but APPEND may carry in all after login (such commands are held in memory); 0: 262144")
	fs.Int64Var(&s.MaxPreAuthCommandBytes, "max-preauth-command-bytes", s.MaxPreAuthCommandBytes, "most literal bytes one command may carry in all before login; 0: 8192")
	fs.IntVar(&s.MaxDepth, "max-depth", s.MaxDepth, "deepest parenthesis nesting in a command")
	fs.TextVar(&s.AuthFailureDelay, "auth-failure-delay", s.AuthFailureDelay, "time from the start of a failed login to its answer, the upstream's time included")
	fs.TextVar(&s.LoginCache, "login-cache", s.LoginCache, "how long after the upstream accepted an account's user name and password a login with exactly those is answered from a pooled connection without a new upstream login (docs/per-command.md); 0: every login goes upstream")
	fs.IntVar(&s.FetchAhead, "fetch-ahead", s.FetchAhead, "how many of a client's pipelined FETCHes and UID FETCHes that change nothing go upstream before the answers to the ones before them are relayed (a download's pipelining reaches the upstream); 0: every command waits for its turn")
	fs.TextVar(&s.PreAuthTimeout, "preauth-timeout", s.PreAuthTimeout, "disconnect clients that have not logged in after this long")
	fs.TextVar(&s.IdleTimeout, "idle-timeout", s.IdleTimeout, "disconnect logged-in clients silent for this long (at least 30m per RFC 3501)")
	fs.TextVar(&s.PollInterval, "poll-interval", s.PollInterval, "how often a mailbox watcher polls with NOOP when the upstream has no IDLE")
	fs.IntVar(&s.ConnsPerIP, "conns-per-ip", s.ConnsPerIP, "most simultaneous connections from one client address, an IPv6 address counted as its /64 (loopback exempt); -1: no limit")
	fs.IntVar(&s.SessionsPerUser, "sessions-per-user", s.SessionsPerUser, "most simultaneous logged-in sessions of one account; -1: no limit")
	fs.IntVar(&s.PreAuthCommands, "preauth-commands", s.PreAuthCommands, "most commands a client may send before it logs in; -1: no limit")
	fs.TextVar(&s.AuthFailureMaxDelay, "auth-failure-max-delay", s.AuthFailureMaxDelay, "cap of the failed-login delay, which doubles with each failure of one address or account")
	fs.StringVar(&s.UsernameFormat, "username-format", s.UsernameFormat, "which user names are one upstream account (limits, pools, watchers, state), as Dovecot's auth_username_format: %Lu (lower case, Dovecot's default) or %u (as sent)")
	fs.StringVar(&s.ProxyProtocol, "proxy-protocol", s.ProxyProtocol, "comma-separated addresses or CIDR prefixes of load balancers whose connections start with a PROXY protocol header (v1/v2) giving the real client address; empty: off")
	fs.StringVar(&s.URLHosts, "url-hosts", s.URLHosts, "comma-separated host names clients reach the proxy under, which absolute IMAP URLs (CATENATE, URLAUTH) must name; empty: this machine's host name and the loopback names")
	fs.StringVar(&s.URLAuthSubmitFrom, "urlauth-submit-from", s.URLAuthSubmitFrom, "comma-separated addresses or CIDR prefixes of the submission servers allowed to URLFETCH submit+USER URLs (BURL, docs/urlauth.md); empty: none")
	fs.StringVar(&s.Metrics, "metrics", s.Metrics, "address of the HTTP listener for Prometheus metrics (/metrics), /healthz and /readyz; empty: off")
	fs.TextVar(&s.NotifyPollInterval, "notify-poll-interval", s.NotifyPollInterval, "how often NOTIFY's account watcher polls LIST, LSUB and STATUS for mailboxes other than the selected one and INBOX")
	fs.TextVar(&s.WatchGrace, "watch-grace", s.WatchGrace, "how long a mailbox watcher outlives its last session")
	fs.TextVar(&s.IdleRenew, "idle-renew", s.IdleRenew, "how long a watcher's upstream IDLE runs before it is renewed (under 29m)")
	fs.IntVar(&s.ExpungeLogMax, "expunge-log-max", s.ExpungeLogMax, "most expunges remembered per mailbox for QRESYNC; clients that knew the mailbox before the oldest get a full resync; 0: no limit")
	fs.TextVar(&s.ExpungeLogMaxAge, "expunge-log-max-age", s.ExpungeLogMaxAge, "expunges older than this are forgotten (clients that knew the mailbox before get a full resync); 0: no limit")
	fs.StringVar(&s.ClusterDB, "cluster-db", s.ClusterDB, "PostgreSQL URL of the state several nodes share (cluster mode; docs/cluster.md); empty: one node, state in -data")
	fs.StringVar(&s.Node, "node", s.Node, "this node's name in the cluster, unique and stable across restarts (cluster mode)")
	fs.StringVar(&s.ClusterListen, "cluster-listen", s.ClusterListen, "HOST:PORT of the internal link on which other nodes hand sessions over (cluster mode; a private network: the link authenticates, it does not encrypt)")
	fs.StringVar(&s.ClusterAdvertise, "cluster-advertise", s.ClusterAdvertise, "HOST:PORT other nodes dial to reach -cluster-listen (default: -cluster-listen)")
	fs.StringVar(&s.ClusterSecret, "cluster-secret", s.ClusterSecret, "file holding the secret shared by the nodes (at least 16 bytes) that authenticates internal links")
	fs.TextVar(&s.ClusterLeaseTTL, "cluster-lease-ttl", s.ClusterLeaseTTL, "a node that has not renewed its lease for this long is dead: others take its accounts over, and it fences itself")
	fs.TextVar(&s.ClusterRelease, "cluster-release-after", s.ClusterRelease, "an account with no session on its node for this long is released, so that it can move to its preferred node")
	fs.Int64Var(&s.ContextMaxBytes, "context-max-bytes", s.ContextMaxBytes, "most bytes all sessions' updating searches and sorts (CONTEXT=SEARCH, CONTEXT=SORT) may hold together; past it a new one is refused updates (NOUPDATE)")
	fs.Int64Var(&s.SpoolMaxBytes, "spool-max-bytes", s.SpoolMaxBytes, "most bytes of disk all messages being put together (CATENATE, MULTIAPPEND, BINARY's APPEND over an upstream without them) may take at once; past it such an APPEND is refused NO [LIMIT]")
	fs.Int64Var(&s.SpoolMaxBytesPerUser, "spool-max-bytes-per-user", s.SpoolMaxBytesPerUser, "most bytes of spool-max-bytes one account's messages being put together may take at once; past it that account's such APPENDs are refused NO [LIMIT]; 0: a quarter of spool-max-bytes, at least max-append")
	fs.BoolVar(&s.UpstreamSearchCasemap, "upstream-search-casemap", s.UpstreamSearchCasemap, "the upstream's SEARCH compares with i;unicode-casemap (true of Dovecot): relay searches instead of evaluating their substring keys in the proxy for I18NLEVEL=1")
	fs.Int64Var(&s.SearchMaxBytes, "search-max-bytes", s.SearchMaxBytes, "most bytes of headers and messages the proxy reads to evaluate one search's substring keys (I18NLEVEL=1 over an upstream whose SEARCH is not i;unicode-casemap); past it the search is answered NO [LIMIT]")
	fs.IntVar(&s.CompressLevel, "compress-level", s.CompressLevel, "deflate level (1-9) of the compressor a COMPRESS=DEFLATE session borrows for a burst of output (message bodies); higher saves more bytes for more CPU")
	fs.IntVar(&s.CompressMaxCompressors, "compress-max-compressors", s.CompressMaxCompressors, "most compressors (about 1 MB each) lent to COMPRESS=DEFLATE sessions at once; bursts beyond it are compressed less; 0: no bound")
	fs.TextVar(&s.IdleKeepAlive, "idle-keepalive", s.IdleKeepAlive, "interval of \"* OK Still here\" to idling clients; 0 (the default) sends none, to spare batteries")
	fs.StringVar(&s.PushGateway, "push-gateway", s.PushGateway, "URL the device tokens registered with METADATA /private/devicetoken are POSTed to on new mail (https; http only to loopback); empty: no device-token push (docs/push.md)")
	fs.StringVar(&s.PushGatewaySecret, "push-gateway-secret", s.PushGatewaySecret, "file holding the secret that signs each gateway POST (HMAC-SHA256, header X-Lemonproxy-Signature); empty: unsigned")
	fs.StringVar(&s.UpstreamMasterUser, "upstream-master-user", s.UpstreamMasterUser, "master user push logs in as for accounts without a session (SASL PLAIN, the user as authorization identity; Dovecot: a passdb with master=yes)")
	fs.StringVar(&s.UpstreamMasterPasswordFile, "upstream-master-password-file", s.UpstreamMasterPasswordFile, "file holding the master user's password")
	fs.StringVar(&s.PushCredentialsKey, "push-credentials-key", s.PushCredentialsKey, "file holding 32 random bytes (raw or base64): without a master user, push keeps the users' own credentials sealed with it (AES-256-GCM) to log in for them")
	fs.StringVar(&s.PushMailboxes, "push-mailboxes", s.PushMailboxes, "comma-separated mailboxes whose new mail pushes")
	fs.IntVar(&s.PushLiveWatchers, "push-live-watchers", s.PushLiveWatchers, "most registered accounts watched live (one upstream connection each); the others are polled in rotation; -1: none live")
	fs.IntVar(&s.PushPollConns, "push-poll-conns", s.PushPollConns, "upstream connections polling registered accounts beyond push-live-watchers at once")
	fs.TextVar(&s.PushPollInterval, "push-poll-interval", s.PushPollInterval, "how often a polled registered account is polled at most")
	fs.IntVar(&s.PushMaxRegistrations, "push-max-registrations", s.PushMaxRegistrations, "most devices registered for push per account")
	fs.TextVar(&s.PushGiveUp, "push-give-up", s.PushGiveUp, "a push not delivered for this long is given up (counted and logged)")
	fs.BoolVar(&s.PushWebPush, "push-webpush", s.PushWebPush, "offer IMAP WEBPUSH (draft-gougeon-imap-webpush): clients register Web Push subscriptions, pushed to with RFC 8291 encryption and VAPID; the VAPID key is made on first start in the data directory (docs/webpush.md)")
	fs.StringVar(&s.PushVAPIDSubject, "push-vapid-subject", s.PushVAPIDSubject, "the operator's contact in VAPID tokens (mailto: or https: URL); empty: mailto:postmaster@ and this machine's host name")
	fs.BoolVar(&s.PushAllowPrivateEndpoints, "push-allow-private-endpoints", s.PushAllowPrivateEndpoints, "let push endpoints named by clients (Web Push) be loopback or private addresses, and plain http to loopback (tests only: it opens the proxy to server-side request forgery)")
}

// Parse parses args into settings: defaults, then the file named by -config
// (if any), then the flags given on the command line.
func Parse(fs *flag.FlagSet, args []string) (Settings, error) {
	s := Defaults()
	var path string
	fs.StringVar(&path, "config", "", "TOML configuration file; keys are the flag names")
	s.Flags(fs)
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if path == "" {
		return s, nil
	}
	fromFile := Defaults()
	if err := LoadFile(path, &fromFile); err != nil {
		return s, err
	}
	// Re-apply the flags that were given explicitly on top of the file.
	again := flag.NewFlagSet("", flag.ContinueOnError)
	fromFile.Flags(again)
	var err error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" || err != nil {
			return
		}
		err = again.Set(f.Name, f.Value.String())
	})
	return fromFile, err
}

// LoadFile reads a TOML file into s, rejecting unknown keys so that a typo
// does not silently leave a default in force.
func LoadFile(path string, s *Settings) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Decode(string(b), s)
}

// Decode parses TOML text into s.
func Decode(text string, s *Settings) error {
	md, err := toml.Decode(text, s)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("config: unknown settings: %s", strings.Join(keys, ", "))
	}
	return nil
}

// splitHostPort is net.SplitHostPort with its error said for a
// configuration file.
func splitHostPort(addr string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", "", fmt.Errorf("%s; want HOST:PORT", ae.Err)
		}
		return "", "", fmt.Errorf("%w; want HOST:PORT", err)
	}
	return host, port, nil
}

// checkHostPort checks a HOST:PORT address to dial: a host, and a port
// from 1 to 65535.
func checkHostPort(addr string) error {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host; want HOST:PORT")
	}
	if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("the host holds a space or control character")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 1 to 65535", port)
	}
	return nil
}

// checkListenAddr checks an address to listen on as net.Listen takes it:
// HOST:PORT, the host empty for every address, the port a number from 0
// to 65535 or a service name. Start would fail on a malformed one only
// when it listens; a reload, which cannot listen there (the running proxy
// may hold the address), must refuse it all the same. A host name that
// does not resolve is left to the listen at start.
func checkListenAddr(addr string) error {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return err
	}
	if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("the host holds a space or control character")
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("port %q: want a number from 0 to 65535 or a service name", port)
	}
	return nil
}

// checkListeners checks the addresses the proxy listens on (checkListenAddr).
func (s *Settings) checkListeners() error {
	for _, l := range []struct{ key, addr string }{
		{"listen", s.Listen}, {"listen-tls", s.ListenTLS}, {"metrics", s.Metrics}, {"cluster-listen", s.ClusterListen},
	} {
		if l.addr == "" {
			continue
		}
		if err := checkListenAddr(l.addr); err != nil {
			return fmt.Errorf("config: %s %q: %w", l.key, l.addr, err)
		}
	}
	return nil
}

// Warnings returns what in s is valid but probably not what the operator
// wants, for the log at start.
func (s *Settings) Warnings() []string {
	var w []string
	if s.Listen != "" && !hasCert(*s) && !s.AllowPlaintextAuth && !loopbackHost(s.Listen) {
		w = append(w, fmt.Sprintf("listen %s: plain listener on a non-loopback address without a certificate: "+
			"clients not on loopback cannot log in (LOGINDISABLED, no STARTTLS); "+
			"set tls-cert and tls-key, or allow-plaintext-auth behind a TLS terminator", s.Listen))
	}
	return w
}

// loopbackHost tells whether a listen address binds loopback only.
func loopbackHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// LogLevel parses the log-level setting.
func (s *Settings) Level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s.LogLevel)); err != nil {
		return l, fmt.Errorf("config: log-level %q: want debug, info, warn or error", s.LogLevel)
	}
	return l, nil
}

// ProxyConfig turns settings into the proxy's configuration. certs serves
// the client-facing certificate (nil when none is configured).
func (s *Settings) ProxyConfig(certs *CertReloader, log *slog.Logger) (proxy.Config, error) {
	return s.proxyConfig(certs, log, true)
}

// ReloadedConfig is ProxyConfig for the settings in force after a reload
// (Reload's merged, the file itself having passed ProxyConfig): it leaves
// out the checks of the extensions' settings, which need a restart and so
// are those the proxy started with, already checked. Checked again beside
// a max-append the reload applies, they refused a valid file that raised
// max-append with spool-max-bytes (applied at the restart), the
// certificate and every other change with it.
func (s *Settings) ReloadedConfig(certs *CertReloader, log *slog.Logger) (proxy.Config, error) {
	return s.proxyConfig(certs, log, false)
}

func (s *Settings) proxyConfig(certs *CertReloader, log *slog.Logger, extensions bool) (proxy.Config, error) {
	var cfg proxy.Config
	if err := s.checkNegative(); err != nil {
		return cfg, err
	}
	if s.Upstream == "" {
		return cfg, errors.New("config: no upstream: set -upstream HOST:PORT")
	}
	if err := checkHostPort(s.Upstream); err != nil {
		return cfg, fmt.Errorf("config: upstream %q: %w", s.Upstream, err)
	}
	if s.UsernameFormat != proxy.UsernameLower && s.UsernameFormat != proxy.UsernameAsIs {
		return cfg, fmt.Errorf("config: username-format %q: want %s (lower case) or %s (as sent)", s.UsernameFormat, proxy.UsernameLower, proxy.UsernameAsIs)
	}
	sec, err := upstream.ParseSecurity(s.UpstreamSecurity)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	compress, err := upstream.ParseCompressPolicy(s.UpstreamCompress)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	cfg.Upstream = upstream.Config{
		Addr:     s.Upstream,
		Security: sec,
		Compress: compress,
		Timeout:  s.UpstreamTimeout.Duration,

		ForwardClientAddr: s.UpstreamForwardClientIP,
	}
	if sec != upstream.SecurityNone {
		tc := &tls.Config{ServerName: s.UpstreamServerName, InsecureSkipVerify: s.UpstreamInsecure, MinVersion: tls.VersionTLS12}
		if s.UpstreamCA != "" {
			pem, err := os.ReadFile(s.UpstreamCA)
			if err != nil {
				return cfg, fmt.Errorf("config: upstream-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("config: upstream-ca %s: no certificates found", s.UpstreamCA)
			}
			tc.RootCAs = pool
		}
		cfg.Upstream.TLS = tc
	}
	cfg.Pool = upstream.PoolConfig{
		MaxIdlePerAccount: s.PoolIdlePerAccount,
		MaxIdle:           s.PoolIdleTotal,
		IdleTimeout:       s.PoolIdleTimeout.Duration,

		MaxConnsPerAccount: s.UpstreamConnsPerAccount,
	}
	if certs != nil {
		cfg.TLS = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	cfg.AllowPlaintextAuth = s.AllowPlaintextAuth
	cfg.Limits = imapcodec.Limits{MaxLine: s.MaxLine, MaxInlineLiteral: s.MaxLiteral, MaxDepth: s.MaxDepth}
	cfg.MaxAppendLiteral = s.MaxAppend
	cfg.MaxCommandBytes = s.MaxCommandBytes
	cfg.MaxOtherCommandBytes = s.MaxOtherCommandBytes
	cfg.MaxPreAuthCommandBytes = s.MaxPreAuthCommandBytes
	cfg.AuthFailureDelay = s.AuthFailureDelay.Duration
	cfg.LoginCacheWindow = s.LoginCache.Duration
	if cfg.LoginCacheWindow <= 0 {
		cfg.LoginCacheWindow = -1 // off (proxy: 0 is the default)
	}
	cfg.FetchAhead = s.FetchAhead
	if cfg.FetchAhead <= 0 {
		cfg.FetchAhead = -1 // off (proxy: 0 is the default)
	}
	cfg.PreAuthTimeout = s.PreAuthTimeout.Duration
	cfg.IdleTimeout = s.IdleTimeout.Duration
	cfg.Abuse = proxy.AbuseLimits{ConnsPerIP: s.ConnsPerIP, SessionsPerUser: s.SessionsPerUser,
		PreAuthCommands: s.PreAuthCommands, AuthFailureMaxDelay: s.AuthFailureMaxDelay.Duration}
	cfg.UsernameFormat = s.UsernameFormat
	cfg.Hub.PollInterval = s.PollInterval.Duration
	cfg.Hub.Grace = s.WatchGrace.Duration
	cfg.Hub.IdleRenew = s.IdleRenew.Duration
	cfg.Hub.ExpungeLog = syncstate.LogLimits{MaxExpunges: s.ExpungeLogMax, MaxAge: s.ExpungeLogMaxAge.Duration}
	cfg.Logger = log
	if err := s.checkListeners(); err != nil {
		return cfg, err
	}
	if err := s.checkCluster(); err != nil {
		return cfg, err
	}
	if extensions {
		if err := s.checkExtensions(); err != nil {
			return cfg, err
		}
	}
	if err := s.checkPush(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// PushEnabled reports whether a push channel is configured: device tokens
// (a gateway) or Web Push.
func (s *Settings) PushEnabled() bool { return s.PushGateway != "" || s.PushWebPush }

// checkPush checks the push settings (the files are read at start).
func (s *Settings) checkPush() error {
	if (s.UpstreamMasterUser == "") != (s.UpstreamMasterPasswordFile == "") {
		return errors.New("config: upstream-master-user and upstream-master-password-file go together")
	}
	if !s.PushEnabled() {
		return nil
	}
	switch {
	case s.UpstreamMasterUser == "" && s.PushCredentialsKey == "":
		return errors.New("config: push needs a way to log in without the user: upstream-master-user (with upstream-master-password-file) or push-credentials-key")
	case s.PushMaxRegistrations < 1:
		return fmt.Errorf("config: push-max-registrations %d: at least 1", s.PushMaxRegistrations)
	case s.PushPollConns < 1:
		return fmt.Errorf("config: push-poll-conns %d: at least 1", s.PushPollConns)
	case s.PushPollInterval.Duration < time.Second:
		return fmt.Errorf("config: push-poll-interval %v: at least 1s", s.PushPollInterval.Duration)
	case s.PushGiveUp.Duration < time.Minute:
		return fmt.Errorf("config: push-give-up %v: at least 1m", s.PushGiveUp.Duration)
	case strings.TrimSpace(s.PushMailboxes) == "":
		return errors.New("config: push-mailboxes is empty")
	}
	return nil
}

// notNegative are the number settings for which a negative value means
// nothing (those where -1 means "no limit" are not among them). Further
// down, the proxy takes a value of 0 or less for its default, so a
// negative one in the file was silently replaced by the default: an
// operator who wrote max-append = -1 for "no limit" got 64 MiB.
var notNegative = map[string]bool{
	"pool-idle-per-account": true, "pool-idle-total": true,
	"max-line": true, "max-literal": true, "max-append": true, "max-depth": true,
	"max-command-bytes": true, "max-other-command-bytes": true, "max-preauth-command-bytes": true,
	"fetch-ahead": true, "expunge-log-max": true,
	"context-max-bytes": true, "spool-max-bytes": true, "spool-max-bytes-per-user": true,
	"search-max-bytes": true, "compress-max-compressors": true,
}

// checkNegative refuses a negative duration (none has a meaning: further
// down some were taken for the default, and a negative auth-failure-delay
// turned the failed-login delay off, where 0 selects 2s) and a negative
// number where it has none (notNegative).
func (s *Settings) checkNegative() error {
	v := reflect.ValueOf(*s)
	typ := v.Type()
	for i := range typ.NumField() {
		key, f := typ.Field(i).Tag.Get("toml"), v.Field(i)
		switch x := f.Interface().(type) {
		case Duration:
			if x.Duration < 0 {
				return fmt.Errorf("config: %s %v: must not be negative", key, x.Duration)
			}
		case int, int64:
			if notNegative[key] && f.Int() < 0 {
				return fmt.Errorf("config: %s %d: must not be negative", key, f.Int())
			}
		}
	}
	return nil
}

// checkExtensions checks the extensions' settings. They are checked here,
// with the rest, rather than where the extensions are built, so that a
// reload (SIGHUP), which checks the whole file but builds no extension,
// refuses a file the proxy would not start with.
func (s *Settings) checkExtensions() error {
	if _, err := listen.ParsePrefixes(s.URLAuthSubmitFrom); err != nil {
		return fmt.Errorf("config: urlauth-submit-from: %w", err)
	}
	if s.CompressLevel < 1 || s.CompressLevel > 9 {
		return fmt.Errorf("config: compress-level %d: want 1 (fastest) to 9 (smallest)", s.CompressLevel)
	}
	if s.SpoolMaxBytes > 0 && s.SpoolMaxBytes < s.MaxAppend {
		return fmt.Errorf("config: spool-max-bytes %d is below max-append %d: a CATENATE or MULTIAPPEND of the largest message would always be refused", s.SpoolMaxBytes, s.MaxAppend)
	}
	if s.SpoolMaxBytesPerUser > 0 && s.SpoolMaxBytesPerUser < s.MaxAppend {
		return fmt.Errorf("config: spool-max-bytes-per-user %d is below max-append %d: a CATENATE or MULTIAPPEND of the largest message would always be refused", s.SpoolMaxBytesPerUser, s.MaxAppend)
	}
	if s.SpoolMaxBytesPerUser > 0 && s.SpoolMaxBytes > 0 && s.SpoolMaxBytesPerUser > s.SpoolMaxBytes {
		return fmt.Errorf("config: spool-max-bytes-per-user %d is above spool-max-bytes %d", s.SpoolMaxBytesPerUser, s.SpoolMaxBytes)
	}
	return nil
}

// checkCluster checks the cluster settings: all or none.
func (s *Settings) checkCluster() error {
	if s.ClusterDB == "" {
		if s.Node != "" || s.ClusterListen != "" || s.ClusterSecret != "" {
			return errors.New("config: node, cluster-listen and cluster-secret need cluster-db")
		}
		return nil
	}
	switch {
	case s.Node == "":
		return errors.New("config: cluster-db needs node (this node's name)")
	case strings.ContainsFunc(s.Node, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("config: node %q: no spaces or control characters", s.Node)
	case s.ClusterListen == "":
		return errors.New("config: cluster-db needs cluster-listen (the internal link's address)")
	case s.ClusterSecret == "":
		return errors.New("config: cluster-db needs cluster-secret (a file with the nodes' shared secret)")
	case s.ClusterLeaseTTL.Duration < time.Second:
		return fmt.Errorf("config: cluster-lease-ttl %v: at least 1s", s.ClusterLeaseTTL.Duration)
	}
	if s.ClusterAdvertise != "" {
		if err := checkHostPort(s.ClusterAdvertise); err != nil {
			return fmt.Errorf("config: cluster-advertise %q: %w", s.ClusterAdvertise, err)
		}
	}
	return nil
}
