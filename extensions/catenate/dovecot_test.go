package catenate_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/imapurl"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// refuseAll stands for a synthesized URLAUTH that authorizes nothing: with
// it the extension must put CATENATE together itself even over an
// upstream that has CATENATE.
type refuseAll struct{}

func (refuseAll) AuthorizeURL(context.Context, *proxy.Session, *imapurl.URL) error {
	return errors.New("no")
}
func (refuseAll) Synthesized(upstream.Caps) bool { return true }

// dovecotEnv is Dovecot with profile p, alice's Drafts holding draft and
// forwarded, bob's INBOX one message, and the proxy in front.
func dovecotEnv(t *testing.T, p dovecottest.Profile, auth catenate.Authorizer) (*catenate.Extension, *imaptest.Client, [2]uint32) {
	return dovecotEnvWith(t, p, dovecottest.Options{}, auth)
}

// dovecotEnvWith is dovecotEnv with Dovecot started with opts.
func dovecotEnvWith(t *testing.T, p dovecottest.Profile, opts dovecottest.Options, auth catenate.Authorizer) (*catenate.Extension, *imaptest.Client, [2]uint32) {
	srv := dovecottest.StartWith(t, p, opts)
	var uids [2]uint32
	for i, m := range []string{draft, forwarded} {
		uids[i] = srv.Append(t, "alice", "alicepass", "Drafts", nil, []byte(m))
	}
	srv.Append(t, "bob", "bobpass", "INBOX", nil, []byte("Subject: bob's secret\r\n\r\nbob only\r\n"))
	ext := catenate.New(catenate.Config{Hosts: []string{"imap.example.org"}, Auth: auth})
	px := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{ext, uidplus.New(), condstore.New()}})
	return ext, imaptest.Login(t, px.Addr, "alice", "alicepass"), uids
}

// TestDovecot: RFC 4469 4's example over every profile: synthesized over
// Legacy (APPENDUID from the upstream's UIDPLUS) and Plain (APPENDUID
// found by uidplus), relayed over Full, and synthesized over Full when
// URLAUTH is the proxy's.
func TestDovecot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       dovecottest.Profile
		auth    catenate.Authorizer
		relayed bool
	}{
		{"Legacy", dovecottest.Legacy, nil, false},
		{"Plain", dovecottest.Plain, nil, false},
		{"Full", dovecottest.Full, nil, true},
		{"FullProxyURLAUTH", dovecottest.Full, refuseAll{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext, c, uids := dovecotEnv(t, tc.p, tc.auth)
			if caps := c.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " CATENATE ") {
				t.Fatalf("%s", caps)
			}
			v := uidValidity(t, c, "Drafts")
			tagged := rfcExample(t, c, v, int(uids[0]), int(uids[1]))
			if want := "A003 OK [APPENDUID " + v + " 3] "; !strings.HasPrefix(tagged, want) {
				t.Errorf("tagged %q, want %q...", tagged, want)
			}
			want := catenate.Stats{Synthesized: 1}
			if tc.relayed {
				want = catenate.Stats{Relayed: 1}
			}
			if got := ext.Stats(); got != want {
				t.Errorf("stats %+v, want %+v", got, want)
			}
		})
	}
}

// TestDovecotIsolation: bob's message never reaches alice's mailbox,
// relayed (Dovecot refuses) or synthesized (the proxy refuses with
// BADURL, without asking the upstream).
func TestDovecotIsolation(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			_, c, _ := dovecotEnv(t, p, nil)
			url := "imap://bob@imap.example.org/INBOX/;UID=1"
			got := imaptest.Tagged(c.Cmd(`APPEND INBOX CATENATE (URL "` + url + `")`))
			if !strings.HasPrefix(got, "NO ") || p == dovecottest.Legacy && !strings.HasPrefix(got, "NO [BADURL "+url+"]") {
				t.Errorf("%q", got)
			}
			if st := c.MustOK("STATUS INBOX (MESSAGES)")[0]; !strings.Contains(st, "MESSAGES 0") {
				t.Errorf("%q", st)
			}
		})
	}
}

// TestDovecotTryCreate: an APPEND with a bad URL to a mailbox that does
// not exist gets Dovecot's own answer, NO [TRYCREATE], relayed over Full
// and synthesized over Legacy.
func TestDovecotTryCreate(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			_, c, uids := dovecotEnv(t, p, nil)
			got := imaptest.Tagged(c.Cmd(`APPEND Nowhere CATENATE (TEXT {1+}` + "\r\nx" + ` URL "/Drafts;UIDVALIDITY=1/;UID=` + itoa(uids[0]) + `")`))
			if !strings.HasPrefix(got, "NO [TRYCREATE] ") {
				t.Errorf("%q", got)
			}
		})
	}
}

// TestDovecotMultiappend: several messages, CATENATE and plain, in one
// APPEND, put together by the proxy and sent as one MULTIAPPEND where the
// upstream has MULTIAPPEND.
func TestDovecotMultiappend(t *testing.T) {
	_, c, uids := dovecotEnv(t, dovecottest.Full, refuseAll{})
	c.Send(`m APPEND INBOX (\Flagged) CATENATE (URL "/Drafts/;UID=` + itoa(uids[1]) + `") {5+}`)
	c.Write("hello")
	c.Send(` CATENATE (TEXT {3+}`)
	c.Write("abc")
	c.Send(`)`)
	if lines := c.ReadUntilTagged("m"); !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		t.Fatalf("%q", lines)
	}
	c.MustOK("SELECT INBOX")
	for uid, want := range map[int]string{1: forwarded, 2: "hello", 3: "abc"} {
		if got := fetchBody(t, c, uid, ""); got != want {
			t.Errorf("UID %d: %q, want %q", uid, got, want)
		}
	}
	if f := c.MustOK("UID FETCH 1 (FLAGS)")[0]; !strings.Contains(f, `\Flagged`) {
		t.Errorf("%q", f)
	}
}

// TestDovecotMultiappendOverCatenate: over an upstream that advertises
// CATENATE and UIDPLUS but not MULTIAPPEND (Legacy with CATENATE added),
// the proxy offers MULTIAPPEND itself, so an APPEND whose first message
// is a CATENATE may carry more: it is built by the proxy and appended
// message by message, never relayed as a MULTIAPPEND the upstream did not
// offer (Dovecot would take it, which is why the test counts what the
// extension did instead of waiting for an upstream's BAD).
func TestDovecotMultiappendOverCatenate(t *testing.T) {
	ext, c, uids := dovecotEnvWith(t, dovecottest.Legacy, dovecottest.Options{ExtraCaps: []string{"CATENATE"}}, nil)
	caps := strings.Join(c.MustOK("CAPABILITY"), " ")
	if !strings.Contains(caps, " MULTIAPPEND") || !strings.Contains(caps, " CATENATE") {
		t.Fatalf("capabilities: %q", caps)
	}
	lines := c.Cmd(`APPEND INBOX CATENATE (URL "/Drafts/;UID=`+itoa(uids[1])+`" TEXT {8+}`, "\r\n-- J\r\n) (\\Flagged) {5+}", "hello")
	if got := imaptest.Tagged(lines); !strings.HasPrefix(got, "OK [APPENDUID ") || !strings.Contains(got, " 1:2]") {
		t.Fatalf("MULTIAPPEND: %q", lines)
	}
	c.MustOK("SELECT INBOX")
	for uid, want := range map[int]string{1: forwarded + "\r\n-- J\r\n", 2: "hello"} {
		if got := fetchBody(t, c, uid, ""); got != want {
			t.Errorf("UID %d: %q, want %q", uid, got, want)
		}
	}
	if f := c.MustOK("UID FETCH 2 (FLAGS)")[0]; !strings.Contains(f, `\Flagged`) {
		t.Errorf("UID 2's flags: %q", f)
	}
	if st := ext.Stats(); st.Relayed != 0 || st.Synthesized != 1 || st.MultiAppends != 1 {
		t.Errorf("stats %+v: want the APPEND synthesized and appended message by message", st)
	}
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }
