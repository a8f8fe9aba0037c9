package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Level is the strength of the requirement a scenario checks (RFC 2119),
// or Info for a report that cannot fail.
type Level string

// Requirement levels.
const (
	Must    Level = "MUST"
	MustNot Level = "MUST NOT"
	Should  Level = "SHOULD"
	Info    Level = "INFO"
)

// Scenario is one check of one requirement.
type Scenario struct {
	// ID is unique and stable, e.g. "7162-unchangedsince-modified"; the
	// number is the RFC.
	ID      string
	RFC     int
	Section string // "3.1.3"
	Level   Level
	// Caps are the capabilities the scenario needs; it is skipped when
	// the server does not advertise one of them after login.
	Caps []string
	// Summary says in one line what is checked, in our own words.
	Summary string
	// Run performs the check: nil means pass, a skip error (see skipf)
	// skip, any other error a failure whose text is the reason.
	Run func(t *T) error
}

// Outcome of a scenario.
type Outcome string

// Outcomes.
const (
	Pass Outcome = "PASS"
	Fail Outcome = "FAIL"
	Skip Outcome = "SKIP"
)

// Result is the outcome of one scenario.
type Result struct {
	ID       string  `json:"id"`
	RFC      int     `json:"rfc"`
	Section  string  `json:"section"`
	Level    Level   `json:"level"`
	Summary  string  `json:"summary"`
	Outcome  Outcome `json:"outcome"`
	Reason   string  `json:"reason,omitempty"`
	Duration float64 `json:"seconds"`
	// Cleanup is set when the scenario could not remove what it created.
	Cleanup string `json:"cleanup,omitempty"`
	// Transcript holds the last lines exchanged, for failures only.
	Transcript string `json:"transcript,omitempty"`
	// EventTimeout is set on a NOTIFY scenario that failed because an
	// event did not come within EventWait.
	EventTimeout bool `json:"event_timeout,omitempty"`
	// notRun marks a scenario skipped because the run was stopped first,
	// or cut by the run's deadline.
	notRun bool
	// Cut is set on a scenario the run's deadline stopped while it ran:
	// its outcome is SKIP (not run to its end), not a verdict.
	Cut bool `json:"cut,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Target   string    `json:"target"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Caps     []string  `json:"capabilities"`
	Results  []Result  `json:"results"`
	Passed   int       `json:"passed"`
	Failed   int       `json:"failed"`
	Skipped  int       `json:"skipped"`
	RunID    string    `json:"run_id"`
	Scenario int       `json:"scenarios"`
	// EventWait is the run's Config.EventWait, in seconds.
	EventWait float64 `json:"event_wait_s"`
	// EventTimeouts counts the NOTIFY scenarios that failed waiting for
	// an event; NeededPollInterval is then the longest interval a server
	// that polls for those events may use (NeededPollInterval(EventWait)),
	// in seconds.
	EventTimeouts      int     `json:"event_timeouts,omitempty"`
	NeededPollInterval float64 `json:"needed_poll_interval_s,omitempty"`
	// NotRun counts the scenarios skipped because the run was stopped
	// (its context cancelled: Ctrl-C, SIGTERM; or its deadline passed)
	// before they began, and those the deadline cut while they ran. A
	// report with NotRun > 0 is incomplete: no failure in it does not mean
	// the server passed.
	NotRun int `json:"not_run,omitempty"`
	// Deadline is the run's Config.Deadline in seconds (0: none), and
	// DeadlinePassed tells that it passed before every scenario had run.
	Deadline       float64 `json:"deadline_s,omitempty"`
	DeadlinePassed bool    `json:"deadline_passed,omitempty"`
}

// Failures returns the IDs of the failed scenarios, sorted.
func (r *Report) Failures() []string {
	var out []string
	for _, res := range r.Results {
		if res.Outcome == Fail {
			out = append(out, res.ID)
		}
	}
	slices.Sort(out)
	return out
}

// Result returns the result of scenario id.
func (r *Report) Result(id string) (Result, bool) {
	for _, res := range r.Results {
		if res.ID == id {
			return res, true
		}
	}
	return Result{}, false
}

// Config says what to test and how.
type Config struct {
	// Target is the server under test; User and Pass log in to it.
	Target     Endpoint
	User, Pass string
	// Outside is where changes "made by someone else" come from. Its zero
	// value means Target. Pointing it at the upstream behind a proxy
	// checks that the proxy notices changes it did not make itself.
	Outside Endpoint
	// OutsideUser and OutsidePass log in to Outside; empty means User and
	// Pass. They must reach the same mailboxes (the same account, or a
	// login such as Dovecot's master user that opens it).
	OutsideUser, OutsidePass string
	// User2 and Pass2, if set, log in to a second, different account on
	// Target: the isolation scenario checks that its changes are never
	// announced to User's sessions. Scenarios that need it are skipped
	// without it.
	User2, Pass2 string
	// Only, when set, runs only the scenarios whose ID matches.
	Only *regexp.Regexp
	// Timeout bounds every wait for a response to a command. Default 10s.
	Timeout time.Duration
	// EventWait is how long an unsolicited event (IDLE, NOTIFY) may take
	// to arrive after the change that causes it. Default 6s: Dovecot
	// delays IDLE notifications by about half a second on purpose, and
	// other servers poll.
	EventWait time.Duration
	// QuietWait is how long the suite listens to show that something is
	// not sent (no tagged OK before DONE, no events after NOTIFY NONE).
	// Default 1.5s.
	QuietWait time.Duration
	// ForceCaps are added to what the server advertises, so scenarios run
	// that would be skipped: the suite's own "it can fail" test uses it
	// against a server that lacks the extensions.
	ForceCaps []string
	// Prefix starts every mailbox name the suite creates. Default "lpconf".
	Prefix string
	// Deadline bounds the whole run, from Run's start. Default 10 minutes
	// (a full sequential run against Dovecot takes about 140 s); negative
	// means none. Every scenario has its own waits (Timeout, EventWait),
	// but a server that stops answering would cost each scenario its
	// timeouts, scenarios × Timeout in all: at the deadline the scenarios
	// under way are cut (their connections closed, their cleanup not
	// tried) and those not begun are not run, each reported so with the
	// reason, and Report.DeadlinePassed is set.
	Deadline time.Duration
	// Parallel is how many scenarios run at once. Default 1. Each
	// scenario uses its own mailboxes, so they do not disturb each other,
	// but a server may limit connections per user.
	Parallel int
	// Progress, if set, is called after each scenario (from the goroutine
	// that ran it).
	Progress func(Result)
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.EventWait <= 0 {
		c.EventWait = 6 * time.Second
	}
	if c.QuietWait <= 0 {
		c.QuietWait = 1500 * time.Millisecond
	}
	if c.Outside.Addr == "" {
		c.Outside = c.Target
	}
	if c.OutsideUser == "" {
		c.OutsideUser, c.OutsidePass = c.User, c.Pass
	}
	if c.Prefix == "" {
		c.Prefix = "lpconf"
	}
	if c.Parallel <= 0 {
		c.Parallel = 1
	}
	if c.Deadline == 0 {
		c.Deadline = DefaultDeadline
	}
	return c
}

// DefaultDeadline is Config.Deadline's default.
const DefaultDeadline = 10 * time.Minute

// deadlineError is the cause of the run's deadline context.
type deadlineError struct{ d time.Duration }

func (e *deadlineError) Error() string { return fmt.Sprintf("the run's deadline of %v passed", e.d) }

// Target returns a configuration for a plain-text server at addr: the
// entry point for pointing the suite at a proxy under test.
func Target(addr, user, pass string) Config {
	return Config{Target: Endpoint{Addr: addr}, User: user, Pass: pass}
}

// RunTarget runs every scenario against a plain-text server at addr.
func RunTarget(ctx context.Context, addr, user, pass string) (*Report, error) {
	return Run(ctx, Target(addr, user, pass))
}

// Run runs the suite. It returns an error only when the target cannot be
// reached or logged in to at all; every scenario's outcome is in the
// report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	start := time.Now()
	// The deadline is a context of its own, not ctx's child's alone: ctx
	// ending (Ctrl-C, SIGTERM) stops new scenarios but lets those under
	// way finish and clean up; the deadline ending cuts them too.
	deadline := context.WithoutCancel(ctx)
	if cfg.Deadline > 0 {
		var cancel context.CancelFunc
		deadline, cancel = context.WithTimeoutCause(deadline, cfg.Deadline, &deadlineError{cfg.Deadline})
		defer cancel()
	}
	caps, err := probe(deadline, cfg)
	if err != nil {
		return nil, err
	}
	for _, c := range cfg.ForceCaps {
		caps[strings.ToUpper(c)] = true
	}
	runID := randomHex(3)
	rep := &Report{Target: cfg.Target.Addr, Started: start, RunID: runID, EventWait: cfg.EventWait.Seconds(), Deadline: max(cfg.Deadline, 0).Seconds()}
	for c := range caps {
		rep.Caps = append(rep.Caps, c)
	}
	slices.Sort(rep.Caps)

	var todo []*Scenario
	for _, s := range Scenarios() {
		if cfg.Only == nil || cfg.Only.MatchString(s.ID) {
			todo = append(todo, s)
		}
	}
	rep.Results = make([]Result, len(todo))
	rep.Scenario = len(todo)
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(cfg.Parallel, max(len(todo), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				res := runOne(ctx, deadline, cfg, caps, runID, i, todo[i])
				rep.Results[i] = res
				if cfg.Progress != nil {
					cfg.Progress(res)
				}
			}
		}()
	}
	for i := range todo {
		work <- i
	}
	close(work)
	wg.Wait()
	for _, r := range rep.Results {
		switch r.Outcome {
		case Pass:
			rep.Passed++
		case Fail:
			rep.Failed++
		case Skip:
			rep.Skipped++
		}
		if r.EventTimeout {
			rep.EventTimeouts++
		}
		if r.notRun {
			rep.NotRun++
		}
	}
	rep.DeadlinePassed = rep.NotRun > 0 && deadline.Err() != nil
	if rep.EventTimeouts > 0 {
		rep.NeededPollInterval = NeededPollInterval(cfg.EventWait).Seconds()
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// probe logs in once to learn the capabilities advertised after login.
func probe(deadline context.Context, cfg Config) (map[string]bool, error) {
	c, err := dial(deadline, cfg.Target, cfg.Timeout, nil, "probe")
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := login(c, cfg.User, cfg.Pass); err != nil {
		return nil, err
	}
	caps, err := capabilities(c)
	if err != nil {
		return nil, err
	}
	c.Do("LOGOUT")
	return caps, nil
}

// login logs in with LOGIN.
func login(c *Client, user, pass string) error {
	res, err := c.Do("LOGIN " + quote(user) + " " + quote(pass))
	if err != nil {
		return fmt.Errorf("login as %s: %w", user, err)
	}
	if !res.OK() {
		return fmt.Errorf("login as %s refused: %s", user, status(res))
	}
	return nil
}

// capabilities asks for CAPABILITY and returns the words upper-cased.
func capabilities(c *Client) (map[string]bool, error) {
	res, err := c.Do("CAPABILITY")
	if err != nil {
		return nil, err
	}
	r := find(res.Untagged, "CAPABILITY")
	if !res.OK() || r == nil {
		return nil, fmt.Errorf("CAPABILITY: expected an untagged CAPABILITY and OK, got %s / %s", describe(res.Untagged), status(res))
	}
	caps := map[string]bool{}
	for _, v := range r.Fields {
		if w, ok := asAtom(v); ok {
			caps[strings.ToUpper(w)] = true
		}
	}
	return caps, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// skipError marks a scenario that could not be run for a reason other than
// the server's fault.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }

func skipf(format string, args ...any) error {
	return &skipError{fmt.Sprintf(format, args...)}
}

// failf formats a failure reason.
func failf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// runOne runs scenario s. ctx ending before it begins leaves it not run;
// deadline ending does that too, and while it runs cuts it.
func runOne(ctx, deadline context.Context, cfg Config, caps map[string]bool, runID string, idx int, s *Scenario) (res Result) {
	res = Result{ID: s.ID, RFC: s.RFC, Section: s.Section, Level: s.Level, Summary: s.Summary}
	start := time.Now()
	defer func() { res.Duration = time.Since(start).Round(time.Millisecond).Seconds() }()
	for _, c := range s.Caps {
		if !caps[c] {
			res.Outcome, res.Reason = Skip, "capability "+c+" not advertised"
			return res
		}
	}
	if deadline.Err() != nil {
		res.Outcome, res.Reason, res.notRun = Skip, "not run: "+context.Cause(deadline).Error(), true
		return res
	}
	if err := ctx.Err(); err != nil {
		res.Outcome, res.Reason, res.notRun = Skip, "not run: "+err.Error(), true
		return res
	}
	t := &T{cfg: cfg, caps: caps, base: fmt.Sprintf("%s-%s-%d", cfg.Prefix, runID, idx), tr: &transcript{}, deadline: deadline}
	// The deadline closes the scenario's connections, which ends whatever
	// it waits for; it goes on being watched through cleanup.
	stopCut := context.AfterFunc(deadline, t.cut)
	defer stopCut()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic in scenario: %v\n%s", p, debug.Stack())
			}
		}()
		return s.Run(t)
	}()
	// Taken before cleanup, which may itself run into the deadline: a
	// scenario that had failed before it keeps its failure.
	cut := err != nil && deadline.Err() != nil
	if cerr := t.cleanup(); cerr != nil {
		res.Cleanup = cerr.Error()
	}
	var skip *skipError
	switch {
	case cut:
		// Whatever the scenario saw after the cut is the cut's doing:
		// no verdict on the server.
		res.Outcome, res.Reason, res.notRun, res.Cut = Skip, "cut: "+context.Cause(deadline).Error()+" while it ran (it had got: "+err.Error()+")", true, true
		res.Transcript = t.tr.String()
	case err == nil:
		res.Outcome, res.Reason = Pass, t.note
	case errors.As(err, &skip):
		res.Outcome, res.Reason = Skip, skip.reason
	default:
		res.Outcome, res.Reason = Fail, err.Error()
		res.Transcript = t.tr.String()
		var nt *notifyTimeoutError
		res.EventTimeout = errors.As(err, &nt)
	}
	return res
}
