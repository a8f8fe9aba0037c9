package within

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testNow is the proxy's clock in the tests over go-imap's server.
var testNow = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// testMailbox is INBOX: INTERNALDATEs as ages in seconds at testNow, in
// assorted zones (INTERNALDATE is compared as an instant), not rising
// with the UIDs (6 is older than 3 to 5). Message 4 is seen.
var testMailbox = []struct {
	age  int
	zone string
	seen bool
}{
	{864000, "+0000", false}, // 10 days
	{172800, "-1100", false}, // 2 days
	{3600, "+1400", false},   // the boundary of OLDER and YOUNGER 3600
	{3599, "+0200", true},
	{60, "-0700", false},
	{3601, "+0000", false},
}

// internalDate writes the INTERNALDATE of a message age seconds old at
// now, in zone ("+hhmm").
func internalDate(now time.Time, age int, zone string) string {
	off, _ := time.Parse("-0700", zone)
	return now.Add(-time.Duration(age) * time.Second).In(off.Location()).Format("02-Jan-2006 15:04:05 -0700")
}

// appendMailbox appends testMailbox to INBOX through c.
func appendMailbox(t *testing.T, c *imaptest.Client, now time.Time) {
	t.Helper()
	for i, m := range testMailbox {
		msg := fmt.Sprintf("Subject: message %d\r\n\r\nbody %d\r\n", i+1, i+1)
		flags := "()"
		if m.seen {
			flags = `(\Seen)`
		}
		c.MustOK(fmt.Sprintf(`APPEND INBOX %s "%s" {%d}`, flags, internalDate(now, m.age, m.zone), len(msg)), msg)
	}
}

// ext, if not nil, changes the extension newProxy makes.
var ext func(*Extension)

// newProxy starts go-imap's in-memory server (no WITHIN) and the proxy
// with within, esearch and condstore, in chain.go's order, the WITHIN
// clock at testNow and FETCHes of chunk UIDs; it returns a client with
// INBOX (testMailbox) selected.
func newProxy(t *testing.T, chunk int) *imaptest.Client {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	w := New().WithClock(func() time.Time { return testNow.Add(300 * time.Millisecond) })
	w.chunk = chunk
	if ext != nil {
		ext(w)
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions: []proxy.Extension{w, esearch.New(), condstore.New()},
		Hub:        hub.Config{ModSeqBase: func() uint64 { return 1 }},
	})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	appendMailbox(t, c, testNow)
	c.MustOK("SELECT INBOX")
	return c
}

// TestCapabilities: WITHIN after login only, over an upstream without it.
func TestCapabilities(t *testing.T) {
	c := newProxy(t, chunkSize)
	if caps := c.Cmd("CAPABILITY")[0]; !strings.Contains(caps, " WITHIN") {
		t.Errorf("after login: %q", caps)
	}
	if got := New().Capabilities(proxy.StateNotAuthenticated, nil); got != nil {
		t.Errorf("before login: %q", got)
	}
}

// TestRFC5032Example: section 4's example, in testMailbox, where 2 to 6
// are the messages of the last three days and 4 is seen.
func TestRFC5032Example(t *testing.T) {
	c := newProxy(t, chunkSize)
	c.ExpectDo("a1", "SEARCH UNSEEN YOUNGER 259200", "* SEARCH 2 3 5 6", "a1 OK *")
}

func TestSearches(t *testing.T) {
	for _, chunk := range []int{chunkSize, 2} {
		t.Run(fmt.Sprint("chunk", chunk), func(t *testing.T) {
			c := newProxy(t, chunk)
			for _, tc := range []struct{ cmd, want string }{
				{"SEARCH YOUNGER 3600", "* SEARCH 3 4 5"},
				{"SEARCH OLDER 3600", "* SEARCH 1 2 3 6"},
				{"UID SEARCH YOUNGER 3600", "* SEARCH 3 4 5"},
				{"UID SEARCH OLDER 3600", "* SEARCH 1 2 3 6"},
				// to the second around the boundary
				{"SEARCH YOUNGER 3599", "* SEARCH 4 5"},
				{"SEARCH OLDER 3599", "* SEARCH 1 2 3 4 6"},
				{"SEARCH YOUNGER 3601", "* SEARCH 3 4 5 6"},
				{"SEARCH OLDER 3601", "* SEARCH 1 2 6"},
				{"SEARCH OLDER 864000", "* SEARCH 1"},
				{"SEARCH OLDER 864001", "* SEARCH"},
				// in OR, NOT and lists, with other keys
				{"SEARCH OR YOUNGER 60 OLDER 864000", "* SEARCH 1 5"},
				{"SEARCH NOT YOUNGER 3600", "* SEARCH 1 2 6"},
				{"SEARCH (YOUNGER 3600 OLDER 3600)", "* SEARCH 3"},
				{"SEARCH OR YOUNGER 3600 OLDER 3600", "* SEARCH 1 2 3 4 5 6"},
				{"SEARCH SEEN YOUNGER 3600", "* SEARCH 4"},
				{"SEARCH 2:5 OLDER 3600", "* SEARCH 2 3"},
				{"SEARCH CHARSET UTF-8 YOUNGER 86400 SUBJECT message", "* SEARCH 3 4 5 6"},
				// empty and everything
				{"SEARCH YOUNGER 1", "* SEARCH"},
				{"UID SEARCH OLDER 1", "* SEARCH 1 2 3 4 5 6"},
				{"SEARCH older 1 younger 4294967295", "* SEARCH 1 2 3 4 5 6"},
			} {
				got := c.Do("t", tc.cmd)
				if len(got) != 2 || got[0] != tc.want || !strings.HasPrefix(got[1], "t OK") {
					t.Errorf("%s: got %q, want %q", tc.cmd, got, tc.want)
				}
			}
		})
	}
}

// TestESearchCondStore: with RETURN (esearch synthesizes) and MODSEQ
// (condstore) in the same command.
func TestESearchCondStore(t *testing.T) {
	c := newProxy(t, chunkSize)
	c.ExpectDo("e1", "SEARCH RETURN (MIN MAX COUNT) YOUNGER 3600", `* ESEARCH (TAG "e1") MIN 3 MAX 5 COUNT 3`, "e1 OK *")
	c.ExpectDo("e2", "UID SEARCH RETURN (ALL) OLDER 3600", `* ESEARCH (TAG "e2") UID ALL 1:3,6`, "e2 OK *")
	c.ExpectDo("e3", "SEARCH RETURN (COUNT) YOUNGER 1", `* ESEARCH (TAG "e3") COUNT 0`, "e3 OK *")
	c.ExpectDo("e4", "UID SEARCH RETURN (ALL) OLDER 1", `* ESEARCH (TAG "e4") UID ALL 1:6`, "e4 OK *")
	got := c.Do("m1", "SEARCH MODSEQ 1 YOUNGER 3600")
	if len(got) != 3 || !strings.HasPrefix(got[1], "* SEARCH 3 4 5 (MODSEQ ") {
		t.Errorf("MODSEQ YOUNGER: %q", got)
	}
	got = c.Do("m2", "SEARCH RETURN (COUNT MAX) MODSEQ 1 YOUNGER 3600")
	if len(got) != 2 || !strings.HasPrefix(got[0], `* ESEARCH (TAG "m2") MAX 5 COUNT 3 MODSEQ `) {
		t.Errorf("RETURN MODSEQ YOUNGER: %q", got)
	}
	c.ExpectDo("s1", "SEARCH RETURN (SAVE) OLDER 3601", "s1 OK *")
	c.ExpectDo("s2", "SEARCH $ SEEN", "* SEARCH", "s2 OK *")
	c.ExpectDo("s3", "SEARCH $ YOUNGER 3601", "* SEARCH 6", "s3 OK *")
}

// TestExpunged: a range of matches spans an expunged UID.
func TestExpunged(t *testing.T) {
	c := newProxy(t, chunkSize)
	c.MustOK(`STORE 2 +FLAGS.SILENT (\Deleted)`)
	c.MustOK("EXPUNGE")
	c.ExpectDo("x1", "UID SEARCH OLDER 3600", "* SEARCH 1 3 6", "x1 OK *")
	c.ExpectDo("x2", "SEARCH OLDER 3600", "* SEARCH 1 2 5", "x2 OK *")
}

// TestBadInterval: RFC 5032's interval is a non-zero 32-bit number.
func TestBadInterval(t *testing.T) {
	c := newProxy(t, chunkSize)
	for _, cmd := range []string{"SEARCH YOUNGER 0", "SEARCH OLDER x", "SEARCH OLDER 4294967296", "SEARCH OLDER 010", "SEARCH NOT OLDER -1"} {
		if got := c.Do("b", cmd); !strings.HasPrefix(got[len(got)-1], "b BAD") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
}

// TestRelayCapabilities: over an upstream that advertises WITHIN the
// proxy adds nothing (the core relays the upstream's word, and
// ServeCommand passes the keys on: TestDovecot's Full profile).
func TestRelayCapabilities(t *testing.T) {
	if got := New().Capabilities(proxy.StateSelected, upstream.Caps{"WITHIN": ""}); got != nil {
		t.Errorf("over an upstream with WITHIN: %q", got)
	}
}

// TestLimit: a replacement longer than the limit is answered NO [LIMIT],
// and the command is not run.
func TestLimit(t *testing.T) {
	c := newProxy(t, chunkSize)
	c.ExpectDo("l1", "SEARCH OLDER 3600", "* SEARCH 1 2 3 6", "l1 OK *")
	ext = func(w *Extension) { w.maxBytes = len("UID 1:3,6") - 1 }
	c = newProxy(t, chunkSize)
	ext = nil
	c.ExpectDo("l2", "SEARCH YOUNGER 3600", "* SEARCH 3 4 5", "l2 OK *")
	c.ExpectDo("l3", "SEARCH OLDER 3600", "l3 NO [LIMIT] *")
	c.ExpectDo("l4", "SEARCH YOUNGER 3600 OLDER 3601", "l4 NO [LIMIT] *")
}

func TestEncode(t *testing.T) {
	m := func(uids ...uint32) map[uint32]bool {
		out := map[uint32]bool{}
		for _, u := range uids {
			out[u] = true
		}
		return out
	}
	for _, tc := range []struct {
		match        map[uint32]bool
		known, cands []uint32
		want         string
	}{
		{m(), []uint32{1, 2}, nil, "NOT ALL"},
		{m(1, 2, 3), []uint32{1, 2, 3}, []uint32{1, 2, 3}, "UID 1:3"},
		{m(1, 5, 9), []uint32{1, 5, 9}, []uint32{1, 5, 9}, "UID 1:9"},      // 2-4, 6-8 expunged
		{m(1, 9), []uint32{1, 5, 9}, []uint32{1, 9}, "UID 1,9"},            // 5 exists, no candidate
		{m(1, 5, 9, 12), []uint32{1, 5, 9}, []uint32{9, 12}, "UID 1:9,12"}, // 10, 11 may exist
		{m(9, 10, 11), []uint32{1, 5, 9}, []uint32{9, 10, 11}, "UID 9:11"},
	} {
		if got := encode(tc.match, tc.known, tc.cands); got != tc.want {
			t.Errorf("encode(%v, %v, %v) = %q, want %q", tc.match, tc.known, tc.cands, got, tc.want)
		}
	}
}

func TestCandidateSearch(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 30, 0, 0, time.FixedZone("", 14*3600)) // 31-Dec-2025 10:30 UTC
	if w, s := candidateSearch(key{older: false}, at); w != "UID SEARCH SINCE 30-Dec-2025" || s != "UID SEARCH SINCE 2-Jan-2026" {
		t.Errorf("YOUNGER: %s, %s", w, s)
	}
	if w, s := candidateSearch(key{older: true}, at); w != "UID SEARCH BEFORE 2-Jan-2026" || s != "UID SEARCH BEFORE 30-Dec-2025" {
		t.Errorf("OLDER: %s, %s", w, s)
	}
}

func TestParseInternalDate(t *testing.T) {
	for s, want := range map[string]string{
		"17-Jul-1996 02:44:25 -0700": "1996-07-17T09:44:25Z",
		" 7-Jul-1996 02:44:25 +0000": "1996-07-07T02:44:25Z",
		"07-Jul-1996 02:44:25 +1400": "1996-07-06T12:44:25Z",
	} {
		d, err := ParseInternalDate(s)
		if err != nil || d.UTC().Format(time.RFC3339) != want {
			t.Errorf("%q: %v %v", s, d, err)
		}
	}
	for _, s := range []string{"", "17-Jul-1996", "17-Jul-1996 02:44:25", strings.Repeat("1", 100)} {
		if _, err := ParseInternalDate(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}
