package conformance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// selfSigned returns a TLS configuration with a fresh self-signed
// certificate for 127.0.0.1.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "conformance test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestSecurityModes runs two scenarios over implicit TLS and STARTTLS,
// and checks that an unverifiable certificate is refused without -insecure.
func TestSecurityModes(t *testing.T) {
	for _, mode := range []Security{ImplicitTLS, StartTLS} {
		t.Run(mode.String(), func(t *testing.T) {
			up, err := memupstream.Start(memupstream.Options{TLS: selfSigned(t), ImplicitTLS: mode == ImplicitTLS})
			if err != nil {
				t.Fatal(err)
			}
			defer up.Close()
			if err := up.AddUser("u", "p"); err != nil {
				t.Fatal(err)
			}
			cfg := Config{Target: Endpoint{Addr: up.Addr, Security: mode, Insecure: true}, User: "u", Pass: "p",
				Only: regexp.MustCompile(`^3501-(capability|noop-new-mail)$`), Timeout: 5 * time.Second}
			rep, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Passed != 2 || rep.Failed != 0 {
				t.Errorf("over %v: %s %+v", mode, rep.CountLine(), rep.Results)
			}
			cfg.Target.Insecure = false
			if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("self-signed certificate accepted without Insecure (err %v)", err)
			}
		})
	}
}

func TestParseResponse(t *testing.T) {
	parse := func(line string) *Response {
		return parseResponse([]imapcodec.Segment{{Text: []byte(line)}})
	}
	r := parse(`* 3 FETCH (UID 7 MODSEQ (12) FLAGS (\Seen \Flagged))`)
	f, ok := r.Fetch()
	if !ok || f.Seq != 3 {
		t.Fatalf("FETCH not parsed: %+v", r)
	}
	if u, _ := f.UID(); u != 7 {
		t.Errorf("UID %d", u)
	}
	if m, _ := f.Modseq(); m != 12 {
		t.Errorf("MODSEQ %d", m)
	}
	if !f.HasFlag(`\flagged`) || f.HasFlag(`\Deleted`) {
		t.Errorf("flags %v", f.Items["FLAGS"])
	}
	s, err := search([]*Response{parse("* SEARCH 2 5 (MODSEQ 917162500)")})
	if err != nil || len(s.Nums) != 2 || s.Modseq != 917162500 {
		t.Errorf("SEARCH: %+v %v", s, err)
	}
	earlier, uids, err := parse("* VANISHED (EARLIER) 1:3,7").vanished()
	if err != nil || !earlier || len(uids) != 4 || uids[3] != 7 {
		t.Errorf("VANISHED: %v %v %v", earlier, uids, err)
	}
	if _, _, err := parse("* VANISHED 1:999999999").vanished(); err == nil {
		t.Error("a huge VANISHED set was expanded")
	}
	d, err := parse(`* LIST () "/" "b" ("OLDNAME" ("a"))`).list()
	if err != nil || d.Name != "b" || d.OldName != "a" || d.Delim != "/" {
		t.Errorf("LIST: %+v %v", d, err)
	}
	if r := parse("C1 OK [MODIFIED 7,9] done"); r.Code != "MODIFIED" || r.CodeArg != "7,9" {
		t.Errorf("status: %+v", r)
	}
	if h, ok := codeNumber([]*Response{parse("* OK [HIGHESTMODSEQ 715] x")}, "HIGHESTMODSEQ"); !ok || h != 715 {
		t.Errorf("HIGHESTMODSEQ %d %v", h, ok)
	}
	if got := redact("C1 LOGIN alice secret"); strings.Contains(got, "secret") {
		t.Errorf("password in transcript: %q", got)
	}
}
