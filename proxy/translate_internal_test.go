package proxy

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Answers to translated searches: UIDs become the client's sequence
// numbers (testView: UIDs 3 5 9 10 20), unknown UIDs are left out, and
// the parts that are not numbers stay as they are.
func TestTranslateSearchResults(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"* SEARCH 3 9 20", "* SEARCH 1 3 5"},
		{"* SEARCH 4 9", "* SEARCH 3"},
		{"* SEARCH", "* SEARCH"},
		{"* SEARCH 10 20 (MODSEQ 917162500)", "* SEARCH 4 5 (MODSEQ 917162500)"},
		{"* SORT 20 3", "* SORT 5 1"},
	} {
		if got := string(searchToSeqs([]byte(tt.in), testView)); got != tt.want {
			t.Errorf("%q -> %q, want %q", tt.in, got, tt.want)
		}
	}
	// RFC 5256's example shape.
	in := "* THREAD (3)(5 9)(10 (20)(4))"
	if got, want := string(threadToSeqs([]byte(in), testView)), "* THREAD (1)(2 3)(4 (5)(0))"; got != want {
		t.Errorf("%q -> %q, want %q", in, got, want)
	}
}

// ESEARCH (RFC 4731): the client's tag replaces the upstream's, and a
// translated search's UID results become sequence numbers (RFC 5267's
// PARTIAL results too, its range not).
func TestTranslateESearch(t *testing.T) {
	for _, tt := range []struct {
		in         string
		seqResults bool
		want       string
	}{
		{`* ESEARCH (TAG "u7") UID MIN 3 MAX 20 COUNT 5 ALL 3:5,9:10,20`, true, `* ESEARCH (TAG "A282") MIN 1 MAX 5 COUNT 5 ALL 1:5`},
		{`* ESEARCH (TAG "u7") UID ALL 9,20 MODSEQ 42`, true, `* ESEARCH (TAG "A282") ALL 3,5 MODSEQ 42`},
		{`* ESEARCH (TAG "u7") UID COUNT 0`, true, `* ESEARCH (TAG "A282") COUNT 0`},
		{`* ESEARCH (TAG "u7") UID MIN 9 ALL 9:20`, false, `* ESEARCH (TAG "A282") UID MIN 9 ALL 9:20`},
		{`* ESEARCH UID MIN 4`, true, `* ESEARCH`},
		// RFC 5267's PARTIAL: the range stays, the results are mapped.
		{`* ESEARCH (TAG "u7") UID PARTIAL (2:3 5,9)`, true, `* ESEARCH (TAG "A282") PARTIAL (2:3 2:3)`},
		{`* ESEARCH (TAG "u7") UID PARTIAL (7:9 NIL)`, true, `* ESEARCH (TAG "A282") PARTIAL (7:9 NIL)`},
		{`* ESEARCH (TAG "u7") UID PARTIAL (1:1 4)`, true, `* ESEARCH (TAG "A282") PARTIAL (1:1 NIL)`},
		{`* ESEARCH (TAG "u7") UID PARTIAL (1:2 5,9) COUNT 6`, false, `* ESEARCH (TAG "A282") UID PARTIAL (1:2 5,9) COUNT 6`},
		// ESORT (RFC 5267 3.1): ALL is in sort order and stays so.
		{`* ESEARCH (TAG "u7") UID MIN 20 MAX 3 ALL 20,9:10,3:5`, true, `* ESEARCH (TAG "A282") MIN 5 MAX 1 ALL 5,3:4,1:2`},
		{`* ESEARCH (TAG "u7") UID ALL 10:9`, true, `* ESEARCH (TAG "A282") ALL 4,3`},
	} {
		if got := string(translateESearch([]byte(tt.in), "A282", tt.seqResults, testView)); got != tt.want {
			t.Errorf("%q -> %q, want %q", tt.in, got, tt.want)
		}
	}
}

// STORE goes upstream in its UID form, without .SILENT, decoded once.
func TestTranslateStore(t *testing.T) {
	for _, tt := range []struct {
		cmd, up string
		silent  bool
		op      byte
	}{
		{`a STORE 2:3 +FLAGS.SILENT (\Deleted)`, `a UID STORE 5:9 +FLAGS (\Deleted)`, true, '+'},
		{`a STORE * FLAGS \Seen $Work`, `a UID STORE 20 FLAGS (\Seen $Work)`, false, 0},
		{`a UID STORE 9 (UNCHANGEDSINCE 7) -FLAGS.SILENT (\Seen)`, `a UID STORE 9 (UNCHANGEDSINCE 7) -FLAGS (\Seen)`, true, '-'},
	} {
		x := mustTranslate(t, testView, tt.cmd)
		if got := string(x.Segments[0].Text); got != tt.up {
			t.Errorf("%s -> %q, want %q", tt.cmd, got, tt.up)
		}
		if x.xlate.silent != tt.silent || x.xlate.store == nil || x.xlate.store.Op != tt.op {
			t.Errorf("%s: translation %+v", tt.cmd, x.xlate)
		}
	}
}

// Search keys with sequence sets are translated wherever they stand.
func TestTranslateSearchCommand(t *testing.T) {
	for _, tt := range []struct{ cmd, up string }{
		{`a SEARCH 2:3 UNSEEN`, `a UID SEARCH UID 5:9 UNSEEN`},
		{`a SEARCH OR 1 (NOT 5) SUBJECT "2:3"`, `a UID SEARCH OR UID 3 (NOT UID 20) SUBJECT "2:3"`},
		{`a SEARCH RETURN (MIN) CHARSET UTF-8 *`, `a UID SEARCH RETURN (MIN) CHARSET UTF-8 UID 20`},
		{`a SORT (DATE) UTF-8 1:2`, `a UID SORT (DATE) UTF-8 UID 3:5`},
	} {
		x := mustTranslate(t, testView, tt.cmd)
		if got := string(x.Segments[0].Text); got != tt.up {
			t.Errorf("%s -> %q, want %q", tt.cmd, got, tt.up)
		}
	}
}

// Out-of-range sequence numbers in search keys match nothing, as RFC 9051
// 6.4.4 has it, instead of being an error: "SEARCH 1:*" in an empty
// mailbox, "SEARCH 1000" in a mailbox of five (#16.12).
func TestTranslateSearchOutOfRange(t *testing.T) {
	for _, tt := range []struct {
		view    seqView
		cmd, up string
	}{
		{nil, `a SEARCH 1:*`, `a UID SEARCH NOT ALL`},
		{nil, `a SEARCH *`, `a UID SEARCH NOT ALL`},
		{testView, `a SEARCH 1000`, `a UID SEARCH NOT ALL`},
		{testView, `a SEARCH 4:1000`, `a UID SEARCH UID 10:20`},
		{testView, `a SEARCH RETURN () OR 1000 2`, `a UID SEARCH RETURN () OR NOT ALL UID 5`},
	} {
		x := mustTranslate(t, tt.view, tt.cmd)
		if got := string(x.Segments[0].Text); got != tt.up {
			t.Errorf("%s -> %q, want %q", tt.cmd, got, tt.up)
		}
	}
	// Elsewhere a number beyond the last message stays an error.
	if _, err := translate(testView, "a FETCH 7 FLAGS"); err == nil {
		t.Error("FETCH 7 beyond the client's 5 messages: want an error")
	}
}

// FLAGS is found before a body literal, also when the response streams
// (only its first segment at hand).
func TestFetchFlags(t *testing.T) {
	for _, tt := range []struct {
		segs  []imapcodec.Segment
		flags string
		ok    bool
	}{
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7 FLAGS (\Seen \answered))`)}}, `\Answered \Seen`, true},
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7 FLAGS (\Seen) BODY[] `), Literal: &imapcodec.LiteralHeader{Size: 1 << 20}}}, `\Seen`, true},
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7 BODY[] `), Literal: &imapcodec.LiteralHeader{Size: 3}, Data: []byte("abc")}, {Text: []byte(` FLAGS ())`)}}, ``, true},
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7 BODY[] `), Literal: &imapcodec.LiteralHeader{Size: 1 << 20}}}, ``, false},
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7)`)}}, ``, false},
		// The name elsewhere than as an item: parsed, and no FLAGS item.
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (UID 7 BODY[HEADER.FIELDS (X-FLAGS)] `), Literal: &imapcodec.LiteralHeader{Size: 1 << 20}}}, ``, false},
		{[]imapcodec.Segment{{Text: []byte(`* 2 FETCH (uid 7 flags (\seen))`)}}, `\Seen`, true},
	} {
		flags, ok := fetchFlags(tt.segs)
		if flags != tt.flags || ok != tt.ok {
			t.Errorf("%q: %q, %v; want %q, %v", tt.segs[0].Text, flags, ok, tt.flags, tt.ok)
		}
	}
}

func TestFetchSetsSeen(t *testing.T) {
	for cmd, want := range map[string]bool{
		`a FETCH 1 BODY[TEXT]`:                true,
		`a UID FETCH 1 (FLAGS BODY[]<0.10>)`:  true,
		`a FETCH 1 (RFC822)`:                  true,
		`a FETCH 1 BINARY[1]`:                 true,
		`a FETCH 1 (BODY.PEEK[] RFC822.SIZE)`: false,
		`a FETCH 1 (RFC822.HEADER FLAGS)`:     false,
		`a FETCH 1 (BODYSTRUCTURE BODY)`:      false,
		`a FETCH 1 (BINARY.PEEK[1] ENVELOPE)`: false,
	} {
		c, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: []byte(cmd)}}, imapcodec.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if got := fetchSetsSeen(c); got != want {
			t.Errorf("%s: %v, want %v", cmd, got, want)
		}
	}
}

// RECENT, NEW and OLD name the session's own recent messages (recent.go),
// in both forms of SEARCH; the leased connection's \Recent would be
// whichever session looked first (#16.17).
func TestRecentSearch(t *testing.T) {
	for _, tt := range []struct {
		recent  recentSet
		cmd, up string
	}{
		{nil, `a SEARCH RECENT`, `a UID SEARCH NOT ALL`},
		// The sequence set of a UID SEARCH is the client's too.
		{nil, `a UID SEARCH OR NEW 1:* NOT OLD`, `a UID SEARCH OR NOT ALL UID 3:20 NOT ALL`},
		{recentSet{{10, 12}}, `a SEARCH RECENT`, `a UID SEARCH UID 10:12`},
		{recentSet{{3, 3}, {10, 12}}, `a SEARCH NEW`, `a UID SEARCH (UID 3,10:12 UNSEEN)`},
		{recentSet{{10, 12}}, `a UID SEARCH OLD SEEN`, `a UID SEARCH NOT UID 10:12 SEEN`},
		{recentSet{{10, 12}}, `a SEARCH NOT NEW 2`, `a UID SEARCH NOT (UID 10:12 UNSEEN) UID 5`},
		{nil, `a UID SEARCH (UNSEEN`, `a UID SEARCH (UNSEEN`},
	} {
		x, err := translateIn(&selectedMailbox{view: testView, recent: tt.recent}, tt.cmd)
		if err != nil {
			t.Fatalf("%s: %v", tt.cmd, err)
		}
		if got := string(x.Segments[0].Text); got != tt.up {
			t.Errorf("%v %s -> %q, want %q", tt.recent, tt.cmd, got, tt.up)
		}
	}
}

// \Recent cannot be stored (RFC 3501 2.3.2): the proxy answers BAD itself,
// whatever the upstream would do.
func TestStoreRecent(t *testing.T) {
	for _, cmd := range []string{`a STORE 1 +FLAGS (\Recent)`, `a UID STORE 3 FLAGS.SILENT (\Seen \recent)`, `a STORE 1 -FLAGS \RECENT`} {
		if _, err := translate(testView, cmd); !errors.Is(err, errStoreRecent) {
			t.Errorf("%s: %v", cmd, err)
		}
	}
	if _, err := translate(testView, `a STORE 1 +FLAGS (\Seen $Recent)`); err != nil {
		t.Errorf("a keyword: %v", err)
	}
}

// FETCH FLAGS carry the session's \Recent, never the upstream's, and
// system flags in their canonical spelling (#16.17).
func TestRecentFlags(t *testing.T) {
	for _, tt := range []struct {
		in     string
		recent bool
		want   string
	}{
		{`* 1 FETCH (UID 3 FLAGS (\Seen \Recent))`, false, `* 1 FETCH (UID 3 FLAGS (\Seen))`},
		{`* 1 FETCH (FLAGS (\recent) UID 3)`, false, `* 1 FETCH (FLAGS () UID 3)`},
		{`* 1 FETCH (UID 3 FLAGS ($Junk))`, false, `* 1 FETCH (UID 3 FLAGS ($Junk))`},
		{`* 1 FETCH (UID 3 BODY[HEADER.FIELDS (FLAGS)] `, false, `* 1 FETCH (UID 3 BODY[HEADER.FIELDS (FLAGS)] `},
		{`* 1 FETCH (UID 3 FLAGS (\flagged \SEEN $x))`, false, `* 1 FETCH (UID 3 FLAGS (\Flagged \Seen $x))`},
		{`* 1 FETCH (UID 3 FLAGS (\Flagged \Seen \Xyz))`, false, `* 1 FETCH (UID 3 FLAGS (\Flagged \Seen \Xyz))`},
		{`* 1 FETCH (UID 3 FLAGS (\draft \recent))`, false, `* 1 FETCH (UID 3 FLAGS (\Draft))`},
		{`* 1 FETCH (UID 3 FLAGS (\Seen))`, true, `* 1 FETCH (UID 3 FLAGS (\Seen \Recent))`},
		{`* 1 FETCH (UID 3 FLAGS (\seen $x \Flagged))`, true, `* 1 FETCH (UID 3 FLAGS (\Seen $x \Flagged \Recent))`},
		{`* 1 FETCH (UID 3 FLAGS ($x $y))`, true, `* 1 FETCH (UID 3 FLAGS (\Recent $x $y))`},
		{`* 1 FETCH (UID 3 FLAGS ())`, true, `* 1 FETCH (UID 3 FLAGS (\Recent))`},
		{`* 1 FETCH (FLAGS (\recent \seen) UID 3)`, true, `* 1 FETCH (FLAGS (\Seen \Recent) UID 3)`},
		{`* 1 FETCH (UID 3 RFC822.SIZE 9)`, true, `* 1 FETCH (UID 3 RFC822.SIZE 9)`},
	} {
		if got := string(tidyFlags([]byte(tt.in), tt.recent)); got != tt.want {
			t.Errorf("%q recent %v -> %q, want %q", tt.in, tt.recent, got, tt.want)
		}
	}
}

func TestStatusRecentItem(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{`* STATUS cmp (MESSAGES 2 RECENT 2 UNSEEN 1)`, 0, `* STATUS cmp (MESSAGES 2 RECENT 0 UNSEEN 1)`},
		{`* STATUS "a (b" (recent 0)`, 5, `* STATUS "a (b" (recent 5)`},
		{`* STATUS cmp (MESSAGES 2)`, 3, `* STATUS cmp (MESSAGES 2)`},
		{`* STATUS cmp (RECENT 3)`, 3, `* STATUS cmp (RECENT 3)`},
	} {
		if got := string(statusRecent([]byte(tt.in), tt.n)); got != tt.want {
			t.Errorf("%q %d -> %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
	for in, want := range map[string]string{
		`* STATUS cmp (RECENT 3)`:       "cmp",
		`* STATUS "a (b" (RECENT 3)`:    "a (b",
		`* STATUS INBOX/x (MESSAGES 1)`: "INBOX/x",
	} {
		if got, ok := statusMailbox([]imapcodec.Segment{{Text: []byte(in)}}); !ok || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, ok, want)
		}
	}
}

// A session's recent set: ranges merged when adjacent, counted against
// the client's view (expunged messages drop out), bounded.
func TestRecentSet(t *testing.T) {
	var r recentSet
	r.add(5, 4) // none
	r.add(3, 5)
	r.add(6, 6) // adjacent: merged
	r.add(9, 10)
	if want := (recentSet{{3, 6}, {9, 10}}); !slices.Equal(r, want) {
		t.Fatalf("ranges %v, want %v", r, want)
	}
	for uid, want := range map[uint32]bool{2: false, 3: true, 6: true, 7: false, 9: true, 10: true, 11: false} {
		if r.has(uid) != want {
			t.Errorf("has(%d) = %v", uid, !want)
		}
	}
	if n := r.count(seqView{1, 3, 5, 7, 10, 12}); n != 3 {
		t.Errorf("count %d, want 3", n)
	}
	if s := r.uidSet(); s != "3:6,9:10" {
		t.Errorf("uidSet %q", s)
	}
	for i := range uint32(maxRecentRanges + 5) {
		r.add(100+2*i, 100+2*i)
	}
	if len(r) != maxRecentRanges || r.has(3) || !r.has(100+2*(maxRecentRanges+4)) {
		t.Errorf("bound: %d ranges, oldest %v", len(r), r[0])
	}
}

// A FETCH with a keyword the client was not told of is preceded by a FLAGS
// response that lists it (RFC 3501 7.2.6; #16.17).
func TestNewKeywords(t *testing.T) {
	m := &selectedMailbox{}
	if b := m.newKeywords([]string{"$x"}); b != nil {
		t.Errorf("before any FLAGS: %q", b)
	}
	m.noteFlagList([]imapcodec.Segment{{Text: []byte(`* FLAGS (\Answered \Seen $Forwarded)`)}})
	if b := m.newKeywords([]string{`\Seen`, "$forwarded"}); b != nil {
		t.Errorf("known flags: %q", b)
	}
	if b, want := string(m.newKeywords([]string{`\Flagged`, "$new"})), "* FLAGS ($Forwarded $new \\Answered \\Seen)\r\n"; b != want {
		t.Errorf("new keyword: %q, want %q", b, want)
	}
	if b := m.newKeywords([]string{"$new"}); b != nil {
		t.Errorf("told once: %q", b)
	}
}

// mustTranslate translates cmd for a session whose client knows view.
func mustTranslate(t *testing.T, view seqView, cmd string) *Exchange {
	t.Helper()
	x, err := translate(view, cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return x
}

// translate is translateCommand for a session whose client knows view.
func translate(view seqView, cmd string) (*Exchange, error) {
	return translateIn(&selectedMailbox{view: view}, cmd)
}

// translateIn is translateCommand for a session with mailbox m.
func translateIn(m *selectedMailbox, cmd string) (*Exchange, error) {
	s := &Session{srv: &Server{}, mbox: m}
	c, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: []byte(cmd)}}, imapcodec.Limits{})
	if err != nil {
		return nil, err
	}
	x := s.newExchange(context.Background(), c, false)
	return x, s.translateCommand(x)
}

// An extension's sequence-number command (SequenceCommander) is
// translated as FETCH is, and holds expunges in its sequence form only.
func TestTranslateSequenceCommander(t *testing.T) {
	for _, tt := range []struct {
		cmd, up      string
		allowExpunge bool
	}{
		{`a XCONV 2:3 (NIL) BINARY[1]`, `a UID XCONV 5:9 (NIL) BINARY[1]`, false},
		{`a UID XCONV 5 (NIL) BINARY[1]`, `a UID XCONV 5 (NIL) BINARY[1]`, true},
		{`a XOTHER 2:3`, `a XOTHER 2:3`, true},
	} {
		s := &Session{srv: &Server{seqCommands: map[string]bool{"XCONV": true}}, mbox: &selectedMailbox{view: testView}}
		c, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: []byte(tt.cmd)}}, imapcodec.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		x := s.newExchange(context.Background(), c, false)
		if err := s.translateCommand(x); err != nil {
			t.Fatalf("%s: %v", tt.cmd, err)
		}
		if got := string(x.Segments[0].Text); got != tt.up || x.xlate.allowExpunge != tt.allowExpunge {
			t.Errorf("%s -> %q (expunges %v), want %q (%v)", tt.cmd, got, x.xlate.allowExpunge, tt.up, tt.allowExpunge)
		}
	}
}

// THREAD in the client's numbering threads only the client's messages:
// one the upstream got since the view was last brought up to date has no
// sequence number to be written as (it came out as 0). UID THREAD
// answers in UIDs, where a new message is no harm.
func TestThreadOnlyClientsMessages(t *testing.T) {
	for _, tt := range []struct {
		view    seqView
		cmd, up string
	}{
		{testView, `a THREAD REFERENCES UTF-8 ALL`, `a UID THREAD REFERENCES UTF-8 ALL UID 1:20`},
		{testView, `a THREAD ORDEREDSUBJECT UTF-8 2:3 SEEN`, `a UID THREAD ORDEREDSUBJECT UTF-8 UID 5:9 SEEN UID 1:20`},
		{nil, `a THREAD REFERENCES UTF-8 ALL`, `a UID THREAD REFERENCES UTF-8 ALL NOT ALL`},
		{testView, `a UID THREAD REFERENCES UTF-8 ALL`, `a UID THREAD REFERENCES UTF-8 ALL`},
	} {
		x, err := translateIn(&selectedMailbox{view: tt.view}, tt.cmd)
		if err != nil {
			t.Fatalf("%s: %v", tt.cmd, err)
		}
		if got := string(x.Segments[0].Text); got != tt.up {
			t.Errorf("%s -> %q, want %q", tt.cmd, got, tt.up)
		}
	}
}

// Dovecot's own search keys keep their arguments: "X-TEXT-FAST 12345"
// is a text, not a key followed by a sequence set to translate.
func TestSearchDovecotKeys(t *testing.T) {
	for cmd, up := range map[string]string{
		`a UID SEARCH X-TEXT-FAST 12345 2`: `a UID SEARCH X-TEXT-FAST 12345 UID 5`,
		`a SEARCH X-BODY-FAST 3 X-GUID 4`:  `a UID SEARCH X-BODY-FAST 3 X-GUID 4`,
		`a UID SEARCH X-MAILBOX 2 1`:       `a UID SEARCH X-MAILBOX 2 UID 3`,
	} {
		x, err := translateIn(&selectedMailbox{view: testView}, cmd)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if got := string(x.Segments[0].Text); got != up {
			t.Errorf("%s -> %q, want %q", cmd, got, up)
		}
	}
}
