package conformance

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

var (
	// fetchLine is a whole untagged FETCH on one line (no literal).
	fetchLine   = regexp.MustCompile(`^\* (\d+) FETCH \(.*\)\r\n$`)
	copyUIDCode = regexp.MustCompile(`^(.*\[COPYUID \d+ )([\d:,]+) ([\d:,]+)(\].*\r\n)$`)
	partialItem = regexp.MustCompile(`^(\* ESEARCH .*\bPARTIAL \([\d:]+ )([\d:,]+)(\).*\r\n)$`)
)

// reverseOrders makes, for each connection, a rewrite that changes the
// order of what RFC 3501 and its extensions leave in the server's hands,
// and nothing else, so that the server stays as correct as before:
//   - a run of one-line FETCH responses for different messages, with
//     nothing between them, comes backwards (RFC 3501 7.4.2 gives FETCH
//     responses no order; within the run no response renumbers messages);
//   - the two UID sets of a COPYUID code are listed backwards, each pair
//     still matched by position (RFC 4315 3: the source and destination
//     UIDs correspond in order, neither has to ascend);
//   - the results of an ESEARCH PARTIAL, a sequence set, are listed
//     backwards (RFC 5267 4.4).
//
// n counts the changes.
func reverseOrders(n *atomic.Int32) func() func(string) string {
	return func() func(string) string {
		var held []string
		var seqs []string
		flush := func() string {
			if len(held) > 1 && !hasDuplicate(seqs) {
				slices.Reverse(held)
				n.Add(1)
			}
			out := strings.Join(held, "")
			held, seqs = nil, nil
			return out
		}
		return func(line string) string {
			if m := fetchLine.FindStringSubmatch(line); m != nil {
				held, seqs = append(held, line), append(seqs, m[1])
				return ""
			}
			if m := copyUIDCode.FindStringSubmatch(line); m != nil {
				src, dst := expandSet(m[2]), expandSet(m[3])
				if len(src) > 1 && len(src) == len(dst) {
					slices.Reverse(src)
					slices.Reverse(dst)
					n.Add(1)
					line = m[1] + strings.Join(src, ",") + " " + strings.Join(dst, ",") + m[4]
				}
			}
			if m := partialItem.FindStringSubmatch(line); m != nil {
				if set := expandSet(m[2]); len(set) > 1 {
					slices.Reverse(set)
					n.Add(1)
					line = m[1] + strings.Join(set, ",") + m[3]
				}
			}
			return flush() + line
		}
	}
}

func hasDuplicate(s []string) bool {
	s = slices.Clone(s)
	slices.Sort(s)
	return len(slices.Compact(s)) != len(s)
}

// expandSet lists the numbers of a set without "*", ascending ranges
// expanded, as written otherwise.
func expandSet(set string) []string {
	var out []string
	for part := range strings.SplitSeq(set, ",") {
		lo, hi, ok := strings.Cut(part, ":")
		if !ok {
			out = append(out, part)
			continue
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || b < a || b-a > 1000 {
			return []string{set}
		}
		for i := a; i <= b; i++ {
			out = append(out, strconv.Itoa(i))
		}
	}
	return out
}

// TestResponseOrderIsFree runs the scenarios that fetch several messages,
// read a COPYUID code or a PARTIAL result against Dovecot with the order
// of those responses and sets reversed (reverseOrders). The server is as
// correct as before, so every scenario must pass as it does directly.
func TestResponseOrderIsFree(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	var reversed atomic.Int32
	r := startRelayEach(t, dc.Addr, reverseOrders(&reversed), nil)
	cfg := Target(r.addr(), "alice", "alicepass")
	cfg.Outside = Endpoint{Addr: dc.Addr}
	cfg.Only = regexp.MustCompile(`^(5182-.*|4315-.*|5267-partial.*|3501-(fetch-body|store-returns-flags|search-flags|uid-fetch-includes-uid|uid-range-star|status))$`)
	rep := runAgainst(t, cfg)
	if rep.Passed < 14 {
		t.Errorf("%d scenarios passed, expected at least 14", rep.Passed)
	}
	for _, res := range rep.Results {
		if res.Outcome != Pass {
			t.Errorf("%s: %s %s", res.ID, res.Outcome, res.Reason)
		}
	}
	if n := reversed.Load(); n < 5 {
		t.Errorf("only %d answers were reordered: the test proves little", n)
	}
}
