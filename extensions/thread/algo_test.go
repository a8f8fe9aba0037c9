package thread

import (
	"testing"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
)

// msg is a message for the algorithm tests: UID, sent date, base
// subject (already folded), reply, Message-ID, In-Reply-To, References.
func msg(uid uint32, date int64, subject string, reply bool, id, irt string, refs ...string) sortext.ThreadKeys {
	return sortext.ThreadKeys{UID: uid, Date: date, Subject: subject, Reply: reply, MessageID: id, InReplyTo: irt, References: refs}
}

func threads(roots []*node) string {
	return string(appendThreads(nil, roots, func(u uint32) uint32 { return u }))
}

// TestFormat writes RFC 5256 section 4's example thread list, "(3 6 (4
// 23)(44 7 96))": 3 has the child 6, which has two, 4 (with 23) and 44
// (with 7, with 96); and a dummy's, "((3)(5))".
func TestFormat(t *testing.T) {
	n := func(uid uint32, children ...*node) *node {
		x := &node{msg: &sortext.ThreadKeys{UID: uid}, children: children}
		return x
	}
	tree := n(3, n(6, n(4, n(23)), n(44, n(7, n(96)))))
	dummy := &node{children: []*node{n(3), n(5)}}
	if got, want := threads([]*node{tree, dummy, n(9)}), "(3 6 (4 23)(44 7 96))((3)(5))(9)"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestReferences(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []sortext.ThreadKeys
		want string
	}{
		{"empty", nil, ""},
		// (1B) breaks c's link to a, made by b's References, and
		// does not link b to c: a loop. a stays alone.
		{"truncated references and a loop", []sortext.ThreadKeys{
			msg(1, 30, "", false, "<a@b>", ""),
			msg(2, 10, "", false, "<b@b>", "", "<a@b>", "<c@b>"),
			msg(3, 20, "", false, "<c@b>", "", "<b@b>"),
		}, "(3 2)(1)"},
		// The second <a@b> gets an ID of its own.
		{"duplicate message-id", []sortext.ThreadKeys{
			msg(1, 10, "", false, "<a@b>", ""),
			msg(2, 10, "", false, "<a@b>", ""),
		}, "(1)(2)"},
		// In-Reply-To when there is no References; siblings by date,
		// then mailbox order.
		{"in-reply-to", []sortext.ThreadKeys{
			msg(1, 50, "", false, "<1@b>", ""),
			msg(2, 10, "", false, "<2@b>", "<1@b>"),
			msg(3, 10, "", false, "<3@b>", "<1@b>"),
			msg(4, 10, "", false, "<4@b>", "<2@b>"),
		}, "(1 (2 4)(3))"},
		// (4): a dummy at the top keeps two children, gives up one.
		{"dummies", []sortext.ThreadKeys{
			msg(1, 10, "", false, "<3@b>", "<1@b>"),
			msg(2, 11, "", false, "<4@b>", "<2@b>"),
			msg(3, 12, "", false, "<5@b>", "<2@b>"),
		}, "(1)((2)(3))"},
		// (4): a dummy below the top gives its children to its parent.
		{"inner dummy", []sortext.ThreadKeys{
			msg(1, 10, "", false, "<a@b>", ""),
			msg(2, 11, "", false, "<c@b>", "", "<a@b>", "<x@b>"),
			msg(3, 12, "", false, "<d@b>", "", "<a@b>", "<x@b>"),
		}, "(1 (2)(3))"},
		// (6): a reply joins the thread of its subject's original; two
		// originals get a dummy; a thread that is a dummy takes in the
		// others.
		{"subjects", []sortext.ThreadKeys{
			msg(1, 10, "foo", false, "<1@b>", ""),
			msg(2, 20, "foo", true, "<2@b>", ""),
			msg(3, 30, "bar", false, "<3@b>", ""),
			msg(4, 40, "bar", false, "<4@b>", ""),
			msg(5, 5, "", false, "<5@b>", ""),
			msg(6, 6, "", false, "<6@b>", ""),
		}, "(5)(6)(1 2)((3)(4))"},
		{"subject into a dummy", []sortext.ThreadKeys{
			msg(1, 10, "baz", true, "<1@b>", "<p@b>"),
			msg(2, 20, "baz", true, "<2@b>", "<p@b>"),
			msg(3, 5, "baz", false, "<3@b>", ""),
			msg(4, 30, "baz", true, "<4@b>", "<q@b>"),
			msg(5, 31, "baz", true, "<5@b>", "<q@b>"),
		}, "((3)(1)(2)(4)(5))"},
		// A message that names itself does not become its own parent.
		{"self reference", []sortext.ThreadKeys{
			msg(1, 10, "", false, "<a@b>", "", "<a@b>"),
		}, "(1)"},
	} {
		if got := mustReferences(t, tc.msgs); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestOrderedSubject: threads by base subject, each under its earliest
// message, in the order of those messages' dates.
func TestOrderedSubject(t *testing.T) {
	msgs := []sortext.ThreadKeys{
		msg(1, 10, "a", false, "", ""),
		msg(2, 9, "b", false, "", ""),
		msg(3, 8, "a", true, "", ""),
		msg(4, 7, "b", false, "", ""),
		msg(5, 30, "a", false, "", ""),
		msg(6, 29, "c", false, "", ""),
		msg(7, 31, "c", false, "", ""),
		msg(8, 29, "", false, "", ""), // the same date as 6: mailbox order
	}
	if got, want := threads(orderedSubject(msgs)), "(4 2)(3 (1)(5))(6 7)(8)"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
