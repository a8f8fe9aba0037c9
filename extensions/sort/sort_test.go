package sort

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testMessage is one message of the test mailbox, appended with its
// INTERNALDATE.
type testMessage struct{ internal, header, body string }

// testMailbox exercises every key; the expected orders are worked out in
// the comments of TestSortKeys.
var testMailbox = []testMessage{
	{"05-Jan-2024 10:00:00 +0000", "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Zed <zed@x.example>\r\nTo: bob@x.example\r\nSubject: Re: Banana\r\n", strings.Repeat("x", 500)},
	{"03-Jan-2024 00:00:00 +0000", "From: Yolanda <alice@y.example>\r\nSubject: apple\r\n", strings.Repeat("x", 100)},
	{"01-Jan-2024 00:00:00 +0000", "Date: Tue, 2 Jan 2024 10:00:00 -0500\r\nFrom: =?UTF-8?Q?=C3=89mile?= <emile@z.example>\r\nTo: amy@x.example\r\nSubject: [list] Cherry\r\n", strings.Repeat("x", 300)},
	{"04-Jan-2024 00:00:00 +0000", "Date: not a date\r\nFrom: bob <Bob@x.example>\r\nCc: zz@x.example\r\nSubject: =?UTF-8?Q?=C3=A4pfel?=\r\n", strings.Repeat("x", 200)},
	{"05-Jan-2024 10:00:00 +0000", "Date: Mon, 1 Jan 2024 11:00:00 +0100\r\nFrom: Carl <carl@x.example>\r\nSubject: Fwd: apple (fwd)\r\n", strings.Repeat("x", 100)},
}

type fixture struct {
	up   *memupstream.Server
	p    *imaptest.Proxy
	ext  *Extension
	data *accountdata.Memory
}

// newFixture starts go-imap's in-memory server (no SORT) and the proxy
// with esearch, sort and condstore in chain order, alice's INBOX filled with testMailbox.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	f := &fixture{up: up, ext: New(Config{}), data: accountdata.NewMemory()}
	f.p = imaptest.StartProxy(t, up.Addr, proxy.Config{
		Extensions:  []proxy.Extension{esearch.New(), f.ext, condstore.New()},
		AccountData: f.data,
	})
	c := imaptest.Login(t, f.p.Addr, "alice", "secret")
	defer c.Close()
	for _, m := range testMailbox {
		appendMessage(c, m)
	}
	return f
}

func appendMessage(c *imaptest.Client, m testMessage) {
	msg := m.header + "\r\n" + m.body + "\r\n"
	c.MustOK(fmt.Sprintf(`APPEND INBOX () "%s" {%d}`, m.internal, len(msg)), msg)
}

// records counts the sort records of every account (one here: the
// account key is the upstream's address and the user name).
func (f *fixture) records() (int, error) {
	n := 0
	f.data.Accounts("sort/", func(a string) bool {
		c, _ := accountdata.Count(f.data, a, "sort/")
		n += c
		return true
	})
	return n, nil
}

func (f *fixture) login(t *testing.T) *imaptest.Client {
	c := imaptest.Login(t, f.p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	return c
}

// TestSortKeys: each key of RFC 5256 section 3 and RFC 5957, over an
// upstream without SORT.
func TestSortKeys(t *testing.T) {
	f := newFixture(t)
	c := f.login(t)
	for _, tc := range []struct{ crit, want string }{
		// INTERNALDATE: 3 (1 Jan), 2 (3 Jan), 4 (4 Jan), 1 and 5 (5 Jan,
		// equal: mailbox order).
		{"ARRIVAL", "3 2 4 1 5"},
		// REVERSE does not reverse the tie-break (section 3).
		{"REVERSE ARRIVAL", "1 5 4 2 3"},
		// Sent dates in UTC: 1 and 5 both 1 Jan 10:00Z, 3 on 2 Jan 15:00Z,
		// 2 has no Date (INTERNALDATE 3 Jan), 4's does not parse (4 Jan).
		{"DATE", "1 5 3 2 4"},
		// Base subjects: APPLE (2, 5), A+diaeresis PFEL (4), BANANA (1),
		// CHERRY (3).
		{"SUBJECT", "2 5 4 1 3"},
		{"SUBJECT DATE", "5 2 4 1 3"},
		{"SUBJECT REVERSE DATE", "2 5 4 1 3"},
		// addr-mailbox: alice, Bob, carl, emile, zed.
		{"FROM", "2 4 5 3 1"},
		// Display names: bob, Carl, Émile, Yolanda, Zed.
		{"DISPLAYFROM", "4 5 3 2 1"},
		// No To sorts as "": 2, 4, 5; then amy (3), bob (1).
		{"TO", "2 4 5 3 1"},
		{"DISPLAYTO", "2 4 5 3 1"},
		{"CC", "1 2 3 5 4"},
		{"REVERSE CC", "4 1 2 3 5"},
	} {
		c.ExpectDo("s", "SORT ("+tc.crit+") UTF-8 ALL", "* SORT "+tc.want, "s OK *")
	}
	// SIZE: by RFC822.SIZE as the upstream reports it.
	sizes := map[uint32]int{}
	for _, l := range c.MustOK("FETCH 1:* (RFC822.SIZE)") {
		var seq uint32
		var size int
		if _, err := fmt.Sscanf(l, "* %d FETCH (RFC822.SIZE %d)", &seq, &size); err == nil {
			sizes[seq] = size
		}
	}
	seqs := []uint32{1, 2, 3, 4, 5}
	slices.SortStableFunc(seqs, func(a, b uint32) int { return sizes[a] - sizes[b] })
	c.ExpectDo("z", "SORT (SIZE) UTF-8 ALL", "* SORT "+join(seqs), "z OK *")
	// Search criteria and UIDs.
	c.ExpectDo("a", "SORT (ARRIVAL) US-ASCII FROM carl", "* SORT 5", "a OK *")
	c.ExpectDo("b", "SORT (ARRIVAL) UTF-8 2:4", "* SORT 3 2 4", "b OK *")
	c.ExpectDo("u", "UID SORT (REVERSE ARRIVAL) UTF-8 ALL", "* SORT 1 5 4 2 3", "u OK *")
	c.ExpectDo("n", "SORT (ARRIVAL) UTF-8 FROM nobody", "* SORT", "n OK *")
}

func join(ns []uint32) string {
	var f []string
	for _, n := range ns {
		f = append(f, strconv.FormatUint(uint64(n), 10))
	}
	return strings.Join(f, " ")
}

// TestESort: RFC 5267 section 3 over an upstream without SORT.
func TestESort(t *testing.T) {
	f := newFixture(t)
	c := f.login(t)
	c.ExpectDo("e1", "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL",
		`* ESEARCH (TAG "e1") MIN 1 MAX 4 COUNT 5 ALL 1,5,3,2,4`, "e1 OK *")
	c.ExpectDo("e2", "SORT RETURN (COUNT) (REVERSE ARRIVAL) UTF-8 ALL", `* ESEARCH (TAG "e2") COUNT 5`, "e2 OK *")
	c.ExpectDo("e3", "SORT RETURN () (ARRIVAL) UTF-8 ALL", `* ESEARCH (TAG "e3") ALL 3,2,4,1,5`, "e3 OK *")
	c.ExpectDo("e4", "UID SORT RETURN (MIN MAX) (SUBJECT) UTF-8 ALL", `* ESEARCH (TAG "e4") UID MIN 2 MAX 3`, "e4 OK *")
	c.ExpectDo("e5", "SORT RETURN (MIN COUNT) (ARRIVAL) UTF-8 FROM nobody", `* ESEARCH (TAG "e5") COUNT 0`, "e5 OK *")
	c.ExpectDo("e6", "SORT RETURN (ALL) (ARRIVAL) UTF-8 1:2", `* ESEARCH (TAG "e6") ALL 2,1`, "e6 OK *")
	c.ExpectDo("e7", "SORT RETURN (SAVE) (ARRIVAL) UTF-8 ALL", "e7 BAD *")
	c.ExpectDo("e8", "SORT RETURN (FOO) (ARRIVAL) UTF-8 ALL", "e8 BAD *")
}

// TestSortErrors: bad sort programs are the proxy's BAD; the upstream
// judges the search criteria and the charset.
func TestSortErrors(t *testing.T) {
	f := newFixture(t)
	c := f.login(t)
	for _, cmd := range []string{
		"SORT (FOO) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL", "SORT (DATE REVERSE) UTF-8 ALL",
		"SORT () UTF-8 ALL", "SORT (DATE) UTF-8", "SORT DATE UTF-8 ALL", "SORT (DATE)",
		"SORT (REVERSE REVERSE DATE) UTF-8 ALL",
	} {
		c.ExpectDo("x", cmd, "x BAD *")
	}
	c.ExpectDo("z", "SORT (DATE) X-NO-SUCH-CHARSET ALL", "z NO *")
}

// TestKeysCached: keys are fetched once per message, kept in the account
// store, and read back from it when memory has dropped them; a new
// message costs one fetch.
func TestKeysCached(t *testing.T) {
	f := newFixture(t)
	c := f.login(t)
	c.ExpectDo("a", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 2 4 1 5", "a OK *")
	if n := f.ext.cache.fetched.Load(); n != 5 {
		t.Fatalf("first SORT fetched %d messages' keys, want 5", n)
	}
	c.ExpectDo("b", "SORT (REVERSE DATE) UTF-8 ALL", "* SORT 4 2 3 1 5", "b OK *")
	if n := f.ext.cache.fetched.Load(); n != 5 {
		t.Fatalf("second SORT fetched again: %d", n)
	}
	appendMessage(c, testMessage{"02-Jan-2024 00:00:00 +0000", "Subject: new\r\n", "body"})
	c.ExpectDo("c", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 6 2 4 1 5", "c OK *")
	if n := f.ext.cache.fetched.Load(); n != 6 {
		t.Fatalf("after one new message: fetched %d, want 6", n)
	}
	if n, _ := f.records(); n != 6 {
		t.Fatalf("%d records stored, want 6", n)
	}
	f.ext.cache.drop()
	c.ExpectDo("d", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 6 2 4 1 5", "d OK *")
	if n := f.ext.cache.fetched.Load(); n != 6 {
		t.Fatalf("after reloading from the store: fetched %d, want 6", n)
	}
	// An expunged message's record goes at the next load.
	c.MustOK(`STORE 6 +FLAGS.SILENT (\Deleted)`)
	c.MustOK("EXPUNGE")
	f.ext.cache.drop()
	c.ExpectDo("e", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 2 4 1 5", "e OK *")
	if n, _ := f.records(); n != 5 {
		t.Fatalf("%d records after the expunge, want 5", n)
	}
	// A renamed or deleted mailbox's records go.
	c.MustOK("CREATE Other")
	c.MustOK("COPY 1:2 Other")
	c.MustOK("SELECT Other")
	c.ExpectDo("f", "SORT (SIZE) UTF-8 ALL", "* SORT 2 1", "f OK *")
	if n, _ := f.records(); n != 7 {
		t.Fatalf("%d records with Other sorted, want 7", n)
	}
	c.MustOK("UNSELECT")
	c.MustOK("RENAME Other Renamed")
	if n, _ := f.records(); n != 5 {
		t.Fatalf("%d records after RENAME, want 5", n)
	}
	c.MustOK("SELECT Renamed")
	c.ExpectDo("g", "SORT (SIZE) UTF-8 ALL", "* SORT 2 1", "g OK *")
	c.MustOK("UNSELECT")
	c.MustOK("DELETE Renamed")
	if n, _ := f.records(); n != 5 {
		t.Fatalf("%d records after DELETE, want 5", n)
	}
}

// TestCapabilities: SORT, SORT=DISPLAY and ESORT after login over an
// upstream without them (I18NLEVEL=1 is extensions/casesearch's).
func TestCapabilities(t *testing.T) {
	f := newFixture(t)
	c := imaptest.Dial(t, f.p.Addr)
	c.MustGreetOK()
	if caps := c.Cmd("CAPABILITY")[0]; strings.Contains(caps, "SORT") {
		t.Errorf("before login: %q", caps)
	}
	c = imaptest.Login(t, f.p.Addr, "alice", "secret")
	caps := " " + c.MustOK("CAPABILITY")[0] + " "
	for _, w := range []string{" SORT ", " SORT=DISPLAY ", " ESORT "} {
		if !strings.Contains(caps, w) {
			t.Errorf("capabilities lack %s: %q", w, caps)
		}
	}
}
