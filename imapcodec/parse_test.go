package imapcodec

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// readSegs reads one command or response from wire (which must be complete).
func readSegs(t testing.TB, wire string, lim Limits) []Segment {
	t.Helper()
	segs, err := NewReader(strings.NewReader(wire), lim).ReadSegments(nil)
	if err != nil {
		t.Fatalf("ReadSegments(%q): %v", wire, err)
	}
	return segs
}

func parseValues(t testing.TB, wire string, lim Limits) ([]Value, error) {
	t.Helper()
	return NewParser(readSegs(t, wire, lim), lim).Values()
}

// valuesEqual compares values exactly, distinguishing quoted strings from
// literals.
func valuesEqual(a, b []Value) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !valueEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

func valueEqual(a, b Value) bool {
	switch a := a.(type) {
	case Atom:
		b, ok := b.(Atom)
		return ok && a == b
	case String:
		b, ok := b.(String)
		return ok && bytes.Equal(a.Data, b.Data) && a.Literal == b.Literal && a.Binary == b.Binary
	case List:
		b, ok := b.(List)
		return ok && valuesEqual(a, b)
	}
	return false
}

func fmtValues(vs []Value) string {
	var b strings.Builder
	for i, v := range vs {
		if i > 0 {
			b.WriteString(" ")
		}
		fmtValue(&b, v)
	}
	return b.String()
}

func fmtValue(b *strings.Builder, v Value) {
	switch v := v.(type) {
	case Atom:
		fmt.Fprintf(b, "Atom(%q)", string(v))
	case String:
		fmt.Fprintf(b, "String(%q", v.Data)
		if v.Literal {
			b.WriteString(",lit")
		}
		if v.Binary {
			b.WriteString(",bin")
		}
		b.WriteString(")")
	case List:
		b.WriteString("List(")
		b.WriteString(fmtValues(v))
		b.WriteString(")")
	default:
		fmt.Fprintf(b, "%T(%v)", v, v)
	}
}

func q(s string) String    { return String{Data: []byte(s)} }
func lit(s string) String  { return String{Data: []byte(s), Literal: true} }
func lit8(s string) String { return String{Data: []byte(s), Literal: true, Binary: true} }

func TestParserValues(t *testing.T) {
	tests := []struct {
		in   string // without the final CRLF
		want []Value
	}{
		{"", nil},
		{"a", []Value{Atom("a")}},
		{"a b c", []Value{Atom("a"), Atom("b"), Atom("c")}},
		{"NIL nil", []Value{Atom("NIL"), Atom("nil")}},
		{`\Seen \* * % 1:* 4,5:7 $ } a}b ~x`, []Value{Atom(`\Seen`), Atom(`\*`), Atom("*"), Atom("%"), Atom("1:*"), Atom("4,5:7"), Atom("$"), Atom("}"), Atom("a}b"), Atom("~x")}},
		{`"hello world"`, []Value{q("hello world")}},
		{`""`, []Value{q("")}},
		{`"a\"b\\c"`, []Value{q(`a"b\c`)}},
		{`"\\"`, []Value{q(`\`)}},
		{`"(" ")" "{3}" "[" "]"`, []Value{q("("), q(")"), q("{3}"), q("["), q("]")}},
		{"\"caf\xc3\xa9 \x01\r\"", []Value{q("caf\xc3\xa9 \x01\r")}},
		{`a "b" c`, []Value{Atom("a"), q("b"), Atom("c")}},
		{"()", []Value{List{}}},
		{"(())", []Value{List{List{}}}},
		// RFC 3501 address lists: lists inside a list run together.
		{`((NIL NIL "a" "x")(NIL NIL "b" "x"))`, []Value{List{List{Atom("NIL"), Atom("NIL"), q("a"), q("x")}, List{Atom("NIL"), Atom("NIL"), q("b"), q("x")}}}},
		{`(a "b" (c (d)) NIL)`, []Value{List{Atom("a"), q("b"), List{Atom("c"), List{Atom("d")}}, Atom("NIL")}}},
		{`(FLAGS (\Seen \Answered)) (UID)`, []Value{List{Atom("FLAGS"), List{Atom(`\Seen`), Atom(`\Answered`)}}, List{Atom("UID")}}},

		// Sections are part of the atom.
		{"BODY[HEADER.FIELDS (A B)]<0.10>", []Value{Atom("BODY[HEADER.FIELDS (A B)]<0.10>")}},
		{"BODY.PEEK[HEADER.FIELDS (FROM TO)]", []Value{Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]")}},
		{"BODY[]", []Value{Atom("BODY[]")}},
		{"BODY[1.2.MIME]<5.6>", []Value{Atom("BODY[1.2.MIME]<5.6>")}},
		{`BODY[HEADER.FIELDS ("X]Y" "\"]")]`, []Value{Atom(`BODY[HEADER.FIELDS ("X]Y" "\"]")]`)}},
		{"x[a[b]c]y", []Value{Atom("x[a[b]c]y")}},
		{"[ALERT]", []Value{Atom("[ALERT]")}},
		{"[{3}]", []Value{Atom("[{3}]")}},
		{"(BODY[TEXT] UID)", []Value{List{Atom("BODY[TEXT]"), Atom("UID")}}},
		{"(FLAGS BODY[HEADER.FIELDS (DATE FROM)])", []Value{List{Atom("FLAGS"), Atom("BODY[HEADER.FIELDS (DATE FROM)]")}}},

		// Literals between segments.
		{"{3}\r\nabc", []Value{lit("abc")}},
		{"{0}\r\n", []Value{lit("")}},
		{"a {3}\r\nabc b", []Value{Atom("a"), lit("abc"), Atom("b")}},
		{"a {3+}\r\na b {2}\r\n\r\n", []Value{Atom("a"), lit("a b"), lit("\r\n")}},
		{"(a {3}\r\nabc)", []Value{List{Atom("a"), lit("abc")}}},
		{"({3}\r\nabc {1}\r\n))", []Value{List{lit("abc"), lit(")")}}},
		{"(({2}\r\n()))", []Value{List{List{lit("()")}}}},
		{"~{3}\r\na\x00c", []Value{lit8("a\x00c")}},
		{"x ~{3+}\r\nabc", []Value{Atom("x"), lit8("abc")}},
	}
	for _, tt := range tests {
		got, err := parseValues(t, tt.in+"\r\n", Limits{})
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !valuesEqual(got, tt.want) {
			t.Errorf("%q:\n got %s\nwant %s", tt.in, fmtValues(got), fmtValues(tt.want))
		}
	}
}

func TestParserErrors(t *testing.T) {
	tests := []struct {
		in   string
		lim  Limits
		want error
	}{
		{"(a", Limits{}, ErrSyntax},
		{"((a)", Limits{}, ErrSyntax},
		{"a)", Limits{}, ErrSyntax},
		{")", Limits{}, ErrSyntax},
		{"(a))", Limits{}, ErrSyntax},
		{`"abc`, Limits{}, ErrSyntax},
		{`"abc\"`, Limits{}, ErrSyntax},
		{`"abc\`, Limits{}, ErrSyntax},
		{`"a\b"`, Limits{}, ErrSyntax},
		{"\"a\x00b\"", Limits{}, ErrSyntax},
		{`a"b"`, Limits{}, ErrSyntax},
		{`"a"b`, Limits{}, ErrSyntax},
		{"a(b)", Limits{}, ErrSyntax},
		{"(a)(b)", Limits{}, ErrSyntax},
		{"BODY[abc", Limits{}, ErrSyntax},
		{"BODY[a]]", Limits{}, ErrSyntax},
		{`BODY[HEADER.FIELDS ("a]")`, Limits{}, ErrSyntax},
		{`BODY["a]`, Limits{}, ErrSyntax},
		{"a]", Limits{}, ErrSyntax},
		{"]", Limits{}, ErrSyntax},
		{"[", Limits{}, ErrSyntax},
		{"a  b", Limits{}, ErrSyntax},
		{" a", Limits{}, ErrSyntax},
		{"a ", Limits{}, ErrSyntax},
		{" ", Limits{}, ErrSyntax},
		{"( a)", Limits{}, ErrSyntax},
		{"(a )", Limits{}, ErrSyntax},
		{"(a  b)", Limits{}, ErrSyntax},
		{"caf\xc3\xa9", Limits{}, ErrSyntax},
		{"a\x01", Limits{}, ErrSyntax},
		{"a\x7f", Limits{}, ErrSyntax},
		{"\t", Limits{}, ErrSyntax},
		{"{3}\r\nabc{3}\r\ndef", Limits{}, ErrSyntax},
		{"a{3}\r\nabc", Limits{}, ErrSyntax},
		{"{3}\r\nabcx", Limits{}, ErrSyntax},
		{"{3}\r\nabc ", Limits{}, ErrSyntax},
		{"({3}\r\nabc", Limits{}, ErrSyntax},
		{"x~{3}\r\nabc", Limits{}, ErrSyntax},
		{"(((a)))", Limits{MaxDepth: 2}, ErrTooDeep},
		{"(() (()))", Limits{MaxDepth: 1}, ErrTooDeep},
	}
	for _, tt := range tests {
		got, err := parseValues(t, tt.in+"\r\n", tt.lim)
		if !errors.Is(err, tt.want) {
			t.Errorf("%q: values %s, err %v; want %v", tt.in, fmtValues(got), err, tt.want)
		}
	}
}

func TestParserDepth(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("(", n) + "x" + strings.Repeat(")", n) }
	for _, tt := range []struct {
		maxDepth, limit int
	}{
		{1, 1}, {3, 3}, {0, DefaultMaxDepth}, {DefaultMaxDepth, DefaultMaxDepth}, {100, 100},
	} {
		lim := Limits{MaxDepth: tt.maxDepth}
		vs, err := parseValues(t, nest(tt.limit)+"\r\n", lim)
		if err != nil {
			t.Errorf("depth %d with limit %d: %v", tt.limit, tt.limit, err)
		} else {
			depth := 0
			for v := vs[0]; ; depth++ {
				l, ok := v.(List)
				if !ok {
					break
				}
				v = l[0]
			}
			if depth != tt.limit {
				t.Errorf("parsed depth %d, want %d", depth, tt.limit)
			}
		}
		_, err = parseValues(t, nest(tt.limit+1)+"\r\n", lim)
		if !errors.Is(err, ErrTooDeep) {
			t.Errorf("depth %d with limit %d: err %v, want ErrTooDeep", tt.limit+1, tt.limit, err)
		}
		if errors.Is(err, ErrSyntax) {
			t.Errorf("ErrTooDeep also matches ErrSyntax: %v", err)
		}
		// Depth is per nesting, not per list: siblings do not add up.
		siblings := strings.TrimSuffix(strings.Repeat(nest(tt.limit)+" ", 3), " ")
		if _, err := parseValues(t, "("+siblings+")\r\n", Limits{MaxDepth: tt.limit + 1}); err != nil {
			t.Errorf("siblings at depth %d: %v", tt.limit+1, err)
		}
	}
	// A hostile nesting far beyond the limit fails fast.
	if _, err := parseValues(t, strings.Repeat("(", 60000)+"\r\n", Limits{}); !errors.Is(err, ErrTooDeep) {
		t.Errorf("60000 open parens: %v", err)
	}
}

func TestParserPrimitives(t *testing.T) {
	segs := readSegs(t, "a  b {2}\r\nxy\r\n", Limits{})
	p := NewParser(segs, Limits{})
	if p.AtEnd() {
		t.Fatal("AtEnd at start")
	}
	if a, err := p.Atom(); err != nil || a != "a" {
		t.Fatalf("Atom = %q, %v", a, err)
	}
	if p.Rest() != "  b " {
		t.Fatalf("Rest = %q", p.Rest())
	}
	if !p.MaybeSP() || p.Rest() != " b " {
		t.Fatalf("MaybeSP; Rest = %q", p.Rest())
	}
	if err := p.SP(); err != nil {
		t.Fatal(err)
	}
	if err := p.SP(); !errors.Is(err, ErrSyntax) {
		t.Fatalf("SP before an atom: %v", err)
	}
	if p.MaybeSP() {
		t.Fatal("MaybeSP before an atom")
	}
	if _, err := p.Atom(); err != nil {
		t.Fatal(err)
	}
	if err := p.SP(); err != nil {
		t.Fatal(err)
	}
	if p.Rest() != "" || p.AtEnd() {
		t.Fatalf("before literal: Rest %q, AtEnd %v", p.Rest(), p.AtEnd())
	}
	if _, err := p.Atom(); !errors.Is(err, ErrSyntax) {
		t.Fatalf("Atom at a literal: %v", err)
	}
	v, err := p.Value()
	if err != nil || !valueEqual(v, lit("xy")) {
		t.Fatalf("Value = %v, %v", v, err)
	}
	if !p.AtEnd() {
		t.Fatal("not AtEnd after the last value")
	}
	if _, err := p.Value(); !errors.Is(err, ErrSyntax) {
		t.Fatalf("Value at end: %v", err)
	}
	if err := p.SP(); !errors.Is(err, ErrSyntax) {
		t.Fatalf("SP at end: %v", err)
	}

	// Hand-built and empty segment lists.
	if p := NewParser(nil, Limits{}); !p.AtEnd() || p.Rest() != "" {
		t.Fatal("empty parser not at end")
	}
	if vs, err := NewParser(nil, Limits{}).Values(); err != nil || vs != nil {
		t.Fatalf("Values of nothing = %v, %v", vs, err)
	}
}

func TestIsNilAsString(t *testing.T) {
	for _, tt := range []struct {
		v       Value
		isNil   bool
		str     string
		isAstr  bool
		comment string
	}{
		{Atom("NIL"), true, "NIL", true, ""},
		{Atom("nil"), true, "nil", true, ""},
		{Atom("NILS"), false, "NILS", true, ""},
		{q("NIL"), false, "NIL", true, "a quoted NIL is a string"},
		{lit("x y"), false, "x y", true, ""},
		{List{}, false, "", false, ""},
		{nil, false, "", false, ""},
	} {
		if got := IsNil(tt.v); got != tt.isNil {
			t.Errorf("IsNil(%#v) = %v", tt.v, got)
		}
		s, ok := AsString(tt.v)
		if s != tt.str || ok != tt.isAstr {
			t.Errorf("AsString(%#v) = %q, %v", tt.v, s, ok)
		}
	}
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string // without CRLF
		tag  string
		name string
		args []Value
	}{
		{"a1 uid fetch 1:* (FLAGS)", "a1", "UID FETCH", []Value{Atom("1:*"), List{Atom("FLAGS")}}},
		{"a1 UID FETCH 1:* (FLAGS)", "a1", "UID FETCH", []Value{Atom("1:*"), List{Atom("FLAGS")}}},
		{"A142 SELECT INBOX", "A142", "SELECT", []Value{Atom("INBOX")}},
		{"a002 noop", "a002", "NOOP", nil},
		{"a3 Uid Store 1 +FLAGS (\\Deleted)", "a3", "UID STORE", []Value{Atom("1"), Atom("+FLAGS"), List{Atom(`\Deleted`)}}},
		{"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man", "A001", "LOGIN", []Value{lit("FRED FOOBAR"), lit("fat man")}},
		{`A001 LOGIN SMITH "sesame"`, "A001", "LOGIN", []Value{Atom("SMITH"), q("sesame")}},
		{"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])", "A654", "FETCH", []Value{Atom("2:4"), List{Atom("FLAGS"), Atom("BODY[HEADER.FIELDS (DATE FROM)]")}}},
		{"A003 APPEND saved-messages (\\Seen) {5+}\r\nhello", "A003", "APPEND", []Value{Atom("saved-messages"), List{Atom(`\Seen`)}, lit("hello")}},
		{"tag.with-chars_1 CAPABILITY", "tag.with-chars_1", "CAPABILITY", nil},
		{"a1 x[\u0131\xff] y", "a1", "X[\u0131\xff]", []Value{Atom("y")}},
		{"a] NOOP", "", "", nil}, // see below: error
	}
	for _, tt := range tests {
		segs := readSegs(t, tt.in+"\r\n", Limits{})
		cmd, err := ParseCommand(segs, Limits{})
		if tt.tag == "" {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("%q: err %v, want ErrSyntax", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if cmd.Tag != tt.tag || cmd.Name != tt.name {
			t.Errorf("%q: tag %q name %q, want %q %q", tt.in, cmd.Tag, cmd.Name, tt.tag, tt.name)
		}
		if !segmentsEqual(cmd.Segments, segs) {
			t.Errorf("%q: Segments not kept", tt.in)
		}
		args, err := cmd.Args.Values()
		if err != nil || !valuesEqual(args, tt.args) {
			t.Errorf("%q: args %s, %v; want %s", tt.in, fmtValues(args), err, fmtValues(tt.args))
		}
	}
}

func TestParseCommandErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantCmd bool // whether a Command (with its tag) comes back
		tag     string
	}{
		{"", false, ""},
		{" NOOP", false, ""},
		{"+ NOOP", false, ""},
		{"a+ NOOP", false, ""},
		{"a[1] NOOP", false, ""},
		// RFC 3501 §9: a tag is ASTRING-CHARs but "+": no list wildcards
		// or quoted-specials (Dovecot refuses them too).
		{"a* NOOP", false, ""},
		{"a% NOOP", false, ""},
		{`a\ NOOP`, false, ""},
		{"* NOOP", false, ""},
		{`"a1" NOOP`, false, ""},
		{"(a1) NOOP", false, ""},
		{"{2}\r\na1 NOOP", false, ""},
		{"a1", true, "a1"},
		{"a1 ", true, "a1"},
		{"a1  NOOP", true, "a1"},
		{"a1 (NOOP)", true, "a1"},
		{`a1 "NOOP"`, true, "a1"},
		{"a1 {4}\r\nNOOP", true, "a1"},
		{"a1 UID", true, "a1"},
		{"a1 uid ", true, "a1"},
		{"a1 UID (FETCH)", true, "a1"},
	}
	for _, tt := range tests {
		cmd, err := ParseCommand(readSegs(t, tt.in+"\r\n", Limits{}), Limits{})
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: err %v, want ErrSyntax", tt.in, err)
			continue
		}
		if !tt.wantCmd {
			if cmd != nil {
				t.Errorf("%q: got a command %+v", tt.in, cmd)
			}
			continue
		}
		if cmd == nil || cmd.Tag != tt.tag {
			t.Errorf("%q: cmd %+v, want one with tag %q", tt.in, cmd, tt.tag)
		}
	}
}

func TestParseTag(t *testing.T) {
	long := strings.Repeat("t", 64)
	tests := []struct{ in, want string }{
		{"a1 NOOP", "a1"},
		{"a1", "a1"},
		{"A001 LOGIN {5}", "A001"},
		{"a1 ", "a1"},
		{long + " NOOP", long},
		{long + "t NOOP", ""},
		{"", ""},
		{" a1 NOOP", ""},
		{"* OK", ""},
		{"a* NOOP", ""},
		{"+ x", ""},
		{"a+ x", ""},
		{"a[b] x", ""},
		{"a[b x", ""},
		{"(x", ""},
		{`"a1" NOOP`, ""},
		{"{5}", ""},
		{"\x00", ""},
		{"a1)", "a1"},
	}
	for _, tt := range tests {
		if got := ParseTag([]byte(tt.in)); got != tt.want {
			t.Errorf("ParseTag(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseResponseHead(t *testing.T) {
	tests := []struct {
		in       string
		want     ResponseHead
		isStatus bool
	}{
		{"* OK [CAPABILITY IMAP4rev1 IDLE] ready",
			ResponseHead{Tag: "*", Name: "OK", Code: "CAPABILITY", CodeArg: "IMAP4rev1 IDLE", Text: "ready"}, true},
		{"* OK IMAP4rev1 Service Ready",
			ResponseHead{Tag: "*", Name: "OK", Text: "IMAP4rev1 Service Ready"}, true},
		{"* 23 EXISTS", ResponseHead{Tag: "*", Num: 23, HasNum: true, Name: "EXISTS"}, false},
		{"* 0 RECENT", ResponseHead{Tag: "*", Num: 0, HasNum: true, Name: "RECENT"}, false},
		{"* 4294967295 EXPUNGE", ResponseHead{Tag: "*", Num: 4294967295, HasNum: true, Name: "EXPUNGE"}, false},
		{`* 1 FETCH (FLAGS (\Seen))`, ResponseHead{Tag: "*", Num: 1, HasNum: true, Name: "FETCH", Text: `(FLAGS (\Seen))`}, false},
		{"* 12 FETCH (BODY[HEADER] {342}", ResponseHead{Tag: "*", Num: 12, HasNum: true, Name: "FETCH", Text: "(BODY[HEADER] {342}"}, false},
		{"a1 NO [AUTHENTICATIONFAILED] bad", ResponseHead{Tag: "a1", Name: "NO", Code: "AUTHENTICATIONFAILED", Text: "bad"}, true},
		{"A142 OK [read-write] SELECT completed", ResponseHead{Tag: "A142", Name: "OK", Code: "READ-WRITE", Text: "SELECT completed"}, true},
		{"* OK [UNSEEN 12] Message 12 is first unseen", ResponseHead{Tag: "*", Name: "OK", Code: "UNSEEN", CodeArg: "12", Text: "Message 12 is first unseen"}, true},
		{`* OK [PERMANENTFLAGS (\Deleted \Seen \*)] Limited`, ResponseHead{Tag: "*", Name: "OK", Code: "PERMANENTFLAGS", CodeArg: `(\Deleted \Seen \*)`, Text: "Limited"}, true},
		{`* NO [BADCHARSET ("x]y")] no`, ResponseHead{Tag: "*", Name: "NO", Code: "BADCHARSET", CodeArg: `("x]y")`, Text: "no"}, true},
		{"a2 OK [ALERT]", ResponseHead{Tag: "a2", Name: "OK", Code: "ALERT"}, true},
		{"a2 OK [ALERT]x", ResponseHead{Tag: "a2", Name: "OK", Code: "ALERT", Text: "x"}, true},
		{"a2 OK [unclosed text", ResponseHead{Tag: "a2", Name: "OK", Text: "[unclosed text"}, true},
		{"a2 bad", ResponseHead{Tag: "a2", Name: "BAD"}, true},
		{"a2 ok done", ResponseHead{Tag: "a2", Name: "OK", Text: "done"}, true},
		{"A003 BAD Command unknown or arguments invalid", ResponseHead{Tag: "A003", Name: "BAD", Text: "Command unknown or arguments invalid"}, true},
		{"* PREAUTH IMAP4rev1 server logged in as Smith", ResponseHead{Tag: "*", Name: "PREAUTH", Text: "IMAP4rev1 server logged in as Smith"}, true},
		{"* BYE x", ResponseHead{Tag: "*", Name: "BYE", Text: "x"}, true},
		{"* BYE", ResponseHead{Tag: "*", Name: "BYE"}, true},
		{"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI", ResponseHead{Tag: "*", Name: "CAPABILITY", Text: "IMAP4rev1 STARTTLS AUTH=GSSAPI"}, false},
		{`* FLAGS (\Answered \Flagged)`, ResponseHead{Tag: "*", Name: "FLAGS", Text: `(\Answered \Flagged)`}, false},
		{`* LIST (\Noselect) "/" ~/Mail/foo`, ResponseHead{Tag: "*", Name: "LIST", Text: `(\Noselect) "/" ~/Mail/foo`}, false},
		{"* search", ResponseHead{Tag: "*", Name: "SEARCH"}, false},
		// A number makes it a data response, even with a status name.
		{"* 3 OK [X] y", ResponseHead{Tag: "*", Num: 3, HasNum: true, Name: "OK", Text: "[X] y"}, true},
		// A number is only looked for in untagged responses.
		{"a1 23 EXISTS", ResponseHead{Tag: "a1", Name: "23", Text: "EXISTS"}, false},
		{"+ idling", ResponseHead{Tag: "+", Text: "idling"}, false},
		{"+", ResponseHead{Tag: "+"}, false},
		{"+ ", ResponseHead{Tag: "+"}, false},
		{"+YGgGCSqGSIb3EgECAgIBAAD/////", ResponseHead{Tag: "+", Text: "YGgGCSqGSIb3EgECAgIBAAD/////"}, false},
		{"+  two spaces", ResponseHead{Tag: "+", Text: " two spaces"}, false},
		{"+ Ready for additional command text", ResponseHead{Tag: "+", Text: "Ready for additional command text"}, false},
		// Only ASCII letters are upper-cased: IMAP keywords are ASCII.
		{"* OK [capab\u0131l\u0131ty X] hi", ResponseHead{Tag: "*", Name: "OK", Code: "CAPAB\u0131L\u0131TY", CodeArg: "X", Text: "hi"}, true},
		{"a1 NO [\xa1x]", ResponseHead{Tag: "a1", Name: "NO", Code: "\xa1X"}, true},
		{"a1 ok\xff", ResponseHead{Tag: "a1", Name: "OK\xff"}, false},
		{"* \u017fearch 1", ResponseHead{Tag: "*", Name: "\u017fEARCH", Text: "1"}, false},
	}
	for _, tt := range tests {
		got, err := ParseResponseHead([]byte(tt.in))
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%q:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
		if got.IsStatus() != tt.isStatus {
			t.Errorf("%q: IsStatus = %v", tt.in, got.IsStatus())
		}
	}
}

func TestParseResponseHeadErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"*",
		"a1",
		" OK",
		"* ",
		"*  OK",
		"a1 ",
		"* 1",
		"* 1 ",
		"* 4294967296 EXISTS",
		"* 1x EXISTS",
		"* 99999999999999999999 EXISTS",
	} {
		if h, err := ParseResponseHead([]byte(in)); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: %+v, %v; want ErrSyntax", in, h, err)
		}
	}
}
