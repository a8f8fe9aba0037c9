package metadata

import (
	"bytes"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// segments turns a wire text into segments, "{n}" literals included
// (their bytes follow the header's CRLF), as the core reads a command.
func segments(s string) []imapcodec.Segment {
	r := imapcodec.NewReader(strings.NewReader(s+"\r\n"), imapcodec.Limits{})
	segs, err := r.ReadSegments(nil)
	if err != nil {
		return nil
	}
	return segs
}

// FuzzCheckEntry: a valid entry name stays valid once canonical, and
// canonical names are idempotent.
func FuzzCheckEntry(f *testing.F) {
	for _, s := range []string{"/private/comment", "/SHARED/a/b", "/private", "/private/", "//", "/private/*", "/private/é", "/shared/a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckEntry(s) != nil {
			return
		}
		c := Canonical(s)
		if CheckEntry(c) != nil || Canonical(c) != c || !strings.EqualFold(c, s) {
			t.Fatalf("%q: canonical %q", s, c)
		}
		if strings.ContainsAny(c, "\x00*%") || strings.HasSuffix(c, "/") {
			t.Fatalf("%q accepted", s)
		}
	})
}

// FuzzParseGet: any GETMETADATA arguments parse without panic into valid
// canonical entries, and a restated command (as sent upstream) parses to
// the same arguments.
func FuzzParseGet(f *testing.F) {
	for _, s := range []string{
		`a GETMETADATA "" /shared/comment`,
		`a GETMETADATA "INBOX" (MAXSIZE 1024) (/shared/comment /private/comment)`,
		`a GETMETADATA (DEPTH infinity MAXSIZE 5) INBOX (/private)`,
		`a GETMETADATA (DEPTH 2) INBOX /private`, `a GETMETADATA {5}` + "\r\nINBOX /private/a",
		`a GETMETADATA "" (/private/a (b))`, `a GETMETADATA`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cmd, err := imapcodec.ParseCommand(segments(s), imapcodec.Limits{})
		if err != nil || cmd.Name != "GETMETADATA" {
			return
		}
		a, err := parseGet(cmd.Args)
		if err != nil {
			return
		}
		for _, e := range a.entries {
			if CheckEntry(e) != nil || Canonical(e) != e {
				t.Fatalf("%q: entry %q", s, e)
			}
		}
		again, err := imapcodec.ParseCommand(getCommand("t", a, a.entries), imapcodec.Limits{})
		if err != nil {
			t.Fatalf("%q restated: %v", s, err)
		}
		b, err := parseGet(again.Args)
		if err != nil || b.mailbox != a.mailbox || b.depth != a.depth || b.maxSize != a.maxSize || strings.Join(b.entries, " ") != strings.Join(a.entries, " ") {
			t.Fatalf("%q restated as %+v: %+v, %v", s, again.Segments, b, err)
		}
	})
}

// FuzzParseSet: any SETMETADATA arguments parse without panic; values
// written back (as a METADATA response would carry them) read back the
// same.
func FuzzParseSet(f *testing.F) {
	for _, s := range []string{
		`a SETMETADATA INBOX (/private/comment "x" /shared/comment NIL)`,
		"a SETMETADATA \"\" (/private/a {3}\r\na\r\nb)", "a SETMETADATA \"\" (/private/a ~{3}\r\na\x00b)",
		`a SETMETADATA "" (/private "x")`, `a SETMETADATA "" (/private/a)`, `a SETMETADATA "" /private/a "x"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cmd, err := imapcodec.ParseCommand(segments(s), imapcodec.Limits{})
		if err != nil || cmd.Name != "SETMETADATA" {
			return
		}
		a, err := parseSet(cmd.Args)
		if err != nil {
			return
		}
		var evs []entryValue
		for _, e := range a.entries {
			if CheckEntry(e.name) != nil || isRoot(e.name) {
				t.Fatalf("%q: entry %q", s, e.name)
			}
			evs = append(evs, entryValue(e))
		}
		resp := appendMetadata(nil, a.mailbox, evs)
		got := parseMetadata(segments(string(bytes.TrimSuffix(resp, []byte("\r\n")))))
		if len(got) != len(evs) {
			t.Fatalf("%q: response %q read back as %d entries", s, resp, len(got))
		}
		for i := range got {
			if got[i].name != evs[i].name || !bytes.Equal(got[i].value, evs[i].value) || (got[i].value == nil) != (evs[i].value == nil) {
				t.Fatalf("%q: entry %d read back as %q %q", s, i, got[i].name, got[i].value)
			}
		}
	})
}
