package listext

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// TestParseErrors: imaptest's listext error vectors and RFC 5258 3's
// rule on RECURSIVEMATCH.
func TestParseErrors(t *testing.T) {
	for _, s := range []string{`LIST (imaptest) "" ""`, `LIST (recursivematch) "" ""`,
		`LIST (recursivematch remote) "" ""`, `LIST "" "" return (imaptest)`, `LIST "" ()`, `LIST "" "" junk`} {
		if _, err := parseRequest([]imapcodec.Segment{{Text: []byte("a " + s)}}); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	r, err := parseRequest([]imapcodec.Segment{{Text: []byte(`a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("x" %) RETURN (CHILDREN)`)}})
	if err != nil || !r.extended || !r.subscribed || !r.recursive || !r.retChildren || len(r.patterns) != 2 || r.patterns[1] != "%" {
		t.Errorf("got %+v, %v", r, err)
	}
}

// TestMatch: RFC 3501 6.3.8's wildcards.
func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pat, name string
		want      bool
	}{
		{"a/%", "a/b", true}, {"a/%", "a/b/c", false}, {"a/*", "a/b/c", true},
		{"*c", "a/b/c", true}, {"%c", "a/c", false}, {"a", "a", true}, {"a", "ab", false},
	} {
		if got := match(c.pat, c.name, "/"); got != c.want {
			t.Errorf("match(%q, %q) = %v", c.pat, c.name, got)
		}
	}
}
