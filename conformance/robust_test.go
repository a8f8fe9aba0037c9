package conformance

import (
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

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
