package casesearch

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// caps is an upstream capability set for candidates().
type caps map[string]bool

func (c caps) Has(s string) bool { return c[s] }

func segsOf(cmd string) []imapcodec.Segment { return []imapcodec.Segment{{Text: []byte(cmd)}} }

// TestProgram: the prefix, the atoms (distinct, whatever their case and
// polarity), the candidates' criteria and the rewritten command.
func TestProgram(t *testing.T) {
	for _, tt := range []struct {
		cmd, charset, atoms, cands, rewritten string
	}{
		{`a UID SEARCH SUBJECT x`, ``, `HEADER subject=X`, `UID SEARCH ALL`, `a UID SEARCH K0+`},
		{`a UID SEARCH RETURN (COUNT) CHARSET utf-8 NOT SUBJECT x UNSEEN`, `utf-8`, `HEADER subject=X`,
			`UID SEARCH NOT NOT ALL UNSEEN`, `a UID SEARCH RETURN (COUNT) CHARSET utf-8 NOT K0- UNSEEN`},
		{`a UID SEARCH OR FROM "a b" HEADER From "A B" (TEXT "é" BODY "") MODSEQ 5 FROM "A b"`, ``, `FROM=A B,HEADER from=A B,TEXT=E` + "\u0301" + `,BODY=`,
			`UID SEARCH OR ALL ALL (ALL ALL) ALL ALL`, `a UID SEARCH OR K0+ K1+ (K2+ K3+) MODSEQ 5 K0+`},
		{`a UID SORT RETURN (MIN) (REVERSE DATE) "UTF-8" OR NOT CC q UID 3:4`, `UTF-8`, `CC=Q`,
			`UID SEARCH OR NOT NOT ALL UID 3:4`, `a UID SORT RETURN (MIN) (REVERSE DATE) "UTF-8" OR NOT K0- UID 3:4`},
		{`a UID THREAD REFERENCES US-ASCII TO x NOT NOT TO x`, `US-ASCII`, `TO=X`,
			`UID SEARCH ALL NOT NOT ALL`, `a UID THREAD REFERENCES US-ASCII K0+ NOT NOT K0+`},
		{`a UID SEARCH UNSEEN`, ``, ``, `UID SEARCH UNSEEN`, `a UID SEARCH UNSEEN`},
	} {
		p, err := parseProgram(segsOf(tt.cmd))
		if err != nil {
			t.Errorf("%s: %v", tt.cmd, err)
			continue
		}
		var atoms []string
		for _, a := range p.atoms {
			atoms = append(atoms, a.String()+"="+a.needle)
		}
		cands, err := p.candidates(caps{})
		if err != nil {
			t.Errorf("%s: candidates: %v", tt.cmd, err)
		}
		segs, err := p.rewrite(func(i int, neg bool) string {
			if neg {
				return "K" + string(rune('0'+i)) + "-"
			}
			return "K" + string(rune('0'+i)) + "+"
		})
		if err != nil {
			t.Errorf("%s: rewrite: %v", tt.cmd, err)
			continue
		}
		if p.charset != tt.charset || strings.Join(atoms, ",") != tt.atoms || cands != tt.cands || string(segs[0].Text) != tt.rewritten {
			t.Errorf("%s:\n charset %q atoms %q\n cands %q\n rewritten %q", tt.cmd, p.charset, strings.Join(atoms, ","), cands, segs[0].Text)
		}
	}
	for _, bad := range []string{`a UID SEARCH`, `a UID SEARCH CHARSET`, `a UID SORT (DATE)`, `a UID SORT (DATE) UTF-8`, `a UID THREAD X`, `a FETCH 1 BODY[]`, `a UID SEARCH SUBJECT (x)`, `a UID SEARCH HEADER x`} {
		if p, err := parseProgram(segsOf(bad)); err == nil && len(p.atoms) > 0 {
			t.Errorf("%s: parsed, atoms %v", bad, p.atoms)
		}
	}
}

// TestProgramLiterals: keys with literal arguments are replaced with their
// literals; the candidates' criteria inline the literals they keep (none
// here) and the search form starts at the criteria.
func TestProgramLiterals(t *testing.T) {
	segs := []imapcodec.Segment{
		{Text: []byte("a UID SEARCH CHARSET "), Literal: &imapcodec.LiteralHeader{Size: 5}, Data: []byte("UTF-8")},
		{Text: []byte(" SUBJECT "), Literal: &imapcodec.LiteralHeader{Size: 7}, Data: []byte("stra\xc3\x9fe")},
		{Text: []byte(" UNSEEN")},
	}
	p, err := parseProgram(segs)
	if err != nil || p.charset != "UTF-8" || len(p.atoms) != 1 || p.atoms[0].needle != "STRAßE" {
		t.Fatalf("%+v, %v", p, err)
	}
	if c, err := p.candidates(caps{}); err != nil || c != "UID SEARCH ALL UNSEEN" {
		t.Errorf("candidates %q, %v", c, err)
	}
	out, err := p.rewrite(func(int, bool) string { return "UID 7" })
	if err != nil {
		t.Fatal(err)
	}
	form := p.searchForm(out)
	if len(form) != 1 || string(form[0].Text) != "a UID SEARCH CHARSET UTF-8 UID 7 UNSEEN" {
		t.Errorf("search form %+v", form)
	}
}

// TestEncode: the key of an atom for plain and negated places, shortest
// over UIDs the proxy does not know.
func TestEncode(t *testing.T) {
	known := []uint32{1, 2, 3, 5, 6, 8, 9, 10}
	cands := []uint32{2, 3, 5, 8, 9}
	for _, tt := range []struct {
		match    []bool
		pos, neg string
	}{
		{[]bool{false, false, false, false, false}, "NOT ALL", "NOT UID 2:5,8:9"}, // 4 is gone
		{[]bool{true, true, true, true, true}, "UID 2:5,8:9", "ALL"},
		{[]bool{true, true, false, true, true}, "UID 2:3,8:9", "NOT UID 5"},
		{[]bool{false, true, true, false, false}, "UID 3:5", "NOT UID 2,8:9"},
	} {
		pos := encode(known, cands, tt.match, false)
		neg := encode(known, cands, tt.match, true)
		if pos != tt.pos || neg != tt.neg {
			t.Errorf("%v: %q %q, want %q %q", tt.match, pos, neg, tt.pos, tt.neg)
		}
	}
}

// keyValue evaluates an encoded key for uid.
func keyValue(t *testing.T, key string, uid uint32) bool {
	switch key {
	case "ALL":
		return true
	case "NOT ALL":
		return false
	}
	neg := strings.HasPrefix(key, "NOT ")
	set, err := imapcodec.ParseUIDSet(strings.TrimPrefix(strings.TrimPrefix(key, "NOT "), "UID "))
	if err != nil {
		t.Fatalf("%q: %v", key, err)
	}
	return set.Contains(imap.UID(uid)) != neg
}

// FuzzEncode: for every known UID, the key is the atom's value on
// candidates and, on the others, false in plain places and true in
// negated ones; UIDs above the known ones are like the others.
func FuzzEncode(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5}, []byte{1, 0, 1, 1, 0}, false)
	f.Add([]byte{9, 1, 1, 2}, []byte{0, 1}, true)
	f.Fuzz(func(t *testing.T, uids, bits []byte, negated bool) {
		var known, cands []uint32
		var match []bool
		for i, b := range uids {
			u := uint32(b) + 1
			if slices.Contains(known, u) {
				continue
			}
			known = append(known, u)
			if i < len(bits) && bits[i]&2 != 0 {
				cands = append(cands, u)
			}
		}
		slices.Sort(known)
		slices.Sort(cands)
		for i := range cands {
			match = append(match, i < len(bits) && bits[i]&1 != 0)
		}
		key := encode(known, cands, match, negated)
		for _, u := range append(known, 300) {
			want := negated
			if j, ok := slices.BinarySearch(cands, u); ok {
				want = match[j]
			}
			if got := keyValue(t, key, u); got != want {
				t.Fatalf("known %v cands %v match %v negated %v: %q says %v for %d, want %v", known, cands, match, negated, key, got, u, want)
			}
		}
	})
}

// FuzzProgram: any command parses or is refused without panicking; a
// parsed one rewrites, and its rewriting with ALL has no atom left.
func FuzzProgram(f *testing.F) {
	for _, s := range []string{`a UID SEARCH OR SUBJECT x NOT BODY "y" UNSEEN`, `a UID SORT RETURN (ALL) (SUBJECT) UTF-8 HEADER a b`, `a UID THREAD X Y TEXT (`, `a UID SEARCH CHARSET "x" RETURN () 1:3`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		p, err := parseProgram(segsOf(cmd))
		if err != nil {
			return
		}
		if _, err := p.candidates(caps{"LITERAL+": true}); err != nil {
			t.Fatalf("%q: candidates: %v", cmd, err)
		}
		segs, err := p.rewrite(func(int, bool) string { return "ALL" })
		if err != nil {
			t.Fatalf("%q: rewrite: %v", cmd, err)
		}
		again, err := parseProgram(segs)
		if err != nil || len(again.atoms) != 0 {
			t.Fatalf("%q rewritten %q: %v %v", cmd, segs[0].Text, again, err)
		}
		_ = p.searchForm(segs)
	})
}

// scanAll returns which atoms a scanner finds in msg, read in pieces of
// n bytes.
func scanAll(atoms []atom, msg []byte, n int) []bool {
	sc := newScanner(atoms)
	sc.message(&pieces{b: msg, n: n})
	return slices.Clone(sc.found)
}

// pieces reads b at most n bytes at a time.
type pieces struct {
	b []byte
	n int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	k := copy(b[:min(len(b), p.n)], p.b)
	p.b = p.b[k:]
	return k, nil
}

// FuzzScanner: any message scans without panicking, to the same result
// however it arrives; the needle, put in a text part's body, is found by
// BODY and TEXT.
func FuzzScanner(f *testing.F) {
	f.Add([]byte("Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhello\r\n--b--\r\n"), "hello", uint8(3))
	f.Add([]byte("Subject: =?utf-8?q?=C3=A9?=\r\n\r\nbody"), "É", uint8(1))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n6Q=="), "é", uint8(7))
	f.Fuzz(func(t *testing.T, msg []byte, needle string, cut uint8) {
		atoms := []atom{{kind: kindBody, needle: needle}, {kind: kindText, needle: needle}, {kind: kindHeader, field: "subject", needle: needle}}
		for i := range atoms {
			atoms[i], _, _ = atomOf(imapcodec.SearchKey{Name: []string{"BODY", "TEXT", "SUBJECT"}[i], Args: []imapcodec.Value{imapcodec.Atom(needle)}})
		}
		whole := scanAll(atoms, msg, len(msg)+1)
		if got := scanAll(atoms, msg, int(cut%13)+1); !slices.Equal(got, whole) {
			t.Fatalf("%q: %v in pieces of %d, %v whole", msg, got, cut%13+1, whole)
		}
		if strings.ContainsAny(needle, "\r\n") || needle == "" {
			return
		}
		plain := append([]byte("Subject: s\r\n\r\nxx "), needle...)
		if got := scanAll(atoms, plain, 5); !got[0] || !got[1] {
			t.Fatalf("needle %q not found in %q: %v", needle, plain, got)
		}
	})
}

// TestHeaderGuard: a part header past maxHeaderBytes fails the stream;
// a long body, a long preamble, or a text line that only starts like a
// delimiter do not.
func TestHeaderGuard(t *testing.T) {
	long := strings.Repeat("x", maxHeaderBytes+10)
	for _, tt := range []struct {
		body string
		fail bool
	}{
		{"--b\r\nA: " + long + "\r\n\r\nbody\r\n--b--\r\n", true},
		{"--b\r\nA: a\r\n\r\n" + long + "\r\n--b--\r\n", false},
		{long + "\r\n--b\r\n\r\nbody\r\n--b--\r\n", false},
		{"--b\r\n\r\nbody\r\n--bx " + long + "\r\n--b--\r\n", false},
		{"--b\r\n\r\nbody\r\n--b--\r\n" + long, false},
		{"--b\r\n\r\nbody\r\n--b \t\r\nA: " + long + "\r\n\r\n--b--", true},
	} {
		var out bytes.Buffer
		_, err := io.Copy(&out, newHeaderGuard(&pieces{b: []byte(tt.body), n: 1000}, "b"))
		if (err != nil) != tt.fail {
			t.Errorf("%.40q...: %v, want failure %v", tt.body, err, tt.fail)
		}
		if err == nil && out.String() != tt.body {
			t.Errorf("%.40q...: changed", tt.body)
		}
	}
}

// TestFetchUID: the UID of a FETCH response, before or after its literal.
func TestFetchUID(t *testing.T) {
	for text, want := range map[string]uint32{
		"* 3 FETCH (UID 7 BODY[] ":          7,
		"* 3 FETCH (BODY[]  UID 12)":        12,
		"* 3 FETCH (FLAGS (\\Seen) UID 9)":  9,
		"* 3 FETCH (BODY[] )":               0,
		"* 3 FETCH (UID x BODY[] UID 4)":    4,
		"* 3 FETCH (X-UID 5 BODY[] ":        0,
		"* 3 FETCH (UID 4294967296 BODY[] ": 0,
	} {
		if got := fetchUID([]byte(text)); got != want {
			t.Errorf("%q: %d, want %d", text, got, want)
		}
	}
}

// TestAddressTexts: ENVELOPE address lists written out as Dovecot does
// for its address keys, an address at a time.
func TestAddressTexts(t *testing.T) {
	for _, tt := range []struct {
		env     string
		want    string
		present bool
	}{
		{`NIL`, ``, false},
		{`()`, ``, true},
		{`((NIL NIL "user-from" "domain.org"))`, `user-from@domain.org`, true},
		{`(("RealFrom" NIL "user-from" "domain.org"))`, `RealFrom <user-from@domain.org>`, true},
		{`(("J\"o Doe" NIL "j" "example.com"))`, `"J\"o Doe" <j@example.com>`, true},
		{`(("=?ISO-8859-1?Q?J=F6rg_M=FCller?=" NIL "joerg" "example.org"))`, `Jörg Müller <joerg@example.org>`, true},
		{`(("Name" "relay.example" "m" "h.example"))`, `Name <@relay.example:m@h.example>`, true},
		{`((NIL NIL "a" "x.org")(NIL NIL "b" "x.org"))`, `a@x.org|b@x.org`, true},
		{`((NIL NIL "groupname" NIL)(NIL NIL "u1" "d.org")(NIL NIL NIL NIL)(NIL NIL "solo" "d.org"))`,
			`groupname: |u1@d.org|: |solo@d.org`, true},
	} {
		vals, err := imapcodec.NewParser(segsOf(tt.env), imapcodec.Limits{}).Values()
		if err != nil || len(vals) != 1 {
			t.Fatalf("%s: %v", tt.env, err)
		}
		got, present := addressTexts(vals[0])
		if strings.Join(got, "|") != tt.want || present != tt.present {
			t.Errorf("%s: %q %v, want %q %v", tt.env, got, present, tt.want, tt.present)
		}
	}
}

// FuzzEnvelope: any ENVELOPE-like answer of the upstream scans without
// panicking.
func FuzzEnvelope(f *testing.F) {
	f.Add(`(NIL NIL (("a" NIL "b" "c")) NIL NIL ((NIL NIL "g" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)`, "b")
	f.Add(`(NIL NIL (("=?x?q?a?=" "r" NIL NIL)))`, "")
	f.Fuzz(func(t *testing.T, env, needle string) {
		vals, err := imapcodec.NewParser(segsOf(env), imapcodec.Limits{}).Values()
		if err != nil || len(vals) == 0 {
			return
		}
		l, ok := vals[0].(imapcodec.List)
		if !ok {
			return
		}
		var atoms []atom
		for _, k := range []string{"FROM", "TO", "CC", "BCC"} {
			a, _, _ := atomOf(imapcodec.SearchKey{Name: k, Args: []imapcodec.Value{imapcodec.Atom(needle)}})
			atoms = append(atoms, a)
		}
		sc := newScanner(atoms)
		sc.reset()
		sc.envelope(l)
	})
}
