package listresp

import (
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Entry
	}{
		{`* LIST (\HasNoChildren) "/" INBOX`, Entry{Kind: "LIST", Attrs: []string{`\HasNoChildren`}, Delim: "/", Name: "INBOX"}},
		{`* LSUB () NIL "a b"`, Entry{Kind: "LSUB", Delim: "", Name: "a b"}},
		{`* LIST (\Subscribed) "." "x" ("CHILDINFO" ("SUBSCRIBED"))`, Entry{Kind: "LIST", Attrs: []string{`\Subscribed`}, Delim: ".", Name: "x"}},
	} {
		got, err := Parse([]imapcodec.Segment{{Text: []byte(c.in)}})
		if err != nil || got.Kind != c.want.Kind || got.Delim != c.want.Delim || got.Name != c.want.Name || !slices.Equal(got.Attrs, c.want.Attrs) {
			t.Errorf("%s: got %+v, %v", c.in, got, err)
		}
	}
	for _, bad := range []string{`* LIST`, `* LIST () "/"`, `* LIST x "/" a`, `a OK LIST`} {
		if _, err := Parse([]imapcodec.Segment{{Text: []byte(bad)}}); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if got := string(Append(nil, []string{`\A`, `\B`}, "", "a b")); got != `* LIST (\A \B) NIL "a b"` {
		t.Errorf("Append: %s", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`* LIST (\HasNoChildren) "/" INBOX`)
	f.Add(`* LSUB () NIL {3}`)
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse([]imapcodec.Segment{{Text: []byte(s)}})
		if err == nil && e.Kind == "" {
			t.Fatalf("%q: no kind", s)
		}
	})
}
