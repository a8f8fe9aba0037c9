package conformance

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// onlyFromEnv lets a developer run part of the suite in the tests:
// LEMONPROXY_CONFORMANCE_ONLY=REGEXP.
func onlyFromEnv(t *testing.T) *regexp.Regexp {
	if s := os.Getenv("LEMONPROXY_CONFORMANCE_ONLY"); s != "" {
		return regexp.MustCompile(s)
	}
	return nil
}

// runAgainst runs the suite and logs the text report.
func runAgainst(t *testing.T, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	rep.WriteText(&b)
	t.Logf("report:\n%s", b.String())
	if os.Getenv("LEMONPROXY_CONFORMANCE_TRANSCRIPTS") == "1" {
		for _, r := range rep.Results {
			if r.Outcome == Fail {
				t.Logf("transcript of %s:\n%s", r.ID, r.Transcript)
			}
		}
	}
	return rep
}

// dovecotFailures are the scenarios Dovecot 2.3 (full profile) fails: its
// known departures from the RFCs (DESIGN.md §4, docs/conformance.md). The
// test asserts this exact set, so a Dovecot upgrade or a scenario change
// that alters it shows up.
var dovecotFailures = []string{
	"5161-enable-before-login",
	"5161-enable-needs-argument",
	"5161-enabled-always-sent",
	"5465-badevent",
	"5465-flagchange-alone-bad",
	"5465-flagchange-has-uid",
	"5465-messageexpunge-alone-bad",
	"5465-messagenew-alone-bad",
	"5465-selected-flagchange",
	"5465-selected-messageexpunge",
	"5465-selected-messagenew",
	"7162-changedsince-zero-bad",
	"7162-enabling-changedsince",
	"7162-enabling-enable",
	"7162-enabling-examine",
	"7162-enabling-fetch-modseq",
	"7162-enabling-search-modseq",
	"7162-enabling-select",
	"7162-enabling-status",
	"7162-enabling-unchangedsince",
	"7162-implicit-seen-has-modseq",
	"7162-plain-select-highestmodseq",
	"7162-qresync-modseq-zero-bad",
	"7162-store-answer-has-modseq",
}

func TestDovecotFull(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	only := onlyFromEnv(t)
	cfg := Target(dc.Addr, "alice", "alicepass")
	cfg.Only = only
	cfg.Parallel = 1
	rep := runAgainst(t, cfg)
	for _, r := range rep.Results {
		if r.Outcome == Skip {
			t.Errorf("%s skipped against Dovecot's full profile: %s", r.ID, r.Reason)
		}
		if r.Cleanup != "" {
			t.Errorf("%s did not clean up: %s", r.ID, r.Cleanup)
		}
	}
	want := slices.Clone(dovecotFailures)
	if only != nil {
		want = slices.DeleteFunc(want, func(id string) bool { return !only.MatchString(id) })
	}
	if got := rep.Failures(); !slices.Equal(got, want) {
		t.Errorf("Dovecot failures changed:\n got %s\nwant %s", strings.Join(got, " "), strings.Join(want, " "))
	}
}
