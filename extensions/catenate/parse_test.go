package catenate

import (
	"github.com/lemonproxy/lemonproxy/imapcodec"

	"strings"
	"testing"
)

// feedAll runs the parser over a command given as text segments, each but
// the last followed by a literal, and returns the parser and the kinds of
// its literals.
func feedAll(segs []string) (*cmdParser, []literalKind, error) {
	var urls []string
	p := &cmdParser{onURL: func(m *message, url string) error {
		urls = append(urls, url)
		m.parts = append(m.parts, part{url: url})
		return nil
	}}
	var kinds []literalKind
	for i, s := range segs {
		if err := p.feed([]byte(s)); err != nil {
			return p, kinds, err
		}
		if i == len(segs)-1 {
			return p, kinds, p.done()
		}
		k, err := p.literal()
		if err != nil {
			return p, kinds, err
		}
		kinds = append(kinds, k)
		if k == litMailbox {
			if err := p.setMailbox([]byte(`a "box"`)); err != nil {
				return p, kinds, err
			}
			continue
		}
		// The literal's data: a text part, a message, or a URL.
		p.msgs[len(p.msgs)-1].parts = append(p.msgs[len(p.msgs)-1].parts, part{})
	}
	return p, kinds, nil
}

// TestParseRFCExample: RFC 4469 4's command, segment by segment.
func TestParseRFCExample(t *testing.T) {
	p, kinds, err := feedAll([]string{
		`A003 APPEND Drafts (\Seen \Draft $MDNSent) CATENATE (URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER" TEXT `,
		` URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME" URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1" TEXT `,
		` URL "/Drafts;UIDVALIDITY=385759045/;UID=30" TEXT `,
		`)`,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.msgs) != 1 || p.mailbox != "Drafts" {
		t.Fatalf("%+v", p)
	}
	m := p.msgs[0]
	if m.flags != `(\Seen \Draft $MDNSent)` || m.date != "" || !m.cat || len(m.parts) != 7 {
		t.Fatalf("%+v", m)
	}
	if len(kinds) != 3 || kinds[0] != litText {
		t.Errorf("%v", kinds)
	}
	if m.parts[2].url != "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME" {
		t.Errorf("%+v", m.parts)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		segs []string
		ok   bool
		msgs int
	}{
		{[]string{`a APPEND x CATENATE (URL /x/;UID=1)`}, true, 1},
		{[]string{`a APPEND "x y" "01-Jan-2020 00:00:00 +0000" CATENATE (TEXT `, `)`}, true, 1},
		{[]string{`a APPEND x () CATENATE (URL `, `)`}, true, 1},
		{[]string{`a APPEND x CATENATE (URL "u") `, ``}, true, 2},
		{[]string{`a APPEND x CATENATE (URL "u") (\Seen) `, ` CATENATE (TEXT `, `)`}, true, 3},
		{[]string{`a APPEND `, ` `, ``}, true, 1},
		{[]string{`a APPEND `, ` (\Seen) `, ` CATENATE (URL "u")`}, true, 2},
		{[]string{`a APPEND `, ``}, false, 0},
		{[]string{`a APPEND x CATENATE ()`}, false, 0},
		{[]string{`a APPEND x CATENATE (TEXT "x")`}, false, 0},
		{[]string{`a APPEND x CATENATE (URL "u"`}, false, 0},
		{[]string{`a APPEND x CATENATE URL "u"`}, false, 0},
		{[]string{`a APPEND x "d" "d" CATENATE (URL "u")`}, false, 0},
		{[]string{`a APPEND x (\Seen) (\Seen) CATENATE (URL "u")`}, false, 0},
		{[]string{`a APPEND x CATENATE (URL "u")) `}, false, 0},
		{[]string{`a FETCH x CATENATE (URL "u")`}, false, 0},
		{[]string{`a APPEND x CATENATE (URL "u) `}, false, 0},
	} {
		p, _, err := feedAll(tc.segs)
		if (err == nil) != tc.ok || tc.ok && len(p.msgs) != tc.msgs {
			t.Errorf("%q: %v, %d messages", tc.segs, err, len(p.msgs))
		}
	}
}

func TestIsCatenate(t *testing.T) {
	for s, want := range map[string]bool{
		`a APPEND Drafts CATENATE (URL "x" TEXT `:                        true,
		`a append Drafts (\Seen) "1-Jan-2020 00:00:00 +0000" catenate (`: true,
		`a APPEND Drafts `:                      false, // a literal message
		`a APPEND Drafts (\Seen) `:              false,
		`a APPEND `:                             false, // the mailbox in a literal
		`a APPEND Drafts UTF8 (`:                false,
		`a APPEND Drafts CATENATE`:              true, // then answered BAD
		`a APPEND Drafts CATENATE (TEXT "x") (`: true,
	} {
		if got := isCatenate([]byte(s)); got != want {
			t.Errorf("isCatenate(%q) = %v", s, got)
		}
	}
}

// FuzzParse feeds the parser arbitrary commands (segments separated by
// NUL, a literal after each but the last): it must never panic, and what
// it accepts stays within its bounds.
func FuzzParse(f *testing.F) {
	f.Add("A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER\" TEXT \x00 URL \"/x/;UID=1\" TEXT \x00)")
	f.Add("a APPEND x CATENATE (URL \"u\") \x00 CATENATE (URL {5}\x00)")
	f.Add("a APPEND \x00 (\\Seen) \x00")
	f.Fuzz(func(t *testing.T, s string) {
		p, _, err := feedAll(strings.Split(s, "\x00"))
		if err != nil {
			return
		}
		if len(p.msgs) == 0 || len(p.msgs) > maxMessages {
			t.Fatalf("%d messages", len(p.msgs))
		}
		for _, m := range p.msgs {
			if len(m.parts) > maxParts {
				t.Fatalf("%d parts", len(m.parts))
			}
			if m.cat && len(m.parts) == 0 {
				t.Fatal("CATENATE without parts")
			}
		}
	})
}

// FuzzAppendUIDSet: APPENDUID codes read from the upstream, and the
// uid-set written back, never panic and round-trip.
func FuzzAppendUIDSet(f *testing.F) {
	f.Add("APPENDUID", "38505 3955", uint32(3), uint32(4))
	f.Add("APPENDUID", "1 x", uint32(1), uint32(9))
	f.Fuzz(func(t *testing.T, code, arg string, a, b uint32) {
		appendUID(imapcodec.ResponseHead{Code: code, CodeArg: arg})
		set := uidSet([]uint32{a, b})
		if set == "" {
			t.Fatalf("empty set for %d %d", a, b)
		}
	})
}

// TestUIDSet: runs become ranges, in the order of the messages.
func TestUIDSet(t *testing.T) {
	for _, tc := range []struct {
		in   []uint32
		want string
	}{{[]uint32{3}, "3"}, {[]uint32{3, 4, 5}, "3:5"}, {[]uint32{3, 4, 9, 10, 12}, "3:4,9:10,12"}, {[]uint32{5, 4}, "5,4"}} {
		if got := uidSet(tc.in); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.in, got, tc.want)
		}
	}
	if v, uid, ok := appendUID(imapcodec.ResponseHead{Code: "APPENDUID", CodeArg: "38505 3955"}); !ok || v != "38505" || uid != 3955 {
		t.Errorf("%q %d %v", v, uid, ok)
	}
}

// TestSetMailbox: a mailbox name read from a literal becomes the quoted
// string every APPEND the extension sends carries; one no quoted string
// can carry is refused.
func TestSetMailbox(t *testing.T) {
	for name, want := range map[string]string{
		"INBOX":           `"INBOX"`,
		`a "b" \ c`:       `"a \"b\" \\ c"`,
		"":                `""`,
		"a\rb":            "",
		"a\nb":            "",
		"a\x00b":          "",
		"Entw\xc3\xbcrfe": "",
	} {
		p := &cmdParser{}
		if err := p.feed([]byte("a APPEND ")); err != nil {
			t.Fatal(err)
		}
		if k, err := p.literal(); err != nil || k != litMailbox {
			t.Fatalf("literal: %v, %v", k, err)
		}
		err := p.setMailbox([]byte(name))
		if want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %s", name, p.mailbox)
			}
			continue
		}
		if err != nil || p.mailbox != want || len(p.msgs) != 1 {
			t.Errorf("%q: %s, %v, %d messages; want %s", name, p.mailbox, err, len(p.msgs), want)
		}
	}
}
