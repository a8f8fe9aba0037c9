package esearch_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestStateAgreesWithUpstream is the differential test of the searches
// the state decides: on random flags (set through the proxy and by a
// direct client, with expunges and new messages) and random programs of
// every key the state decides, nested in NOT, OR and lists, the proxy's
// answer from the state is compared with
//
//   - the proxy's answer from the state to the same program written with
//     NOT before keys only (prog.write);
//   - the proxy's answer the upstream way: that program with LARGER 0
//     (true of every message, and not decidable from the state) added,
//     in SEARCH, UID SEARCH and SEARCH RETURN (MIN MAX COUNT ALL) form,
//     MODSEQ and the session's RECENT, NEW and OLD included; and
//   - Dovecot's own answer to it on a direct connection, for programs
//     without MODSEQ (whose mod-sequences are the proxy's) or RECENT, NEW
//     and OLD (whose \Recent is the session's).
//
// LEMONPROXY_STATESEARCH_SEED picks another seed than 1 (every seed must
// pass; the programs leave out only "*" in sequence sets, see set).
func TestStateAgreesWithUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	seed := uint64(1)
	if s := os.Getenv("LEMONPROXY_STATESEARCH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = n
	}
	const rounds, programs = 4, 30
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 17))
			st := newStateSetup(t, profile)
			for i := range 24 {
				st.dc.Append(t, "alice", "alicepass", "INBOX", randomFlags(r), fmt.Appendf(nil, "Subject: more %d\r\n\r\nx\r\n", i))
			}
			c := imaptest.Login(t, st.proxy.Addr, "alice", "alicepass")
			c.MustOK("ENABLE CONDSTORE")
			c.MustOK("SELECT INBOX")
			d := st.direct(t)
			for round := range rounds {
				mutate(t, r, st, c, d, round)
				uids := searchNumbers(t, d.MustOK("UID SEARCH ALL"))
				g := &programGen{r: r, count: len(uids), maxUID: slices.Max(uids)}
				for range programs {
					g.proxyOnly = r.IntN(3) == 0
					p := g.program()
					prog, nnf := criteria(p, false), criteria(p, true)
					for _, form := range []string{"SEARCH ", "UID SEARCH ", "SEARCH RETURN (MIN MAX COUNT ALL) "} {
						var mine, again []string
						st.local(t, func() {
							mine = c.MustOK(form + prog)
							again = c.MustOK(form + nnf)
						})
						if !sameAnswer(mine, again) {
							t.Fatalf("seed %d round %d: %s%s:\n state      %q\n %s\n state      %q", seed, round, form, prog, mine, nnf, again)
						}
						theirs := c.MustOK(form + nnf + " LARGER 0")
						if !sameAnswer(mine, theirs) {
							t.Fatalf("seed %d round %d: %s%s:\n state    %q\n %s LARGER 0\n upstream %q", seed, round, form, prog, mine, nnf, theirs)
						}
						if !g.proxyOnly && !strings.Contains(form, "RETURN") {
							if direct := d.MustOK(form + nnf); !sameAnswer(mine, direct) {
								t.Fatalf("seed %d round %d: %s%s:\n proxy   %q\n %s\n Dovecot %q", seed, round, form, prog, mine, nnf, direct)
							}
						}
					}
				}
			}
		})
	}
}

// flagPool are the flags messages get: every system flag but \Recent, and
// keywords in two spellings.
var flagPool = []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`, "$Junk", "$Work", "$label1"}

func randomFlags(r *rand.Rand) []string {
	var out []string
	for _, f := range flagPool {
		if r.IntN(3) == 0 {
			out = append(out, f)
		}
	}
	return out
}

// mutate changes the mailbox for a round: flags of a third of the
// messages, through the proxy or directly; in some rounds an expunge or a
// new message (recent in c's session). Both sessions then NOOP, so that
// the hub has every change and both have been told of it.
func mutate(t *testing.T, r *rand.Rand, st *stateSetup, c, d *imaptest.Client, round int) {
	t.Helper()
	for _, uid := range searchNumbers(t, d.MustOK("UID SEARCH ALL")) {
		if r.IntN(3) != 0 {
			continue
		}
		cmd := fmt.Sprintf("UID STORE %d FLAGS.SILENT (%s)", uid, strings.Join(randomFlags(r), " "))
		if r.IntN(2) == 0 {
			c.MustOK(cmd)
		} else {
			d.MustOK(cmd)
		}
	}
	if round%2 == 1 {
		d.MustOK("EXPUNGE")
	}
	if round%2 == 0 {
		st.dc.Append(t, "alice", "alicepass", "INBOX", randomFlags(r), fmt.Appendf(nil, "Subject: round %d\r\n\r\nx\r\n", round))
	}
	d.MustOK("NOOP")
	c.MustOK("NOOP")
}

// searchNumbers reads the numbers of a "* SEARCH" answer.
func searchNumbers(t *testing.T, lines []string) []uint32 {
	t.Helper()
	var out []uint32
	for _, l := range lines {
		rest, ok := strings.CutPrefix(l, "* SEARCH")
		if !ok {
			continue
		}
		for _, w := range strings.Fields(rest) {
			n, err := strconv.ParseUint(w, 10, 32)
			if err != nil {
				t.Fatalf("%q", l)
			}
			out = append(out, uint32(n))
		}
	}
	return out
}

// sameAnswer compares two answers' untagged responses: SEARCH as written
// (both ascending), ESEARCH up to its tag and the order of its items.
func sameAnswer(a, b []string) bool {
	a, b = answerLines(a), answerLines(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if strings.HasPrefix(x, "* ESEARCH") {
			x, y = items(untag(x)), items(untag(y))
		}
		if x != y {
			return false
		}
	}
	return true
}

// answerLines are the untagged responses of an answer but FLAGS and
// PERMANENTFLAGS: Dovecot adds a keyword to the mailbox's list when a
// search names one it lacks (KEYWORD $none) and says so, which the
// relayed answer passes on and the state's answer, which changes nothing
// upstream, does not.
func answerLines(lines []string) []string {
	var out []string
	for _, l := range imaptest.Untagged(lines) {
		if !strings.HasPrefix(l, "* FLAGS ") && !strings.HasPrefix(l, "* OK [PERMANENTFLAGS ") {
			out = append(out, l)
		}
	}
	return out
}

// untag takes the (TAG "t") out of an ESEARCH response: the answers
// compared are to commands of different tags.
func untag(line string) string {
	if i := strings.Index(line, "(TAG "); i >= 0 {
		if j := strings.IndexByte(line[i:], ')'); j >= 0 {
			return line[:i] + line[i+j+1:]
		}
	}
	return line
}

// A prog is a search program: a key (text set) or NOT, OR or a list of
// programs. It is written two ways: as made (String), and with every NOT
// pushed down to single keys by De Morgan's laws (write's nnf), which is what
// Dovecot is asked. Dovecot 2.3 answers NOT over a list wrongly ("OR NOT
// (UID 19:20 UNSEEN) UNSEEN" matches only the unseen messages where it
// should match all, "NOT (ALL OR OR UNSEEN UID 17 SEEN)" the seen ones
// where it should match none), which this test found; the proxy's answers
// are compared with Dovecot's to the same question put the way Dovecot
// gets right, and with the proxy's own to both forms. (NOT NEW, which the
// core sends upstream as NOT (UID recent UNSEEN), is such a list: the
// state's answer to it is right where the upstream's was not.)
type prog struct {
	key  string // a key, or "" for the forms below
	not  *prog
	or   [2]*prog
	list []*prog
}

func (p *prog) String() string { return p.write(false, false) }

// write writes p (negated when neg; with every NOT pushed down when nnf).
func (p *prog) write(nnf, neg bool) string {
	switch {
	case p.key != "":
		if neg && nnf && p.key == "NEW" {
			// The core sends NEW as (UID recent UNSEEN): a list.
			return "OR OLD SEEN"
		}
		if neg {
			return "NOT " + p.key
		}
		return p.key
	case p.not != nil:
		if nnf {
			return p.not.write(nnf, !neg)
		}
		return "NOT " + p.not.write(nnf, false)
	case p.or[0] != nil:
		a, b := p.or[0].write(nnf, neg), p.or[1].write(nnf, neg)
		if neg { // NOT (OR a b) = (NOT a NOT b)
			return "(" + a + " " + b + ")"
		}
		return "OR " + a + " " + b
	}
	if neg { // NOT (a b c) = OR NOT a (OR NOT b NOT c)
		out := p.list[len(p.list)-1].write(nnf, true)
		for i := len(p.list) - 2; i >= 0; i-- {
			out = "OR " + p.list[i].write(nnf, true) + " (" + out + ")"
		}
		return out
	}
	parts := make([]string, len(p.list))
	for i, k := range p.list {
		parts[i] = k.write(nnf, false)
	}
	return "(" + strings.Join(parts, " ") + ")"
}

// criteria writes a program's top-level list without its parentheses.
func criteria(p *prog, nnf bool) string {
	s := p.write(nnf, false)
	if p.list != nil {
		s = s[1 : len(s)-1]
	}
	return s
}

// programGen makes random search programs of the keys the state decides.
type programGen struct {
	r         *rand.Rand
	count     int    // messages in the mailbox
	maxUID    uint32 // its last UID
	proxyOnly bool   // may use MODSEQ, RECENT, NEW, OLD
}

// program makes the criteria of a search: a list of one to three keys.
func (g *programGen) program() *prog {
	p := &prog{list: make([]*prog, 1+g.r.IntN(3))}
	for i := range p.list {
		p.list[i] = g.key(0)
	}
	return p
}

var flagKeys = []string{
	"ANSWERED", "UNANSWERED", "DELETED", "UNDELETED", "DRAFT", "UNDRAFT", "FLAGGED", "UNFLAGGED",
	"SEEN", "UNSEEN", "seen", "Unflagged",
}

var keywords = []string{"$Junk", "$junk", "$WORK", "$label1", "$Label1", "$none"}

func (g *programGen) key(depth int) *prog {
	r := g.r
	n := 9
	if depth >= 3 {
		n = 6 // no more nesting
	}
	if g.proxyOnly {
		n += 2
	}
	k := r.IntN(n)
	if k >= 6 && depth >= 3 {
		k += 3
	}
	switch k {
	case 0, 1:
		return &prog{key: flagKeys[r.IntN(len(flagKeys))]}
	case 2:
		return &prog{key: []string{"KEYWORD ", "UNKEYWORD "}[r.IntN(2)] + keywords[r.IntN(len(keywords))]}
	case 3:
		return &prog{key: []string{"ALL", "UID " + g.set(g.maxUID+3, true), "UID " + g.set(g.maxUID, true)}[r.IntN(3)]}
	case 4:
		return &prog{key: g.set(uint32(g.count)+2, false)}
	case 5:
		return &prog{key: []string{"SEEN", "UNSEEN", "ALL"}[r.IntN(3)]}
	case 6:
		return &prog{not: g.key(depth + 1)}
	case 7:
		return &prog{or: [2]*prog{g.key(depth + 1), g.key(depth + 1)}}
	case 8:
		return &prog{list: []*prog{g.key(depth + 1), g.key(depth + 1)}}
	case 9:
		return &prog{key: []string{"RECENT", "NEW", "OLD"}[r.IntN(3)]}
	}
	return &prog{key: fmt.Sprintf("MODSEQ %d", r.IntN(80))}
}

// set makes a set of numbers up to hi, with "*" in a UID set only. Dovecot
// 2.3 answers sequence sets with "*" wrongly in two ways, which the
// direct session compared with would show (through the proxy a sequence
// set goes upstream as the UIDs it names): "n:*" with n beyond the last message
// matches nothing there (RFC 3501 9: the last message), and ORed sets
// with "*" under an AND lose their matches ("5:1 OR 13:*,2:5 9:*" is
// empty in a mailbox of 20). TestStateDecides and statesearch's
// TestNumbers check "*" in sequence sets.
func (g *programGen) set(hi uint32, uid bool) string {
	r := g.r
	num := func() uint32 { return 1 + uint32(r.IntN(int(max(hi, 1)))) }
	parts := make([]string, 1+r.IntN(3))
	for i := range parts {
		k := r.IntN(5)
		if !uid && k < 2 {
			k = 4
		}
		switch k {
		case 0:
			parts[i] = "*"
		case 1:
			parts[i] = fmt.Sprintf("%d:*", num())
		case 2, 3:
			parts[i] = fmt.Sprintf("%d:%d", num(), num())
		default:
			parts[i] = fmt.Sprint(num())
		}
	}
	return strings.Join(parts, ",")
}
