package proxy

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func TestCanonicalName(t *testing.T) {
	for _, c := range []struct{ name, delim, want string }{
		{"inbox", "", "INBOX"},
		{"InBoX", "/", "INBOX"},
		{"INBOX", "/", "INBOX"},
		{"inbox/Child", "/", "INBOX/Child"},
		{"Inbox.Child.sub", ".", "INBOX.Child.sub"},
		{"inbox/Child", ".", "inbox/Child"}, // not the delimiter
		{"inbox/Child", "", "inbox/Child"},  // delimiter unknown: left alone
		{"inboxChild", "/", "inboxChild"},
		{"inbox-Archive", "/", "inbox-Archive"},
		{"INBOX/child", "/", "INBOX/child"}, // only the INBOX part is folded
		{"Archive/inbox", "/", "Archive/inbox"},
		{"inb", "/", "inb"},
		{"", "/", ""},
	} {
		if got := canonicalName(c.name, c.delim); got != c.want {
			t.Errorf("canonicalName(%q, %q) = %q, want %q", c.name, c.delim, got, c.want)
		}
	}
}

func TestAccountKey(t *testing.T) {
	s := &Server{cfg: Config{Upstream: Config{}.Upstream, UsernameFormat: UsernameLower}}
	s.cfg.Upstream.Addr = "imap:143"
	for _, spelling := range []string{"ALICE", "Alice", "alice"} {
		if got := s.accountKey(spelling); got != "imap:143\x00alice" {
			t.Errorf("accountKey(%q) = %q", spelling, got)
		}
	}
	if got := s.accountKey("ÄLICE"); got != "imap:143\x00Älice" {
		t.Errorf("non-ASCII letters folded: %q", got)
	}
	s.cfg.UsernameFormat = UsernameAsIs
	if got := s.accountKey("ALICE"); got != "imap:143\x00ALICE" {
		t.Errorf("%%u: accountKey(ALICE) = %q", got)
	}
}

func TestParseListRoot(t *testing.T) {
	for _, c := range []struct {
		line string
		want Hierarchy
		ok   bool
		bad  bool // a malformed LIST response: refused, not a flat namespace
	}{
		{`* LIST (\Noselect) "/" ""`, Hierarchy{Delim: "/"}, true, false},
		{`* LIST (\Noselect) "." "INBOX."`, Hierarchy{Delim: ".", Root: "INBOX."}, true, false},
		{`* LIST (\Noselect) "." #news.`, Hierarchy{Delim: ".", Root: "#news."}, true, false}, // RFC 3501 6.3.8
		{`* LIST (\Noselect) NIL ""`, Hierarchy{}, true, false},                               // flat: not "NIL"
		{`* LIST (\Noselect) "\\" ""`, Hierarchy{Delim: `\`}, true, false},
		{`* LSUB () "/" ""`, Hierarchy{}, false, false},
		{`* LIST (\Noselect)`, Hierarchy{}, true, true},
		{`* LIST (\Noselect) "/"`, Hierarchy{}, true, true},
	} {
		head, err := imapcodec.ParseResponseHead([]byte(c.line))
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := parseListRoot(&upstream.Response{Head: head, Segments: []imapcodec.Segment{{Text: []byte(c.line)}}})
		if got != c.want || ok != c.ok || (err != nil) != c.bad {
			t.Errorf("parseListRoot(%q) = %+v, %v, %v; want %+v, %v, error %v", c.line, got, ok, err, c.want, c.ok, c.bad)
		}
	}
}
