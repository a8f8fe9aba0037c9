package casemap

import (
	"testing"
	"unicode/utf8"
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
