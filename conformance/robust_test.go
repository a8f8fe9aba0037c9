package conformance

import (
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

var (
	searchNums = regexp.MustCompile(`^\* SEARCH((?: \d+)+)( \(MODSEQ \d+\))?\r\n$`)
	esearchAll = regexp.MustCompile(`^(\* ESEARCH .*\bALL )([\d:,]+)(.*\r\n)$`)
)

// reverseSearches lists the numbers of every SEARCH response, and the
// parts of every ESEARCH ALL set, backwards: RFC 3501 gives a SEARCH
// response's numbers no order and a sequence set is a set, so the server
// stays correct. n counts the lines changed.
func reverseSearches(n *atomic.Int32) func(string) string {
	return func(line string) string {
		if m := searchNums.FindStringSubmatch(line); m != nil {
			nums := strings.Fields(m[1])
			if len(nums) < 2 {
				return line
			}
			slices.Reverse(nums)
			n.Add(1)
			return "* SEARCH " + strings.Join(nums, " ") + m[2] + "\r\n"
		}
		if m := esearchAll.FindStringSubmatch(line); m != nil {
			parts := strings.Split(m[2], ",")
			for i, p := range parts {
				if lo, hi, ok := strings.Cut(p, ":"); ok {
					parts[i] = hi + ":" + lo
				}
			}
			slices.Reverse(parts)
			if rev := strings.Join(parts, ","); rev != m[2] {
				n.Add(1)
				return m[1] + rev + m[3]
			}
		}
		return line
	}
}

// TestSearchOrderIsFree runs the scenarios that check SEARCH results, or
// take their messages' UIDs from UID SEARCH ALL, against Dovecot with the
// numbers of every SEARCH answer reversed. The server is as correct as
// before, so every scenario must pass as it does directly.
func TestSearchOrderIsFree(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	var reversed atomic.Int32
	r := startRelay(t, dc.Addr, reverseSearches(&reversed), nil)
	cfg := Target(r.addr(), "alice", "alicepass")
	cfg.Outside = Endpoint{Addr: dc.Addr}
	cfg.Only = regexp.MustCompile(`^(3501-(recent-first-session|uid-search|uid-range-star|search-flags|expunge-sequence)|4731-.*|5182-.*|5032-.*|7162-search-modseq.*|7888-.*)$`)
	rep := runAgainst(t, cfg)
	if rep.Passed < 20 {
		t.Errorf("%d scenarios passed, expected at least 20", rep.Passed)
	}
	for _, res := range rep.Results {
		if res.Outcome != Pass {
			t.Errorf("%s: %s %s", res.ID, res.Outcome, res.Reason)
		}
	}
	if n := reversed.Load(); n < 10 {
		t.Errorf("only %d SEARCH answers were reversed: the test proves little", n)
	}
}

// TestCleanupAfterBrokenConnection breaks each METADATA and FILTERS
// scenario's connection once it has set its server entries (the first
// GETMETADATA or SEARCH FILTER it sends closes the connection), as a
// server that hangs or drops a client would. The scenarios fail, and
// cleanup, on a fresh connection, must still remove the server entries
// they set: unlike a mailbox's entries they outlive the mailboxes, and a
// CI run against the same account every night would pile them up.
func TestCleanupAfterBrokenConnection(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	var cuts atomic.Int32
	cut := func(line string) bool {
		_, cmd, _ := strings.Cut(strings.ToUpper(line), " ")
		if strings.HasPrefix(cmd, "GETMETADATA ") || strings.Contains(cmd, "SEARCH FILTER ") || strings.Contains(cmd, "SEARCH NOT FILTER ") {
			cuts.Add(1)
			return true
		}
		return false
	}
	r := startRelay(t, dc.Addr, nil, cut)
	cfg := Target(r.addr(), "alice", "alicepass")
	cfg.User2, cfg.Pass2 = "bob", "bobpass"
	cfg.Outside = Endpoint{Addr: dc.Addr}
	// Dovecot stores the filters' entries without knowing FILTERS.
	cfg.ForceCaps = []string{"FILTERS"}
	cfg.Only = regexp.MustCompile(`^(5464-server-entry|5464-private-per-user|5466-.*)$`)
	cfg.Timeout = 5 * time.Second
	rep := runAgainst(t, cfg)
	if rep.Failed != 6 || cuts.Load() != 6 {
		t.Errorf("%s with %d connections cut, want 6 scenarios failed on 6 cuts", rep.CountLine(), cuts.Load())
	}
	for _, res := range rep.Results {
		if res.Cleanup != "" {
			t.Errorf("%s: cleanup failed: %s", res.ID, res.Cleanup)
		}
	}
	for _, u := range [][2]string{{"alice", "alicepass"}, {"bob", "bobpass"}} {
		c, err := Dial(Endpoint{Addr: dc.Addr}, 5*time.Second, nil, "check")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := login(c, u[0], u[1]); err != nil {
			t.Fatal(err)
		}
		got, _, err := getMetadata(c, `(DEPTH infinity) "" (/private/vendor/conformance /private/filters/values /shared/filters/values)`, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			t.Errorf("server entries of %s left after the run: %v", u[0], got)
		}
	}
}
