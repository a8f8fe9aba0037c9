package load

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Scenarios lists the scenario names Run accepts.
var Scenarios = []string{"idle", "push", "resync", "fetch", "mixed"}

// Bounds on what one run may ask for: a load tool must not be able to run
// away with a machine because of a typo.
const (
	MaxClients  = 100_000
	MaxDuration = 24 * time.Hour
	MaxMessages = 1_000_000
	MaxSize     = 64 << 20
)

// Account is one login on the target.
type Account struct{ User, Pass string }

// Config is one run of the load tool.
type Config struct {
	// Scenario is one of Scenarios.
	Scenario string
	// Target is the server under test, HOST:PORT.
	Target string
	// Outside is where changes "made by someone else" go (the upstream
	// behind a proxy, or the target itself). Default: Target.
	Outside string
	// Accounts are the logins; client i uses Accounts[i % len(Accounts)].
	Accounts []Account
	// Clients is how many client sessions run at once.
	Clients int
	// Duration is how long the scenario's main phase lasts (idle: the
	// hold after measuring; push: the APPEND phase; fetch, mixed: the
	// whole run).
	Duration time.Duration
	// Rate is the scenario's pace, per second: push APPENDs and mixed
	// makes outside changes at this rate; idle opens at most this many
	// sessions per second (0: as fast as Concurrency allows).
	Rate float64
	// Sources are the local addresses the sessions connect from, in
	// turn (none: the system chooses). Each has its own ephemeral port
	// range, so several loopback addresses allow more than about 28,000
	// sessions to one target.
	Sources []net.IP
	// Compress turns on COMPRESS=DEFLATE in every client session.
	Compress bool
	// Concurrency is how many sessions are being opened at once.
	Concurrency int
	// Timeout bounds every response the tool waits for.
	Timeout time.Duration
	// Settle is how long idle and push wait after the last session went
	// idle before measuring, and how long push and mixed wait at most for
	// the last change to reach every client.
	Settle time.Duration
	// RunTimeout bounds the whole run (0: Duration plus a setup allowance
	// that grows with Clients and Messages).
	RunTimeout time.Duration

	// TargetPID is the target's process, for its RSS and CPU (0: none).
	TargetPID int
	// TargetMetrics is a lemonproxy's Prometheus endpoint
	// (http://HOST:PORT/metrics, its -metrics listener): idle reads the
	// proxy's heap from it (empty: heap not measured).
	TargetMetrics string
	// DovecotPID is a Dovecot master process: the PSS and CPU of it and
	// all its descendants are measured (0: none).
	DovecotPID int
	// Upstream, if set, is the address whose ESTABLISHED connections are
	// counted (the proxy's upstream), leaving out the tool's own.
	Upstream string

	// Mailbox is the mailbox resync and fetch work in (created if
	// missing; default "lemonload-resync" and "lemonload-fetch").
	Mailbox string
	// Messages is the size of resync's and fetch's mailbox.
	Messages int
	// Changes is how many changes resync makes between resyncs (a third
	// of them expunges).
	Changes int
	// Rounds is how many rounds of changes and resyncs resync runs.
	Rounds int
	// Size is the size of each message fetch appends, bytes.
	Size int
	// QResync is "auto" (use QRESYNC when the target advertises it),
	// "on" or "off".
	QResync string
	// MaxLag is how long mixed allows a change to take to reach a client
	// (pushed while it idles, or in its next resync).
	MaxLag time.Duration
	// IdleMin and IdleMax bound how long each mixed client idles before
	// it drops the link or says DONE.
	IdleMin, IdleMax time.Duration
	// OutsideConns bounds the outside connections (push's appenders,
	// mixed's mutators) open at once.
	OutsideConns int
	// Seed seeds mixed's random choices (0: from the clock).
	Seed int64

	// Label names the run in results and plots ("proxy", "dovecot").
	Label string
	// Progress, if not nil, receives a progress line every ProgressEvery.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Notes are added to the result (the series runner notes its setup).
	Notes []string
}

// withDefaults fills in zero fields.
func (c Config) withDefaults() Config {
	if c.Outside == "" {
		c.Outside = c.Target
	}
	if c.Clients == 0 {
		switch c.Scenario {
		case "resync":
			c.Clients = 1
		case "fetch":
			c.Clients = 4
		default:
			c.Clients = 10
		}
	}
	if c.Duration == 0 {
		switch c.Scenario {
		case "idle":
			c.Duration = 5 * time.Second
		case "push", "fetch":
			c.Duration = 20 * time.Second
		case "mixed":
			c.Duration = time.Minute
		}
	}
	if c.Rate == 0 && (c.Scenario == "push" || c.Scenario == "mixed") {
		c.Rate = 10
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Second
	}
	if c.Mailbox == "" {
		switch c.Scenario {
		case "resync":
			c.Mailbox = "lemonload-resync"
		case "fetch":
			c.Mailbox = "lemonload-fetch"
		default:
			c.Mailbox = "INBOX"
		}
	}
	if c.Messages == 0 {
		switch c.Scenario {
		case "resync":
			c.Messages = 10_000
		case "fetch":
			c.Messages = 100
		case "mixed":
			c.Messages = 20
		}
	}
	if c.Changes == 0 {
		c.Changes = 15
	}
	if c.Rounds == 0 {
		c.Rounds = 3
	}
	if c.Size == 0 {
		c.Size = 100 << 10
		if c.Scenario == "mixed" {
			c.Size = 2000
		}
	}
	if c.QResync == "" {
		c.QResync = "auto"
	}
	if c.MaxLag == 0 {
		c.MaxLag = 5 * time.Second
	}
	if c.IdleMin == 0 {
		c.IdleMin = 2 * time.Second
	}
	if c.IdleMax == 0 {
		c.IdleMax = max(c.IdleMin, 10*time.Second)
	}
	if c.OutsideConns == 0 {
		c.OutsideConns = 16
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = 2 * time.Second
	}
	if c.RunTimeout == 0 {
		// Logins through a loaded server take up to a few ms each at the
		// default concurrency; mailboxes fill at some thousands of
		// messages per second. Generous, but bounded.
		setup := 5*time.Minute + time.Duration(c.Clients)*20*time.Millisecond + time.Duration(c.Messages)*5*time.Millisecond
		work := c.Duration + c.Settle + c.MaxLag
		if c.Scenario == "resync" {
			work = time.Duration(c.Rounds) * (time.Minute + time.Duration(c.Messages)*time.Millisecond)
		}
		c.RunTimeout = setup + 2*work
	}
	return c
}

// validate reports what is wrong with a Config after withDefaults.
func (c Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	known := false
	for _, s := range Scenarios {
		known = known || s == c.Scenario
	}
	if !known {
		bad("unknown scenario %q (want one of %s)", c.Scenario, strings.Join(Scenarios, ", "))
	}
	if _, _, err := net.SplitHostPort(c.Target); err != nil {
		bad("target %q: want HOST:PORT", c.Target)
	}
	if _, _, err := net.SplitHostPort(c.Outside); err != nil {
		bad("outside %q: want HOST:PORT", c.Outside)
	}
	if c.Upstream != "" {
		if _, err := netip.ParseAddrPort(c.Upstream); err != nil {
			bad("upstream %q: want IP:PORT", c.Upstream)
		}
	}
	if len(c.Accounts) == 0 {
		bad("no accounts: give -user and -pass, -users FILE or -user-pattern")
	}
	if c.Clients < 1 || c.Clients > MaxClients {
		bad("clients %d: want 1 to %d", c.Clients, MaxClients)
	}
	if c.Duration < 0 || c.Duration > MaxDuration {
		bad("duration %v: want at most %v", c.Duration, MaxDuration)
	}
	if c.RunTimeout < 0 || c.RunTimeout > 2*MaxDuration {
		bad("run timeout %v: want at most %v", c.RunTimeout, 2*MaxDuration)
	}
	if c.Rate < 0 || c.Rate > 100_000 {
		bad("rate %v: want 0 to 100000 per second", c.Rate)
	}
	if c.Concurrency < 1 || c.Concurrency > 10_000 {
		bad("concurrency %d: want 1 to 10000", c.Concurrency)
	}
	if c.Timeout <= 0 || c.Settle < 0 || c.MaxLag <= 0 {
		bad("timeouts must be positive")
	}
	if c.Messages < 0 || c.Messages > MaxMessages {
		bad("messages %d: want 0 to %d", c.Messages, MaxMessages)
	}
	if c.Size < 64 || c.Size > MaxSize {
		bad("size %d: want 64 to %d bytes", c.Size, MaxSize)
	}
	if c.Changes < 1 || c.Rounds < 1 || c.Rounds > 1000 {
		bad("changes and rounds must be positive (rounds at most 1000)")
	}
	if c.Scenario == "resync" && c.Changes > c.Messages/2 {
		bad("changes %d: at most half of the %d messages", c.Changes, c.Messages)
	}
	if c.IdleMin <= 0 || c.IdleMax < c.IdleMin {
		bad("idle times: want 0 < idle-min <= idle-max")
	}
	if c.OutsideConns < 1 || c.OutsideConns > 5000 {
		bad("outside-conns %d: want 1 to 5000", c.OutsideConns)
	}
	switch c.QResync {
	case "auto", "on", "off":
	default:
		bad("qresync %q: want auto, on or off", c.QResync)
	}
	return errors.Join(errs...)
}

// ParseSources parses "127.0.0.2-127.0.0.9" or a comma-separated list of
// addresses and ranges into the source addresses of the clients.
func ParseSources(s string) ([]net.IP, error) {
	var out []net.IP
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("source %q: %v", part, err)
		}
		b := a
		if isRange {
			if b, err = netip.ParseAddr(strings.TrimSpace(hi)); err != nil {
				return nil, fmt.Errorf("source %q: %v", part, err)
			}
		}
		if a.Is4() != b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("source range %q: bad order or mixed families", part)
		}
		for x := a; ; x = x.Next() {
			out = append(out, net.IP(x.AsSlice()))
			if len(out) > 1024 {
				return nil, fmt.Errorf("sources %q: more than 1024 addresses", s)
			}
			if x == b {
				break
			}
		}
	}
	return out, nil
}

// PatternAccounts makes n accounts from printf patterns taking the
// account's number ("user%d", "pass%d"); a pattern without a verb is used
// as is.
func PatternAccounts(userPattern, passPattern string, n int) ([]Account, error) {
	if n < 1 || n > MaxClients {
		return nil, fmt.Errorf("accounts %d: want 1 to %d", n, MaxClients)
	}
	expand := func(p string, i int) string {
		if strings.Contains(p, "%") {
			return fmt.Sprintf(p, i)
		}
		return p
	}
	out := make([]Account, n)
	for i := range out {
		out[i] = Account{expand(userPattern, i), expand(passPattern, i)}
		if strings.Contains(out[i].User, "%!") || strings.Contains(out[i].Pass, "%!") {
			return nil, fmt.Errorf("pattern %q / %q: want one integer verb such as %%d or %%05d", userPattern, passPattern)
		}
	}
	return out, nil
}

// ReadAccounts reads accounts from a file: one "user pass" or "user:pass"
// a line; empty lines and lines starting with # are skipped.
func ReadAccounts(path string) ([]Account, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Account
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, p, ok := strings.Cut(line, " ")
		if !ok {
			u, p, ok = strings.Cut(line, ":")
		}
		if !ok || u == "" {
			return nil, fmt.Errorf("%s:%d: want \"user pass\" or \"user:pass\"", path, n)
		}
		out = append(out, Account{u, strings.TrimSpace(p)})
		if len(out) > MaxClients {
			return nil, fmt.Errorf("%s: more than %d accounts", path, MaxClients)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no accounts", path)
	}
	return out, nil
}
