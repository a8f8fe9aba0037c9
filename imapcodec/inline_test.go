package imapcodec

import (
	"strings"
	"testing"
)

// TestInlineLiteralsOnly: a command written whole may break lines only
// inside non-synchronising literals, whose bytes are skipped whatever they
// hold.
func TestInlineLiteralsOnly(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		want bool
	}{
		{"SELECT INBOX", true},
		{`SELECT {5+}` + "\r\n" + `INBOX`, true},
		{`APPEND x ~{4+}` + "\r\n" + "a\r\nb (FLAGS)", true}, // the literal's own CRLF is data
		{`STATUS {3+}` + "\r\n" + `abc (MESSAGES)`, true},
		{`STORE 1 (X {4}` + "\r\n" + `NOOP) +FLAGS (\Seen)`, false}, // synchronising: nobody waits for "+"
		{"NOOP\r\nCREATE x", false},
		{"NOOP\nCREATE x", false},
		{"NOOP\r", false},
		{`SELECT {9+}` + "\r\n" + `abc`, false}, // shorter than it says
		{`SELECT {-1+}` + "\r\n" + `abc`, false},
		{`SELECT {+3+}` + "\r\n" + `abc`, false},
		{`SELECT 3+}` + "\r\n" + `abc`, false},
		{`SELECT {3+}` + "\r\n" + `abc` + "\r\nCREATE x", false},
		{`SELECT {0}`, false}, // the final CRLF would be the literal's
		{`SELECT {3+}`, false},
		{`SELECT {x}`, true},
		{`UID SEARCH SUBJECT {4+}` + "\r\n" + `{12}`, true}, // data, not a header
		{`UID SEARCH SUBJECT {4+}` + "\r\n" + `{12} {3}`, false},
		{"{2+}\r\n0{0+}\r\n00000", false}, // the second "{" is data
	} {
		if got := InlineLiteralsOnly(tc.cmd); got != tc.want {
			t.Errorf("InlineLiteralsOnly(%q) = %v, want %v", tc.cmd, got, tc.want)
		}
	}
}

// FuzzInlineLiteralsOnly: whatever it accepts, no line of it outside a
// literal it counted may start a command: read back as the upstream reads
// it, the command is one.
func FuzzInlineLiteralsOnly(f *testing.F) {
	f.Add("SELECT {5+}\r\nINBOX")
	f.Add("NOOP\r\nNOOP")
	f.Add("A {0+}\r\n {2+}\r\n\r\n")
	f.Fuzz(func(t *testing.T, cmd string) {
		if !InlineLiteralsOnly(cmd) {
			return
		}
		r := NewReader(strings.NewReader(cmd+"\r\n"), Limits{MaxLine: 1 << 20, MaxLiteral: 1 << 20})
		for {
			_, lit, err := r.ReadLine()
			if err != nil {
				t.Fatalf("%q: accepted, but reads back as: %v", cmd, err)
			}
			if lit == nil {
				break
			}
		}
		if _, _, err := r.ReadLine(); err == nil {
			t.Fatalf("%q: accepted, but holds a second command", cmd)
		}
	})
}
