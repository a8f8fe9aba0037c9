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
