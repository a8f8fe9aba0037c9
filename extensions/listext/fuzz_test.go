package listext

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseRequest: no input makes the LIST parser panic, and whatever it
// accepts stays within its bounds.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`a LIST "" "*"`, `a LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (CHILDREN)`,
		`a LIST "" ("a" "b" %) RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES))`,
		`a LIST (recursivematch) "" ""`, `a LIST "" "" return (imaptest)`, `a LIST (((((`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseRequest([]imapcodec.Segment{{Text: []byte(s)}})
		if err == nil && (len(r.patterns) == 0 || len(r.patterns) > maxPatterns) {
			t.Fatalf("%q: %d patterns", s, len(r.patterns))
		}
		if err == nil && r.recursive && !r.subscribed {
			t.Fatalf("%q: RECURSIVEMATCH accepted alone", s)
		}
	})
}

// FuzzMatch: the matcher agrees with itself on a literal pattern and
// never panics.
func FuzzMatch(f *testing.F) {
	f.Add("a/%", "a/b", "/")
	f.Add("*b", "a/b", ".")
	f.Fuzz(func(t *testing.T, pat, name, delim string) {
		if len(delim) > 1 {
			delim = delim[:1]
		}
		match(pat, name, delim)
		if !match(name, name, delim) && !containsWild(name) {
			t.Fatalf("%q does not match itself", name)
		}
	})
}

func containsWild(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '*' || s[i] == '%' {
			return true
		}
	}
	return false
}
