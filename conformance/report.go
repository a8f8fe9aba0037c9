package conformance

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// RFCSummary counts the outcomes of one RFC's scenarios.
type RFCSummary struct {
	RFC                     int
	Title                   string
	Passed, Failed, Skipped int
}

// reportRFCs returns RFCs followed by any other RFC a result names, so
// that no result is left out of the per-RFC table or the JUnit report.
func (r *Report) reportRFCs() []RFC {
	out := slices.Clone(RFCs)
	for _, res := range r.Results {
		if !slices.ContainsFunc(out, func(x RFC) bool { return x.Number == res.RFC }) {
			out = append(out, RFC{Number: res.RFC, Title: fmt.Sprintf("RFC %d", res.RFC)})
		}
	}
	return out
}

// Summary returns the per-RFC counts in report order.
func (r *Report) Summary() []RFCSummary {
	var out []RFCSummary
	for _, rfc := range r.reportRFCs() {
		s := RFCSummary{RFC: rfc.Number, Title: rfc.Title}
		for _, res := range r.Results {
			if res.RFC != rfc.Number {
				continue
			}
			switch res.Outcome {
			case Pass:
				s.Passed++
			case Fail:
				s.Failed++
			case Skip:
				s.Skipped++
			}
		}
		if s.Passed+s.Failed+s.Skipped > 0 {
			out = append(out, s)
		}
	}
	return out
}

// CountLine is the closing line: "N passed, M failed" plus ", K skipped"
// when any were skipped, "; C scenario(s) could not clean up" when some
// left mailboxes or entries on the server, and "; interrupted, J not run"
// when the run was stopped before it ended ("; deadline of D passed, J not
// run" when its deadline stopped it).
func (r *Report) CountLine() string {
	s := fmt.Sprintf("%d passed, %d failed", r.Passed, r.Failed)
	if r.Skipped > 0 {
		s += fmt.Sprintf(", %d skipped", r.Skipped)
	}
	switch n := r.cleanupFailures(); n {
	case 0:
	case 1:
		s += "; 1 scenario could not clean up"
	default:
		s += fmt.Sprintf("; %d scenarios could not clean up", n)
	}
	switch {
	case r.NotRun > 0 && r.DeadlinePassed:
		s += fmt.Sprintf("; deadline of %v passed, %d not run", r.deadline(), r.NotRun)
	case r.NotRun > 0:
		s += fmt.Sprintf("; interrupted, %d not run", r.NotRun)
	}
	return s
}

// deadline returns Deadline as a duration.
func (r *Report) deadline() time.Duration {
	return time.Duration(r.Deadline * float64(time.Second)).Round(time.Millisecond)
}

// cleanupFailures counts the results whose cleanup failed.
func (r *Report) cleanupFailures() int {
	n := 0
	for _, res := range r.Results {
		if res.Cleanup != "" {
			n++
		}
	}
	return n
}

// WriteText writes one line per scenario, a per-RFC table and the count
// line: what an operator reads at a glance.
func (r *Report) WriteText(w io.Writer) error {
	for _, res := range r.Results {
		if _, err := io.WriteString(w, res.Line()); err != nil {
			return err
		}
	}
	return r.WriteTextSummary(w)
}

// Line is the result's line of the text report, newline included. Its
// columns have fixed widths, so that lines printed as the scenarios end
// (lemonproxy conformance does) line up without the whole report.
func (res Result) Line() string {
	reason := res.Reason
	if res.Cleanup != "" {
		reason += " (cleanup: " + res.Cleanup + ")"
	}
	return fmt.Sprintf("%-4s  %-36s  %-17s  %-6s  %s\n", res.Outcome, res.ID, fmt.Sprintf("RFC %d §%s", res.RFC, res.Section), res.Level, oneLine(reason))
}

// WriteTextSummary writes what follows the scenarios' lines in the text
// report: the target, the per-RFC table, a note on NOTIFY events that did
// not come in time, and the count line.
func (r *Report) WriteTextSummary(w io.Writer) error {
	fmt.Fprintf(w, "\nTarget %s, %.1fs\n\n", r.Target, r.Seconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RFC\tTitle\tPassed\tFailed\tSkipped")
	for _, s := range r.Summary() {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\n", s.RFC, s.Title, s.Passed, s.Failed, s.Skipped)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := r.EventTimeouts; n > 0 {
		need := NeededPollInterval(time.Duration(r.EventWait * float64(time.Second)))
		fmt.Fprintf(w, "\n%d NOTIFY scenario(s) failed waiting %v for an event. A server that polls for them needs a poll interval of at most %v:\n"+
			"for lemonproxy, whose NOTIFY polls mailboxes other than the selected one and INBOX every notify-poll-interval (30s by default),\n"+
			"run it with -notify-poll-interval %v (or this suite with an -event-wait longer than its interval).\n",
			n, time.Duration(r.EventWait*float64(time.Second)), need, need)
	}
	if r.DeadlinePassed {
		fmt.Fprintf(w, "\nThe run's deadline of %v (-deadline) passed: the scenarios marked \"not run\" did not begin and those marked \"cut\" were stopped\n"+
			"while they ran, their connections closed. A server that stops answering costs each scenario its -timeout; raise -deadline\n"+
			"if the server is only slow. The report is incomplete.\n", r.deadline())
	}
	_, err := fmt.Fprintf(w, "\n%s\n", r.CountLine())
	return err
}

// oneLine keeps a reason on its report line.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " ")
}

// WriteJSON writes the whole report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// JUnit XML, as CI systems read it: one testsuite per RFC.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
	SystemErr string        `xml:"system-err,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Body    string `xml:",chardata"`
}

func seconds(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) }

// WriteJUnit writes the report as JUnit XML. A scenario the run's deadline
// stopped (not begun, or cut while it ran) is an <error type="deadline">,
// not a <skipped>: in JUnit "skipped" is a test left out on purpose (here, an
// extension the server lacks), "error" one that could not complete, and CI
// systems count errors with failures, so an incomplete run does not look
// green. A run stopped by Ctrl-C or SIGTERM keeps its not-run scenarios
// as <skipped>: someone chose to stop it.
func (r *Report) WriteJUnit(w io.Writer) error {
	out := junitSuites{Name: "lemonproxy conformance " + r.Target, Tests: len(r.Results),
		Failures: r.Failed, Time: seconds(r.Seconds)}
	for _, rfc := range r.reportRFCs() {
		s := junitSuite{Name: fmt.Sprintf("RFC %d %s", rfc.Number, rfc.Title)}
		var total float64
		for _, res := range r.Results {
			if res.RFC != rfc.Number {
				continue
			}
			total += res.Duration
			c := junitCase{
				Name:      fmt.Sprintf("%s (§%s %s)", res.ID, res.Section, res.Level),
				Classname: fmt.Sprintf("conformance.rfc%d", res.RFC),
				Time:      seconds(res.Duration),
				SystemOut: res.Summary,
			}
			if res.Cleanup != "" {
				c.SystemErr = "cleanup: " + res.Cleanup
			}
			switch {
			case res.Outcome == Skip && r.DeadlinePassed && (res.notRun || res.Cut):
				s.Errors++
				c.Error = &junitMessage{Message: oneLine(res.Reason), Type: "deadline", Body: res.Transcript}
			case res.Outcome == Fail:
				s.Failures++
				c.Failure = &junitMessage{Message: oneLine(res.Reason), Type: string(res.Level), Body: res.Transcript}
			case res.Outcome == Skip:
				s.Skipped++
				c.Skipped = &junitMessage{Message: res.Reason}
			case res.Outcome == Pass:
				if res.Reason != "" {
					c.SystemOut += "\n" + res.Reason
				}
			}
			s.Cases = append(s.Cases, c)
		}
		if len(s.Cases) == 0 {
			continue
		}
		s.Tests, s.Time = len(s.Cases), seconds(total)
		out.Errors += s.Errors
		out.Skipped += s.Skipped
		out.Suites = append(out.Suites, s)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
