package proxy

import (
	"crypto/tls"
	"github.com/lemonproxy/lemonproxy/accountdata"
	"log/slog"
	"time"

	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Config configures a Server. Zero values select the documented defaults.
//
// Server.Reload may change some fields while the server runs (see
// Server.Reload for which); the others are fixed when the server starts.
type Config struct {
	// upstreamConn says how to reach the real IMAP server.
	Upstream upstream.Config
	// Pool bounds the idle upstream connections kept for reuse.
	Pool upstream.PoolConfig
	// Hub tunes the mailbox watchers (polling interval, IDLE renewal,
	// grace period, reconnect backoff).
	Hub hub.Config
	// AccountData keeps the records extensions hold per account beyond a
	// session (METADATA entries, named filters, URLAUTH keys...), handed to
	// them in Services. Nil: an accountdata.Memory, lost at exit.
	AccountData accountdata.Store

	// TLS, if set, serves the implicit-TLS listener and STARTTLS on plain
	// listeners. Use a GetCertificate callback to allow reloading.
	TLS *tls.Config
	// AllowPlaintextAuth permits LOGIN and AUTHENTICATE PLAIN on connections
	// that are neither TLS nor loopback. Off by default: such listeners
	// advertise LOGINDISABLED until STARTTLS.
	AllowPlaintextAuth bool

	// Limits bounds what clients may send; Limits.MaxInlineLiteral is the
	// literal limit for every command but APPEND.
	Limits imapcodec.Limits
	// MaxAppendLiteral is the largest message an APPEND may carry.
	// Default 64 MiB.
	MaxAppendLiteral int64
	// MaxCommandBytes bounds the literals of one APPEND together (the
	// messages of a MULTIAPPEND, the parts of a CATENATE): each literal is
	// also bounded by its own limit. APPEND streams to the upstream, so
	// this is not memory the session holds. Default MaxAppendLiteral +
	// Limits.MaxInlineLiteral: the largest message plus one literal of
	// other arguments (64 MiB + 64 KiB).
	MaxCommandBytes int64
	// MaxOtherCommandBytes bounds the literals of one command other than
	// APPEND together, after login (search keys, mailbox names, flags).
	// Such commands are read into memory before they are relayed, so this
	// is what one command may make a session hold. Default 256 KiB.
	MaxOtherCommandBytes int64
	// MaxPreAuthCommandBytes bounds the literals of one command together
	// before login (a user name and a password need far less). Default
	// 8 KiB.
	MaxPreAuthCommandBytes int64

	// AuthFailureDelay is how long after its start a failed login is
	// answered (the upstream's time included); it doubles with each
	// failure of the address or account (AbuseLimits). Default 2 s.
	AuthFailureDelay time.Duration
	// LoginCacheWindow is how long after the upstream last accepted an
	// account's user name and password a login with exactly those is
	// answered without a new upstream login (logincache.go says why and
	// what invalidates it). Default 30 s; negative: every login goes
	// upstream.
	LoginCacheWindow time.Duration
	// FetchAhead is how many of a client's pipelined FETCHes and UID FETCHes that
	// change nothing may go upstream before the answers to the ones
	// before them are relayed (ahead.go). Default DefaultFetchAhead;
	// negative: none, every command waits for its turn (for an upstream
	// that does not answer a connection's commands in the order sent).
	FetchAhead int
	// PreAuthTimeout disconnects clients that do not log in in time.
	// Default 60 s.
	PreAuthTimeout time.Duration
	// IdleTimeout disconnects authenticated clients silent for longer
	// (RFC 3501 asks for at least 30 minutes). Default 30 minutes.
	IdleTimeout time.Duration
	// Abuse bounds connections per address, sessions per account,
	// commands before login, and slows down password guessing.
	Abuse AbuseLimits
	// ShutdownTimeout bounds how long Shutdown waits for sessions to end.
	// Default 10 s.
	ShutdownTimeout time.Duration

	// PushLatency, if set, is called for each push to an idling client
	// with its latency, from the hub's watcher reading the upstream's line
	// to the session's socket write, and the part of it the watcher spent
	// waiting for the upstream's answers (for a new message: leaving IDLE
	// and fetching its UID), so that the proxy's own share is
	// total-upstream. For benchmarks and metrics.
	PushLatency func(total, upstream time.Duration)

	// UsernameFormat says which user names are one upstream account, for
	// the per-account limits, pools, watchers and states: UsernameLower
	// (the default, Dovecot's %Lu: ALICE and alice are one account) or
	// UsernameAsIs (%u: for an upstream with case-sensitive names). The
	// upstream always gets the name as the client sent it.
	UsernameFormat string

	// Router, if set, places each account's sessions on the node of a
	// cluster that serves it (package cluster); nil serves every account
	// here (one node).
	Router Router

	// Extensions add protocol behaviour; see Extension.
	Extensions []Extension

	// Logger receives the server's logs; never a password or message body.
	Logger *slog.Logger
}

// The defaults of Config.MaxOtherCommandBytes and
// Config.MaxPreAuthCommandBytes.
const (
	DefaultMaxOtherCommandBytes   = 256 << 10
	DefaultMaxPreAuthCommandBytes = 8 << 10
)

func (c Config) withDefaults() Config {
	c.Limits = c.Limits.WithDefaults()
	if c.AccountData == nil {
		c.AccountData = accountdata.NewMemory()
	}
	if c.MaxAppendLiteral <= 0 {
		c.MaxAppendLiteral = 64 << 20
	}
	if c.Limits.MaxLiteral < c.MaxAppendLiteral {
		c.Limits.MaxLiteral = c.MaxAppendLiteral
	}
	if c.MaxCommandBytes <= 0 {
		c.MaxCommandBytes = c.MaxAppendLiteral + c.Limits.MaxInlineLiteral
	}
	if c.MaxOtherCommandBytes <= 0 {
		c.MaxOtherCommandBytes = DefaultMaxOtherCommandBytes
	}
	if c.MaxPreAuthCommandBytes <= 0 {
		c.MaxPreAuthCommandBytes = DefaultMaxPreAuthCommandBytes
	}
	if c.AuthFailureDelay == 0 {
		c.AuthFailureDelay = 2 * time.Second
	}
	if c.LoginCacheWindow == 0 {
		c.LoginCacheWindow = DefaultLoginCacheWindow
	}
	if c.FetchAhead == 0 {
		c.FetchAhead = DefaultFetchAhead
	}
	if c.PreAuthTimeout <= 0 {
		c.PreAuthTimeout = 60 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Minute
	}
	c.Abuse = c.Abuse.withDefaults()
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Hub.Logger == nil {
		c.Hub.Logger = c.Logger
	}
	if c.UsernameFormat == "" {
		c.UsernameFormat = UsernameLower
	}
	if c.Upstream.Security == "" {
		c.Upstream.Security = upstream.SecurityNone
	}
	return c
}

// reloadable copies from c the fields Server.Reload may change into into
// (both with their defaults applied) and returns the result.
func (c Config) reloadable(into Config) Config {
	into.AllowPlaintextAuth = c.AllowPlaintextAuth
	into.Limits = c.Limits
	into.MaxAppendLiteral = c.MaxAppendLiteral
	into.MaxCommandBytes = c.MaxCommandBytes
	into.MaxOtherCommandBytes = c.MaxOtherCommandBytes
	into.MaxPreAuthCommandBytes = c.MaxPreAuthCommandBytes
	into.AuthFailureDelay = c.AuthFailureDelay
	into.PreAuthTimeout = c.PreAuthTimeout
	into.IdleTimeout = c.IdleTimeout
	into.Abuse = c.Abuse
	return into
}
