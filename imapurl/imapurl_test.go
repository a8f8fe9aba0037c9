package imapurl

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// rfcVectors are URLs from RFC 5092 (section 9 and the text), RFC 4469
// (the CATENATE examples) and RFC 4467 (the GENURLAUTH/URLFETCH
// examples), with what they mean and their canonical form.
var rfcVectors = []struct {
	in    string
	want  URL
	canon string
}{
	{ // RFC 5092 (8)
		in:    "imap://minbari.example.org/gray-council;UIDVALIDITY=385759045/;UID=20/;PARTIAL=0.1024",
		want:  URL{Absolute: true, Host: "minbari.example.org", Mailbox: "gray-council", UIDValidity: 385759045, UID: 20, Partial: &Partial{0, 1024}},
		canon: "imap://minbari.example.org/gray-council;UIDVALIDITY=385759045/;UID=20/;PARTIAL=0.1024",
	},
	{ // RFC 5092 (8)
		in:    "imap://psicorp.example.org/~peter/%E6%97%A5%E6%9C%AC%E8%AA%9E/%E5%8F%B0%E5%8C%97",
		want:  URL{Absolute: true, Host: "psicorp.example.org", Mailbox: "~peter/日本語/台北"},
		canon: "imap://psicorp.example.org/~peter/%E6%97%A5%E6%9C%AC%E8%AA%9E/%E5%8F%B0%E5%8C%97",
	},
	{ // RFC 5092 (8)
		in:    "imap://;AUTH=GSSAPI@minbari.example.org/gray-council/;uid=20/;section=1.2",
		want:  URL{Absolute: true, Auth: "GSSAPI", Host: "minbari.example.org", Mailbox: "gray-council", UID: 20, Section: "1.2"},
		canon: "imap://;AUTH=GSSAPI@minbari.example.org/gray-council/;UID=20/;SECTION=1.2",
	},
	{ // RFC 5092 (8)
		in:    "imap://;AUTH=*@minbari.example.org/gray%20council?SUBJECT%20shadows",
		want:  URL{Absolute: true, Auth: "*", Host: "minbari.example.org", Mailbox: "gray council", Search: "SUBJECT shadows", HasSearch: true},
		canon: "imap://;AUTH=*@minbari.example.org/gray%20council?SUBJECT%20shadows",
	},
	{ // RFC 5092 (8)
		in:    "imap://john;AUTH=*@minbari.example.org/babylon5/personel?charset%20UTF-8%20SUBJECT%20%7B14+%7D%0D%0A%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B0",
		want:  URL{Absolute: true, User: "john", Auth: "*", Host: "minbari.example.org", Mailbox: "babylon5/personel", Search: "charset UTF-8 SUBJECT {14+}\r\nИванова", HasSearch: true},
		canon: "imap://john;AUTH=*@minbari.example.org/babylon5/personel?charset%20UTF-8%20SUBJECT%20%7B14+%7D%0D%0A%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B0",
	},
	{ // RFC 5092 (8)
		in:    "imap://michael@minbari.example.org/users.*",
		want:  URL{Absolute: true, User: "michael", Host: "minbari.example.org", Mailbox: "users.*"},
		canon: "imap://michael@minbari.example.org/users.*",
	},
	{ // RFC 4469 (4)
		in:    "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER",
		want:  URL{Mailbox: "Drafts", UIDValidity: 385759045, UID: 20, Section: "HEADER"},
		canon: "/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=HEADER",
	},
	{ // RFC 4469 (4)
		in:    "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME",
		want:  URL{Mailbox: "Drafts", UIDValidity: 385759045, UID: 20, Section: "1.MIME"},
		canon: "/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.MIME",
	},
	{ // RFC 4469 (4)
		in:    "/Drafts;UIDVALIDITY=385759045/;UID=30",
		want:  URL{Mailbox: "Drafts", UIDValidity: 385759045, UID: 30},
		canon: "/Drafts;UIDVALIDITY=385759045/;UID=30",
	},
	{ // RFC 4469 (4), the BADURL example
		in:    "/INBOX;UIDVALIDITY=785799047/;UID=113330/;section=1.5.9",
		want:  URL{Mailbox: "INBOX", UIDValidity: 785799047, UID: 113330, Section: "1.5.9"},
		canon: "/INBOX;UIDVALIDITY=785799047/;UID=113330/;SECTION=1.5.9",
	},
	{ // RFC 4467 (9), GENURLAUTH's argument
		in:    "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred",
		want:  URL{Absolute: true, User: "joe", Host: "example.com", Mailbox: "INBOX", UID: 20, Section: "1.2", Access: "submit+fred"},
		canon: "imap://joe@example.com/INBOX/;UID=20/;SECTION=1.2;URLAUTH=submit+fred",
	},
	{ // RFC 4467 (9), GENURLAUTH's answer and URLFETCH's argument
		in:    "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred:internal:91354a473744909de610943775f92038",
		want:  URL{Absolute: true, User: "joe", Host: "example.com", Mailbox: "INBOX", UID: 20, Section: "1.2", Access: "submit+fred", Mechanism: "INTERNAL", Token: "91354a473744909de610943775f92038"},
		canon: "imap://joe@example.com/INBOX/;UID=20/;SECTION=1.2;URLAUTH=submit+fred:INTERNAL:91354a473744909de610943775f92038",
	},
}

func TestRFCVectors(t *testing.T) {
	for _, v := range rfcVectors {
		u, err := Parse(v.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", v.in, err)
			continue
		}
		if !reflect.DeepEqual(*u, v.want) {
			t.Errorf("Parse(%q) = %+v, want %+v", v.in, *u, v.want)
		}
		if got := u.String(); got != v.canon {
			t.Errorf("String(%q) = %q, want %q", v.in, got, v.canon)
		}
		again, err := Parse(u.String())
		if err != nil || !reflect.DeepEqual(again, u) {
			t.Errorf("Parse(String(%q)) = %+v, %v; want %+v", v.in, again, err, u)
		}
	}
}

func TestRump(t *testing.T) {
	u, err := Parse("imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred:internal:91354a473744909de610943775f92038")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := u.Rump(), "imap://joe@example.com/INBOX/;UID=20/;SECTION=1.2;URLAUTH=submit+fred"; got != want {
		t.Errorf("Rump = %q, want %q", got, want)
	}
}

func TestExpire(t *testing.T) {
	u, err := Parse("imap://joe@example.com/INBOX/;UID=20;EXPIRE=2006-02-28T23:59:59z;URLAUTH=anonymous")
	if err != nil {
		t.Fatal(err)
	}
	if !u.Expire.Equal(time.Date(2006, 2, 28, 23, 59, 59, 0, time.UTC)) || u.Access != AccessAnonymous {
		t.Errorf("got %+v", u)
	}
	if got, want := u.String(), "imap://joe@example.com/INBOX/;UID=20;EXPIRE=2006-02-28T23:59:59Z;URLAUTH=anonymous"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestAccessKind(t *testing.T) {
	for access, want := range map[string][2]string{
		"submit+fred": {"submit", "fred"}, "user+fred": {"user", "fred"},
		"authuser": {"authuser", ""}, "anonymous": {"anonymous", ""},
	} {
		if k, u := AccessKind(access); k != want[0] || u != want[1] {
			t.Errorf("AccessKind(%q) = %q, %q", access, k, u)
		}
	}
}

func TestRefused(t *testing.T) {
	for _, in := range []string{
		"",
		"http://example.com/INBOX",
		"//example.com/INBOX",               // network-path: no base here
		";UID=20",                           // relative to a mailbox URL
		"imap://",                           // no host
		"imap://joe@/INBOX",                 // no host
		"imap://example.com:99999999/INBOX", // port
		"imap://example.com/INBOX;UID=20",   // no "/" before ;UID=
		"imap://example.com/INBOX/;UID=0",   // nz-number
		"imap://example.com/INBOX/;UID=4294967296",              // over 32 bits
		"imap://example.com/INBOX/;UID=020",                     // leading zero
		"imap://example.com/INBOX/;UID=20/;SECTION=",            // empty section
		"imap://example.com/INBOX/;UID=20/;SECTION=1;PARTIAL=1", // no "/"
		"imap://example.com/IN BOX",                             // space
		"imap://example.com/INBOX%2",                            // bad percent-encoding
		"imap://example.com/INBOX%zz",
		"imap://example.com/INBOX/;UID=20;URLAUTH=root",                  // access
		"imap://example.com/INBOX/;UID=20;URLAUTH=user+",                 // empty user
		"imap://example.com/INBOX/;UID=20;URLAUTH=anonymous:INTERNAL:00", // short token
		"imap://example.com/INBOX/;UID=20;URLAUTH=anonymous:INTERNAL",    // no token
		"imap://example.com/INBOX/;UID=20;URLAUTH=anonymous:INTERNAL:" + strings.Repeat("g", 32),
		"imap://example.com/INBOX/;UID=20;EXPIRE=tomorrow;URLAUTH=anonymous",
		"imap://example.com/INBOX/;UID=20;EXPIRE=2006-02-28T23:59:59Z",
		"imap://example.com/INBOX;URLAUTH=anonymous", // URLAUTH on a mailbox
		"imap://example.com/INBOX?",
		"/" + strings.Repeat("a", MaxLen),
	} {
		if u, err := Parse(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrSyntax", in, u, err)
		}
	}
}

func TestEncodeSpecials(t *testing.T) {
	u := &URL{Absolute: true, User: "a@b;c", Host: "Example.COM", Mailbox: "x;y?z%/w", UID: 7, Section: "HEADER.FIELDS (TO)", Access: "user+a b"}
	s := u.String()
	if want := "imap://a%40b%3Bc@example.com/x%3By%3Fz%25/w/;UID=7/;SECTION=HEADER.FIELDS%20(TO);URLAUTH=user+a%20b"; s != want {
		t.Fatalf("String = %q, want %q", s, want)
	}
	back, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "example.com"
	if !reflect.DeepEqual(back, u) {
		t.Errorf("round trip: %+v, want %+v", back, u)
	}
}

// FuzzParse checks that Parse never panics, that whatever it accepts
// prints in a form it reads back to the same URL, and that the canonical
// form is a fixed point.
func FuzzParse(f *testing.F) {
	for _, v := range rfcVectors {
		f.Add(v.in)
	}
	f.Add("imap://joe@example.com/INBOX/;UID=20;EXPIRE=2006-02-28T23:59:59+01:00;URLAUTH=anonymous")
	f.Add("imap://[::1]:143/a/b/;UID=1/;SECTION=1/;PARTIAL=5")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not wrap ErrSyntax", err)
			}
			return
		}
		c := u.String()
		if len(c) > 3*MaxLen+64 {
			t.Fatalf("canonical form of %d bytes", len(c))
		}
		back, err := Parse(c)
		if err != nil {
			if len(c) > MaxLen {
				return // percent-encoding grew it past the limit
			}
			t.Fatalf("Parse(String(%q)) = %v (canonical %q)", s, err, c)
		}
		if back.String() != c {
			t.Fatalf("canonical form not a fixed point: %q then %q", c, back.String())
		}
	})
}

func TestWireMailbox(t *testing.T) {
	for in, want := range map[string]string{
		"INBOX":         "INBOX",
		"~peter/日本語/台北": "~peter/&ZeVnLIqe-/&U,BTFw-", // RFC 3501 5.1.3's example
		"A&B":           "A&-B",
		"Entwürfe":      "Entw&APw-rfe",
	} {
		u := &URL{Mailbox: in}
		if got := u.WireMailbox(); got != want {
			t.Errorf("WireMailbox(%q) = %q, want %q", in, got, want)
		}
	}
}
