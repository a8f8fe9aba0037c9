package imapcodec

import (
	"fmt"
	"strings"
	"testing"
)

// walk returns the keys ReplaceSearchKeys reports, as "NAME(args)", and
// replaces the keys named in repl.
func walk(t *testing.T, cmd string, repl map[string]string) ([]string, string, error) {
	t.Helper()
	segs := []Segment{{Text: []byte(cmd)}}
	var keys []string
	_, err := ReplaceSearchKeys(segs, func(k SearchKey) (string, bool, error) {
		var args []string
		for _, a := range k.Args {
			args = append(args, string(AppendValue(nil, a)))
		}
		key := fmt.Sprintf("%s(%s)", k.Name, strings.Join(args, " "))
		keys = append(keys, key)
		text, ok := repl[key]
		return text, ok, nil
	})
	return keys, string(segs[0].Text), err
}

func TestReplaceSearchKeys(t *testing.T) {
	for _, tt := range []struct {
		cmd  string
		keys string
		repl map[string]string
		out  string
	}{
		// RFC 7162 3.1.5's examples.
		{`a SEARCH MODSEQ 620162338`, `MODSEQ(620162338)`,
			map[string]string{"MODSEQ(620162338)": "UID 7"}, `a SEARCH UID 7`},
		{`a SEARCH OR NOT MODSEQ 720162338 LARGER 50000`, `MODSEQ(720162338) LARGER(50000)`,
			map[string]string{"MODSEQ(720162338)": "ALL"}, `a SEARCH OR NOT ALL LARGER 50000`},
		{`t UID SEARCH MODSEQ "/flags/\\draft" all 620162338`, `MODSEQ("/flags/\\draft" all 620162338)`,
			map[string]string{`MODSEQ("/flags/\\draft" all 620162338)`: "NOT ALL"}, `t UID SEARCH NOT ALL`},
		// Sequence sets wherever they stand, arguments skipped by arity.
		{`a SEARCH 1:3 (SUBJECT "1:2" 4) HEADER X-A 5 UNSEEN`, `(1:3) SUBJECT("1:2") (4) HEADER(X-A 5) UNSEEN()`,
			map[string]string{"(1:3)": "UID 9:11", "(4)": "UID 12"}, `a SEARCH UID 9:11 (SUBJECT "1:2" UID 12) HEADER X-A 5 UNSEEN`},
		{`a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 *`, `(*)`, nil, `a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 *`},
		{`a UID SORT (REVERSE DATE) UTF-8 FROM x 2`, `FROM(x) (2)`,
			map[string]string{"(2)": "UID 30"}, `a UID SORT (REVERSE DATE) UTF-8 FROM x UID 30`},
		{`a SORT RETURN (MIN ALL) (DATE) UTF-8 2 FROM x`, `(2) FROM(x)`,
			map[string]string{"(2)": "UID 30"}, `a SORT RETURN (MIN ALL) (DATE) UTF-8 UID 30 FROM x`},
		{`a THREAD REFERENCES UTF-8 ALL`, `ALL()`, nil, `a THREAD REFERENCES UTF-8 ALL`},
	} {
		keys, out, err := walk(t, tt.cmd, tt.repl)
		if err != nil {
			t.Errorf("%s: %v", tt.cmd, err)
			continue
		}
		if strings.Join(keys, " ") != tt.keys || out != tt.out {
			t.Errorf("%s:\n keys %q, want %q\n out %q, want %q", tt.cmd, strings.Join(keys, " "), tt.keys, out, tt.out)
		}
	}
	for _, bad := range []string{`a SEARCH`, `a SORT (DATE)`, `a FETCH 1 FLAGS`, `a SEARCH (UNSEEN`} {
		if _, _, err := walk(t, bad, nil); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

// TestSearchKeyNegated: a key under an odd number of NOTs is negated,
// whatever ORs, parentheses and FUZZYs stand between.
func TestSearchKeyNegated(t *testing.T) {
	cmd := `a SEARCH SUBJECT a NOT (FROM b NOT TO c) OR NOT BODY d FUZZY TEXT e NOT NOT NOT HEADER x f`
	var got []string
	_, err := ReplaceSearchKeys([]Segment{{Text: []byte(cmd)}}, func(k SearchKey) (string, bool, error) {
		got = append(got, fmt.Sprintf("%s:%v", k.Name, k.Negated))
		return "", false, nil
	})
	want := "SUBJECT:false FROM:true TO:false BODY:true TEXT:false HEADER:true"
	if err != nil || strings.Join(got, " ") != want {
		t.Errorf("got %q (%v), want %q", strings.Join(got, " "), err, want)
	}
}

// TestRewriteSearchKeysLiterals: keys whose arguments are literals are
// replaced with them, the segments joined around the replacement; what
// is not replaced keeps its literal.
func TestRewriteSearchKeysLiterals(t *testing.T) {
	segs := []Segment{
		{Text: []byte("a UID SEARCH CHARSET UTF-8 SUBJECT "), Literal: &LiteralHeader{Size: 7}, Data: []byte("stra\xc3\x9fe")},
		{Text: []byte(" HEADER "), Literal: &LiteralHeader{Size: 1}, Data: []byte("X")},
		{Text: []byte(" "), Literal: &LiteralHeader{Size: 3}, Data: []byte("abc")},
		{Text: []byte(" UNSEEN TO "), Literal: &LiteralHeader{Size: 2}, Data: []byte("zz")},
		{Text: []byte(" FROM x")},
	}
	out, n, err := RewriteSearchKeys(segs, func(k SearchKey) (string, bool, error) {
		switch k.Name {
		case "SUBJECT":
			return "UID 1:3", true, nil
		case "HEADER":
			return "NOT ALL", true, nil
		case "FROM":
			return "UID 9", true, nil
		}
		return "", false, nil
	})
	if err != nil || n != 3 {
		t.Fatalf("%d, %v", n, err)
	}
	var b []byte
	for _, sg := range out {
		b = append(b, sg.Text...)
		if sg.Literal != nil {
			b = append(b, "{lit}"...)
			b = append(b, sg.Data...)
		}
	}
	if want := "a UID SEARCH CHARSET UTF-8 UID 1:3 NOT ALL UNSEEN TO {lit}zz UID 9"; string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
	if len(segs) != 5 || string(segs[0].Text) != "a UID SEARCH CHARSET UTF-8 SUBJECT " {
		t.Errorf("the input changed: %q", segs[0].Text)
	}
	if _, err := ReplaceSearchKeys(segs, func(k SearchKey) (string, bool, error) { return "ALL", k.Name == "SUBJECT", nil }); err == nil {
		t.Error("ReplaceSearchKeys replaced a key split by a literal")
	}
	// `SUBJECT "x"0` made "UID 5" + "0" would be "UID 50".
	if _, _, err := RewriteSearchKeys([]Segment{{Text: []byte(`a SEARCH SUBJECT "x"0`)}}, func(SearchKey) (string, bool, error) { return "UID 5", true, nil }); err == nil {
		t.Error("RewriteSearchKeys replaced a key that runs into the next")
	}
}

func TestParseStoreArgs(t *testing.T) {
	for _, tt := range []struct {
		args, out string
		op        byte
		silent    bool
		flags     string
		mods      bool
	}{
		// RFC 3501 6.4.6 and RFC 7162 3.1.3 examples.
		{` 2:4 +FLAGS (\Deleted)`, `2:4 +FLAGS (\Deleted)`, '+', false, `\Deleted`, false},
		{` 1 -FLAGS.SILENT \Seen $Work`, `1 -FLAGS.SILENT (\Seen $Work)`, '-', true, `\Seen $Work`, false},
		{` 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\Deleted)`, `7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\Deleted)`, '+', true, `\Deleted`, true},
		{` * flags ()`, `* FLAGS ()`, 0, false, ``, false},
	} {
		p := NewParser([]Segment{{Text: []byte(tt.args)}}, Limits{})
		st, err := ParseStoreArgs(p)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if st.Op != tt.op || st.Silent != tt.silent || strings.Join(st.Flags, " ") != tt.flags || (st.Modifiers != nil) != tt.mods {
			t.Errorf("%q: %+v", tt.args, st)
		}
		if got := string(AppendStoreArgs(nil, st)); got != tt.out {
			t.Errorf("%q formatted %q, want %q", tt.args, got, tt.out)
		}
	}
	for _, bad := range []string{``, ` 1`, ` x FLAGS (\Seen)`, ` 1 X-GM-LABELS (a)`, ` 1 FLAGS (\Seen) extra`, ` 1 FLAGS ("q")`, ` 1 (UNCHANGEDSINCE 1)`} {
		p := NewParser([]Segment{{Text: []byte(bad)}}, Limits{})
		if st, err := ParseStoreArgs(p); err == nil {
			t.Errorf("%q: accepted as %+v", bad, st)
		}
	}
}

// FuzzReplaceSearchKeys: any command walks or fails without panicking, and
// replacing no key leaves it as it was.
func FuzzReplaceSearchKeys(f *testing.F) {
	for _, s := range []string{`a SEARCH MODSEQ "/flags/x" all 5 OR 1:* (NOT 2)`, `a UID SORT (DATE) UTF-8 HEADER a b`, `a THREAD X Y (`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		segs := []Segment{{Text: []byte(cmd)}}
		n, err := ReplaceSearchKeys(segs, func(SearchKey) (string, bool, error) { return "", false, nil })
		if n != 0 || string(segs[0].Text) != cmd {
			t.Fatalf("%q changed to %q (%d, %v)", cmd, segs[0].Text, n, err)
		}
	})
}

// FuzzParseStoreArgs: what parses formats to something that parses to the
// same.
func FuzzParseStoreArgs(f *testing.F) {
	for _, s := range []string{` 1:3 +FLAGS.SILENT (\Seen)`, ` * (UNCHANGEDSINCE 1) FLAGS a b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, args string) {
		st, err := ParseStoreArgs(NewParser([]Segment{{Text: []byte(args)}}, Limits{MaxDepth: 8}))
		if err != nil {
			return
		}
		out := AppendStoreArgs([]byte(" "), st)
		again, err := ParseStoreArgs(NewParser([]Segment{{Text: out}}, Limits{MaxDepth: 8}))
		if err != nil {
			t.Fatalf("%q formatted as %q, which does not parse: %v", args, out, err)
		}
		if got := AppendStoreArgs([]byte(" "), again); string(got) != string(out) {
			t.Fatalf("%q: %q then %q", args, out, got)
		}
	})
}

// Mailbox names are astrings: brackets need not balance (#16.13).
func TestAString(t *testing.T) {
	for _, tt := range []struct{ in, want, rest string }{
		{`a[b`, `a[b`, ``},
		{`a]b rest`, `a]b`, ` rest`},
		{`[Gmail]/Drafts (CONDSTORE)`, `[Gmail]/Drafts`, ` (CONDSTORE)`},
		{"!#$&'+,-.0123456789:;<=>?@^_`|[}", "!#$&'+,-.0123456789:;<=>?@^_`|[}", ``},
		{`"a b"x`, `a b`, `x`},
	} {
		p := NewParser([]Segment{{Text: []byte(tt.in)}}, Limits{})
		got, err := p.AString()
		if err != nil || got != tt.want || p.Rest() != tt.rest {
			t.Errorf("AString(%q) = %q, %v, rest %q; want %q, rest %q", tt.in, got, err, p.Rest(), tt.want, tt.rest)
		}
	}
	p := NewParser([]Segment{{Text: []byte("x "), Literal: &LiteralHeader{Size: 3}, Data: []byte("a]b")}, {}}, Limits{})
	p.Atom()
	p.SP()
	if got, err := p.AString(); err != nil || got != "a]b" {
		t.Errorf("literal: %q, %v", got, err)
	}
	for _, bad := range []string{``, ` x`, `(x)`, `"open`} {
		if got, err := NewParser([]Segment{{Text: []byte(bad)}}, Limits{}).AString(); err == nil {
			t.Errorf("AString(%q) = %q, want an error", bad, got)
		}
	}
}

// FuzzAString: AString never panics and never reads past the text it
// returns (unquoted: exactly its length).
func FuzzAString(f *testing.F) {
	for _, s := range []string{`a]b c`, `"q\"x" y`, `[x`, `{3}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p := NewParser([]Segment{{Text: []byte(in)}}, Limits{})
		got, err := p.AString()
		if err != nil || strings.HasPrefix(in, `"`) {
			return
		}
		if !strings.HasPrefix(in, got) || p.Rest() != in[len(got):] {
			t.Fatalf("%q: got %q, rest %q", in, got, p.Rest())
		}
	})
}

// FuzzRewriteSearchKeys: criteria with literals (marked "{L}" in the
// input: the text before it is a line, the word after it the literal's
// data) rewrite without panicking; rewriting nothing keeps them, and
// rewriting every key to ALL leaves criteria of ALLs only, the same
// number of keys.
func FuzzRewriteSearchKeys(f *testing.F) {
	for _, s := range []string{`a SEARCH SUBJECT {L}abc UNSEEN`, `a UID SORT (DATE) UTF-8 HEADER {L}x {L}y NOT FROM {L}z`, `a SEARCH OR BODY {L}q TEXT r`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		var segs []Segment
		parts := strings.Split(cmd, "{L}")
		for i, part := range parts {
			if i == 0 {
				segs = append(segs, Segment{Text: []byte(part)})
				continue
			}
			data, rest, _ := strings.Cut(part, " ")
			if rest != "" || strings.Contains(part, " ") {
				rest = " " + rest
			}
			last := &segs[len(segs)-1]
			last.Literal, last.Data = &LiteralHeader{Size: int64(len(data))}, []byte(data)
			segs = append(segs, Segment{Text: []byte(rest)})
		}
		flat := func(ss []Segment) string {
			var b []byte
			for _, sg := range ss {
				b = append(b, sg.Text...)
				if sg.Literal != nil {
					b = append(b, '{')
					b = append(b, sg.Data...)
					b = append(b, '}')
				}
			}
			return string(b)
		}
		out, n, err := RewriteSearchKeys(segs, func(SearchKey) (string, bool, error) { return "", false, nil })
		if err != nil {
			return
		}
		if n != 0 || flat(out) != flat(segs) {
			t.Fatalf("%q changed to %q", flat(segs), flat(out))
		}
		keys := 0
		out, n, err = RewriteSearchKeys(segs, func(SearchKey) (string, bool, error) { keys++; return "ALL", true, nil })
		if err != nil && strings.Contains(err.Error(), "not followed by a space") {
			return // the walk is lenient about spaces; the rewrite is not
		}
		if err != nil || n != keys {
			t.Fatalf("%q: %d of %d keys, %v", flat(segs), n, keys, err)
		}
		again := 0
		if _, _, err := RewriteSearchKeys(out, func(k SearchKey) (string, bool, error) {
			if k.Name != "ALL" {
				t.Fatalf("%q rewritten %q still has %s", flat(segs), flat(out), k.Name)
			}
			again++
			return "", false, nil
		}); err != nil || again != keys {
			t.Fatalf("%q rewritten %q: %d keys, %v", flat(segs), flat(out), again, err)
		}
	})
}
