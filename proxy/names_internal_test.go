package proxy

import "testing"

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
