package casemap

import (
	"bytes"
	"io"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/transform"
)

// TestFold checks canonical forms: titlecase first, then NFKD, so that
// case and compatibility variants meet (RFC 5051 section 2).
func TestFold(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"hello World", "HELLO WORLD"},
		{"ä", "A\u0308"},       // titlecase Ä, decomposed
		{"Ä", "A\u0308"},       // the same canonical form
		{"A\u0308", "A\u0308"}, // already decomposed
		{"ǆ", "Dz\u030c"},      // titlecase ǅ, whose NFKD is D z caron
		{"ǅemal", "Dz\u030cEMAL"},
		{"ﬁ", "fi"},        // ligature: no simple titlecase; NFKD gives fi
		{"ß", "ß"},         // no simple titlecase mapping
		{"Ω", "\u03a9"},    // OHM SIGN: NFKD is GREEK CAPITAL OMEGA
		{"\xff", "\uFFFD"}, // invalid UTF-8
		{"straße", "STRAßE"},
	} {
		if got := Fold(tc.in); got != tc.want {
			t.Errorf("Fold(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"abc", "ABC", 0},
		{"Äpfel", "äpfel", 0},
		{"a", "b", -1},
		{"B", "a", 1},
		{"é", "E\u0301", 0},
		{"z", "é", 1},      // Z (0x5A) after E (0x45)
		{"ﬁsh", "fish", 1}, // fi stays lower case, after FI
	} {
		if got := Compare(tc.a, tc.b); got != tc.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	if !Contains("Grüße aus Köln", "KÖLN") || !Contains("café", "E") || Contains("abc", "abd") {
		t.Error("Contains")
	}
}

// FuzzFold: any input folds to valid UTF-8, and Compare is an order
// (antisymmetric, reflexive).
func FuzzFold(f *testing.F) {
	for _, s := range []string{"", "abc", "Äpfel", "ǆ", "ﬁ", "\xff\xfe", "ΣΑΣ"} {
		f.Add(s, "abc")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		fa := Fold(a)
		if !utf8.ValidString(fa) {
			t.Fatalf("Fold(%q) is not UTF-8", a)
		}
		if c := Compare(a, b); c != -Compare(b, a) {
			t.Fatalf("Compare not antisymmetric on %q %q", a, b)
		}
		if Compare(a, a) != 0 {
			t.Fatalf("Compare(%q, itself) != 0", a)
		}
	})
}

// FuzzTransformer: the streamed canonical form is Fold's, however the
// input is cut into pieces.
func FuzzTransformer(f *testing.F) {
	for _, s := range []string{"", "abc", "Äpfel", "ǆemal ﬁsh", "e\u0301\u0323x", "\xff\xe2\x82", "ＦＵＬＬ", "a\u0308\u0301\u0301\u0301b"} {
		f.Add(s, uint8(1))
	}
	f.Fuzz(func(t *testing.T, s string, cut uint8) {
		want := Fold(s)
		if got, _, err := transform.String(Transformer(), s); err != nil || got != want {
			t.Fatalf("whole %q: %q (%v), Fold %q", s, got, err, want)
		}
		n := int(cut%16) + 1
		r := transform.NewReader(&pieces{b: []byte(s), n: n}, Transformer())
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, []byte(want)) {
			t.Fatalf("%q in pieces of %d: %q (%v), Fold %q", s, n, got, err, want)
		}
	})
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
