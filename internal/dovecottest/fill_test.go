package dovecottest

import (
	"fmt"
	"strings"
	"testing"
)

// TestFillMailbox: messages written as maildir files are in the mailbox
// at the next sync, whole and in order, and can be changed and expunged
// (Dovecot owns the files).
func TestFillMailbox(t *testing.T) {
	s := Start(t, Legacy)
	s.AddUser(t, "carol", "carolpass")
	msg := func(i int) []byte { return fmt.Appendf(nil, "Subject: fill %d\r\n\r\nbody %d\r\n", i, i) }
	s.FillMailbox(t, "carol", "Bulk", 30, msg)

	c := dialRaw(t, s)
	c.readLine() // greeting
	c.command("a", "LOGIN carol carolpass")
	if got := c.command("b", "STATUS Bulk (MESSAGES)"); !containsLine(got, "* STATUS Bulk (MESSAGES 30)") {
		t.Fatalf("STATUS: %q", got)
	}
	c.command("c", "SELECT Bulk")
	got := strings.Join(c.command("d", "FETCH 7 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"), "\n")
	if !strings.Contains(got, "Subject: fill 6") {
		t.Errorf("message 7: %q", got)
	}
	c.command("e", "STORE 1:3 +FLAGS.SILENT (\\Deleted)")
	if got := c.command("f", "EXPUNGE"); !containsLine(got, "* 1 EXPUNGE") || !strings.HasPrefix(got[len(got)-1], "f OK") {
		t.Errorf("EXPUNGE: %q", got)
	}
	if got := c.command("g", "STATUS Bulk (MESSAGES)"); !containsLine(got, "* STATUS Bulk (MESSAGES 27)") {
		t.Errorf("STATUS after EXPUNGE: %q", got)
	}
}
