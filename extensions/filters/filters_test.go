package filters

import (
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/within"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testMessages are INBOX's messages: sender, subject, seen.
var testMessages = []struct {
	from, subject string
	seen          bool
}{
	{"boss@example.com", "budget", false},
	{"friend@example.org", "party", true},
	{"boss@example.com", "travel", true},
	{"news@example.net", "weekly", false},
	{"friend@example.org", "photos", false},
}

func message(i int) string {
	m := testMessages[i]
	return fmt.Sprintf("From: %s\r\nSubject: %s\r\n\r\nmessage %d\r\n", m.from, m.subject, i+1)
}

// chain is the production chain's order of the extensions a search meets.
func chain() []proxy.Extension {
	meta := metadata.New(metadata.Config{})
	return []proxy.Extension{meta, New(meta), within.New(), esearch.New()}
}

// newProxy starts go-imap's in-memory server (no METADATA, no FILTERS)
// and the proxy, appends testMessages as alice and returns her client and
// the proxy's address.
func newProxy(t *testing.T) (*imaptest.Client, string) {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	for _, u := range []string{"alice", "bob"} {
		if err := up.AddUser(u, u+"pass"); err != nil {
			t.Fatal(err)
		}
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: chain()})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	appendMessages(t, c)
	return c, p.Addr
}

func appendMessages(t *testing.T, c *imaptest.Client) {
	t.Helper()
	for i, m := range testMessages {
		flags := "()"
		if m.seen {
			flags = `(\Seen)`
		}
		msg := message(i)
		c.MustOK(fmt.Sprintf("APPEND INBOX %s {%d}", flags, len(msg)), msg)
	}
}

func TestCapabilities(t *testing.T) {
	c, _ := newProxy(t)
	if caps := c.Cmd("CAPABILITY")[0]; !strings.Contains(caps, " FILTERS") || !strings.Contains(caps, " METADATA") {
		t.Errorf("after login: %q", caps)
	}
	if got := New(nil).Capabilities(proxy.StateNotAuthenticated, nil); got != nil {
		t.Errorf("before login: %q", got)
	}
	if got := New(nil).Capabilities(proxy.StateAuthenticated, upstream.Caps{"FILTERS": "FILTERS"}); len(got) != 1 {
		t.Errorf("over an upstream with FILTERS: %q", got)
	}
}

// searchScript runs the FILTERS scenario through c (INBOX holds
// testMessages): the same over every upstream.
func searchScript(t *testing.T, c *imaptest.Client) {
	t.Helper()
	// RFC 5466 3.1: a filter is a METADATA server entry whose value is a
	// search program; private before shared.
	c.MustOK(`SETMETADATA "" (/private/filters/values/boss "FROM \"boss@example.com\"" /private/filters/descriptions/boss "Mail from my boss")`)
	c.MustOK(`SETMETADATA "" (/shared/filters/values/unread "UNSEEN" /shared/filters/values/boss "ALL")`)
	c.MustOK(`SETMETADATA "" (/private/filters/values/urgent "FILTER boss FILTER Unread" /private/filters/values/loop "OR FILTER loop2 SEEN" /private/filters/values/loop2 "FILTER loop")`)
	c.MustOK(`SETMETADATA "" (/private/filters/values/firsttwo "1:2" /private/filters/values/bad "HEADER Subject" /private/filters/values/escape "ALL) (ALL")`)
	c.MustOK("SELECT INBOX")
	for _, tc := range []struct{ cmd, want string }{
		{"SEARCH FILTER boss", "* SEARCH 1 3"},
		{"SEARCH filter BOSS", "* SEARCH 1 3"},
		{"SEARCH FILTER unread", "* SEARCH 1 4 5"},
		{"SEARCH FILTER urgent", "* SEARCH 1"},
		{"SEARCH NOT FILTER boss", "* SEARCH 2 4 5"},
		{"SEARCH OR FILTER boss SUBJECT photos", "* SEARCH 1 3 5"},
		{"SEARCH CHARSET UTF-8 FILTER boss SUBJECT travel", "* SEARCH 3"},
		{"UID SEARCH FILTER boss", "* SEARCH 1 3"},
		{"SEARCH FILTER firsttwo", "* SEARCH 1 2"},
		{"SEARCH RETURN (COUNT) FILTER unread", "* ESEARCH (TAG \"t\") COUNT 3"},
	} {
		got := c.Do("t", tc.cmd)
		if len(got) != 2 || got[0] != tc.want || !strings.HasPrefix(got[1], "t OK") {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
	c.ExpectDo("t", "SEARCH FILTER nosuch", "t NO [UNDEFINED-FILTER nosuch] Filter nosuch is not defined.")
	c.ExpectDo("t", "SEARCH SEEN FILTER nosuch", "t NO [UNDEFINED-FILTER nosuch] Filter nosuch is not defined.")
	c.ExpectDo("t", "SEARCH FILTER loop", "t NO Filters refer to filters more than 4 deep.")
	c.ExpectDo("t", "SEARCH FILTER bad", "t NO Filter bad cannot be used: it is not a search program.")
	c.ExpectDo("t", "SEARCH FILTER escape", "t NO Filter escape cannot be used: its parentheses do not match.")
	if got := c.Do("t", "SEARCH FILTER a/b"); len(got) != 1 || !strings.HasPrefix(got[0], "t BAD ") {
		t.Errorf("a filter name with a slash: %q", got)
	}
	// Sequence numbers in a filter are the client's: after an expunge
	// they are not the UIDs.
	c.MustOK(`STORE 1 +FLAGS (\Deleted)`)
	c.MustOK("EXPUNGE")
	c.ExpectDo("t", "SEARCH FILTER firsttwo", "* SEARCH 1 2", "t OK *")
	c.ExpectDo("t", "UID SEARCH FILTER firsttwo", "* SEARCH 2 3", "t OK *")
	c.ExpectDo("t", "SEARCH FILTER boss", "* SEARCH 2", "t OK *")
	// Removing the private filter uncovers the shared one.
	c.MustOK(`SETMETADATA "" (/private/filters/values/boss NIL)`)
	c.ExpectDo("t", "SEARCH FILTER boss", "* SEARCH 1 2 3 4", "t OK *")
}

func TestSearch(t *testing.T) {
	c, addr := newProxy(t)
	searchScript(t, c)
	// Another account's filters are not alice's.
	bob := imaptest.Login(t, addr, "bob", "bobpass")
	bob.MustOK("SELECT INBOX")
	bob.ExpectDo("t", "SEARCH FILTER unread", "t NO [UNDEFINED-FILTER unread] Filter unread is not defined.")
}

func TestCheckValue(t *testing.T) {
	for v, ok := range map[string]bool{
		"SMALLER 5000": true, `FROM "a(b"`: true, "(SEEN) OR A B": true, "HEADER x": false, "OR SEEN DELETED": true,
		"": false, " ": false, "SEEN)": false, "(SEEN": false, `SUBJECT "x`: false, "SUBJECT {3}\r\nabc": false,
		"SUBJECT \xc3\xa9": false, "1:*": true, "$": true, "OLDER 10": true,
	} {
		if err := checkValue(v); (err == nil) != ok {
			t.Errorf("checkValue(%q) = %v, want ok %v", v, err, ok)
		}
	}
}
