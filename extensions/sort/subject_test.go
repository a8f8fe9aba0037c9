package sort

import (
	"testing"
	"time"
)

// TestBaseSubject: RFC 5256 section 2.1's steps, one vector or more each.
func TestBaseSubject(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"Hello", "Hello"},
		// (1) encoded words decoded, white space collapsed
		{"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"},
		{"=?ISO-8859-1?Q?Caf=E9?=  au\tlait", "Café au lait"},
		{"Re: =?UTF-8?B?w6Rw?=", "äp"},
		{"a\r\n  folded", "a folded"},
		// (2) trailers
		{"Hello (fwd)", "Hello"},
		{"Hello (FWD)(fwd)  ", "Hello"},
		{"Hello(fwd) (fwd)", "Hello"},
		// (3) leaders
		{"Re: Hello", "Hello"},
		{"RE:Hello", "Hello"},
		{"re : Hello", "Hello"},
		{"Fw: Hello", "Hello"},
		{"FWD: Hello", "Hello"},
		{"Re: Re: Fwd: Hello", "Hello"},
		{"Re[2]: Hello", "Hello"},
		{"Re [2] : Hello", "Hello"},
		{"[list] Re: Hello", "Hello"},
		{"[a][b] Re: Hello", "Hello"},
		{"Rex: Hello", "Rex: Hello"},
		{"Re Hello", "Re Hello"},
		// (4) blobs, unless only the blob would remain
		{"[list] Hello", "Hello"},
		{"[list] [other] Hello", "Hello"},
		{"[list]", "[list]"},
		{"Re: [list]", "[list]"},
		{"[a] [b]", "[b]"},
		{"[unclosed Hello", "[unclosed Hello"},
		// (5) repeated
		{"[list] Re: [list] Re: Hello", "Hello"},
		// (6) [fwd: ...] wrapper, then again from (2)
		{"[Fwd: Hello]", "Hello"},
		{"[fwd: Re: Hello (fwd)]", "Hello"},
		{"[Fwd: [Fwd: Hello]]", "Hello"},
		{"Re: [Fwd: Re: Hello]", "Hello"},
		{"[Fwd: Hello", "[Fwd: Hello"},
		{"[Fwd:]", ""},
		// not leaders
		{"Fwd Hello", "Fwd Hello"},
		{"Reply: Hello", "Reply: Hello"},
	} {
		if got := BaseSubject(tc.in); got != tc.want {
			t.Errorf("BaseSubject(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzBaseSubject(f *testing.F) {
	for _, s := range []string{"Re: [Fwd: x]", "[a][b]", "=?utf-8?q?x?= (fwd)", "[fwd:[fwd:]]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := BaseSubject(s)
		if len(b) > 4*len(s)+16 {
			t.Fatalf("BaseSubject(%q) grew to %d bytes", s, len(b))
		}
		if BaseSubject(b) != b && !containsEncodedWord(b) {
			// Extraction is a fixed point: a base subject has nothing
			// left to remove.
			t.Fatalf("BaseSubject not idempotent: %q -> %q -> %q", s, b, BaseSubject(b))
		}
	})
}

func containsEncodedWord(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '=' && s[i+1] == '?' {
			return true
		}
	}
	return false
}

// TestSentDate: RFC 5322 dates to UTC, obsolete zones with their offsets.
func TestSentDate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // RFC 3339 in UTC, "" for no date
	}{
		{"Mon, 1 Jan 2024 10:00:00 +0100", "2024-01-01T09:00:00Z"},
		{"Tue, 2 Jan 2024 09:00:00 EST", "2024-01-02T14:00:00Z"},
		{"Tue, 2 Jan 2024 09:00:00 pdt", "2024-01-02T16:00:00Z"},
		{"2 Jan 2024 13:00 +0000", "2024-01-02T13:00:00Z"},
		{"Mon, 1 Jan 2024 10:00:00 GMT", "2024-01-01T10:00:00Z"},
		{"Mon, 1 Jan 2024 10:00:00 +0000 (UTC)", "2024-01-01T10:00:00Z"},
		{"Mon,\r\n 1 Jan 2024 10:00:00 -0000", "2024-01-01T10:00:00Z"},
		// RFC 5322 3.3 and 4.3: a leap second, military zones (taken as
		// -0000), two- and three-digit years (a reviewer's finding: they
		// fell back to INTERNALDATE, or 62 was 2062).
		{"Tue, 2 Jan 2024 23:59:60 +0000", "2024-01-02T23:59:59Z"},
		{"Wed, 3 Jan 2024 12:00:00 A", "2024-01-03T12:00:00Z"},
		{"Wed, 3 Jan 2024 13:00:00 z", "2024-01-03T13:00:00Z"},
		{"Wed, 3 Jan 2024 13:00:00 J", ""},
		{"Tue, 2 Jan 62 00:00:00 +0000", "1962-01-02T00:00:00Z"},
		{"2 Jan 49 00:00 +0000", "2049-01-02T00:00:00Z"},
		{"Sun, 2 Jan 105 00:00:00 +0000", "2005-01-02T00:00:00Z"},
		{"not a date", ""},
		{"", ""},
	} {
		got := ""
		if d, ok := sentDate(tc.in); ok {
			got = d.UTC().Format(time.RFC3339)
		}
		if got != tc.want {
			t.Errorf("sentDate(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
