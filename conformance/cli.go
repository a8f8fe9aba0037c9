package conformance

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Usage is the synopsis of the subcommand.
const Usage = `lemonproxy conformance -target HOST:PORT -user U -pass P [-user2 U2 -pass2 P2]
    [-tls|-starttls] [-insecure] [-outside HOST:PORT] [-only REGEXP]
    [-outside-user U -outside-pass P] [-outside-security plain|tls|starttls]
    [-format text|json|junit] [-out FILE] [-timeout D] [-event-wait D]
    [-deadline D] [-parallel N] [-force-caps "CAP ..."] [-list]`

// Main runs the conformance subcommand with args (after the word
// "conformance") and returns the exit status: 0 when every scenario ran
// and none failed, 1 when one failed, the target could not be tested at
// all, or the run was stopped (Ctrl-C, SIGTERM, -deadline) before every
// scenario ran, 2 for bad usage. cmd/lemonproxy calls it.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lemonproxy conformance", flag.ContinueOnError)
	// The flags are printed for -h only; a bad flag's error once, below.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  %s\n\nTests an IMAP server (or lemonproxy) RFC section by RFC section.\n\nFlags:\n", Usage)
		fs.PrintDefaults()
	}
	var (
		cfg             Config
		useTLS, useSTLS bool
		outsideSec      string
		only, format    string
		out             string
		list            bool
		forceCaps       string
	)
	fs.StringVar(&cfg.Target.Addr, "target", "", "server to test, HOST:PORT (required)")
	fs.StringVar(&cfg.User, "user", "", "user name (required)")
	fs.StringVar(&cfg.Pass, "pass", "", "password (required)")
	fs.StringVar(&cfg.User2, "user2", "", "a second, different account on the target, for the NOTIFY isolation scenario (skipped without it)")
	fs.StringVar(&cfg.Pass2, "pass2", "", "password of -user2")
	fs.StringVar(&cfg.OutsideUser, "outside-user", "", "user for the outside connection (default: -user); must reach the same mailboxes")
	fs.StringVar(&cfg.OutsidePass, "outside-pass", "", "password for the outside connection (default: -pass)")
	fs.BoolVar(&useTLS, "tls", false, "implicit TLS (port 993 style)")
	fs.BoolVar(&useSTLS, "starttls", false, "STARTTLS before logging in")
	fs.BoolVar(&cfg.Target.Insecure, "insecure", false, "do not verify the server certificate")
	fs.StringVar(&cfg.Outside.Addr, "outside", "", "where outside changes are made, HOST:PORT (default: -target), e.g. the upstream behind a proxy")
	fs.StringVar(&outsideSec, "outside-security", "", "security of -outside: plain, tls or starttls (default: as the target)")
	fs.StringVar(&only, "only", "", "run only scenarios whose ID matches this regular expression")
	fs.StringVar(&format, "format", "text", "output format: text, json or junit")
	fs.StringVar(&out, "out", "", "write the report to FILE instead of standard output")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "how long to wait for each response")
	fs.DurationVar(&cfg.EventWait, "event-wait", 6*time.Second, "how long an unsolicited event may take to arrive. A server that polls for changes must poll at least twice as often: lemonproxy's NOTIFY polls other mailboxes every notify-poll-interval (30s by default), so run it with -notify-poll-interval 3s against the default, or its NOTIFY scenarios fail")
	fs.DurationVar(&cfg.Deadline, "deadline", DefaultDeadline, "how long the whole run may take (0: no limit); at the deadline the scenarios under way are cut and the others reported not run, and the exit status is 1")
	fs.IntVar(&cfg.Parallel, "parallel", 1, "scenarios run at once")
	fs.BoolVar(&list, "list", false, "list the scenarios and exit")
	fs.StringVar(&forceCaps, "force-caps", "", "space-separated capabilities to treat as advertised, to run their scenarios anyway")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.Usage()
			return 0
		}
		fmt.Fprintf(stderr, "lemonproxy conformance: %v\nRun 'lemonproxy conformance -h' for the flags.\n", err)
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "lemonproxy conformance: "+format+"\n", a...)
		fmt.Fprintf(stderr, "Usage:\n  %s\nRun 'lemonproxy conformance -h' for the flags.\n", Usage)
		return 2
	}
	if list {
		for _, s := range Scenarios() {
			fmt.Fprintf(stdout, "%-40s RFC %d §%-8s %-8s %s\n", s.ID, s.RFC, s.Section, s.Level, s.Summary)
		}
		return 0
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if cfg.Target.Addr == "" || cfg.User == "" {
		return usageErr("-target and -user are required")
	}
	if useTLS && useSTLS {
		return usageErr("-tls and -starttls exclude each other")
	}
	switch {
	case useTLS:
		cfg.Target.Security = ImplicitTLS
	case useSTLS:
		cfg.Target.Security = StartTLS
	}
	if cfg.Outside.Addr != "" {
		cfg.Outside.Security, cfg.Outside.Insecure = cfg.Target.Security, cfg.Target.Insecure
		switch outsideSec {
		case "":
		case "plain", "none":
			cfg.Outside.Security = Plain
		case "tls":
			cfg.Outside.Security = ImplicitTLS
		case "starttls":
			cfg.Outside.Security = StartTLS
		default:
			return usageErr("-outside-security must be plain, tls or starttls")
		}
	}
	cfg.ForceCaps = strings.Fields(forceCaps)
	if only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			return usageErr("-only: %v", err)
		}
		if !slices.ContainsFunc(Scenarios(), func(s *Scenario) bool { return re.MatchString(s.ID) }) {
			return usageErr("-only %q matches no scenario (-list shows their IDs)", only)
		}
		cfg.Only = re
	}
	var write func(*Report, io.Writer) error
	switch format {
	case "text":
		write = (*Report).WriteText
	case "json":
		write = (*Report).WriteJSON
	case "junit":
		write = (*Report).WriteJUnit
	default:
		return usageErr("-format must be text, json or junit")
	}
	if cfg.Timeout <= 0 || cfg.EventWait <= 0 || cfg.Parallel <= 0 {
		return usageErr("-timeout, -event-wait and -parallel must be positive")
	}
	switch {
	case cfg.Deadline < 0:
		return usageErr("-deadline must not be negative (0: no limit)")
	case cfg.Deadline == 0:
		cfg.Deadline = -1 // Config's "none"; its zero value is the default
	}

	// Each scenario's line is printed as it ends (a run takes minutes):
	// on standard output, where the text report goes; on standard error
	// when a JSON or JUnit report goes to standard output. The text
	// report then adds only what follows the lines.
	streamed := format == "text" && out == ""
	progress := stdout
	if out == "" && !streamed {
		progress = stderr
	}
	var mu sync.Mutex
	cfg.Progress = func(res Result) {
		mu.Lock()
		defer mu.Unlock()
		io.WriteString(progress, res.Line())
	}
	if streamed {
		write = (*Report).WriteTextSummary
	}

	// Open the report file before the run, so that a bad -out does not
	// waste it.
	dst := stdout
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			fmt.Fprintln(stderr, "lemonproxy conformance:", err)
			return 1
		}
		defer f.Close()
		dst = f
	}
	// SIGINT and SIGTERM (what CI runners and container stops send) end
	// the run as Ctrl-C does: the scenarios under way finish and delete
	// their mailboxes, the others are not run, and the report is written.
	// Dying on SIGTERM instead would leave the mailboxes on the server. A
	// second signal kills at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "lemonproxy conformance:", err)
		return 1
	}
	if err := write(rep, dst); err != nil {
		fmt.Fprintln(stderr, "lemonproxy conformance: writing the report:", err)
		return 1
	}
	if out != "" {
		fmt.Fprintln(stdout, rep.CountLine())
	}
	if rep.Failed > 0 || rep.NotRun > 0 {
		return 1
	}
	return 0
}
