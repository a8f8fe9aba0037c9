package catenate_test

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// boundary is RFC 4469 4's.
const boundary = "--------------030308070208000400050907"

// draft is the message the RFC 4469 4 example catenates from (its UID 20
// in Drafts): a multipart whose first part is kept.
var draft = "From: Fred Foobar <foobar@example.com>\r\n" +
	"Subject: afternoon meeting\r\n" +
	"To: mooch@example.net\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"" + boundary[2:] + "\"\r\n" +
	"\r\n" +
	boundary + "\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n" +
	"\r\n" +
	boundary + "\r\n" +
	"Content-Type: application/octet-stream\r\n" +
	"Content-Transfer-Encoding: base64\r\n" +
	"\r\n" +
	"AAECAwQFBgcICQ==\r\n" +
	boundary + "--\r\n"

// forwarded is the example's UID 30, attached whole.
var forwarded = "From: Joe Mooch <mooch@example.net>\r\n" +
	"Subject: Re: afternoon meeting\r\n" +
	"\r\n" +
	"3:30 is fine with me.\r\n"

// memEnv starts go-imap's in-memory server (no CATENATE, no MULTIAPPEND,
// no UIDPLUS) with alice's Drafts holding draft (UID 1) and forwarded
// (UID 2), bob's INBOX one message, and the proxy with catenate and
// uidplus in the order chain.go has them.
func memEnv(t *testing.T, edit func(*proxy.Config)) *imaptest.Proxy {
	t.Helper()
	return memEnvCaps(t, nil, edit)
}

// memEnvCaps is memEnv with the upstream advertising caps (nil: the
// memupstream defaults, UIDPLUS among them).
func memEnvCaps(t *testing.T, caps []imap.Cap, edit func(*proxy.Config)) *imaptest.Proxy {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: caps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	for _, u := range []string{"alice", "bob"} {
		if err := up.AddUser(u, u+"pass"); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []string{draft, forwarded} {
		if err := up.Append("alice", "Drafts", nil, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := up.Append("bob", "INBOX", nil, []byte("Subject: bob's secret\r\n\r\nbob only\r\n")); err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{Extensions: []proxy.Extension{
		catenate.New(catenate.Config{Hosts: []string{"imap.example.org"}}),
		uidplus.New(), condstore.New(),
	}}
	if edit != nil {
		edit(&cfg)
	}
	return imaptest.StartProxy(t, up.Addr, cfg)
}

// uidValidity returns a mailbox's UIDVALIDITY through c.
func uidValidity(t *testing.T, c *imaptest.Client, mbox string) string {
	t.Helper()
	m := regexp.MustCompile(`UIDVALIDITY (\d+)`).FindStringSubmatch(strings.Join(c.MustOK("STATUS "+mbox+" (UIDVALIDITY)"), "\n"))
	if m == nil {
		t.Fatal("no UIDVALIDITY")
	}
	return m[1]
}

// fetchBody returns BODY.PEEK[section] of a UID in the selected mailbox.
func fetchBody(t *testing.T, c *imaptest.Client, uid int, section string) string {
	t.Helper()
	lines := c.MustOK(fmt.Sprintf("UID FETCH %d (BODY.PEEK[%s])", uid, section))
	if len(lines) < 2 {
		t.Fatalf("FETCH: %q", lines)
	}
	l := lines[0]
	i := strings.Index(l, "}\r\n")
	if i < 0 {
		if strings.Contains(l, `""`) {
			return ""
		}
		t.Fatalf("FETCH: %q", l)
	}
	body := l[i+3:]
	return strings.TrimSuffix(body, ")")
}

// rfcExample runs RFC 4469 4's example against c (alice logged in), with
// the UIDVALIDITY and UIDs of this mailbox, and checks the transcript
// exactly and the message the APPEND made byte for byte. It returns the
// tagged response.
func rfcExample(t *testing.T, c *imaptest.Client, v string, uid20, uid30 int) string {
	t.Helper()
	url := func(uid int, sec string) string {
		u := fmt.Sprintf("/Drafts;UIDVALIDITY=%s/;UID=%d", v, uid)
		if sec != "" {
			u += "/;section=" + sec
		}
		return u
	}
	sep := "\r\n" + boundary + "\r\n"
	end := "\r\n" + boundary + "--\r\n"
	if len(sep) != 42 || len(end) != 44 {
		t.Fatalf("literal sizes %d, %d", len(sep), len(end))
	}
	c.Send(`A003 APPEND Drafts (\Seen \Draft $MDNSent) CATENATE (URL "` + url(uid20, "HEADER") + `" TEXT {42}`)
	c.Expect("+*") // the proxy's own or, relayed, the upstream's
	c.Write(sep)
	c.Send(` URL "` + url(uid20, "1.MIME") + `" URL "` + url(uid20, "1") + `" TEXT {42}`)
	c.Expect("+*") // the proxy's own or, relayed, the upstream's
	c.Write(sep)
	c.Send(` URL "` + url(uid30, "") + `" TEXT {44}`)
	c.Expect("+*") // the proxy's own or, relayed, the upstream's
	c.Write(end)
	c.Send(")")
	lines := c.ReadUntilTagged("A003")
	tagged := lines[len(lines)-1]
	if !strings.HasPrefix(tagged, "A003 OK") {
		t.Fatalf("APPEND: %q", lines)
	}
	c.MustOK("SELECT Drafts")
	header := fetchBody(t, c, uid20, "HEADER")
	mime := fetchBody(t, c, uid20, "1.MIME")
	part1 := fetchBody(t, c, uid20, "1")
	whole := fetchBody(t, c, uid30, "")
	want := header + sep + mime + part1 + sep + whole + end
	newUID := uid30 + 1
	if got := fetchBody(t, c, newUID, ""); got != want {
		t.Fatalf("the message made:\n%q\nwant\n%q", got, want)
	}
	flags := c.MustOK(fmt.Sprintf("UID FETCH %d (FLAGS)", newUID))[0]
	if f := strings.ToLower(flags); !strings.Contains(f, `\seen`) || !strings.Contains(f, `\draft`) || !strings.Contains(f, `$mdnsent`) {
		t.Errorf("flags: %q", flags)
	}
	c.MustOK("CLOSE")
	return tagged
}

// TestRFC4469Example: section 4's example, synthesized over an upstream
// without CATENATE, with APPENDUID synthesized by uidplus on the APPEND
// the extension made.
func TestRFC4469Example(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " CATENATE ") {
		t.Fatalf("%s", caps)
	}
	v := uidValidity(t, c, "Drafts")
	tagged := rfcExample(t, c, v, 1, 2)
	if want := "A003 OK [APPENDUID " + v + " 3] "; !strings.HasPrefix(tagged, want) {
		t.Errorf("tagged %q, want %q...", tagged, want)
	}
}

// TestCapabilityAfterLogin: CATENATE only once logged in.
func TestCapabilityAfterLogin(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Dial(t, p.Addr)
	c.MustGreetOK()
	if caps := c.MustOK("CAPABILITY")[0]; strings.Contains(caps, "CATENATE") {
		t.Errorf("before login: %q", caps)
	}
}

// TestBadURL: every URL that names nothing alice may read is answered
// NO [BADURL url] before the synchronising literal after it is invited,
// and nothing is appended.
func TestBadURL(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	v := uidValidity(t, c, "Drafts")
	for _, url := range []string{
		"imap://bob@imap.example.org/INBOX/;UID=1",                      // another user
		"imap://alice@elsewhere.example.net/Drafts/;UID=1",              // another host
		"imap://imap.example.org/Drafts/;UID=1",                         // no user: not alice's
		"/Drafts;UIDVALIDITY=" + v + "1/;UID=1",                         // UIDVALIDITY
		"/Drafts/;UID=99",                                               // no such message
		"/Nowhere/;UID=1",                                               // no such mailbox
		"/Drafts",                                                       // a mailbox, no message
		"/Drafts?SUBJECT%20meeting",                                     // a search
		"/Drafts/;UID=1/;SECTION=1%5D%20(FLAGS)",                        // not a section
		"Drafts/;UID=1",                                                 // not a URL
		"imap://alice@imap.example.org/Drafts/;UID=1;URLAUTH=anonymous", // URLAUTH without an authorizer
	} {
		c.Send(`t APPEND Drafts CATENATE (URL "` + url + `" TEXT {5}`)
		want := "t NO [BADURL " + url + "] *"
		if got := c.ReadLine(); !imaptest.Match(got, want) {
			t.Errorf("%s: got %q, want %q", url, got, want)
		}
	}
	// A bad URL after a literal: the literal was read, the answer comes
	// at the end.
	c.Send(`u APPEND Drafts CATENATE (TEXT {5+}`)
	c.Write("hello")
	c.Send(` URL "/Drafts/;UID=99")`)
	if got := c.ReadLine(); !imaptest.Match(got, "u NO [BADURL /Drafts/;UID=99] *") {
		t.Errorf("got %q", got)
	}
	if st := c.MustOK("STATUS Drafts (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 2") {
		t.Errorf("%q", st)
	}
	c.MustOK("NOOP") // still in step
}

// TestTryCreateBeforeBadURL: an APPEND to a mailbox that does not exist
// is answered NO [TRYCREATE] even when a URL part is bad too, as Dovecot
// does (imaptest's catenate group); into one that exists, the bad URL is
// answered BADURL, and nothing is created either way.
func TestTryCreateBeforeBadURL(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	for _, tc := range []struct{ mailbox, url, want string }{
		{"Nowhere", "/Drafts/;UID=99", "t NO [TRYCREATE] *"},
		{`"No where"`, "/Drafts;UIDVALIDITY=1/;UID=1", "t NO [TRYCREATE] *"},
		{"Drafts", "/Drafts/;UID=99", "t NO [BADURL /Drafts/;UID=99] *"},
		{"inbox", "/Drafts/;UID=99", "t NO [BADURL /Drafts/;UID=99] *"},
		{`"Now*"`, "/Drafts/;UID=99", "t NO [BADURL /Drafts/;UID=99] *"}, // a wildcard: not asked
	} {
		c.Send(`t APPEND ` + tc.mailbox + ` CATENATE (URL "` + tc.url + `" TEXT {5}`)
		if got := c.ReadLine(); !imaptest.Match(got, tc.want) {
			t.Errorf("%s %s: got %q, want %q", tc.mailbox, tc.url, got, tc.want)
		}
	}
	c.MustOK("NOOP") // still in step
	// INBOX, Drafts and the tagged OK: nothing was created.
	if lines := c.MustOK(`LIST "" *`); len(lines) != 3 {
		t.Errorf("mailboxes: %q", lines)
	}
}

// TestIsolation: bob's message cannot be catenated into alice's mail,
// whatever the URL's spelling; alice's own absolute URL works.
func TestIsolation(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	for _, url := range []string{
		"imap://bob@imap.example.org/INBOX/;UID=1",
		"imap://BOB@IMAP.EXAMPLE.ORG/INBOX/;UID=1",
		"imap://bob;AUTH=*@imap.example.org/INBOX/;UID=1",
	} {
		lines := c.Cmd(`APPEND INBOX CATENATE (URL "` + url + `")`)
		if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO [BADURL "+url+"]") {
			t.Errorf("%s: %q", url, lines)
		}
	}
	c.MustOK(`APPEND INBOX CATENATE (URL "imap://ALICE@imap.example.org/Drafts/;UID=2")`)
	c.MustOK("SELECT INBOX")
	if got := fetchBody(t, c, 1, ""); got != forwarded {
		t.Errorf("got %q", got)
	}
	if lines := c.MustOK("UID SEARCH BODY \"bob only\""); lines[0] != "* SEARCH" {
		t.Errorf("bob's text in alice's INBOX: %q", lines)
	}
}

// TestTooBig: a TEXT literal or a URL part that would take the message
// past MaxAppendLiteral is refused NO [TOOBIG]; a synchronising literal
// is refused before it is invited.
func TestTooBig(t *testing.T) {
	p := memEnv(t, func(c *proxy.Config) { c.MaxAppendLiteral = 300 })
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.Send(`a APPEND Drafts CATENATE (TEXT {200}`)
	c.Expect("+ Ready for literal data")
	c.Write(strings.Repeat("x", 200))
	c.Send(` TEXT {101}`)
	c.Expect("a NO [TOOBIG] The message would exceed the limit of 300 bytes.")
	// The draft (over 500 bytes) does not fit.
	lines := c.Cmd(`APPEND Drafts CATENATE (URL "/Drafts/;UID=1")`)
	if got := imaptest.Tagged(lines); got != "NO [TOOBIG] The message would exceed the limit of 300 bytes." {
		t.Errorf("%q", lines)
	}
	// A part of it does.
	c.MustOK(`APPEND Drafts CATENATE (URL "/Drafts/;UID=1/;SECTION=1" TEXT {3+}`, "end)")
	if st := c.MustOK("STATUS Drafts (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 3") {
		t.Errorf("%q", st)
	}
}

// TestPartial: ;PARTIAL= ranges, with and without a length.
func TestPartial(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	head := strings.Index(forwarded, "\r\n\r\n") + 4
	c.MustOK(fmt.Sprintf(`APPEND INBOX CATENATE (URL "/Drafts/;UID=2/;PARTIAL=0.%d" URL "/Drafts/;UID=2/;SECTION=TEXT/;PARTIAL=5")`, head))
	c.MustOK("SELECT INBOX")
	if got, want := fetchBody(t, c, 1, ""), forwarded[:head]+"is fine with me.\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestSyntax: malformed CATENATE commands are answered BAD and the
// session stays in step; a second message over an upstream without
// MULTIAPPEND and UIDPLUS (where no rollback is possible) is refused.
func TestSyntax(t *testing.T) {
	p := memEnvCaps(t, []imap.Cap{imap.CapNamespace, imap.CapLiteralPlus}, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := c.MustOK("CAPABILITY")[0] + " "; strings.Contains(caps, " MULTIAPPEND ") || !strings.Contains(caps, " CATENATE ") {
		t.Errorf("%s", caps)
	}
	for _, cmd := range []string{
		`APPEND Drafts CATENATE ()`,
		`APPEND Drafts CATENATE (URL)`,
		`APPEND Drafts CATENATE (FOO "x")`,
		`APPEND Drafts CATENATE (URL "/Drafts/;UID=1") CATENATE (URL "/Drafts/;UID=2")`,
		`APPEND Drafts CATENATE (URL "/Drafts/;UID=1"`,
	} {
		if got := imaptest.Tagged(c.Cmd(cmd)); !strings.HasPrefix(got, "BAD ") {
			t.Errorf("%s: %q", cmd, got)
		}
	}
	c.Send(`m APPEND Drafts CATENATE (TEXT {2+}`)
	c.Write("ab")
	c.Send(`) CATENATE (TEXT {2}`)
	c.Expect("m BAD Error in IMAP command APPEND: one message per APPEND (no MULTIAPPEND).")
	c.MustOK("NOOP")
	if st := c.MustOK("STATUS Drafts (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 2") {
		t.Errorf("%q", st)
	}
}

// TestMultiappendCatenateFirst: a MULTIAPPEND whose first message is a
// CATENATE and whose second is plain, with flags, over an upstream with
// UIDPLUS and without MULTIAPPEND: both built by the proxy and appended
// one by one, in order (TestDovecotMultiappendOverCatenate has the
// upstream advertise CATENATE too).
func TestMultiappendCatenateFirst(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	caps := strings.Join(c.MustOK("CAPABILITY"), " ")
	if !strings.Contains(caps, " MULTIAPPEND") || !strings.Contains(caps, " CATENATE") {
		t.Fatalf("capabilities: %q", caps)
	}
	v := uidValidity(t, c, "Drafts")
	second := "Subject: second\r\n\r\nhello\r\n"
	lines := c.Cmd(`APPEND Drafts CATENATE (URL "/Drafts;UIDVALIDITY=`+v+`/;UID=2" TEXT {8+}`,
		"\r\n-- J\r\n"+fmt.Sprintf(`) (\Flagged) {%d+}`, len(second)), second)
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK [APPENDUID "+v+" 3:4]") {
		t.Fatalf("MULTIAPPEND: %q", lines)
	}
	c.MustOK("SELECT Drafts")
	if got, want := fetchBody(t, c, 3, ""), forwarded+"\r\n-- J\r\n"; got != want {
		t.Errorf("UID 3: %q, want %q", got, want)
	}
	if got := fetchBody(t, c, 4, ""); got != second {
		t.Errorf("UID 4: %q, want %q", got, second)
	}
	if f := c.MustOK("UID FETCH 4 (FLAGS)")[0]; !strings.Contains(f, `\Flagged`) {
		t.Errorf("UID 4's flags: %q", f)
	}
}

// TestMultiappendMailboxLiteral: over an upstream with UIDPLUS and without
// MULTIAPPEND, a MULTIAPPEND whose mailbox name is a literal went upstream
// as it was, and go-imap's server stored the first message and dropped
// the connection (the client heard NO). The name is now read, and sent
// as a quoted string.
func TestMultiappendMailboxLiteral(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	name := `odd "name" \ here`
	c.MustOK(`CREATE "odd \"name\" \\ here"`)
	v := uidValidity(t, c, `"odd \"name\" \\ here"`)
	first, second := "Subject: one\r\n\r\nfirst\r\n", "Subject: two\r\n\r\nsecond\r\n"
	lines := c.Cmd(fmt.Sprintf("APPEND {%d}", len(name)), name+fmt.Sprintf(" {%d+}", len(first)),
		first+fmt.Sprintf(" (\\Seen) {%d+}", len(second)), second)
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK [APPENDUID "+v+" 1:2]") {
		t.Fatalf("MULTIAPPEND: %q", lines)
	}
	c.MustOK(`SELECT "odd \"name\" \\ here"`)
	if got := fetchBody(t, c, 1, ""); got != first {
		t.Errorf("UID 1: %q", got)
	}
	if got := fetchBody(t, c, 2, ""); got != second {
		t.Errorf("UID 2: %q", got)
	}

	// A name no quoted string can carry is refused, nothing stored.
	c.MustOK("CLOSE")
	if got := imaptest.Tagged(c.Cmd("APPEND {3+}", "a\rb"+fmt.Sprintf(" {%d+}", len(first)), first)); !strings.HasPrefix(got, "BAD ") {
		t.Errorf("unquotable name: %q", got)
	}
	c.MustOK("NOOP")
}

// TestSpoolShareOfOneAccount: the spools' disk is shared by every account,
// and an account trickling large APPENDs held all of it, so that every
// other account's APPEND past SpoolMemory was refused NO [LIMIT] (over an
// upstream without MULTIAPPEND every APPEND is spooled). Each account
// now has at most its share (urlfetch.SetSpoolDiskPerOwner); the total
// and the share are scaled down here.
func TestSpoolShareOfOneAccount(t *testing.T) {
	urlfetch.SetSpoolDiskTotal(256 << 10)
	urlfetch.SetSpoolDiskPerOwner(128 << 10)
	t.Cleanup(func() { urlfetch.SetSpoolDiskTotal(0); urlfetch.SetSpoolDiskPerOwner(0) })
	p := memEnv(t, nil)

	// alice sends most of a 1 MiB literal, then stalls (a literal has
	// the whole idle timeout to arrive).
	alice := imaptest.Login(t, p.Addr, "alice", "alicepass")
	alice.Send(fmt.Sprintf("a1 APPEND INBOX {%d}", 1<<20))
	if l := alice.ReadLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("alice's continuation: %q", l)
	}
	alice.Write(strings.Repeat("x", 250<<10))
	time.Sleep(300 * time.Millisecond) // the proxy spools what came
	if all, _ := urlfetch.SpoolDiskUsed(""); all > 128<<10 {
		t.Fatalf("%d bytes of spool held while alice stalls: more than her share", all)
	}

	// bob appends 40 KiB: within every limit.
	bob := imaptest.Login(t, p.Addr, "bob", "bobpass")
	msg := "Subject: bob's mail\r\n\r\n" + strings.Repeat("b", 40<<10) + "\r\n"
	lines := bob.Cmd(fmt.Sprintf("APPEND INBOX {%d}", len(msg)), msg)
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK") {
		t.Fatalf("bob's APPEND while alice stalls: %q", got)
	}

	// alice, once she has sent the rest, is refused: past her share.
	alice.Write(strings.Repeat("x", 1<<20-250<<10))
	alice.Send("")
	if got := imaptest.Tagged(alice.ReadUntilTagged("a1")); !strings.HasPrefix(got, "NO [LIMIT]") {
		t.Fatalf("alice's APPEND past her share: %q", got)
	}
}

// binaryEnv is memEnv over an upstream with BINARY and UIDPLUS and
// without MULTIAPPEND, with extensions/binary in the chain after the
// others, as chain.go has it.
func binaryEnv(t *testing.T) *imaptest.Proxy {
	t.Helper()
	return memEnvCaps(t, []imap.Cap{imap.CapNamespace, imap.CapLiteralPlus, imap.CapUIDPlus, imap.CapBinary}, func(c *proxy.Config) {
		c.Extensions = append(c.Extensions, binary.New())
	})
}

// TestMultiappendLiteral8OverBinaryUpstream: over an upstream with BINARY
// and UIDPLUS and without MULTIAPPEND (the proxy offers MULTIAPPEND), a
// MULTIAPPEND whose first message is a literal8 was passed on by both
// catenate (a literal8 first message was binary's) and binary (the
// upstream has BINARY), and go-imap's server stored the first message and
// dropped the connection: NO for a stored message (a second reviewer's
// finding). The messages are now read and appended one by one, the
// literal8 as a literal8; one literal8 after a mailbox name sent as a
// literal too, which the first fix had refused.
func TestMultiappendLiteral8OverBinaryUpstream(t *testing.T) {
	p := binaryEnv(t)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	if caps := strings.Join(c.MustOK("CAPABILITY"), " "); !strings.Contains(caps, " MULTIAPPEND") {
		t.Fatalf("MULTIAPPEND not offered: %s", caps)
	}
	v := uidValidity(t, c, "INBOX")
	first := "Subject: one\r\n\r\nfirst\x00\r\n"
	second := "Subject: two\r\n\r\nsecond\r\n"
	lines := c.Cmd(fmt.Sprintf("APPEND INBOX ~{%d+}", len(first)), first+fmt.Sprintf(" (\\Seen) {%d+}", len(second)), second)
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK [APPENDUID "+v+" 1:2]") {
		t.Fatalf("MULTIAPPEND, literal8 first: %q", lines)
	}
	if got := imaptest.Tagged(c.Cmd("APPEND {5+}", "INBOX"+fmt.Sprintf(" ~{%d+}", len(first)), first)); !strings.HasPrefix(got, "OK [APPENDUID "+v+" 3]") {
		t.Fatalf("one literal8 after a literal mailbox name: %q", got)
	}
	c.MustOK("SELECT INBOX")
	for uid, want := range map[int]string{1: first, 2: second, 3: first} {
		if got := binaryItem(t, c.MustOK(fmt.Sprintf("UID FETCH %d (BINARY.PEEK[])", uid))); got != want {
			t.Errorf("UID %d: %q, want %q", uid, got, want)
		}
	}
}

// binaryItem returns the data of the literal (or literal8) in a FETCH
// answer's first line.
func binaryItem(t *testing.T, lines []string) string {
	t.Helper()
	m := regexp.MustCompile(`~?\{(\d+)\}\r\n`).FindStringSubmatchIndex(lines[0])
	if m == nil {
		t.Fatalf("no literal in %q", lines)
	}
	n, _ := strconv.Atoi(lines[0][m[2]:m[3]])
	return lines[0][m[1] : m[1]+n]
}

// TestPlainAppendUntouched: an APPEND without CATENATE streams as before.
func TestPlainAppendUntouched(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	v := uidValidity(t, c, "Drafts")
	lines := c.MustOK("APPEND Drafts {5}", "hello")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK [APPENDUID "+v+" 3]") {
		t.Errorf("%q", lines)
	}
}

// TestLarge: a message well past the upstream's LITERAL- bound (so the
// APPEND the extension makes waits for the upstream's continuation
// request) and a URL part read in several chunks.
func TestLarge(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	line := "The quick brown fox jumps over the lazy dog, again and again.\r\n"
	big := "Subject: big\r\n\r\n" + strings.Repeat(line, 3000) // about 190 KB
	c.MustOK(fmt.Sprintf("APPEND Drafts {%d}", len(big)), big)
	lines := c.MustOK(fmt.Sprintf(`APPEND INBOX CATENATE (URL "/Drafts/;UID=3" TEXT {%d}`, len(big)), big+")")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK") {
		t.Fatalf("%q", lines)
	}
	c.MustOK("SELECT INBOX")
	if got := fetchBody(t, c, 1, ""); got != big+big {
		t.Errorf("got %d bytes, want %d", len(got), 2*len(big))
	}
}

// TestRefusedInStep: refusals that come while the client is still sending
// (a bad URL before a non-synchronising literal) or from the upstream
// (APPEND to a mailbox that does not exist, before or after a
// synchronising upstream literal) leave the session in step.
func TestRefusedInStep(t *testing.T) {
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	c.Send(`a APPEND Drafts CATENATE (URL "/Drafts/;UID=99" TEXT {5+}`)
	c.Write("hello")
	c.Send(` TEXT {3+}`)
	c.Write("abc")
	c.Send(`)`)
	c.Expect("a NO [BADURL /Drafts/;UID=99] The URL names no message of this account.")
	c.MustOK("NOOP")
	for _, n := range []int{10, 5000} { // below and above LITERAL-'s 4096
		lines := c.Cmd(fmt.Sprintf(`APPEND Nowhere CATENATE (URL "/Drafts/;UID=2" TEXT {%d+}`, n), strings.Repeat("x", n)+")")
		if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO [TRYCREATE]") {
			t.Errorf("%d: %q", n, lines)
		}
		c.MustOK("NOOP")
	}
	if st := c.MustOK("STATUS Drafts (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 2") {
		t.Errorf("%q", st)
	}
}

// TestSlowLiteral: a CATENATE's literal gets the idle timeout from when
// it starts, as a relayed APPEND's does, not what was left of the
// timeout the session's wait for the command began (the proxy reads it
// itself: Exchange.ReadStreamed). The client idles for most of the
// timeout, then takes more than the rest to send its literal.
func TestSlowLiteral(t *testing.T) {
	const idle = 2 * time.Second
	p := memEnv(t, func(cfg *proxy.Config) { cfg.IdleTimeout = idle })
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	time.Sleep(idle * 7 / 10)
	body := "Subject: slow\r\n\r\n" + strings.Repeat("x", 200) + "\r\n"
	c.Write(fmt.Sprintf("a APPEND Drafts CATENATE (TEXT {%d}\r\n", len(body)))
	if got := c.ReadLine(); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("continuation: %q", got)
	}
	c.Write(body[:100])
	time.Sleep(idle * 6 / 10)
	c.Write(body[100:] + ")\r\n")
	if got := imaptest.Tagged(c.ReadUntilTagged("a")); !strings.HasPrefix(got, "OK") {
		t.Fatalf("APPEND: %q", got)
	}
}

// TestSpoolDiskFull: with the spools' disk space of the whole process
// taken, a CATENATE that needs a file is refused NO [LIMIT] (its literal
// read and dropped), and the session goes on.
func TestSpoolDiskFull(t *testing.T) {
	urlfetch.SetSpoolDiskTotal(64 << 10)
	t.Cleanup(func() { urlfetch.SetSpoolDiskTotal(0) })
	p := memEnv(t, nil)
	c := imaptest.Login(t, p.Addr, "alice", "alicepass")
	big := "Subject: big\r\n\r\n" + strings.Repeat("y", 100<<10) + "\r\n"
	lines := c.Cmd(fmt.Sprintf(`APPEND Drafts CATENATE (TEXT {%d}`, len(big)), big+")")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "NO [LIMIT] ") {
		t.Fatalf("APPEND past the spools' disk space: %q", got)
	}
	small := "Subject: small\r\n\r\nz\r\n"
	lines = c.Cmd(fmt.Sprintf(`APPEND Drafts CATENATE (TEXT {%d}`, len(small)), small+")")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK ") {
		t.Fatalf("APPEND after: %q", got)
	}
}
