package notify

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseSet: NOTIFY SET arguments of any shape give groups or an error,
// never a panic, and accepted groups respect RFC 5465's rules.
func FuzzParseSet(f *testing.F) {
	for _, s := range []string{
		"(selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (FROM)]) MessageExpunge FlagChange))",
		"STATUS (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))",
		"(subtree (a b) (MailboxName)) (mailboxes INBOX (MessageNew MessageExpunge))",
		"(inboxes NONE) (selected-delayed (MessageNew MessageExpunge))",
		"(personal (AnnotationChange MessageNew MessageExpunge))",
		"(selected (MessageNew))", "((()))", "STATUS", `(mailboxes "a\"b" (MailboxName))`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, args string) {
		cmd, err := imapcodec.ParseCommand([]imapcodec.Segment{{Text: []byte("a NOTIFY SET " + args)}}, imapcodec.Limits{})
		if err != nil {
			return
		}
		p := cmd.Args
		if p.SP() != nil {
			return
		}
		if _, err := p.Atom(); err != nil {
			return
		}
		_, groups, err := parseSet(p)
		if err != nil {
			return
		}
		selected := 0
		for _, g := range groups {
			if g.selected() {
				selected++
			}
			if len(g.fetchAtts) > 0 && !g.selected() {
				t.Fatalf("fetch attributes outside selected accepted: %q", args)
			}
		}
		if selected > 1 {
			t.Fatalf("two selected filters accepted: %q", args)
		}
	})
}
