package imapcodec

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestAppendQuoted(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `""`},
		{"abc", `"abc"`},
		{"a b", `"a b"`},
		{`a"b\c`, `"a\"b\\c"`},
		{`\\`, `"\\\\"`},
		{`"`, `"\""`},
	}
	for _, tt := range tests {
		if got := string(AppendQuoted([]byte("x "), tt.in)); got != "x "+tt.want {
			t.Errorf("AppendQuoted(%q) = %q, want %q", tt.in, got, "x "+tt.want)
		}
	}
}

func TestCanQuoteIsAtom(t *testing.T) {
	tests := []struct {
		s              string
		canQuote, atom bool
	}{
		{"", true, false},
		{"INBOX", true, true},
		{"a.b-c_d+e/f:1,2<3>~!#&'=?@^`|}", true, true},
		{"NIL", true, true},
		{"a b", true, false},
		{"a(", true, false},
		{"a)", true, false},
		{"a{", true, false},
		{"a}", true, true},
		{"a[", true, false},
		{"a]", true, false},
		{`a"`, true, false},
		{`a\`, true, false},
		{`\Seen`, true, false},
		{"a%", true, false},
		{"a*", true, false},
		{"a\t", true, false},
		{"a\x7f", true, false},
		{"a\r", false, false},
		{"a\n", false, false},
		{"a\x00", false, false},
		{"caf\xc3\xa9", false, false},
		{"\xff", false, false},
		{strings.Repeat("a", 1024), true, true},
		{strings.Repeat("a", 1025), false, true},
	}
	for _, tt := range tests {
		if got := CanQuote(tt.s); got != tt.canQuote {
			t.Errorf("CanQuote(%.20q) = %v", tt.s, got)
		}
		if got := IsAtom(tt.s); got != tt.atom {
			t.Errorf("IsAtom(%.20q) = %v", tt.s, got)
		}
		// Quotable differs from CanQuote by the length only.
		if got, want := Quotable(tt.s), tt.canQuote || len(tt.s) > 1024; got != want {
			t.Errorf("Quotable(%.20q) = %v", tt.s, got)
		}
	}
}

func TestAppendString(t *testing.T) {
	long := strings.Repeat("a b", 400)
	tests := []struct {
		s       string
		nonSync bool
		want    string
	}{
		{"INBOX", false, "INBOX"},
		{"NIL", false, `"NIL"`},
		{"nil", false, `"nil"`},
		{"", false, `""`},
		{"a b", false, `"a b"`},
		{"a*", false, `"a*"`},
		{`\Seen`, false, `"\\Seen"`},
		{`say "hi"`, false, `"say \"hi\""`},
		{"line\r\nbreak", false, "{11}\r\nline\r\nbreak"},
		{"line\r\nbreak", true, "{11+}\r\nline\r\nbreak"},
		{"caf\xc3\xa9", false, "{5}\r\ncaf\xc3\xa9"},
		{"a\x00b", true, "{3+}\r\na\x00b"},
		{long, false, "{1200}\r\n" + long},
	}
	for _, tt := range tests {
		if got := string(AppendString(nil, tt.s, tt.nonSync)); got != tt.want {
			t.Errorf("AppendString(%.30q, %v) = %.40q, want %.40q", tt.s, tt.nonSync, got, tt.want)
		}
	}
}

// TestAppendStringRoundTrip writes strings as command arguments and reads
// them back with the Reader and Parser.
func TestAppendStringRoundTrip(t *testing.T) {
	for _, s := range []string{
		"", "INBOX", "NIL", "nil", "a b", `"`, `\`, `a"b\c`, "(", ")", "{", "}", "{5}", "[", "]",
		"%", "*", `\Seen`, "a\rb", "\r\n", "\x00", "caf\xc3\xa9", "\xff\xfe", "x {3}",
		strings.Repeat("y", 1024), strings.Repeat("z", 1025), strings.Repeat("a\r\n", 1000),
	} {
		for _, nonSync := range []bool{false, true} {
			wire := string(AppendString([]byte("a1 LOGIN "), s, nonSync))
			wire = string(AppendString([]byte(wire+" "), s, nonSync)) + "\r\n"
			cmd, err := ParseCommand(readSegs(t, wire, Limits{}), Limits{})
			if err != nil {
				t.Errorf("%.20q: %v", s, err)
				continue
			}
			args, err := cmd.Args.Values()
			if err != nil || len(args) != 2 {
				t.Errorf("%.20q: args %s, %v", s, fmtValues(args), err)
				continue
			}
			for _, a := range args {
				got, ok := AsString(a)
				if !ok || got != s {
					t.Errorf("%.20q: read back %s", s, fmtValues(args))
				}
				if IsNil(a) {
					t.Errorf("%.20q: read back as NIL", s)
				}
			}
		}
	}
}

func TestAppendValue(t *testing.T) {
	tests := []struct {
		v    Value
		want string
	}{
		{Atom("FLAGS"), "FLAGS"},
		{Atom("BODY[HEADER.FIELDS (A B)]<0.10>"), "BODY[HEADER.FIELDS (A B)]<0.10>"},
		{q("a b"), `"a b"`},
		{q(""), `""`},
		{q(`a"\`), `"a\"\\"`},
		{q("a\r\n"), "{3}\r\na\r\n"},
		{q("\xff"), "{1}\r\n\xff"},
		{lit("abc"), "{3}\r\nabc"},
		{lit(""), "{0}\r\n"},
		{lit8("a\x00"), "~{2}\r\na\x00"},
		{List{}, "()"},
		{List{Atom("a"), q("b"), List{lit("c"), List{}}}, "(a \"b\" ({1}\r\nc ()))"},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := string(AppendValue([]byte("x"), tt.v)); got != "x"+tt.want {
			t.Errorf("AppendValue(%#v) = %q, want %q", tt.v, got, "x"+tt.want)
		}
	}
}

func TestAppendValueRoundTrip(t *testing.T) {
	for _, in := range []string{
		`a "b" c`,
		`(FLAGS (\Seen \Answered) UID 5 BODY[HEADER.FIELDS (DATE FROM)]<0.10> "x\"y")`,
		"(a {3}\r\nabc (b ~{2}\r\n\x00\x01) NIL \"\")",
		"{5}\r\n\r\n\r\n\r (\"caf\xc3\xa9\")",
		"(((((((((()))))))))) () ()",
	} {
		vs, err := parseValues(t, in+"\r\n", Limits{})
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		var wire []byte
		for i, v := range vs {
			if i > 0 {
				wire = append(wire, ' ')
			}
			wire = AppendValue(wire, v)
		}
		again, err := parseValues(t, string(wire)+"\r\n", Limits{})
		if err != nil {
			t.Fatalf("%q: re-parsing %q: %v", in, wire, err)
		}
		if !valuesRoundTripEqual(vs, again) {
			t.Errorf("%q: round trip gave\n%s\nwant\n%s", in, fmtValues(again), fmtValues(vs))
		}
	}
}

// valuesRoundTripEqual compares values before and after AppendValue: a
// quoted string that cannot be quoted again comes back as a literal.
func valuesRoundTripEqual(orig, again []Value) bool {
	if len(orig) != len(again) {
		return false
	}
	for i := range orig {
		switch o := orig[i].(type) {
		case String:
			if !o.Literal && !CanQuote(string(o.Data)) {
				o.Literal = true
			}
			if !valueEqual(o, again[i]) {
				return false
			}
		case List:
			a, ok := again[i].(List)
			if !ok || !valuesRoundTripEqual(o, a) {
				return false
			}
		default:
			if !valueEqual(o, again[i]) {
				return false
			}
		}
	}
	return true
}

func TestAppendStatus(t *testing.T) {
	tests := []struct {
		tag, status, code, text string
		want                    string
	}{
		{"a1", "OK", "", "NOOP completed", "a1 OK NOOP completed\r\n"},
		{"a1", "NO", "TRYCREATE", "no such mailbox", "a1 NO [TRYCREATE] no such mailbox\r\n"},
		{"*", "OK", "CAPABILITY IMAP4rev1 IDLE", "ready", "* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"},
		{"*", "BYE", "", "", "* BYE \r\n"},
		{"a1", "BAD", "", "evil\r\na2 OK injected", "a1 BAD evil  a2 OK injected\r\n"},
		{"a1", "BAD", "", "x\ny\rz\x00", "a1 BAD x y z \r\n"},
		{"a1", "NO", "", "caf\xc3\xa9 \xff\r\n", "a1 NO caf\xc3\xa9 \xff  \r\n"},
		{"a1", "NO", "", "\xff\xfe unchanged", "a1 NO \xff\xfe unchanged\r\n"},
	}
	for _, tt := range tests {
		got := AppendStatus([]byte("prefix "), tt.tag, tt.status, tt.code, tt.text)
		if string(got) != "prefix "+tt.want {
			t.Errorf("AppendStatus(%q, %q, %q, %q) = %q, want %q", tt.tag, tt.status, tt.code, tt.text, got, "prefix "+tt.want)
		}
		// Whatever the text, the result is exactly one line.
		r := NewReader(strings.NewReader(string(got[len("prefix "):])), Limits{})
		line, _, err := r.ReadLine()
		if err != nil {
			t.Fatalf("reading back %q: %v", got, err)
		}
		h, err := ParseResponseHead(line)
		if err != nil || h.Tag != tt.tag || h.Name != tt.status {
			t.Errorf("ParseResponseHead(%q) = %+v, %v", line, h, err)
		}
		if _, _, err := r.ReadLine(); err != io.EOF {
			t.Errorf("%q: more than one line (%v)", got, err)
		}
	}
}

func TestParseNumSet(t *testing.T) {
	tests := []struct {
		in   string
		want imap.SeqSet // nil: error expected
		str  string
	}{
		{"1", imap.SeqSet{{Start: 1, Stop: 1}}, "1"},
		{"1:3,5", imap.SeqSet{{Start: 1, Stop: 3}, {Start: 5, Stop: 5}}, "1:3,5"},
		{"4:*", imap.SeqSet{{Start: 4, Stop: 0}}, "4:*"},
		{"*", imap.SeqSet{{Start: 0, Stop: 0}}, "*"},
		{"*:4", imap.SeqSet{{Start: 4, Stop: 0}}, "4:*"},
		{"3:1", imap.SeqSet{{Start: 1, Stop: 3}}, "1:3"},
		{"1,2,3", imap.SeqSet{{Start: 1, Stop: 3}}, "1:3"},
		{"5,1", imap.SeqSet{{Start: 1, Stop: 1}, {Start: 5, Stop: 5}}, "1,5"},
		{"1:*,*", imap.SeqSet{{Start: 1, Stop: 0}}, "1:*"},
		{"2,4:7,9,12:*", imap.SeqSet{{Start: 2, Stop: 2}, {Start: 4, Stop: 7}, {Start: 9, Stop: 9}, {Start: 12, Stop: 0}}, "2,4:7,9,12:*"},
		{"4294967295", imap.SeqSet{{Start: 4294967295, Stop: 4294967295}}, "4294967295"},
		{"1:4294967295", imap.SeqSet{{Start: 1, Stop: 4294967295}}, "1:4294967295"},
		{"10", imap.SeqSet{{Start: 10, Stop: 10}}, "10"},

		{"0", nil, ""},
		{"", nil, ""},
		{"1:", nil, ""},
		{":1", nil, ""},
		{":", nil, ""},
		{"a", nil, ""},
		{"01", nil, ""},
		{"1:01", nil, ""},
		{"00", nil, ""},
		{"1,,2", nil, ""},
		{",1", nil, ""},
		{"1,", nil, ""},
		{",", nil, ""},
		{"1:2:3", nil, ""},
		{"1:0", nil, ""},
		{"0:1", nil, ""},
		{"-1", nil, ""},
		{"+1", nil, ""},
		{" 1", nil, ""},
		{"1 ", nil, ""},
		{"1, 2", nil, ""},
		{"4294967296", nil, ""},
		{"99999999999999999999", nil, ""},
		{"**", nil, ""},
		{"1:**", nil, ""},
		{"$", nil, ""},
		{"1.5", nil, ""},
		{"0x1", nil, ""},
		{"1_0", nil, ""},
		{"\u0661", nil, ""}, // ARABIC-INDIC DIGIT ONE
	}
	for _, tt := range tests {
		got, err := ParseNumSet(tt.in)
		if tt.want == nil {
			if !errors.Is(err, ErrSyntax) || got != nil {
				t.Errorf("ParseNumSet(%q) = %v, %v; want ErrSyntax", tt.in, got, err)
			}
			if _, err := ParseUIDSet(tt.in); !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseUIDSet(%q): %v; want ErrSyntax", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseNumSet(%q): %v", tt.in, err)
			continue
		}
		if !equalRanges(got, tt.want) || got.String() != tt.str {
			t.Errorf("ParseNumSet(%q) = %v (%q), want %v (%q)", tt.in, got, got.String(), tt.want, tt.str)
		}
		uids, err := ParseUIDSet(tt.in)
		if err != nil {
			t.Errorf("ParseUIDSet(%q): %v", tt.in, err)
			continue
		}
		if uids.String() != tt.str || len(uids) != len(tt.want) {
			t.Errorf("ParseUIDSet(%q) = %v (%q), want %q", tt.in, uids, uids.String(), tt.str)
		}
		for i := range uids {
			if uint32(uids[i].Start) != tt.want[i].Start || uint32(uids[i].Stop) != tt.want[i].Stop {
				t.Errorf("ParseUIDSet(%q)[%d] = %v, want %v", tt.in, i, uids[i], tt.want[i])
			}
		}
	}
}

func TestParseNumSetDynamic(t *testing.T) {
	s, err := ParseNumSet("1:*")
	if err != nil || !s.Dynamic() {
		t.Fatalf("1:* not dynamic: %v %v", s, err)
	}
	u, err := ParseUIDSet("2,5")
	if err != nil || u.Dynamic() || !u.Contains(5) || u.Contains(3) {
		t.Fatalf("UID set 2,5: %v %v", u, err)
	}
}

func equalRanges(a, b imap.SeqSet) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestErrorMessages(t *testing.T) {
	_, err := ParseNumSet("0")
	if err == nil || err.Error() != `imapcodec: syntax error: bad sequence number "0"` {
		t.Errorf("ParseNumSet error: %v", err)
	}
	_, err = ParseNumSet("")
	if err == nil || !strings.HasPrefix(err.Error(), "imapcodec: syntax error: ") {
		t.Errorf("ParseNumSet error: %v", err)
	}
	_, err = parseValues(t, "(a\r\n", Limits{})
	if err == nil || !strings.HasPrefix(err.Error(), "imapcodec: syntax error: ") {
		t.Errorf("parser error: %v", err)
	}
	_, _, err = NewReader(strings.NewReader("0123456789A\r\n"), Limits{MaxLine: 10}).ReadLine()
	if err == nil || err.Error() != "imapcodec: line too long (limit 10 bytes)" {
		t.Errorf("ReadLine error: %v", err)
	}
}

func TestAppendNumSet(t *testing.T) {
	for _, tc := range []struct {
		nums []uint32
		want string
	}{
		{nil, ""},
		{[]uint32{7}, "7"},
		{[]uint32{1, 2, 3, 7}, "1:3,7"},
		{[]uint32{1, 2, 3, 7, 9, 10}, "1:3,7,9:10"},
		{[]uint32{3, 4, 5, 1}, "3:5,1"},       // order kept
		{[]uint32{1, 1, 2, 2, 5, 5}, "1:2,5"}, // duplicates folded
		{[]uint32{5, 4}, "5,4"},               // descending: no range
		{[]uint32{4294967294, 4294967295}, "4294967294:4294967295"},
	} {
		if got := string(AppendNumSet([]byte("x "), tc.nums)); got != "x "+tc.want {
			t.Errorf("AppendNumSet(%v) = %q, want %q", tc.nums, got, "x "+tc.want)
		}
	}
}

func TestExpandNumSet(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []uint32
	}{
		{"7", []uint32{7}},
		{"3:5", []uint32{3, 4, 5}},
		{"5:3,9", []uint32{5, 4, 3, 9}},
		{"10,2:3", []uint32{10, 2, 3}},
	} {
		got, err := ExpandNumSet(c.in, 8)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ExpandNumSet(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "1:*", "*", "0", "1:9", "a"} {
		if got, err := ExpandNumSet(in, 8); err == nil || !errors.Is(err, ErrSyntax) {
			t.Errorf("ExpandNumSet(%q) = %v, %v; want a syntax error", in, got, err)
		}
	}
}

func TestSearchNumbers(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []uint32
	}{
		{"* SEARCH", nil},
		{"* SEARCH 3 1 2", []uint32{1, 2, 3}},
		{"* search 5 5", []uint32{5}},
		{"* SEARCH 1 2 ", []uint32{1, 2}},  // a trailing space
		{"* SEARCH  4  7", []uint32{4, 7}}, // runs of spaces
		{"* SEARCH 2 9 (MODSEQ 917162500)", []uint32{2, 9}},
	} {
		got, err := SearchNumbers([]byte(c.in))
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("SearchNumbers(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"* SORT 1", "* SEARCH 0", "* SEARCH 1x", "* SEARCH 4294967296", "* SEARCHX"} {
		if got, err := SearchNumbers([]byte(in)); err == nil || !errors.Is(err, ErrSyntax) {
			t.Errorf("SearchNumbers(%q) = %v, %v; want a syntax error", in, got, err)
		}
	}
}
