package load

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
)

// Usage is the synopsis of the subcommand.
const Usage = `lemonproxy load SCENARIO -target HOST:PORT
    (-user U -pass P | -users FILE | -user-pattern 'u%05d' -pass-pattern 'p%05d' -accounts N)
    [-clients N] [-duration D] [-rate R] [-sources 127.0.0.2-127.0.0.9] [-compress]
    [-outside HOST:PORT] [-target-pid PID] [-dovecot PID] [-upstream IP:PORT]
    [-messages M] [-changes K] [-rounds R] [-size B] [-format table|json] [-out FILE]
  SCENARIO is idle, push, resync, fetch or mixed.`

// Main runs the load subcommand with args (after the word "load") and
// returns the exit status: 0 when the run completed without errors, 1
// when it failed or counted errors, 2 for bad usage. cmd/lemonproxy calls
// it.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lemonproxy load", flag.ContinueOnError)
	// The flags are printed for -h only; a bad flag's error once, below.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  %s\n\n%s\n\nFlags:\n", Usage, scenarioHelp)
		fs.PrintDefaults()
	}
	var (
		cfg                      Config
		user, pass, usersFile    string
		userPattern, passPattern string
		nAccounts                int
		sources                  string
		format, out              string
		quiet                    bool
	)
	scenario := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		scenario, args = args[0], args[1:]
	}
	fs.StringVar(&scenario, "scenario", scenario, "scenario (instead of the first argument): "+strings.Join(Scenarios, ", "))
	fs.StringVar(&cfg.Target, "target", "", "server under test, HOST:PORT (required)")
	fs.StringVar(&cfg.Outside, "outside", "", "where changes \"by someone else\" are made (push's APPENDs, mixed's and resync's changes, filling mailboxes), HOST:PORT; default -target. Behind a proxy, the upstream")
	fs.StringVar(&user, "user", "", "one account for every client")
	fs.StringVar(&pass, "pass", "", "its password")
	fs.StringVar(&usersFile, "users", "", "file of accounts, one \"user pass\" or \"user:pass\" a line")
	fs.StringVar(&userPattern, "user-pattern", "", "account names from a pattern taking the account number, e.g. 'user%d' (with -accounts)")
	fs.StringVar(&passPattern, "pass-pattern", "", "passwords from a pattern, e.g. 'pass%d' (default: -pass)")
	fs.IntVar(&nAccounts, "accounts", 0, "number of accounts for -user-pattern; client i uses account i mod N")
	fs.IntVar(&cfg.Clients, "clients", 0, "client sessions (default: resync 1, fetch 4, others 10)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "main phase: idle's hold (5s), push's APPENDs (20s), fetch (20s), mixed (1m)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "push: APPENDs per second (10); mixed: changes per second (10); idle: sessions opened per second (0: unpaced)")
	fs.StringVar(&sources, "sources", "", "local source addresses, e.g. 127.0.0.2-127.0.0.9 (each has its own ephemeral ports; for more than about 25,000 clients)")
	fs.BoolVar(&cfg.Compress, "compress", false, "COMPRESS=DEFLATE in every client session")
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, "sessions being opened at once (64)")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "how long to wait for any response (30s)")
	fs.DurationVar(&cfg.Settle, "settle", 0, "wait before measuring idle memory, and for late pushes (2s)")
	fs.DurationVar(&cfg.RunTimeout, "run-timeout", 0, "bound on the whole run (default: from the duration, clients and messages)")
	fs.IntVar(&cfg.TargetPID, "target-pid", 0, "the target's process, for its RSS and CPU (a local lemonproxy)")
	fs.StringVar(&cfg.TargetMetrics, "target-metrics", "", "a lemonproxy's metrics URL (http://ADDR/metrics of its -metrics listener), for its heap")
	fs.IntVar(&cfg.DovecotPID, "dovecot", 0, "a Dovecot master process: PSS and CPU of it and its children")
	fs.StringVar(&cfg.Upstream, "upstream", "", "count ESTABLISHED connections to this IP:PORT (the proxy's upstream): those of -target-pid when given, else every process's but the tool's")
	fs.StringVar(&cfg.Mailbox, "mailbox", "", "resync's and fetch's mailbox on the first account (lemonload-resync, lemonload-fetch)")
	fs.IntVar(&cfg.Messages, "messages", 0, "resync: mailbox size (10000); fetch: messages (100); mixed: the tool's own messages per INBOX (20)")
	fs.IntVar(&cfg.Changes, "changes", 0, "resync: changes per round, a third of them expunges (15)")
	fs.IntVar(&cfg.Rounds, "rounds", 0, "resync: rounds of changes and resyncs (3)")
	fs.IntVar(&cfg.Size, "size", 0, "bytes per message appended by fetch (102400) and mixed (2000)")
	fs.StringVar(&cfg.QResync, "qresync", "auto", "resync with QRESYNC: auto (if advertised), on or off")
	fs.DurationVar(&cfg.MaxLag, "max-lag", 0, "mixed: how late a change may reach a client (5s)")
	fs.DurationVar(&cfg.IdleMin, "idle-min", 0, "mixed: shortest IDLE (2s)")
	fs.DurationVar(&cfg.IdleMax, "idle-max", 0, "mixed: longest IDLE (10s)")
	fs.IntVar(&cfg.OutsideConns, "outside-conns", 0, "outside connections at most (push: one per account as far as the open-file limit allows; others 16)")
	fs.Int64Var(&cfg.Seed, "seed", 0, "mixed: random seed (default: from the clock; printed in the result)")
	fs.StringVar(&cfg.Label, "label", "", "name of the run in results and plots, e.g. proxy or dovecot")
	fs.StringVar(&format, "format", "table", "output: table or json")
	fs.StringVar(&out, "out", "", "write the result to FILE instead of standard output")
	fs.BoolVar(&quiet, "quiet", false, "no progress line on standard error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.Usage()
			return 0
		}
		fmt.Fprintf(stderr, "lemonproxy load: %v\nRun 'lemonproxy load -h' for the flags.\n", err)
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "lemonproxy load: "+format+"\n", a...)
		fmt.Fprintf(stderr, "Usage:\n  %s\nRun 'lemonproxy load -h' for the flags.\n", Usage)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if scenario == "" {
		return usageErr("name a scenario: %s", strings.Join(Scenarios, ", "))
	}
	cfg.Scenario = scenario
	if cfg.Target == "" {
		return usageErr("-target is required")
	}
	if format != "table" && format != "json" {
		return usageErr("-format must be table or json")
	}
	switch {
	case usersFile != "":
		if user != "" || userPattern != "" {
			return usageErr("-users excludes -user and -user-pattern")
		}
		accts, err := ReadAccounts(usersFile)
		if err != nil {
			return usageErr("%v", err)
		}
		cfg.Accounts = accts
	case userPattern != "":
		if user != "" {
			return usageErr("-user-pattern excludes -user")
		}
		if nAccounts < 1 {
			return usageErr("-user-pattern needs -accounts N")
		}
		if passPattern == "" {
			passPattern = pass
		}
		accts, err := PatternAccounts(userPattern, passPattern, nAccounts)
		if err != nil {
			return usageErr("%v", err)
		}
		cfg.Accounts = accts
	case user != "":
		cfg.Accounts = []Account{{user, pass}}
	default:
		return usageErr("give -user and -pass, -users FILE or -user-pattern with -accounts")
	}
	if sources != "" {
		ips, err := ParseSources(sources)
		if err != nil {
			return usageErr("-sources: %v", err)
		}
		cfg.Sources = ips
	}
	if !quiet {
		cfg.Progress = stderr
	}
	if err := cfg.withDefaults().validate(); err != nil {
		return usageErr("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, runErr := Run(ctx, cfg)
	status := 0
	if res != nil {
		dst := stdout
		if out != "" {
			f, err := os.Create(out)
			if err != nil {
				fmt.Fprintln(stderr, "lemonproxy load:", err)
				return 1
			}
			defer f.Close()
			dst = f
		}
		var err error
		if format == "json" {
			err = res.WriteJSON(dst)
		} else {
			err = res.WriteTable(dst)
		}
		if err != nil {
			fmt.Fprintln(stderr, "lemonproxy load: writing the result:", err)
			return 1
		}
		if res.Errors > 0 {
			fmt.Fprintf(stderr, "lemonproxy load: %d errors\n", res.Errors)
			status = 1
		}
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "lemonproxy load:", runErr)
		status = 1
	}
	return status
}

const scenarioHelp = `Scenarios:
  idle    -clients sessions log in, SELECT INBOX and IDLE; reports the memory per
          idle session of -target-pid (RSS) and -dovecot (PSS), and the
          connections to -upstream.
  push    idle, then APPENDs from -outside at -rate for -duration, one account
          after another; latency from each APPEND's tagged OK to every session
          of the account reading its EXISTS (p50, p90, p99, max).
  resync  a mailbox of -messages messages on the first account; per round,
          -changes changes from -outside, then every client reconnects with
          QRESYNC (bytes, time); beside it a full UID FETCH 1:* (FLAGS).
  fetch   a mailbox of -messages messages of -size bytes; clients fetch every
          body over and over for -duration: MB/s, CPU per MB, compression.
  mixed   clients connect, resync with QRESYNC, fetch a few bodies, IDLE, drop
          the link or log out, and reconnect, while -outside changes their
          INBOXes at -rate; every view is checked against a model of what the
          tool did. Any inconsistency is an error.
Every run exits 1 if it counted any error.`
