package urlauth_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/extensions/urlauth"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestDovecot: URLAUTH over Dovecot's Legacy profile and over its Full
// profile, which (without imap_urlauth_host and the imap-urlauth
// services, which the test harness does not configure) does not offer
// URLAUTH either: synthesized over both. Dovecot's own URLAUTH, where an
// operator configures it, is relayed (Synthesized is false as soon as
// the upstream advertises URLAUTH); docs/urlauth.md.
func TestDovecot(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			srv := dovecottest.Start(t, p)
			direct := srv.Dial(t)
			c0 := imaptest.NewClient(t, direct)
			c0.MustGreetOK()
			c0.MustOK("LOGIN alice alicepass")
			if caps := c0.MustOK("CAPABILITY")[0] + " "; strings.Contains(caps, " URLAUTH") {
				t.Fatalf("Dovecot %s offers URLAUTH: %s", p, caps)
			}
			c0.MustOK("LOGOUT")
			uid := srv.Append(t, "alice", "alicepass", "INBOX", nil, []byte(bellum))
			srv.Append(t, "bob", "bobpass", "INBOX", nil, []byte("Subject: bob's\r\n\r\nbob only\r\n"))
			ext := urlauth.New(urlauth.Config{Hosts: []string{"example.com"}})
			cat := catenate.New(catenate.Config{Hosts: []string{"example.com"}, Auth: ext})
			px := imaptest.StartProxy(t, srv.Addr, proxy.Config{
				Extensions:  []proxy.Extension{cat, uidplus.New(), ext, condstore.New()},
				AccountData: accountdata.NewMemory(),
			})
			alice := imaptest.Login(t, px.Addr, "alice", "alicepass")
			bob := imaptest.Login(t, px.Addr, "bob", "bobpass")
			if caps := alice.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " URLAUTH ") || !strings.Contains(caps, " CATENATE ") {
				t.Fatalf("%s", caps)
			}
			u := "imap://alice@example.com/INBOX/;uid=" + itoa(uid) + "/;section=1.2;urlauth=user+alice"
			alice.Send(`a GENURLAUTH "` + u + `" INTERNAL`)
			alice.Expect(`* GENURLAUTH "`+u+`:internal:*`, "a OK GENURLAUTH completed.")
			url := gen(t, alice, u)
			alice.Send(`b URLFETCH "` + url + `"`)
			alice.Expect(`* URLFETCH "`+url+`" {28}`+"\r\n"+motto, "b OK URLFETCH completed.")
			if got := fetch(t, bob, url); got != "NIL" {
				t.Errorf("alice's URL fetched by bob: %q", got)
			}
			// bob's anonymous URL: NIL for alice, data for bob.
			burl := gen(t, bob, "imap://bob@example.com/INBOX/;uid=1;urlauth=anonymous")
			if got := fetch(t, alice, burl); got != "NIL" {
				t.Errorf("bob's URL fetched by alice: %q", got)
			}
			if got := fetch(t, bob, burl); !strings.Contains(got, "bob only") {
				t.Errorf("bob's own URL: %q", got)
			}
			// CATENATE with alice's URLAUTH URL, over Full too (Dovecot's
			// CATENATE could not check the proxy's token).
			alice.MustOK(`APPEND INBOX CATENATE (TEXT {14+}`, "Subject: x\r\n\r\n"+` URL "`+url+`")`)
			alice.MustOK("SELECT INBOX")
			if got := fetchBody(t, alice, int(uid)+1); got != "Subject: x\r\n\r\n"+motto {
				t.Errorf("catenated: %q", got)
			}
			if st := cat.Stats(); st != (catenate.Stats{Synthesized: 1}) {
				t.Errorf("%+v", st)
			}
		})
	}
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }

// fetchBody returns BODY.PEEK[] of a UID in the selected mailbox.
func fetchBody(t *testing.T, c *imaptest.Client, uid int) string {
	t.Helper()
	l := c.MustOK("UID FETCH " + strconv.Itoa(uid) + " (BODY.PEEK[])")[0]
	i := strings.Index(l, "}\r\n")
	if i < 0 {
		t.Fatalf("FETCH: %q", l)
	}
	return strings.TrimSuffix(l[i+3:], ")")
}

// TestURLFetchLaterMessage: a URLFETCH leaves its pooled connection with
// the URL's mailbox EXAMINEd; a later URLFETCH of a message delivered
// there since must find it, although the connection has the mailbox open
// already (Dovecot runs a command on the view the connection had after
// its previous one, which lacks the new message). The connection is
// brought up to date once for that URLFETCH, not once for each chunk it
// reads a large message in (Dovecot's own account of the commands).
func TestURLFetchLaterMessage(t *testing.T) {
	srv := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{CommandEvents: true})
	c0 := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	c0.MustOK("CREATE Other")
	c0.MustOK("LOGOUT")
	first := srv.Append(t, "alice", "alicepass", "Other", nil, []byte("Subject: first\r\n\r\nfirst body\r\n"))
	px := startURLAuth(t, srv)
	alice := imaptest.Login(t, px.Addr, "alice", "alicepass")
	url := func(uid uint32) string {
		return gen(t, alice, "imap://alice@example.com/Other/;uid="+itoa(uid)+";urlauth=user+alice")
	}
	if got := fetch(t, alice, url(first)); got != "Subject: first\r\n\r\nfirst body\r\n" {
		t.Fatalf("first URLFETCH: %q", got)
	}
	// Five chunks of urlfetch.ChunkSize and a bit.
	big := "Subject: second\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 5*48*1024/64)
	second := srv.Append(t, "alice", "alicepass", "Other", nil, []byte(big))
	if got := fetch(t, alice, url(second)); got != big {
		t.Fatalf("URLFETCH of the message delivered after the first: %d bytes, want %d", len(got), len(big))
	}
	// The proxy's commands: UID FETCHes, one for the first message and
	// six for the second; one EXAMINE before each URLFETCH's first chunk,
	// none before the later chunks.
	var fetches, examines, noops int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		evs, err := srv.CommandEvents()
		if err != nil {
			t.Fatal(err)
		}
		fetches, examines, noops = 0, 0, 0
		for _, e := range evs {
			switch e.Name {
			case "UID FETCH":
				fetches++
			case "EXAMINE":
				examines++
			case "NOOP":
				noops++
			}
		}
		if fetches >= 7 || time.Now().After(deadline) {
			break
		}
	}
	if fetches != 7 || examines != 2 || noops != 0 {
		t.Errorf("upstream commands: %d UID FETCH, %d EXAMINE, %d NOOP; want 7, 2 and 0", fetches, examines, noops)
	}
}

// TestURLFetchRecreatedMailboxDovecot is TestURLFetchRecreatedMailbox
// over Dovecot, which, polled with NOOP, showed the connection no message
// at the new mailbox's UID 1 (the URLFETCH answered NIL).
func TestURLFetchRecreatedMailboxDovecot(t *testing.T) {
	srv := dovecottest.Start(t, dovecottest.Legacy)
	px := startURLAuth(t, srv)
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	c.MustOK("CREATE Other")
	c.MustOK("APPEND Other {19}", "Subject: old\r\n\r\nx\r\n")
	url := gen(t, c, "imap://alice@example.com/Other/;uid=1;urlauth=user+alice")
	if got := fetch(t, c, url); got != "Subject: old\r\n\r\nx\r\n" {
		t.Fatalf("first URLFETCH: %q", got)
	}
	direct := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	direct.MustOK("DELETE Other")
	direct.MustOK("CREATE Other")
	direct.MustOK("APPEND Other {19}", "Subject: new\r\n\r\ny\r\n")
	if got := fetch(t, c, url); got != "Subject: new\r\n\r\ny\r\n" {
		t.Errorf("URLFETCH after the mailbox was created again: %q", got)
	}
}

// TestKeyOfMailboxNotSpelling: a mailbox has one access key however a
// client spells it. Dovecot takes inbox.child for INBOX.child (INBOX is
// case-insensitive at the head of its hierarchy too), so a URL made for
// one spelling must die with RESETKEY or DELETE of the other; and a
// RENAME takes the mailbox's children along, whose keys go with it.
func TestKeyOfMailboxNotSpelling(t *testing.T) {
	srv := dovecottest.Start(t, dovecottest.Legacy)
	px := startURLAuth(t, srv)
	c := imaptest.Login(t, px.Addr, "alice", "alicepass")
	const msg = "Subject: m\r\n\r\nx\r\n"
	put := func(box string) {
		t.Helper()
		c.MustOK("CREATE " + box)
		c.MustOK("APPEND "+box+" {17}", msg)
	}
	url := func(box string) string {
		t.Helper()
		u := gen(t, c, "imap://alice@example.com/"+box+"/;uid=1;urlauth=anonymous")
		if got := fetch(t, c, u); got != msg {
			t.Fatalf("URLFETCH of %s: %q", box, got)
		}
		return u
	}
	put("INBOX.child")
	u := url("inbox.child")
	c.MustOK("RESETKEY INBOX.child")
	if got := fetch(t, c, u); got != "NIL" {
		t.Errorf("URL for inbox.child after RESETKEY INBOX.child: %q", got)
	}
	u = url("INBOX.child")
	c.MustOK("DELETE inbox.child")
	put("INBOX.child")
	if got := fetch(t, c, u); got != "NIL" {
		t.Errorf("URL for INBOX.child after DELETE inbox.child and a new INBOX.child: %q", got)
	}

	put("Folder")
	put("Folder.sub")
	u = url("Folder.sub")
	c.MustOK("RENAME Folder Moved")
	put("Folder.sub")
	if got := fetch(t, c, u); got != "NIL" {
		t.Errorf("URL for Folder.sub after RENAME Folder and a new Folder.sub: %q", got)
	}
}

// startURLAuth starts the proxy with urlauth alone in front of srv.
func startURLAuth(t *testing.T, srv *dovecottest.Server) *imaptest.Proxy {
	t.Helper()
	return imaptest.StartProxy(t, srv.Addr, proxy.Config{
		Extensions:  []proxy.Extension{urlauth.New(urlauth.Config{Hosts: []string{"example.com"}})},
		AccountData: accountdata.NewMemory(),
	})
}
