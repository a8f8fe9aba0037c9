package upstream

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// listResponse reads line (with its literals) as the connection's reader
// does.
func listResponse(t *testing.T, line string) *Response {
	t.Helper()
	segs, err := imapcodec.NewReader(strings.NewReader(line+"\r\n"), imapcodec.Limits{}).ReadSegments(nil)
	if err != nil {
		t.Fatal(err)
	}
	head, err := imapcodec.ParseResponseHead(segs[0].Text)
	if err != nil {
		t.Fatal(err)
	}
	return &Response{Head: head, Segments: segs}
}

// TestParseList: the one reader of LIST responses behind Conn.Selectable
// and the proxy's hierarchy (LIST "" ""). Well-formed lines read as both
// readers read them before they were merged; malformed ones are errors
// (Selectable skipped them, and took the mailbox for gone).
func TestParseList(t *testing.T) {
	for _, c := range []struct {
		line string
		want ListEntry
		ok   bool
		bad  bool
	}{
		{line: `* LIST (\Noselect) "/" ""`, want: ListEntry{Attrs: []string{`\Noselect`}, Delim: "/"}, ok: true},
		{line: `* LIST (\Noselect) "." "INBOX."`, want: ListEntry{Attrs: []string{`\Noselect`}, Delim: ".", Name: "INBOX."}, ok: true},
		{line: `* LIST (\Noselect) "." #news.`, want: ListEntry{Attrs: []string{`\Noselect`}, Delim: ".", Name: "#news."}, ok: true},
		{line: `* LIST (\Noselect) NIL ""`, want: ListEntry{Attrs: []string{`\Noselect`}}, ok: true},
		{line: `* LIST (\Noselect) "\\" ""`, want: ListEntry{Attrs: []string{`\Noselect`}, Delim: `\`}, ok: true},
		{line: `* LIST () "/" INBOX`, want: ListEntry{Delim: "/", Name: "INBOX"}, ok: true},
		{line: `* LIST (\HasNoChildren \Marked) "/" "[Gmail]/All Mail"`, want: ListEntry{Attrs: []string{`\HasNoChildren`, `\Marked`}, Delim: "/", Name: "[Gmail]/All Mail"}, ok: true},
		{line: `* LIST (\Subscribed) "/" a%b ("CHILDINFO" ("SUBSCRIBED"))`, want: ListEntry{Attrs: []string{`\Subscribed`}, Delim: "/", Name: "a%b"}, ok: true},
		{line: "* LIST () \"/\" {5}\r\na\"b\\c", want: ListEntry{Delim: "/", Name: `a"b\c`}, ok: true},
		{line: `* LSUB () "/" ""`},
		{line: `a1 LIST () "/" ""`},
		{line: `* LIST (\Noselect)`, ok: true, bad: true},
		{line: `* LIST (\Noselect) "/"`, ok: true, bad: true},
		{line: `* LIST \Noselect "/" x`, ok: true, bad: true},
		{line: `* LIST ("x") "/" x`, ok: true, bad: true},
		{line: `* LIST (\HasNoChildren "/" x`, ok: true, bad: true},
		{line: `* LIST () "" x`, ok: true, bad: true},
		{line: `* LIST () ("/") x`, ok: true, bad: true},
	} {
		got, ok, err := ParseList(listResponse(t, c.line))
		if ok != c.ok || (err != nil) != c.bad || !c.bad && (got.Delim != c.want.Delim || got.Name != c.want.Name || !slices.Equal(got.Attrs, c.want.Attrs)) {
			t.Errorf("ParseList(%q) = %+v, %v, %v; want %+v, %v, error %v", c.line, got, ok, err, c.want, c.ok, c.bad)
		}
		if err != nil && !errors.Is(err, errBadList) {
			t.Errorf("ParseList(%q): %v does not wrap errBadList", c.line, err)
		}
	}
}

// TestSelectableMalformedList: an upstream answers LIST with a line that
// names the mailbox but is malformed. Selectable must say it cannot tell,
// not that the mailbox is gone (the hub would end the mailbox's sessions
// with "BYE Selected mailbox was deleted" and drop its saved state).
func TestSelectableMalformedList(t *testing.T) {
	f := startFake(t, "* OK [CAPABILITY IMAP4rev1] hi\r\n", func(tag, cmd string) string {
		if strings.HasPrefix(cmd, "LIST ") {
			return `* LIST (\HasNoChildren "/" life` + "\r\n" + tag + " OK done\r\n"
		}
		return basicReply("IMAP4rev1")(tag, cmd)
	})
	c := dial(t, &Config{Addr: f.Addr})
	ok, err := c.Selectable(testCtx(t), "life")
	if err == nil || !errors.Is(err, errBadList) {
		t.Fatalf("Selectable over a malformed LIST line = %v, %v; want an error", ok, err)
	}
}
