package upstream

import (
	"fmt"
	"maps"
	"testing"
	"unsafe"
)

func TestParseCaps(t *testing.T) {
	c := ParseCaps("IMAP4rev1 SASL-IR  LOGIN-REFERRALS auth=PLAIN IDLE ")
	want := Caps{"IMAP4REV1": "IMAP4rev1", "SASL-IR": "SASL-IR", "LOGIN-REFERRALS": "LOGIN-REFERRALS", "AUTH=PLAIN": "auth=PLAIN", "IDLE": "IDLE"}
	if !maps.Equal(c, want) {
		t.Fatalf("ParseCaps = %v, want %v", c, want)
	}
	if !c.Has("imap4REV1") || !c.Has("AUTH=PLAIN") || c.Has("STARTTLS") {
		t.Fatalf("Has is wrong for %v", c)
	}
	if got := c.WithPrefix("Auth="); len(got) != 1 || got[0] != "auth=PLAIN" {
		t.Fatalf("WithPrefix = %v", got)
	}
	if c := ParseCaps(""); len(c) != 0 {
		t.Fatalf("ParseCaps(\"\") = %v", c)
	}
}

// TestParseCapsShared: connections that got the same line share one map,
// which does not pin the response the line came from; the cache is
// bounded.
func TestParseCapsShared(t *testing.T) {
	line := "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES"
	resp := "* OK [CAPABILITY " + line + "] Dovecot ready."
	a := ParseCaps(resp[17 : 17+len(line)])
	b := ParseCaps(line)
	if fmt.Sprintf("%p", a) != fmt.Sprintf("%p", b) {
		t.Fatal("the same line gave two maps")
	}
	if c := ParseCaps(line + " XLIST"); fmt.Sprintf("%p", c) == fmt.Sprintf("%p", a) || !c.Has("XLIST") || a.Has("XLIST") {
		t.Fatal("a different line shares the map")
	}
	// The words are not slices of the response (which would keep it in
	// memory).
	start := uintptr(unsafe.Pointer(unsafe.StringData(resp)))
	for _, w := range a {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(w))); p >= start && p < start+uintptr(len(resp)) {
			t.Fatalf("%q points into the response", w)
		}
	}
	allocs := testing.AllocsPerRun(100, func() { ParseCaps(line) })
	if allocs != 0 {
		t.Errorf("ParseCaps of a known line allocates %v times", allocs)
	}
	for i := range 3 * maxInterned {
		ParseCaps(fmt.Sprintf("IMAP4rev1 X-%d", i))
	}
	interned.mu.Lock()
	n := len(interned.m)
	interned.mu.Unlock()
	if n > maxInterned {
		t.Fatalf("%d lines interned, bound %d", n, maxInterned)
	}
	if c := ParseCaps("IMAP4rev1 X-1"); !c.Has("X-1") || len(c) != 2 {
		t.Fatalf("after the cache was renewed: %v", c)
	}
}
