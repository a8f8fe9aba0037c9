package webpush

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// segments reads a command's wire text, literals included, as the core
// reads it.
func segments(s string) []imapcodec.Segment {
	r := imapcodec.NewReader(strings.NewReader(s+"\r\n"), imapcodec.Limits{})
	segs, err := r.ReadSegments(nil)
	if err != nil {
		return nil
	}
	return segs
}

const (
	fuzzKey  = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	fuzzAuth = "BTBZMqHH6r4Tts7J_aSIgg"
)

// FuzzParseArgs: whatever a client sends, the parser neither panics nor
// accepts arguments beyond their bounds, and what it accepts, restated
// with quoted strings, parses to the same arguments.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"a GETVAPID", "a GETVAPID x", "a WEBPUSH id NIL", `a WEBPUSH "id" nil`,
		`a WEBPUSH "phone 1" "https://push.example.net/p/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV" ` + fuzzKey + " " + fuzzAuth,
		"a WEBPUSH {2+}\r\nid {30+}\r\nhttps://push.example.net/p/x?y " + fuzzKey + " {22+}\r\n" + fuzzAuth,
		"a ACKWEBPUSH id code", `a ACKWEBPUSH "i\"d" "c\\ode"`, "a WEBPUSH id (x)", "a WEBPUSH", "a ACKWEBPUSH id",
		"a WEBPUSH id \"https://h/x\" k a extra", "a WEBPUSH ((( NIL",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cmd, err := imapcodec.ParseCommand(segments(s), imapcodec.Limits{})
		if err != nil {
			return
		}
		a, err := parseArgs(cmd.Name, cmd.Args)
		if err != nil {
			if _, ok := err.(*invalidArg); !ok {
				t.Fatalf("%q: error %T %v", s, err, err)
			}
			return
		}
		if len(a.ID) > MaxIDLen || len(a.Endpoint) > MaxEndpointLen || len(a.P256dh) > maxKeyText || len(a.Auth) > maxKeyText || len(a.Code) > maxCodeLen {
			t.Fatalf("%q: over the bounds: %+v", s, a)
		}
		var again string
		q := func(v string) string {
			if imapcodec.CanQuote(v) {
				return string(imapcodec.AppendQuoted(nil, v))
			}
			return fmt.Sprintf("{%d+}\r\n%s", len(v), v)
		}
		switch {
		case cmd.Name == "GETVAPID":
			again = "t GETVAPID"
		case cmd.Name == "WEBPUSH" && a.Delete:
			again = "t WEBPUSH " + q(a.ID) + " NIL"
		case cmd.Name == "WEBPUSH":
			again = "t WEBPUSH " + q(a.ID) + " " + q(a.Endpoint) + " " + q(a.P256dh) + " " + q(a.Auth)
		case cmd.Name == "ACKWEBPUSH":
			again = "t ACKWEBPUSH " + q(a.ID) + " " + q(a.Code)
		default:
			t.Fatalf("%q: accepted command %s", s, cmd.Name)
		}
		cmd2, err := imapcodec.ParseCommand(segments(again), imapcodec.Limits{})
		if err != nil {
			t.Fatalf("%q restated %q: %v", s, again, err)
		}
		b, err := parseArgs(cmd2.Name, cmd2.Args)
		if err != nil || *a != *b {
			t.Fatalf("%q restated %q: %+v, was %+v (%v)", s, again, b, a, err)
		}
	})
}

// FuzzParseSubscription: what is accepted is a subscription the sender
// can push to: an https endpoint (or http on loopback), a point of the
// curve, a 16-byte secret; errors are BAD or NO, never a panic.
func FuzzParseSubscription(f *testing.F) {
	f.Add("id", "https://push.example.net/p/x", fuzzKey, fuzzAuth, false)
	f.Add("id", "http://127.0.0.1:8080/p", fuzzKey, fuzzAuth, true)
	f.Add("id", "http://[::1]/p", fuzzKey+"==", fuzzAuth+"==", true)
	f.Add("id", "https://u@h/", fuzzKey, fuzzAuth, false)
	f.Add("", "mailto:x@y", "AAAA", "", false)
	f.Fuzz(func(t *testing.T, id, endpoint, key, auth string, allowHTTP bool) {
		sub, err := parseSubscription(id, endpoint, key, auth, allowHTTP)
		if err != nil {
			switch err.(type) {
			case *invalidArg, *refused:
			default:
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		u, err := checkEndpoint(sub.Endpoint, allowHTTP)
		if err != nil {
			t.Fatalf("accepted %q, then %v", endpoint, err)
		}
		if s := strings.ToLower(u.Scheme); s != "https" && !(s == "http" && allowHTTP && isLoopback(u.Hostname())) {
			t.Fatalf("accepted %q", endpoint)
		}
		if len(sub.Auth) != 16 || len(sub.P256dh.Bytes()) != 65 || sub.ID == "" || len(sub.ID) > MaxIDLen {
			t.Fatalf("accepted %+v", sub)
		}
		rec := newRecord(sub, "k")
		back, err := decodeRecord(rec.encode())
		if err != nil || *back != *rec {
			t.Fatalf("record %+v back as %+v: %v", rec, back, err)
		}
		if _, _, err := back.subscription(); err != nil {
			t.Fatalf("record %+v: %v", back, err)
		}
	})
}
