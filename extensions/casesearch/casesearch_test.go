package casesearch_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/casesearch"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/extensions/thread"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// extensions is the part of the chain (extensions/chain) around
// casesearch, in its order.
func extensions(cfg casesearch.Config) []proxy.Extension {
	sorter := sortext.New(sortext.Config{Contexts: true})
	return []proxy.Extension{
		casesearch.New(cfg),
		contextsearch.New(contextsearch.Config{}),
		esearch.New(),
		sorter,
		thread.New(sorter),
		condstore.New(),
	}
}

// memProxy starts go-imap's in-memory server with the corpus in alice's
// INBOX, and the proxy in front.
func memProxy(t *testing.T, cfg casesearch.Config) (*imaptest.Proxy, *memupstream.Server) {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := range corpus {
		var flags []imap.Flag
		if seen[i+1] {
			flags = []imap.Flag{imap.FlagSeen}
		}
		if err := up.Append("alice", "INBOX", flags, corpusMessage(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	return imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: extensions(cfg)}), up
}

// fillDovecot appends the corpus to alice's INBOX.
func fillDovecot(t *testing.T, dc *dovecottest.Server) {
	t.Helper()
	for i := range corpus {
		var flags []string
		if seen[i+1] {
			flags = []string{`\Seen`}
		}
		dc.Append(t, "alice", "alicepass", "INBOX", flags, corpusMessage(i+1))
	}
}

// run runs the searches on c (logged in, INBOX selected) and returns each
// one's untagged answer, or its tagged one when it failed.
func run(t *testing.T, c *imaptest.Client) []string {
	t.Helper()
	var out []string
	for _, s := range searches {
		c.Send("t " + s.cmd)
		for _, l := range s.lits {
			if got := c.ReadLine(); !strings.HasPrefix(got, "+") {
				t.Fatalf("%s: %q before the literal", s.cmd, got)
			}
			c.Write(l + "\r\n")
		}
		lines := c.ReadUntilTagged("t")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "t OK") {
			out = append(out, strings.Join(lines, " | "))
			continue
		}
		out = append(out, lines[0])
	}
	return out
}

// check compares answers with the searches' wants (or Dovecot's own
// departures, with dovecot set).
func check(t *testing.T, got []string, dovecot bool) {
	t.Helper()
	for i, s := range searches {
		want := expand(s.want)
		if dovecot && s.dovecot != "" {
			want = s.dovecot
		}
		if got[i] != want {
			t.Errorf("%s: got %q, want %q", s.cmd, got[i], want)
		}
	}
}

// TestMemUpstream: in front of go-imap's in-memory server, whose SEARCH
// compares with Unicode lower case (and decodes no RFC 2047 in HEADER),
// the proxy's evaluation answers every search as RFC 5051 says.
func TestMemUpstream(t *testing.T) {
	p, _ := memProxy(t, casesearch.Config{})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	if caps := c.MustOK("CAPABILITY")[0]; !strings.Contains(caps+" ", " I18NLEVEL=1 ") {
		t.Errorf("capabilities: %q", caps)
	}
	c.MustOK("SELECT INBOX")
	check(t, run(t, c), false)
}

// TestDovecot: in front of Dovecot's legacy profile without
// upstream-search-casemap the proxy evaluates and answers as RFC 5051
// says; Dovecot's full profile answers the same directly (it has
// I18NLEVEL=1) but where it departs from RFC 5051 (searches.dovecot);
// the proxy relays the full profile's answers (its own I18NLEVEL), and
// the legacy profile's with the setting: Dovecot's departures show that
// nothing was evaluated.
func TestDovecot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile dovecottest.Profile
		proxied bool
		cfg     casesearch.Config
		dovecot bool // the answers are Dovecot's own
	}{
		{"legacy-proxy", dovecottest.Legacy, true, casesearch.Config{}, false},
		{"full-direct", dovecottest.Full, false, casesearch.Config{}, true},
		{"full-proxy", dovecottest.Full, true, casesearch.Config{}, true},
		{"legacy-proxy-casemap", dovecottest.Legacy, true, casesearch.Config{UpstreamCasemap: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := dovecottest.Start(t, tc.profile)
			fillDovecot(t, dc)
			addr := dc.Addr
			if tc.proxied {
				addr = imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: extensions(tc.cfg)}).Addr
			}
			c := imaptest.Login(t, addr, "alice", "alicepass")
			caps := c.MustOK("CAPABILITY")[0]
			if n := strings.Count(caps+" ", " I18NLEVEL=1 "); n != 1 {
				t.Errorf("I18NLEVEL=1 %d times in %q", n, caps)
			}
			c.MustOK("SELECT INBOX")
			check(t, run(t, c), tc.dovecot)
		})
	}
}

// TestSortThread: SORT and THREAD criteria are evaluated as SEARCH's,
// in their UID forms too.
func TestSortThread(t *testing.T) {
	p, _ := memProxy(t, casesearch.Config{})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	for _, tt := range []struct{ cmd, want string }{
		// "STRASSE" (0x53) before the ligature's lower-case "fiSH MARKET".
		{`SORT (SUBJECT) UTF-8 OR SUBJECT strasse SUBJECT "ﬁSH"`, "* SORT 1 2 6"},
		{`UID SORT (REVERSE FROM) UTF-8 TEXT strasse`, "* SORT 2 10 1"},
		{`SORT RETURN (COUNT) (SUBJECT) US-ASCII NOT BODY body`, `* ESEARCH (TAG "t") COUNT 10`},
		{`THREAD ORDEREDSUBJECT UTF-8 SUBJECT "STRASSE"`, "* THREAD (1 2)"},
		{`UID THREAD REFERENCES UTF-8 BODY "köln"`, "* THREAD (9)"},
	} {
		got := c.Do("t", tt.cmd)
		if len(got) != 2 || got[0] != tt.want || !strings.HasPrefix(got[1], "t OK") {
			t.Errorf("%s: %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

// TestCharset: strings in US-ASCII and UTF-8 are evaluated; other
// charsets get NO [BADCHARSET] where there is something to evaluate, and
// go upstream untouched where there is not.
func TestCharset(t *testing.T) {
	p, _ := memProxy(t, casesearch.Config{})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH CHARSET us-ascii SUBJECT strasse`, "* SEARCH 1 2", "t OK *")
	c.ExpectDo("t", `SEARCH CHARSET ISO-8859-1 SUBJECT strasse`, "t NO [BADCHARSET (US-ASCII UTF-8)] *")
	c.ExpectDo("t", `SORT (DATE) KOI8-R SUBJECT strasse`, "t NO [BADCHARSET (US-ASCII UTF-8)] *")
	// go-imap's own answer.
	c.ExpectDo("t", `SEARCH CHARSET ISO-8859-1 UNSEEN`, "t NO [BADCHARSET] *")
}

// TestLimit: a search that would read more than MaxBytes is refused with
// NO [LIMIT]: one of whole messages before reading any (their sizes
// come first), one of headers as it reads them.
func TestLimit(t *testing.T) {
	// The corpus is about 4,000 bytes; its Subject fields, with the
	// FETCH responses around them, about 1,000.
	p, _ := memProxy(t, casesearch.Config{MaxBytes: 2000})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH BODY strasse`, "t NO [LIMIT] The search would read more of the mailbox than the server allows for one command; narrow it (dates, flags, a smaller mailbox).")
	c.ExpectDo("t", `SEARCH 1:2 BODY body`, "* SEARCH 1 2", "t OK *")
	c.ExpectDo("t", `SEARCH SUBJECT strasse`, "* SEARCH 1 2", "t OK *")
	p, _ = memProxy(t, casesearch.Config{MaxBytes: 500})
	c = imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH SUBJECT strasse`, "t NO [LIMIT] *")
	c.ExpectDo("t", `SEARCH 1:4 SUBJECT strasse`, "* SEARCH 1 2", "t OK *")
	// The time an evaluation may take.
	p, _ = memProxy(t, casesearch.Config{Timeout: time.Nanosecond})
	c = imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH SUBJECT strasse`, "t NO [LIMIT] The search took too long; narrow it (dates, flags, a smaller mailbox).")
	c.ExpectDo("t", `SEARCH UNSEEN`, "* SEARCH 1 3 4 5 6 7 8 10 11 12 13", "t OK *")
}

// TestMessages: what the evaluation reads and how: streamed messages
// larger than a chunk, message parts past the header bound, a mailbox
// searched by several keys at once.
func TestMessages(t *testing.T) {
	p, up := memProxy(t, casesearch.Config{})
	big := "Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		strings.Repeat("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh\r\n", 3000) + "w6nDqcOp\r\n"
	if err := up.Append("alice", "INBOX", nil, []byte(big)); err != nil { // 14
		t.Fatal(err)
	}
	huge := "Subject: huge part header\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nbefore\r\n--q\r\n" +
		strings.Repeat("X-Filler: "+strings.Repeat("z", 1000)+"\r\n", 1100) + "\r\nafter\r\n--q--\r\n"
	if err := up.Append("alice", "INBOX", nil, []byte(huge)); err != nil { // 15
		t.Fatal(err)
	}
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH BODY "ÉÉÉ"`, "* SEARCH 14", "t OK *")
	c.ExpectDo("t", `SEARCH BODY "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`, "* SEARCH 14", "t OK *")
	// The part whose header passes 1 MiB ends the scan of message 15:
	// what was found before it stands.
	c.ExpectDo("t", `SEARCH BODY before`, "* SEARCH 15", "t OK *")
	c.ExpectDo("t", `SEARCH BODY after`, "* SEARCH", "t OK *")
	c.ExpectDo("t", `SEARCH BODY "ÉÉÉ" SUBJECT big TEXT "content-transfer-encoding: base64"`, "* SEARCH 14", "t OK *")
	c.ExpectDo("t", `SEARCH OR OR BODY "ÉÉÉ" SUBJECT "STRASSE" OR TEXT "inner subj" FROM "müller"`, "* SEARCH 1 2 4 11 14", "t OK *")
}

// TestUpdate: an updating search's context (RFC 5267 4.3) re-evaluates the
// substring keys for new and changed messages: a new message whose
// subject matches is added, one whose flags change is judged on its
// subject again.
func TestUpdate(t *testing.T) {
	p, up := memProxy(t, casesearch.Config{})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t1", `SEARCH RETURN (UPDATE COUNT) UNSEEN SUBJECT "STRASSE"`, `* ESEARCH (TAG "t1") COUNT 1`, "t1 OK *")
	c.ExpectDo("t2", `UID SEARCH RETURN (UPDATE ALL) NOT SUBJECT "strasse"`, `* ESEARCH (TAG "t2") UID ALL 3:13`, "t2 OK *")
	if err := up.Append("alice", "INBOX", nil, []byte("Subject: =?UTF-8?Q?stra=C3=9Fe_und_Strasse?=\r\n\r\nnew\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := up.Append("alice", "INBOX", nil, []byte("Subject: other\r\n\r\nnew\r\n")); err != nil {
		t.Fatal(err)
	}
	c.ExpectDo("n", "NOOP",
		"* 15 EXISTS",
		"* 2 RECENT",
		`* ESEARCH (TAG "t1") ADDTO (0 14)`,
		`* ESEARCH (TAG "t2") UID ADDTO (0 15)`,
		"n OK *")
	c.ExpectDo("s", `STORE 2 -FLAGS (\Seen)`, `* 2 FETCH (FLAGS ())`, `* ESEARCH (TAG "t1") ADDTO (0 2)`, "s OK *")
}

// TestNotOffered: no I18NLEVEL=1 of the proxy's over an upstream that
// sorts itself without I18NLEVEL (its SORT compares its own way:
// Dovecot's legacy profile with SORT added), and its searches are
// relayed (Dovecot's answer, not RFC 5051's).
func TestNotOffered(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{ExtraCaps: []string{"SORT"}})
	fillDovecot(t, dc)
	p := imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: extensions(casesearch.Config{})})
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0]; strings.Contains(caps, "I18NLEVEL") {
		t.Errorf("capabilities: %q", caps)
	}
	c.MustOK("SELECT INBOX")
	c.ExpectDo("t", `SEARCH SUBJECT "ꟁ"`, "* SEARCH", "t OK *")
}

// TestManyKeys: more than 64 distinct substring keys are refused.
func TestManyKeys(t *testing.T) {
	p, _ := memProxy(t, casesearch.Config{})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	c.MustOK("SELECT INBOX")
	var b strings.Builder
	for i := range 65 {
		fmt.Fprintf(&b, " NOT SUBJECT k%d", i)
	}
	c.ExpectDo("t", "SEARCH"+b.String(), "t NO [LIMIT] *")
	c.ExpectDo("t", "SEARCH"+strings.Replace(b.String(), " NOT SUBJECT k64", "", 1), "* SEARCH 1 2 3 4 5 6 7 8 9 10 11 12 13", "t OK *")
}

// addressMessages are written the ways RFC 5322 allows addresses:
// comments, names quoted or not, encoded names, groups, lists.
var addressMessages = []string{
	"From: plain@example.org\r\nTo: to@example.org\r\nCc: cc@example.org\r\nBcc: bcc@example.org\r\n\r\n1\r\n",
	"From: Plain Name <plain@example.org>\r\nTo: \"Quoted, Name\" <to@example.org>\r\n\r\n2\r\n",
	"From: <plain (a comment)@ (another) example.org>\r\nTo: to@example.org (Comment Name)\r\n\r\n3\r\n",
	"From: =?ISO-8859-1?Q?J=F6rg?= <joerg@example.org>, second@example.org\r\nCc: team: a@example.org, b@example.org;, solo@example.org\r\n\r\n4\r\n",
	"From: \"Jöhn Doe\" <john@example.com>\r\nTo: undisclosed-recipients:;\r\n\r\n5\r\n",
}

// addressSearches are compared between Dovecot and the proxy.
var addressSearches = []string{
	`SEARCH FROM plain@example.org`, `SEARCH FROM "plain name"`, `SEARCH FROM "name <plain"`,
	`SEARCH FROM "a comment"`, `SEARCH FROM "plain@"`, `SEARCH TO "comment name"`, `SEARCH TO "quoted, name"`,
	`SEARCH TO "\"quoted"`, `SEARCH FROM "JÖRG <"`, `SEARCH FROM "second@"`, `SEARCH FROM "@example.org, second"`,
	`SEARCH CC team`, `SEARCH CC "team: a@"`, `SEARCH CC "b@example.org;, solo"`, `SEARCH TO undisclosed`,
	`SEARCH FROM "\"jöhn doe\" <john"`, `SEARCH FROM "doe <john"`, `SEARCH BCC ""`, `SEARCH TO ""`, `SEARCH CC ""`,
	`SEARCH HEADER From "(a comment)"`, `SEARCH OR FROM plain TO "to@" NOT CC team`,
}

// TestAddresses: the address keys answer as Dovecot's own search does
// (the proxy over the legacy profile evaluating them from the ENVELOPE;
// Dovecot's full profile directly).
func TestAddresses(t *testing.T) {
	answers := map[string][]string{}
	for _, target := range []string{"full-direct", "legacy-proxy"} {
		t.Run(target, func(t *testing.T) {
			profile := dovecottest.Full
			if target == "legacy-proxy" {
				profile = dovecottest.Legacy
			}
			dc := dovecottest.Start(t, profile)
			for _, m := range addressMessages {
				dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte(m))
			}
			addr := dc.Addr
			if target == "legacy-proxy" {
				addr = imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: extensions(casesearch.Config{})}).Addr
			}
			c := imaptest.Login(t, addr, "alice", "alicepass")
			c.MustOK("SELECT INBOX")
			for _, cmd := range addressSearches {
				got := c.Do("t", cmd)
				if len(got) != 2 || !strings.HasPrefix(got[1], "t OK") {
					t.Errorf("%s: %q", cmd, got)
					continue
				}
				answers[cmd] = append(answers[cmd], got[0])
			}
		})
	}
	for _, cmd := range addressSearches {
		if a := answers[cmd]; len(a) == 2 && a[0] != a[1] {
			t.Errorf("%s: Dovecot %q, the proxy %q", cmd, a[0], a[1])
		}
	}
	// A few answers spelled out: comments go, a trailing comment is the
	// name, a string matches within one address, groups have names.
	for cmd, want := range map[string]string{
		`SEARCH FROM plain@example.org`:             "* SEARCH 1 2 3",
		`SEARCH FROM "a comment"`:                   "* SEARCH",
		`SEARCH TO "comment name"`:                  "* SEARCH 3",
		`SEARCH FROM "@example.org, second"`:        "* SEARCH",
		`SEARCH CC team`:                            "* SEARCH 4",
		`SEARCH FROM "\"jöhn doe\" <john"`:          "* SEARCH 5",
		`SEARCH OR FROM plain TO "to@" NOT CC team`: "* SEARCH 1 2 3",
	} {
		for i, got := range answers[cmd] {
			if got != want {
				t.Errorf("%s: %q from %s, want %q", cmd, got, []string{"Dovecot", "the proxy"}[i], want)
			}
		}
	}
}

// TestStreamDovecot: messages larger than a chunk, streamed on a
// connection of the proxy's own, over Dovecot's legacy profile, answer
// as Dovecot's full profile does directly.
func TestStreamDovecot(t *testing.T) {
	msgs := []string{
		"Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			strings.Repeat("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh\r\n", 3000) + "w6nDqcOp\r\n",
		"Subject: small\r\n\r\nbody\r\n",
		"Subject: big two\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: application/pdf\r\n\r\n" +
			strings.Repeat("%PDF zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n", 2000) +
			"--x\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C9T=C9 end\r\n--x--\r\n",
	}
	answers := map[string][]string{}
	for _, target := range []string{"full-direct", "legacy-proxy"} {
		t.Run(target, func(t *testing.T) {
			profile := dovecottest.Full
			if target == "legacy-proxy" {
				profile = dovecottest.Legacy
			}
			dc := dovecottest.Start(t, profile)
			for _, m := range msgs {
				dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte(m))
			}
			addr := dc.Addr
			if target == "legacy-proxy" {
				addr = imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: extensions(casesearch.Config{})}).Addr
			}
			c := imaptest.Login(t, addr, "alice", "alicepass")
			c.MustOK("SELECT INBOX")
			for _, cmd := range []string{`SEARCH BODY "éÉé"`, `SEARCH TEXT "été end"`, `SEARCH BODY zzzz`, `SEARCH BODY body`, `SEARCH NOT BODY "ÉTÉ"`, `UID SEARCH TEXT "big"`} {
				got := c.Do("t", cmd)
				if len(got) != 2 || !strings.HasPrefix(got[1], "t OK") {
					t.Errorf("%s: %q", cmd, got)
					continue
				}
				answers[cmd] = append(answers[cmd], got[0])
			}
		})
	}
	for cmd, want := range map[string]string{
		`SEARCH BODY "éÉé"`: "* SEARCH 1", `SEARCH TEXT "été end"`: "* SEARCH 3", `SEARCH BODY zzzz`: "* SEARCH",
		`SEARCH BODY body`: "* SEARCH 2", `SEARCH NOT BODY "ÉTÉ"`: "* SEARCH 1 2", `UID SEARCH TEXT "big"`: "* SEARCH 1 3",
	} {
		for i, got := range answers[cmd] {
			if got != want {
				t.Errorf("%s: %q from %s, want %q", cmd, got, []string{"Dovecot", "the proxy"}[i], want)
			}
		}
	}
}
