package upstream

import (
	"maps"
	"testing"
)

// TestStatusNumbers: the reader of the proxy's own STATUS answers (MOVE's
// and MULTIAPPEND's UIDNEXT and UIDVALIDITY), for the forms servers write,
// a mailbox name as a literal among them.
func TestStatusNumbers(t *testing.T) {
	for _, c := range []struct {
		line string
		want map[string]uint32
	}{
		{`* STATUS INBOX (UIDNEXT 5 UIDVALIDITY 1700000000)`, map[string]uint32{"UIDNEXT": 5, "UIDVALIDITY": 1700000000}},
		{`* STATUS "a b" (messages 2 uidnext 9)`, map[string]uint32{"MESSAGES": 2, "UIDNEXT": 9}},
		{"* STATUS {3}\r\na\"b (UIDNEXT 7)", map[string]uint32{"UIDNEXT": 7}},
		{`* STATUS INBOX (HIGHESTMODSEQ 99999999999 UIDNEXT 3)`, map[string]uint32{"UIDNEXT": 3}}, // not 32 bits: left out
		{`* STATUS INBOX ()`, map[string]uint32{}},
		{`* LIST () "/" INBOX`, nil},
		{`* STATUS INBOX`, nil},
		{`* STATUS INBOX (UIDNEXT`, nil},
	} {
		got := StatusNumbers(listResponse(t, c.line))
		if (got == nil) != (c.want == nil) || !maps.Equal(got, c.want) {
			t.Errorf("StatusNumbers(%q) = %v, want %v", c.line, got, c.want)
		}
	}
}

// TestFetchBody: the reader of the proxy's own one-section FETCHes (URL
// parts, MULTIAPPEND's rollback looking for a message's text).
func TestFetchBody(t *testing.T) {
	for _, c := range []struct {
		line         string
		data         string
		ok, isString bool
	}{
		{"* 3 FETCH (UID 7 BODY[]<0> {5}\r\nhello)", "hello", true, true},
		{"* 3 FETCH (BODY[1.MIME] \"ab\" UID 7)", "ab", true, true},
		{"* 3 FETCH (UID 7 BODY[2] NIL)", "", true, false},
		{"* 3 FETCH (UID 8 BODY[] \"x\")", "", false, false}, // another message
		{"* 3 FETCH (UID 7 FLAGS ())", "", false, false},     // no body
		{"* 3 EXPUNGE", "", false, false},
	} {
		data, ok, isString := FetchBody(listResponse(t, c.line), 7)
		if string(data) != c.data || ok != c.ok || isString != c.isString {
			t.Errorf("FetchBody(%q) = %q, %v, %v; want %q, %v, %v", c.line, data, ok, isString, c.data, c.ok, c.isString)
		}
	}
}
