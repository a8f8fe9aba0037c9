package urlfetch

import (
	"strings"
	"testing"
)

func TestSection(t *testing.T) {
	for sec, want := range map[string]bool{
		"": true, "1": true, "1.2.3": true, "HEADER": true, "TEXT": true, "1.MIME": true, "2.HEADER": true,
		"HEADER.FIELDS (TO FROM)": true, "1.HEADER.FIELDS.NOT (X-A)": true,
		"MIME": false, "0": false, "1.": false, ".1": false, "1..2": false, "BODY": false,
		"HEADER.FIELDS ()": false, "HEADER.FIELDS (TO": false, "HEADER.FIELDS (TO  FROM)": false,
		"1] (FLAGS": false, "HEADER.FIELDS (TO)] (FLAGS)": false, "HEADER\r\nX": false,
		"HEADER.FIELDS (A\"B)": false, "12345678901": false,
	} {
		if got := Section(sec); got != want {
			t.Errorf("Section(%q) = %v", sec, got)
		}
	}
}

// FuzzSection: what Section accepts can never end the BODY[...] item
// early or break the command line.
func FuzzSection(f *testing.F) {
	for _, s := range []string{"1.2", "HEADER.FIELDS (TO FROM)", "1.MIME", "TEXT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if Section(s) && strings.ContainsAny(s, "[]{}\"\\\r\n\x00") {
			t.Fatalf("accepted %q", s)
		}
	})
}
