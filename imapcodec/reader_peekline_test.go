package imapcodec

import (
	"strings"
	"testing"
)

// TestPeekLine: the next line is shown only when all of it is buffered and
// it has no literal, and showing it consumes nothing.
func TestPeekLine(t *testing.T) {
	r := NewReader(strings.NewReader("a UID FETCH 1 (BODY.PEEK[])\r\nb UID FETCH 2 (UID)\r\nc APPEND X {3}\r\nabc\r\nd NOOP"), Limits{})
	if _, ok := r.PeekLine(); ok {
		t.Fatal("PeekLine before anything was read showed a line")
	}
	line, _, err := r.ReadLine()
	if err != nil || string(line) != "a UID FETCH 1 (BODY.PEEK[])" {
		t.Fatalf("ReadLine = %q, %v", line, err)
	}
	for range 2 { // twice: nothing consumed
		if got, ok := r.PeekLine(); !ok || string(got) != "b UID FETCH 2 (UID)" {
			t.Fatalf("PeekLine = %q, %v", got, ok)
		}
	}
	if line, _, _ := r.ReadLine(); string(line) != "b UID FETCH 2 (UID)" {
		t.Fatalf("ReadLine after PeekLine = %q", line)
	}
	if got, ok := r.PeekLine(); ok {
		t.Fatalf("PeekLine showed a line with a literal: %q", got)
	}
	if _, lit, _ := r.ReadLine(); lit == nil || lit.Size != 3 {
		t.Fatalf("the APPEND line's literal: %+v", lit)
	}
	if got, ok := r.PeekLine(); ok {
		t.Fatalf("PeekLine inside a literal: %q", got)
	}
	if _, err := r.ReadLiteral(); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.PeekLine(); !ok || string(got) != "" {
		t.Fatalf("PeekLine of the line after the literal = %q, %v", got, ok)
	}
	r.ReadLine()
	if got, ok := r.PeekLine(); ok {
		t.Fatalf("PeekLine of a line without its end: %q", got)
	}
}
