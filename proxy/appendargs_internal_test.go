package proxy

import "testing"

func TestAppendArgsPlain(t *testing.T) {
	for _, tt := range []struct {
		text  string
		first bool
		want  bool
	}{
		{"L1 APPEND INBOX ", true, true},
		{"L1 APPEND ", true, true},
		{`L1 append "a b" (\Seen $Label1 NonJunk) "07-Dec-2026 15:04:05 +0100" `, true, true},
		{`L1 APPEND INBOX " 7-Dec-2026 15:04:05 -0800" `, true, true},
		{`L1 APPEND INBOX () `, true, true},
		{` (\Seen) "07-Dec-2026 15:04:05 +0100" `, false, true},
		{" ", false, true},
		{`L1 APPEND INBOX "bad date" `, true, false},
		{`L1 APPEND INBOX "31-Feb-2026 15:04:05 +0100" `, true, false},
		{`L1 APPEND INBOX "07-Dec-1970 15:04:05 +0100" `, true, false},
		{`L1 APPEND INBOX (\Recent) `, true, false},
		{`L1 APPEND INBOX (\Seen junk%) `, true, false},
		{`L1 APPEND INBOX junk `, true, false},
		{`L1 APPEND INBOX CATENATE (TEXT `, true, false},
		{`L1 APPEND INBOX UTF8 (`, true, false},
		{`L1 APPEND INBOX`, true, false},
		{` junk `, false, false},
		{`x`, false, false},
	} {
		if got := appendArgsPlain([]byte(tt.text), tt.first); got != tt.want {
			t.Errorf("appendArgsPlain(%q, %v) = %v, want %v", tt.text, tt.first, got, tt.want)
		}
	}
}
