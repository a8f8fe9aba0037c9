package statesearch

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

func segments(s string) []imapcodec.Segment { return []imapcodec.Segment{{Text: []byte(s)}} }

// decided are searches decided from the state; the sequence sets need
// Options.Numbers.
var decided = []string{
	"ALL", "FLAGGED", "UNFLAGGED", "SEEN UNSEEN", "DELETED KEYWORD $Junk", "UNDELETED UNKEYWORD $Junk",
	"OR FLAGGED SEEN", "NOT (FLAGGED SEEN)", "OR (DELETED DRAFT) NOT ANSWERED", "KEYWORD $junk",
	"UNKEYWORD $WORK", "UID 2:4,7 UNSEEN", "NOT UID 1:3", "KEYWORD $Nothing", "UNKEYWORD $Nothing",
	"answered undraft", "(((SEEN)))", "OR OR SEEN DRAFT NOT ALL", "NOT ALL",
	"2:4", "3,1", "*", "5:*", "*:5", "1000", "NOT 2:3 UNSEEN", "OR 1 UID *", "UID 6:*",
	"UID 1000:*", "UID *:2", "OR (2 FLAGGED) (NOT 2 SEEN)", "NOT NOT NOT 4",
}

// numbered reports whether a search of decided uses sequence numbers or
// "*", which only Options.Numbers allows.
func numbered(crit string) bool {
	for _, w := range strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(crit)) {
		if imapcodec.IsSequenceSet(w) && (strings.Contains(w, "*") || !strings.Contains(crit, "UID "+w)) {
			return true
		}
	}
	return false
}

func compile(t testing.TB, crit string, o Options) *Program {
	t.Helper()
	p, err := CompileCommand(segments("t UID SEARCH "+crit), o)
	if err != nil {
		t.Fatalf("%s: %v", crit, err)
	}
	return p
}

// eval is Eval's UIDs.
func eval(p *Program, st *syncstate.Mailbox, view []uint32) []uint32 {
	var out []uint32
	p.Eval(st, view, func(m Message) { out = append(out, m.UID) })
	return out
}

// TestAgreesWithDovecot: for every search of decided, the messages the
// state's flags and numbers match are those Dovecot's UID SEARCH answers,
// keywords in any case, sequence sets and "*" included.
func TestAgreesWithDovecot(t *testing.T) {
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
	// Messages expunged, so that UIDs and sequence numbers differ.
	c.MustOK(`UID STORE 6,9 -FLAGS.SILENT (\Deleted)`) // \Deleted left on them, unexpunged
	c.MustOK(`UID STORE 2,5 +FLAGS.SILENT (\Deleted)`)
	c.MustOK("EXPUNGE")
	c.MustOK(`UID STORE 6,9 +FLAGS.SILENT (\Deleted)`)
	st := syncstate.New(1)
	var view []uint32
	var msgs []syncstate.Message
	for _, l := range c.MustOK("UID FETCH 1:* (FLAGS)") {
		i, j := strings.Index(l, "FLAGS ("), strings.Index(l, "UID ")
		if i < 0 || j < 0 {
			continue
		}
		uid, _ := strconv.ParseUint(strings.Fields(l[j+4:])[0], 10, 32)
		f := l[i+7:]
		f = f[:strings.Index(f, ")")]
		msgs = append(msgs, syncstate.Message{UID: uint32(uid), Flags: strings.Fields(f)})
		view = append(view, uint32(uid))
	}
	if _, err := st.Apply(syncstate.Changes{Upsert: msgs}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(view)
	if !slices.Equal(view, []uint32{1, 3, 6, 7, 8, 9}) { // 4 had \Deleted too
		t.Fatalf("view %v", view)
	}
	for _, crit := range decided {
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
		got := eval(compile(t, crit, Options{Numbers: true}), st, view)
		if !slices.Equal(got, want) {
			t.Errorf("%s: state %v, Dovecot %v", crit, got, want)
		}
		if !numbered(crit) {
			if got := compile(t, crit, Options{}).Match(st, view); !slices.Equal(got, want) {
				t.Errorf("%s: Match %v, Dovecot %v", crit, got, want)
			}
		}
	}
}

// TestUndecidable: anything but the keys of the package comment goes
// upstream, and so do numbers without Options.Numbers and MODSEQ without
// Options.ModSeq.
func TestUndecidable(t *testing.T) {
	for _, crit := range []string{
		"SUBJECT x", "KEYWORD", "OR SEEN", "NOT", "LARGER 5", "FLAGGED NEW", "RECENT", "OLD", "()", `KEYWORD "x"`,
		`KEYWORD \Seen`, "UID $", "$", "0", "1:0", "UID x", "UID", "SEEN (FLAGGED", "SEEN)", "MODSEQ 5",
		"CHARSET ISO-8859-1 SEEN", "CHARSET UTF-8", "RETURN (COUNT)", "",
		strings.Repeat("NOT ", MaxKeys) + "SEEN", strings.Repeat("SEEN ", MaxKeys+1),
	} {
		if _, err := CompileCommand(segments("t UID SEARCH "+crit), Options{Numbers: true}); err == nil {
			t.Errorf("%q: decided from the state", crit)
		}
	}
	for _, crit := range []string{"1:3", "UID 5:*", "*", "NOT UID *"} {
		if _, err := CompileCommand(segments("t UID SEARCH "+crit), Options{}); err == nil {
			t.Errorf("%q: decided without Options.Numbers", crit)
		}
	}
	for _, crit := range []string{"MODSEQ 01", "MODSEQ x", "MODSEQ 9223372036854775808", `MODSEQ "/flags/\\seen" all 5`} {
		if _, err := CompileCommand(segments("t UID SEARCH "+crit), Options{ModSeq: true}); err == nil {
			t.Errorf("%q: decided from the state", crit)
		}
	}
	for _, cmd := range []string{"t FETCH 1 FLAGS", "t SORT (ARRIVAL) UTF-8 ALL", "t UID", "t", "t UID SEARCH"} {
		if _, err := CompileCommand(segments(cmd), Options{Numbers: true}); err == nil {
			t.Errorf("%q: compiled", cmd)
		}
	}
	// Literals are strings, never flags or sets.
	segs := []imapcodec.Segment{{Text: []byte("t UID SEARCH KEYWORD "), Literal: &imapcodec.LiteralHeader{Size: 5}, Data: []byte("$Junk")}, {}}
	if _, err := CompileCommand(segs, Options{Numbers: true}); err == nil {
		t.Error("a literal keyword: decided from the state")
	}
}

// TestCommandForms: RETURN and the two universal charsets are skipped, in
// any case.
func TestCommandForms(t *testing.T) {
	st := syncstate.New(1)
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 3, Flags: []string{`\Seen`}}, {UID: 4}}})
	for _, cmd := range []string{
		"t SEARCH UNSEEN", "t uid search unseen", "t UID SEARCH RETURN (COUNT) UNSEEN", "t SEARCH CHARSET utf-8 UNSEEN",
		"t SEARCH RETURN () CHARSET US-ASCII UNSEEN", `t SEARCH CHARSET "UTF-8" UNSEEN`,
	} {
		p, err := CompileCommand(segments(cmd), Options{})
		if err != nil {
			t.Errorf("%s: %v", cmd, err)
			continue
		}
		if got := eval(p, st, []uint32{3, 4}); !slices.Equal(got, []uint32{4}) {
			t.Errorf("%s: %v", cmd, got)
		}
	}
}

// TestNumbers: sequence numbers are places in the view, "*" its last
// message, ranges in either direction; a message the view has and the
// state not (expunged, the client not told yet) keeps its number and
// matches nothing.
func TestNumbers(t *testing.T) {
	st := syncstate.New(1)
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 3}, {UID: 7}, {UID: 9}, {UID: 12}}})
	view := []uint32{3, 7, 8, 9, 12} // 8: expunged from the state
	for _, tc := range []struct {
		crit string
		want []uint32
	}{
		{"ALL", []uint32{3, 7, 9, 12}},
		{"2:4", []uint32{7, 9}},
		{"4:2", []uint32{7, 9}},
		{"3", nil},
		{"*", []uint32{12}},
		{"4:*", []uint32{9, 12}},
		// RFC 3501 9 (seq-range): "9:*" is "*:9", which holds the last
		// message even in a mailbox of five, as the core's translation of
		// SEARCH's sets has it (seqview.go); Dovecot matches nothing.
		{"9:*", []uint32{12}},
		{"*:9", []uint32{12}},
		{"6", nil},
		{"UID *", []uint32{12}},
		{"UID 10:*", []uint32{12}},
		{"UID 100:*", []uint32{12}},
		{"UID *:8", []uint32{9, 12}},
		{"UID 4:8", []uint32{7}},
		{"NOT 1:2", []uint32{9, 12}},
		{"OR 1 *", []uint32{3, 12}},
	} {
		if got := eval(compile(t, tc.crit, Options{Numbers: true}), st, view); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.crit, got, tc.want)
		}
	}
	// An empty view: nothing, "*" included.
	if got := eval(compile(t, "OR * UID 1:*", Options{Numbers: true}), st, nil); len(got) != 0 {
		t.Errorf("empty view: %v", got)
	}
	// Eval hands each match's sequence number, flags and mod-sequence.
	var ms []Message
	compile(t, "UID 9 UNSEEN", Options{Numbers: true}).Eval(st, view, func(m Message) { ms = append(ms, m) })
	_, modseq, _ := st.Flags(9)
	if len(ms) != 1 || ms[0].Seq != 4 || ms[0].UID != 9 || ms[0].ModSeq != modseq {
		t.Errorf("Eval gave %+v", ms)
	}
}

// TestModSeq: MODSEQ n matches the messages whose mod-sequence is n or
// more.
func TestModSeq(t *testing.T) {
	st := syncstate.New(1) // messages 1..4 get 2..5
	for uid := range uint32(4) {
		st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uid + 1}}})
	}
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 2, Flags: []string{`\Seen`}}}}) // 6
	view := []uint32{1, 2, 3, 4}
	for _, tc := range []struct {
		crit string
		want []uint32
	}{
		{"MODSEQ 0", view}, {"MODSEQ 1", view}, {"MODSEQ 4", []uint32{2, 3, 4}}, {"MODSEQ 6", []uint32{2}},
		{"MODSEQ 7", nil}, {"NOT MODSEQ 5", []uint32{1, 3}}, {"MODSEQ 3 UNSEEN", []uint32{3, 4}},
	} {
		p := compile(t, tc.crit, Options{ModSeq: true})
		if !p.HasModSeq() {
			t.Errorf("%s: HasModSeq false", tc.crit)
		}
		if got := eval(p, st, view); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.crit, got, tc.want)
		}
	}
	if compile(t, "SEEN", Options{ModSeq: true}).HasModSeq() {
		t.Error("SEEN: HasModSeq true")
	}
}

// FuzzCompileCommand: any command compiles or is refused without panic,
// and a compiled one runs over any view.
func FuzzCompileCommand(f *testing.F) {
	for _, s := range decided {
		f.Add("t UID SEARCH " + s)
	}
	f.Add("t SEARCH RETURN (MIN) CHARSET UTF-8 OR (SEEN) (UID 1:4294967295)")
	f.Add("t SEARCH MODSEQ 18446744073709551615")
	f.Add("t SEARCH 4294967295:* UID *:4294967295")
	st := syncstate.New(1)
	st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: 1}, {UID: 7, Flags: []string{`\Seen`, "$Junk"}}, {UID: 4294967295}}})
	f.Fuzz(func(t *testing.T, s string) {
		p, err := CompileCommand(segments(s), Options{Numbers: true, ModSeq: true})
		if err != nil {
			return
		}
		eval(p, st, []uint32{1, 5, 7, 4294967295})
		eval(p, st, nil)
	})
}

// BenchmarkEval decides ALL and UNSEEN over a view of 100,000 messages:
// the proxy's whole work for an ESEARCH COUNT of them.
func BenchmarkEval(b *testing.B) {
	st := syncstate.New(1)
	view := make([]uint32, 100_000)
	msgs := make([]syncstate.Message, len(view))
	for i := range view {
		view[i] = uint32(i + 1)
		msgs[i] = syncstate.Message{UID: view[i]}
		if i%3 == 0 {
			msgs[i].Flags = []string{`\Seen`}
		}
	}
	st.Apply(syncstate.Changes{Upsert: msgs})
	for _, crit := range []string{"ALL", "UNSEEN", "OR FLAGGED KEYWORD $Junk"} {
		p := compile(b, crit, Options{Numbers: true})
		b.Run(crit, func(b *testing.B) {
			for range b.N {
				n := 0
				p.Eval(st, view, func(Message) { n++ })
			}
		})
	}
}
