package contextsearch

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// localCriteria are flag searches, decided without the upstream.
var localCriteria = []string{
	"ALL", "FLAGGED", "UNFLAGGED", "SEEN UNSEEN", "DELETED KEYWORD $Junk", "UNDELETED UNKEYWORD $Junk",
	"OR FLAGGED SEEN", "NOT (FLAGGED SEEN)", "OR (DELETED DRAFT) NOT ANSWERED", "KEYWORD $junk",
	"UNKEYWORD $WORK", "UID 2:4,7 UNSEEN", "NOT UID 1:3", "KEYWORD $Nothing", "UNKEYWORD $Nothing",
	"answered undraft", "(((SEEN)))", "OR OR SEEN DRAFT NOT ALL",
}

func compileLocal(t testing.TB, criteria string) predicate {
	vals, err := imapcodec.NewParser(segments(criteria), imapcodec.Limits{}).Values()
	if err != nil {
		t.Fatalf("%s: %v", criteria, err)
	}
	p, err := parseFlagSearch(vals)
	if err != nil {
		t.Fatalf("%s: not local: %v", criteria, err)
	}
	return p
}

// TestLocalAgreesWithDovecot: for every flag search, what the proxy decides
// from the flags is what Dovecot answers, keywords in any case included.
func TestLocalAgreesWithDovecot(t *testing.T) {
	if testing.Short() {
		t.Skip("Dovecot")
	}
	dc := dovecottest.Start(t, dovecottest.Legacy)
	flagSets := [][]string{
		nil, {`\Seen`}, {`\Flagged`, `$Junk`}, {`\Deleted`, `$Junk`, `\Seen`}, {`\Answered`, `$Work`},
		{`\Draft`, `\Deleted`}, {`\Flagged`, `\Seen`, `\Answered`}, {`$junk`}, {`\Deleted`},
	}
	for i, f := range flagSets {
		dc.Append(t, "alice", "alicepass", "INBOX", f, fmt.Appendf(nil, "Subject: %d\r\n\r\nx\r\n", i))
	}
	c := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	flags := map[uint32][]string{}
	var all []uint32
	for _, l := range c.MustOK("UID FETCH 1:* (FLAGS)") {
		// * n FETCH (UID u FLAGS (...)) in either order
		i, j := strings.Index(l, "FLAGS ("), strings.Index(l, "UID ")
		if i < 0 || j < 0 {
			continue
		}
		uid, _ := strconv.ParseUint(strings.Fields(l[j+4:])[0], 10, 32)
		f := l[i+7:]
		f = f[:strings.Index(f, ")")]
		flags[uint32(uid)] = syncstate.NormalizeFlags(strings.Fields(f))
		all = append(all, uint32(uid))
	}
	slices.Sort(all)
	if len(all) != len(flagSets) {
		t.Fatalf("fetched %d messages", len(all))
	}
	for _, crit := range localCriteria {
		var want []uint32
		for _, l := range c.MustOK("UID SEARCH " + crit) {
			if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
				for _, w := range strings.Fields(rest) {
					n, _ := strconv.ParseUint(w, 10, 32)
					want = append(want, uint32(n))
				}
			}
		}
		slices.Sort(want)
		got := matchLocal(compileLocal(t, crit), all, func(uid uint32) ([]string, bool) { f, ok := flags[uid]; return f, ok })
		if !slices.Equal(got, want) {
			t.Errorf("%s: local %v, Dovecot %v", crit, got, want)
		}
	}
}

// TestNotLocal: searches of anything but flags go upstream.
func TestNotLocal(t *testing.T) {
	for _, crit := range []string{"SUBJECT x", "UID 5:*", "KEYWORD", "OR SEEN", "NOT", "LARGER 5", "FLAGGED NEW", "()", `KEYWORD "x"`, `KEYWORD \Seen`} {
		vals, err := imapcodec.NewParser(segments(crit), imapcodec.Limits{}).Values()
		if err != nil {
			continue
		}
		if _, err := parseFlagSearch(vals); err == nil {
			t.Errorf("%s: decided locally", crit)
		}
	}
}

// FuzzParseFlagSearch: any criteria compile or are refused without panic,
// and a compiled one runs.
func FuzzParseFlagSearch(f *testing.F) {
	for _, s := range localCriteria {
		f.Add(s)
	}
	f.Add("NOT NOT NOT")
	f.Add("OR (SEEN) (UID 1:4294967295)")
	f.Fuzz(func(t *testing.T, s string) {
		vals, err := imapcodec.NewParser(segments(s), imapcodec.Limits{}).Values()
		if err != nil {
			return
		}
		p, err := parseFlagSearch(vals)
		if err != nil {
			return
		}
		p(7, []string{`\Seen`, "$Junk"})
	})
}
