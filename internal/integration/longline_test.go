package integration

import (
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestRewrittenLineTooLong: a command line that just fits the client's
// line limit (64 KiB, as Dovecot's) grows on its way upstream: a SEARCH
// by sequence number becomes "UID SEARCH", and the proxy's tag may be
// longer than the client's (an APPEND, relayed as it streams). Dovecot
// answered the SEARCH BAD ("IMAP command line too large") and skipped
// its line up to the CRLF, then read the non-synchronising literal that
// followed as a command of its own: here a CREATE the proxy never saw.
// The proxy must refuse such a line itself, and the session go on. (The
// APPEND, a few bytes longer upstream, Dovecot still took: its limit is
// not an exact line length. The proxy refuses any line longer than its
// own limit, whatever Dovecot would do with it.)
func TestRewrittenLineTooLong(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("APPEND INBOX {7+}\r\nSubj: a")
	c := imaptest.Login(t, addr, "alice", "alicepass")
	// fill makes head+tail exactly as long as the line limit with units,
	// and last(r) for the r bytes the units leave (at least min).
	fill := func(head, unit string, last func(r int) string, min int, tail string) string {
		n := imapcodec.DefaultMaxLine - len(head) - len(tail)
		k := (n - min) / len(unit)
		line := head + strings.Repeat(unit, k) + last(n-k*len(unit)) + tail
		if len(line) != imapcodec.DefaultMaxLine {
			t.Fatalf("line of %d bytes", len(line))
		}
		return line
	}
	keyword := func(r int) string { return " " + strings.Repeat("k", r-1) }
	subject := func(r int) string { return ` SUBJECT "` + strings.Repeat("s", r-11) + `"` }
	tooLong := "* BAD [LIMIT] *"

	// Streamed in the authenticated state: the proxy's tag is longer.
	data := "z CREATE smuggled1"
	c.Write(fill("a APPEND INBOX (\\Seen", ` \Seen`, keyword, 2, ") {18+}") + "\r\n" + data + "\r\n")
	imaptest.AssertLines(t, "APPEND", c.ReadUntilTagged("a"), []string{strings.Replace(tooLong, "*", "a", 1)})

	// Rewritten in the selected state: "UID SEARCH".
	c.MustOK("SELECT INBOX")
	data = "z CREATE smuggled2"
	c.Write(fill("s SEARCH 1", " ALL", subject, 11, " TEXT {18+}") + "\r\n" + data + "\r\n")
	imaptest.AssertLines(t, "SEARCH", c.ReadUntilTagged("s"), []string{strings.Replace(tooLong, "*", "s", 1)})

	imaptest.AssertLines(t, "NOOP after", c.MustOK("NOOP"), []string{"*"})
	imaptest.AssertLines(t, "LIST directly", d.MustOK(`LIST "" smuggled*`), []string{"*"})
}

// TestLiteralsOverLineLimit: Dovecot counts a command's literals against
// its line limit with the text of all its lines (but APPEND's and
// SETMETADATA's, which it streams). A command within the proxy's limits
// (no line over 64 KiB, no literal over 64 KiB, 256 KiB of literals in
// all) but not within Dovecot's was refused where it grew too long, the
// rest of that line skipped, and the non-synchronising literal after it
// run as a command the proxy never saw: here a CREATE, in a SEARCH held
// whole (the selected state) and in commands relayed as they stream (the
// authenticated state). Such a literal goes upstream synchronising: the
// client gets Dovecot's refusal, nothing runs, and the session goes on.
// Commands as long that Dovecot takes still pass.
func TestLiteralsOverLineLimit(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("APPEND INBOX {7+}\r\nSubj: a")
	c := imaptest.Login(t, addr, "alice", "alicepass")
	// smuggle is head, a literal of 10,000 bytes, 56,000 bytes of text, mid
	// and a literal holding a command: each line and literal within the
	// proxy's limits, 66 KB in all.
	smuggle := func(tag, head, mid, name string) string {
		data := "z CREATE " + name
		return tag + " " + head + " {10000+}\r\n" + strings.Repeat("x", 10000) + strings.Repeat(" ALL", 14000) +
			mid + " {" + strconv.Itoa(len(data)) + "+}\r\n" + data + "\r\n"
	}
	tooLong := func(tag string) []string { return []string{tag + " BAD Error in IMAP command *"} }

	// Streamed in the authenticated state.
	// (SUBSCRIBE and RENAME read their names and answer before the rest of
	// the line.)
	for i, head := range []string{`LIST ""`, "SUBSCRIBE", "RENAME"} {
		c.Write(smuggle("a", head, "", "smuggled"+strconv.Itoa(i)))
		want := tooLong("a")
		if head != `LIST ""` {
			want = []string{"a NO *"}
		}
		imaptest.AssertLines(t, head, c.ReadUntilTagged("a"), want)
	}

	// Held whole in the selected state.
	c.MustOK("SELECT INBOX")
	c.Write(smuggle("s", "SEARCH TEXT", " TEXT", "smuggled9"))
	imaptest.AssertLines(t, "SEARCH", c.ReadUntilTagged("s"), tooLong("s"))
	imaptest.AssertLines(t, "NOOP after", c.MustOK("NOOP"), []string{"*"})
	c.MustOK("UNSELECT")

	imaptest.AssertLines(t, "LIST directly", d.MustOK(`LIST "" smuggled*`), []string{"*"})

	// Streamed by Dovecot, counted line by line: as long, taken.
	value := strings.Repeat("v", 40000)
	c.MustOK("SETMETADATA INBOX (/private/comment {40000+}\r\n" + value + " /private/other {40000+}\r\n" + value + ")")
	c.MustOK("APPEND INBOX {40000+}\r\n" + value + " {40000+}\r\n" + value)
	// Under the limit, with a literal after the text: taken.
	c.MustOK("SELECT INBOX")
	c.MustOK("SEARCH TEXT {10000+}\r\n" + strings.Repeat("x", 10000) + strings.Repeat(" ALL", 10000) + " TEXT {1+}\r\nx")
}

// TestLiteralAfterEarlyAnswer: Dovecot answers some commands before it
// has read their whole line (an unknown command; SUBSCRIBE, DELETE,
// RENAME, STATUS, NAMESPACE with arguments after those they take; LIST's
// extra arguments; an APPEND whose message arguments it refuses, a bad
// date or \Recent), skips the rest of the line, and reads the data of a
// non-synchronising literal at its end as commands. Relayed so, a client's
// literal ran upstream as a command the proxy never saw (here a CREATE),
// and its answer, left on the pooled connection, failed another session's
// next command. Such a literal goes upstream synchronising: the client
// gets the upstream's answer, nothing more runs, and the next session's
// commands work.
func TestLiteralAfterEarlyAnswer(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	d := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	d.MustOK("CREATE Other")
	c := imaptest.Login(t, addr, "alice", "alicepass")
	for i, head := range []string{"XFOO", "SUBSCRIBE INBOX", "DELETE nosuch", "RENAME nosuch x", `LIST "" *`,
		"STATUS INBOX (MESSAGES)", "NAMESPACE", `APPEND INBOX (\Seen) "bad date"`,
		"APPEND INBOX {5+}\r\nhello (\\Seen) \"7-Dec-2026 25:61:00 +0000\"", "APPEND INBOX (\\Recent)",
		"SELECT INBOX", "XFOO", "STATUS Other (MESSAGES)", `APPEND INBOX "bad date"`, "UNSELECT"} {
		data := "z CREATE smuggled" + strconv.Itoa(i)
		c.Write("a" + strconv.Itoa(i) + " " + head + " {" + strconv.Itoa(len(data)) + "+}\r\n" + data + "\r\n")
		// Answered as Dovecot answers it (some OK, before the literal).
		c.ReadUntilTagged("a" + strconv.Itoa(i))
		// Another session, on the connection given back.
		o := imaptest.Login(t, addr, "alice", "alicepass")
		o.MustOK(`LIST "" Other`)
		o.MustOK("LOGOUT")
		o.Close()
		if strings.HasPrefix(head, "SELECT") {
			c.MustOK(head) // the selected state from here
		}
	}
	imaptest.AssertLines(t, "LIST directly", d.MustOK(`LIST "" smuggled*`), []string{"*"})
}

// TestAppendPlainStillWorks: APPENDs of the usual forms (flags, date,
// MULTIAPPEND, the mailbox as a literal) still go through, their messages
// non-synchronising.
func TestAppendPlainStillWorks(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr, _ := startProxy(t, dc.Addr)
	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK(`APPEND INBOX (\Seen $Label1) " 7-Dec-2026 15:04:05 +0100" {7+}` + "\r\nSubj: a")
	c.MustOK(`APPEND INBOX () "07-Dec-2026 15:04:05 -0800" {7+}` + "\r\nSubj: b {7+}\r\nSubj: c")
	c.MustOK("APPEND {5+}\r\nINBOX {7+}\r\nSubj: d")
	imaptest.AssertLines(t, "STATUS", c.MustOK("STATUS INBOX (MESSAGES)"), []string{"* STATUS INBOX (MESSAGES 4)", "*"})
}
