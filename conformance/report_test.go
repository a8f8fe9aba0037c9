package conformance

import (
	"bytes"
	"encoding/xml"
	"testing"
)

// TestReportHasEveryScenario: the per-RFC table and the JUnit report,
// which CI reads, hold every scenario the run had. A scenario of an RFC
// missing from RFCs was counted in the totals but had no test case, so
// its failure showed in no test a CI system lists.
func TestReportHasEveryScenario(t *testing.T) {
	rep := &Report{Target: "test"}
	for _, s := range Scenarios() {
		rep.Results = append(rep.Results, Result{ID: s.ID, RFC: s.RFC, Section: s.Section, Level: s.Level, Outcome: Fail, Reason: "expected x, got y"})
		rep.Failed++
	}
	total := 0
	for _, s := range rep.Summary() {
		total += s.Failed
	}
	if total != rep.Failed {
		t.Errorf("the per-RFC table counts %d failures of %d", total, rep.Failed)
	}
	var b bytes.Buffer
	if err := rep.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name     string `xml:"name,attr"`
			Failures int    `xml:"failures,attr"`
			Cases    []struct {
				Name string `xml:"name,attr"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &suites); err != nil {
		t.Fatal(err)
	}
	cases, failures := 0, 0
	for _, s := range suites.Suites {
		cases += len(s.Cases)
		failures += s.Failures
	}
	if cases != len(rep.Results) || failures != rep.Failed || suites.Failures != rep.Failed {
		t.Errorf("JUnit: %d test cases and %d failures in the suites (%d at the top) for %d failed scenarios", cases, failures, suites.Failures, rep.Failed)
	}
}

// TestReportShowsCleanupFailures: a scenario that could not remove what it
// made says so in every format, the JUnit report (which CI shows) and the
// count line included, or a nightly run piles up mailboxes unnoticed.
func TestReportShowsCleanupFailures(t *testing.T) {
	rep := &Report{Target: "test", Passed: 1, Results: []Result{{ID: "3501-delete", RFC: 3501, Section: "6.3.4", Level: Must, Outcome: Pass,
		Cleanup: `DELETE lpconf-1-1: "C9 NO [INUSE] busy"`}}}
	if got, want := rep.CountLine(), "1 passed, 0 failed; 1 scenario could not clean up"; got != want {
		t.Errorf("count line %q, want %q", got, want)
	}
	var b bytes.Buffer
	if err := rep.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b.Bytes(), []byte("<system-err>cleanup: DELETE lpconf-1-1")) {
		t.Errorf("the JUnit report does not show the failed cleanup:\n%s", b.String())
	}
}
