package upstream

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// testCA is a certificate authority made up for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lemonproxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// serverCert issues a certificate for 127.0.0.1.
func (ca *testCA) serverCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func startMem(t testing.TB, opt memupstream.Options) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		msg := fmt.Sprintf("Subject: m%d\r\n\r\nbody\r\n", i)
		if err := up.Append("alice", "INBOX", []imap.Flag{}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t testing.TB, cfg *Config) *Conn {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	c, err := Dial(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestParseSecurity(t *testing.T) {
	for in, want := range map[string]Security{"": SecurityNone, "none": SecurityNone, "STARTTLS": SecurityStartTLS, "starttls": SecurityStartTLS, "tls": SecurityTLS, "TLS": SecurityTLS} {
		got, err := ParseSecurity(in)
		if err != nil || got != want {
			t.Errorf("ParseSecurity(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseSecurity("ssl"); err == nil || !strings.Contains(err.Error(), `"ssl"`) {
		t.Errorf("ParseSecurity(ssl) error = %v; want one naming the value", err)
	}
}

func TestDialNone(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	c := dial(t, &Config{Addr: up.Addr, Security: SecurityNone})
	if _, ok := c.nc.(*tls.Conn); ok {
		t.Error("SecurityNone: connection is TLS")
	}
	for _, cap := range []string{"IMAP4rev1", "AUTH=PLAIN", "SASL-IR"} {
		if !c.Caps().Has(cap) {
			t.Errorf("caps %v lack %s", c.Caps(), cap)
		}
	}
	if c.Caps().Has("STARTTLS") {
		t.Errorf("caps %v offer STARTTLS on a server without TLS", c.Caps())
	}
	if _, err := c.Exec(testCtx(t), "NOOP", nil); err != nil {
		t.Fatalf("NOOP: %v", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(testCtx(t), &Config{Addr: addr, Timeout: 2 * time.Second})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Dial to a closed port: %v; want ErrUnavailable", err)
	}
}

func TestDialTLS(t *testing.T) {
	ca := newTestCA(t)
	up := startMem(t, memupstream.Options{
		TLS:         &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}},
		ImplicitTLS: true,
	})
	c := dial(t, &Config{Addr: up.Addr, Security: SecurityTLS, TLS: &tls.Config{RootCAs: ca.pool}})
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		t.Fatalf("SecurityTLS: connection is %T, not TLS", c.nc)
	}
	// Verified against the host of Addr (an IP address: no SNI is sent).
	if len(tc.ConnectionState().VerifiedChains) == 0 {
		t.Error("certificate not verified")
	}
	if _, err := c.Login(testCtx(t), "alice", "secret"); err != nil {
		t.Fatalf("Login over TLS: %v", err)
	}
}

func TestDialTLSWrongCA(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	up := startMem(t, memupstream.Options{
		TLS:         &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}},
		ImplicitTLS: true,
	})
	_, err := Dial(testCtx(t), &Config{Addr: up.Addr, Security: SecurityTLS, TLS: &tls.Config{RootCAs: other.pool}, Timeout: 5 * time.Second})
	if err == nil {
		t.Fatal("Dial succeeded with a CA that did not sign the server's certificate")
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("error %v does not wrap ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", err)
	}
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Errorf("error %v does not wrap x509.UnknownAuthorityError", err)
	}
}

// TestDialTLSServerName checks that an explicit ServerName is verified
// instead of the host of Addr.
func TestDialTLSServerName(t *testing.T) {
	ca := newTestCA(t)
	up := startMem(t, memupstream.Options{
		TLS:         &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}},
		ImplicitTLS: true,
	})
	_, err := Dial(testCtx(t), &Config{Addr: up.Addr, Security: SecurityTLS, TLS: &tls.Config{RootCAs: ca.pool, ServerName: "imap.example.org"}, Timeout: 5 * time.Second})
	var he x509.HostnameError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &he) || he.Host != "imap.example.org" {
		t.Fatalf("Dial with ServerName imap.example.org to a 127.0.0.1 certificate: %v; want a HostnameError for imap.example.org", err)
	}
}

// TestDialTLSDoesNotMutateConfig checks that Dial fills ServerName and
// MinVersion in a copy, not in the caller's config shared by every Dial.
func TestDialTLSDoesNotMutateConfig(t *testing.T) {
	ca := newTestCA(t)
	up := startMem(t, memupstream.Options{
		TLS:         &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}},
		ImplicitTLS: true,
	})
	tc := &tls.Config{RootCAs: ca.pool}
	dial(t, &Config{Addr: up.Addr, Security: SecurityTLS, TLS: tc})
	if tc.ServerName != "" || tc.MinVersion != 0 {
		t.Errorf("caller's tls.Config changed: ServerName %q MinVersion %x", tc.ServerName, tc.MinVersion)
	}
}

func TestDialStartTLS(t *testing.T) {
	ca := newTestCA(t)
	up := startMem(t, memupstream.Options{TLS: &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}}})

	// The server offers STARTTLS before it.
	plain := dial(t, &Config{Addr: up.Addr})
	if !plain.Caps().Has("STARTTLS") {
		t.Fatalf("memupstream with TLS does not offer STARTTLS: %v", plain.Caps())
	}

	c := dial(t, &Config{Addr: up.Addr, Security: SecurityStartTLS, TLS: &tls.Config{RootCAs: ca.pool}})
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		t.Fatalf("SecurityStartTLS: connection is %T, not TLS", c.nc)
	}
	if len(tc.ConnectionState().VerifiedChains) == 0 {
		t.Error("certificate not verified")
	}
	// Capabilities were learnt again over TLS.
	if c.Caps().Has("STARTTLS") {
		t.Errorf("caps after STARTTLS still offer STARTTLS (not refreshed): %v", c.Caps())
	}
	if !c.Caps().Has("AUTH=PLAIN") {
		t.Errorf("caps after STARTTLS lack AUTH=PLAIN: %v", c.Caps())
	}
	if _, err := c.Login(testCtx(t), "alice", "secret"); err != nil {
		t.Fatalf("Login after STARTTLS: %v", err)
	}
}

func TestDialStartTLSWrongCA(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	up := startMem(t, memupstream.Options{TLS: &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}}})
	_, err := Dial(testCtx(t), &Config{Addr: up.Addr, Security: SecurityStartTLS, TLS: &tls.Config{RootCAs: other.pool}, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Dial with the wrong CA: %v; want ErrUnavailable mentioning the certificate", err)
	}
}

func TestDialStartTLSNotOffered(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	_, err := Dial(testCtx(t), &Config{Addr: up.Addr, Security: SecurityStartTLS, Timeout: 5 * time.Second})
	if err == nil {
		t.Fatal("Dial with STARTTLS succeeded against a server that does not offer it")
	}
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "does not offer STARTTLS") {
		t.Fatalf("error = %v; want ErrUnavailable saying STARTTLS is not offered", err)
	}
}

// fakeServer is a raw-TCP IMAP server answering one connection from a
// script, recording the commands it receives (without tags).
type fakeServer struct {
	Addr string
	mu   sync.Mutex
	cmds []string
	done chan struct{}
}

// startFake writes greeting, then answers each command line with
// reply(tag, command) in a single write. An empty reply closes the
// connection. Bytes that are not a whole line are recorded as "PARTIAL:...".
func startFake(t testing.TB, greeting string, reply func(tag, cmd string) string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{Addr: ln.Addr().String(), done: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		defer close(f.done)
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Write([]byte(greeting)); err != nil {
			return
		}
		br := bufio.NewReader(nc)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if line != "" {
					f.record(fmt.Sprintf("PARTIAL:%q", line))
				}
				return
			}
			line = strings.TrimRight(line, "\r\n")
			tag, cmd, _ := strings.Cut(line, " ")
			f.record(cmd)
			out := reply(tag, cmd)
			if out == "" {
				return
			}
			if _, err := nc.Write([]byte(out)); err != nil {
				return
			}
		}
	}()
	return f
}

func (f *fakeServer) record(cmd string) {
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.mu.Unlock()
}

// commands waits for the connection to end and returns what it received.
func (f *fakeServer) commands(t testing.TB) []string {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("fake server: connection still open")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cmds)
}

// basicReply answers CAPABILITY, LOGOUT and, with OK, anything else.
func basicReply(caps string) func(tag, cmd string) string {
	return func(tag, cmd string) string {
		switch strings.ToUpper(verb(cmd)) {
		case "CAPABILITY":
			return "* CAPABILITY " + caps + "\r\n" + tag + " OK done\r\n"
		case "LOGOUT":
			return "* BYE bye\r\n" + tag + " OK done\r\n"
		}
		return tag + " OK done\r\n"
	}
}

func TestDialStartTLSInjection(t *testing.T) {
	const caps = "IMAP4rev1 STARTTLS AUTH=PLAIN"
	f := startFake(t, "* OK [CAPABILITY "+caps+"] hello\r\n", func(tag, cmd string) string {
		if cmd == "STARTTLS" {
			// The tagged OK and an injected response in one segment.
			return tag + " OK Begin TLS\r\n* OK injected\r\n"
		}
		return basicReply(caps)(tag, cmd)
	})
	_, err := Dial(testCtx(t), &Config{Addr: f.Addr, Security: SecurityStartTLS, TLS: &tls.Config{}, Timeout: 5 * time.Second})
	if err == nil {
		t.Fatal("Dial accepted plaintext sent after the STARTTLS OK")
	}
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "possible injection") {
		t.Errorf("error = %v; want ErrUnavailable reporting a possible injection", err)
	}
	if !strings.Contains(err.Error(), "sent 15 bytes after the STARTTLS response") {
		t.Errorf("error = %v; want it to count the 15 injected bytes", err)
	}
	// The client closed without starting a TLS handshake: no ClientHello.
	if got, want := f.commands(t), []string{"CAPABILITY", "STARTTLS"}; !slices.Equal(got, want) {
		t.Errorf("server received %q; want %q and then nothing (no TLS handshake)", got, want)
	}
}

func TestDialGreeting(t *testing.T) {
	for _, tc := range []struct {
		name, greeting string
		want           []string
	}{
		{"preauth", "* PREAUTH [CAPABILITY IMAP4rev1] welcome back\r\n", []string{"PREAUTH"}},
		{"bye", "* BYE [UNAVAILABLE] too busy\r\n", []string{"refused", "BYE", "too busy"}},
		{"tagged", "a1 OK what\r\n", []string{"bad greeting"}},
		{"garbage", "HTTP/1.1 400 Bad Request\r\n", []string{"bad greeting"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, tc.greeting, basicReply("IMAP4rev1"))
			_, err := Dial(testCtx(t), &Config{Addr: f.Addr, Timeout: 5 * time.Second})
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("error %v does not wrap ErrUnavailable", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if got := f.commands(t); len(got) != 0 {
				t.Errorf("Dial sent %q after a refused greeting", got)
			}
		})
	}
}

func TestDialGreetingTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			defer nc.Close()
			<-quit // never greets
		}
	}()
	start := time.Now()
	_, err = Dial(testCtx(t), &Config{Addr: ln.Addr().String(), Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Dial to a silent server: %v; want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %v with a 200ms timeout", d)
	}
}

func TestLogin(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	c := dial(t, &Config{Addr: up.Addr})
	if c.Caps().Has("UNSELECT") {
		t.Fatalf("caps before login already list UNSELECT: %v", c.Caps())
	}
	if _, err := c.Login(testCtx(t), "alice", "secret"); err != nil {
		t.Fatalf("Login: %v", err)
	}
	// Capabilities were learnt again after login.
	if !c.Caps().Has("UNSELECT") || !c.Caps().Has("NAMESPACE") {
		t.Errorf("caps after login not refreshed: %v", c.Caps())
	}
	if _, err := c.Exec(testCtx(t), "NOOP", nil); err != nil {
		t.Fatalf("NOOP after login: %v", err)
	}
}

func TestLoginWrongPassword(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	c := dial(t, &Config{Addr: up.Addr})
	_, err := c.Login(testCtx(t), "alice", "wrong")
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Login with a wrong password: %v; want ErrAuthFailed", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("a rejected login also wraps ErrUnavailable: %v", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("error %q contains the password", err)
	}
	if c.Broken() {
		t.Error("connection marked broken after a NO")
	}
	// The same connection can try again.
	if _, err := c.Login(testCtx(t), "alice", "secret"); err != nil {
		t.Fatalf("second Login: %v", err)
	}
}

// TestLoginCommand checks the command Login picks: LOGIN with quoted
// strings without AUTH=PLAIN/SASL-IR, AUTHENTICATE PLAIN with an initial
// response otherwise, and nothing when LOGINDISABLED leaves no way.
func TestLoginCommand(t *testing.T) {
	for _, tc := range []struct {
		caps, want string
		wantErr    error
	}{
		{"IMAP4rev1", `LOGIN "bob" "p w\"d"`, nil},
		{"IMAP4rev1 AUTH=PLAIN SASL-IR", "AUTHENTICATE PLAIN AGJvYgBwIHciZA==", nil},
		{"IMAP4rev1 AUTH=PLAIN", `LOGIN "bob" "p w\"d"`, nil},
		{"IMAP4rev1 LOGINDISABLED", "", ErrUnavailable},
	} {
		t.Run(tc.caps, func(t *testing.T) {
			f := startFake(t, "* OK [CAPABILITY "+tc.caps+"] hi\r\n", basicReply(tc.caps))
			c := dial(t, &Config{Addr: f.Addr})
			_, err := c.Login(testCtx(t), "bob", `p w"d`)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Login: %v; want %v", err, tc.wantErr)
			}
			c.Close()
			got := f.commands(t)
			if tc.want == "" {
				if len(got) != 0 {
					t.Errorf("sent %q", got)
				}
				return
			}
			if len(got) != 2 || got[0] != tc.want || got[1] != "CAPABILITY" {
				t.Errorf("sent %q; want [%q CAPABILITY]", got, tc.want)
			}
		})
	}
}

func TestSelectUnselect(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	c := dial(t, &Config{Addr: up.Addr})
	ctx := testCtx(t)
	if _, err := c.Login(ctx, "alice", "secret"); err != nil {
		t.Fatal(err)
	}
	var untagged []string
	collect := func(r *Response) { untagged = append(untagged, string(r.Segments[0].Text)) }

	if err := c.Select(ctx, "INBOX", false, collect); err != nil {
		t.Fatalf("Select: %v", err)
	}
	if c.Selected != "INBOX" || c.ReadOnly {
		t.Errorf("after SELECT: Selected %q ReadOnly %v", c.Selected, c.ReadOnly)
	}
	if !slices.Contains(untagged, "* 2 EXISTS") {
		t.Errorf("SELECT untagged responses %q lack * 2 EXISTS", untagged)
	}

	// Selecting the same mailbox the same way sends nothing, and keeps
	// the lessee's marks of how far the connection has seen it.
	c.SyncedTo, c.SyncedUID = 7, 2
	seq := c.tagSeq.Load()
	untagged = nil
	if err := c.Select(ctx, "INBOX", false, collect); err != nil {
		t.Fatal(err)
	}
	if c.tagSeq.Load() != seq || len(untagged) != 0 {
		t.Error("re-selecting the selected mailbox sent a command")
	}
	if c.SyncedTo != 7 || c.SyncedUID != 2 {
		t.Errorf("re-selecting changed the marks: %d, %d", c.SyncedTo, c.SyncedUID)
	}

	// Read-only needs EXAMINE; the marks, of the mailbox as selected
	// before, are gone (the proxy's mod-sequences of one mailbox mean
	// nothing for another).
	if err := c.Select(ctx, "INBOX", true, collect); err != nil {
		t.Fatalf("Examine: %v", err)
	}
	if c.Selected != "INBOX" || !c.ReadOnly {
		t.Errorf("after EXAMINE: Selected %q ReadOnly %v", c.Selected, c.ReadOnly)
	}
	if c.SyncedTo != 0 || c.SyncedUID != 0 {
		t.Errorf("after EXAMINE: marks %d, %d, want none", c.SyncedTo, c.SyncedUID)
	}
	c.SyncedTo, c.SyncedUID = 7, 2

	// A failed SELECT leaves no mailbox selected.
	err := c.Select(ctx, "NoSuchBox", false, nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Command != "SELECT" || se.Head.Name != "NO" {
		t.Errorf("SELECT of a missing mailbox: %v; want a StatusError NO to SELECT", err)
	}
	if c.Selected != "" {
		t.Errorf("after a failed SELECT: Selected %q", c.Selected)
	}

	if err := c.Select(ctx, "INBOX", false, nil); err != nil {
		t.Fatal(err)
	}
	c.SyncedTo, c.SyncedUID = 7, 2
	// Select("") is Unselect; UNSELECT is offered by the server.
	if err := c.Select(ctx, "", false, nil); err != nil {
		t.Fatalf("Unselect: %v", err)
	}
	if c.Selected != "" || c.SyncedTo != 0 || c.SyncedUID != 0 {
		t.Errorf("after Unselect: Selected %q, marks %d, %d", c.Selected, c.SyncedTo, c.SyncedUID)
	}
	// The server agrees: a command needing a selected mailbox fails.
	if _, err := c.Exec(ctx, "NOOP", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "FETCH 1 FLAGS", nil); err == nil {
		t.Error("FETCH succeeded after Unselect: the server still has a mailbox selected")
	}
	// Unselect with nothing selected sends nothing.
	seq = c.tagSeq.Load()
	if err := c.Unselect(ctx); err != nil || c.tagSeq.Load() != seq {
		t.Errorf("Unselect with nothing selected: err %v, sent a command: %v", err, c.tagSeq.Load() != seq)
	}
}

// rfcServer answers like a server that follows RFC 3501 6.3.1 on a failed
// SELECT or EXAMINE (no mailbox selected after it) and has the mailboxes
// in exists (and none else); keeps, if set, is one that keeps the selected
// mailbox when the EXAMINE fails instead.
func rfcServer(caps string, exists map[string]bool, keeps bool) func(tag, cmd string) string {
	selected := ""
	return func(tag, cmd string) string {
		v, arg, _ := strings.Cut(cmd, " ")
		switch v {
		case "SELECT", "EXAMINE":
			if !exists[arg] {
				if !keeps {
					selected = ""
				}
				return tag + " NO [NONEXISTENT] Mailbox doesn't exist: " + arg + "\r\n"
			}
			selected = arg
		case "CLOSE":
			if selected == "" {
				return tag + " BAD No mailbox selected.\r\n"
			}
			selected = ""
		case "UID":
			if selected == "" {
				return tag + " BAD No mailbox selected.\r\n"
			}
		}
		return basicReply(caps)(tag, cmd)
	}
}

// TestUnselectEmulation checks how a connection leaves the selected state
// on a server without UNSELECT (go-imap's imapserver always advertises
// UNSELECT after login, so these use a raw fake server): an EXAMINE of a
// mailbox that does not exist, and a UID FETCH that finds no mailbox
// selected; never the selected mailbox opened again (a full sync behind
// its locks on Dovecot), never a CLOSE of a read-write mailbox.
func TestUnselectEmulation(t *testing.T) {
	const caps = "IMAP4rev1 AUTH=PLAIN SASL-IR"
	probe := "EXAMINE " + unselectName
	check := "UID FETCH 4294967295 (UID)"
	for _, tc := range []struct {
		name   string
		exists map[string]bool
		keeps  bool
		want   []string
	}{
		{"rfc", map[string]bool{"x": true, "y": true}, false,
			[]string{"SELECT x", probe, check, "EXAMINE y", probe, check}},
		// The probe's name exists: it is opened read-only and closed.
		{"probe exists", map[string]bool{"x": true, "y": true, unselectName: true}, false,
			[]string{"SELECT x", probe, "CLOSE", "EXAMINE y", probe, "CLOSE"}},
		// A server that keeps the mailbox selected after the failed
		// EXAMINE: the mailbox is examined again and closed, read-only;
		// the connection remembers, and probes that server no more.
		{"server keeps it", map[string]bool{"x": true, "y": true}, true,
			[]string{"SELECT x", probe, check, "EXAMINE x", "CLOSE", "EXAMINE y", "CLOSE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, "* OK [CAPABILITY "+caps+"] hi\r\n", rfcServer(caps, tc.exists, tc.keeps))
			c := dial(t, &Config{Addr: f.Addr})
			ctx := testCtx(t)
			for _, ro := range []bool{false, true} {
				name := map[bool]string{false: "x", true: "y"}[ro]
				if err := c.Select(ctx, name, ro, nil); err != nil {
					t.Fatal(err)
				}
				c.SyncedTo, c.SyncedUID = 5, 6
				if err := c.Unselect(ctx); err != nil {
					t.Fatalf("Unselect of %s: %v", name, err)
				}
				if c.Selected != "" || c.SyncedTo != 0 || c.SyncedUID != 0 {
					t.Errorf("after Unselect of %s: Selected %q, marks %d, %d", name, c.Selected, c.SyncedTo, c.SyncedUID)
				}
			}
			c.Close()
			if got := f.commands(t); !slices.Equal(got, tc.want) {
				t.Errorf("server received %q; want %q", got, tc.want)
			}
		})
	}
}

// TestUnselectEmulationExamineFails checks that when the server kept the
// mailbox selected and its EXAMINE then fails, no CLOSE follows (CLOSE on
// the read-write mailbox would expunge) and no mailbox is left recorded
// as selected; and that a BAD to the probe (a server that refuses the
// command: its state is not known) is an error with nothing sent after it.
func TestUnselectEmulationExamineFails(t *testing.T) {
	const caps = "IMAP4rev1"
	for _, tc := range []struct {
		name  string
		reply func(tag, cmd string) string
		want  []string
	}{
		{"examine again fails", func(tag, cmd string) string {
			if strings.HasPrefix(cmd, "EXAMINE") {
				return tag + " NO gone\r\n"
			}
			return basicReply(caps)(tag, cmd)
		}, []string{"SELECT x", "EXAMINE " + unselectName, "UID FETCH 4294967295 (UID)", "EXAMINE x"}},
		{"probe refused", func(tag, cmd string) string {
			if strings.HasPrefix(cmd, "EXAMINE") {
				return tag + " BAD what\r\n"
			}
			return basicReply(caps)(tag, cmd)
		}, []string{"SELECT x", "EXAMINE " + unselectName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, "* OK [CAPABILITY "+caps+"] hi\r\n", tc.reply)
			c := dial(t, &Config{Addr: f.Addr})
			ctx := testCtx(t)
			if err := c.Select(ctx, "x", false, nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Unselect(ctx); err == nil {
				t.Fatal("Unselect succeeded")
			}
			if c.Selected != "" {
				t.Errorf("Selected = %q after a failed Unselect", c.Selected)
			}
			c.Close()
			if got := f.commands(t); !slices.Equal(got, tc.want) {
				t.Errorf("server received %q; want %q", got, tc.want)
			}
		})
	}
}

func TestSelectQuotesMailbox(t *testing.T) {
	const caps = "IMAP4rev1"
	f := startFake(t, "* OK [CAPABILITY "+caps+"] hi\r\n", basicReply(caps))
	c := dial(t, &Config{Addr: f.Addr})
	ctx := testCtx(t)
	if err := c.Select(ctx, "My Box", true, nil); err != nil {
		t.Fatal(err)
	}
	// A name needing a literal is refused without LITERAL+.
	if err := c.Select(ctx, "a\x00b", false, nil); err == nil || !strings.Contains(err.Error(), "LITERAL+") {
		t.Errorf("Select of a name needing a literal without LITERAL+: %v", err)
	}
	c.Close()
	if got, want := f.commands(t), []string{`EXAMINE "My Box"`}; !slices.Equal(got, want) {
		t.Errorf("server received %q; want %q", got, want)
	}
}

func TestExecErrors(t *testing.T) {
	f := startFake(t, "* OK [CAPABILITY IMAP4rev1] hi\r\n", func(tag, cmd string) string {
		switch cmd {
		case "BAD":
			return tag + " BAD no such command\r\n"
		case "CONT":
			return "+ go on\r\n"
		}
		return basicReply("IMAP4rev1")(tag, cmd)
	})
	c := dial(t, &Config{Addr: f.Addr})
	ctx := testCtx(t)
	_, err := c.Exec(ctx, "BAD", nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Head.Name != "BAD" || se.Command != "BAD" {
		t.Fatalf("Exec(BAD) = %v; want a StatusError", err)
	}
	if c.Broken() {
		t.Error("a BAD answer marked the connection broken")
	}
	_, err = c.Exec(ctx, "CONT", nil)
	if !errors.Is(err, ErrClosed) || !c.Broken() {
		t.Fatalf("Exec answered by a continuation: %v, broken %v; want ErrClosed and broken", err, c.Broken())
	}
	if _, err := c.Exec(ctx, "NOOP", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Exec on a broken connection: %v; want ErrClosed", err)
	}
}

func TestNextTagUnique(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	a := dial(t, &Config{Addr: up.Addr})
	b := dial(t, &Config{Addr: up.Addr})
	seen := map[string]bool{}
	for range 100 {
		for _, c := range []*Conn{a, b} {
			tag := c.NextTag()
			if seen[tag] {
				t.Fatalf("tag %s used twice", tag)
			}
			seen[tag] = true
		}
	}
}

// TestConfigLimitsDefaults: a Config's zero limits are an upstream's
// defaults (16 MiB lines: a SEARCH of a large mailbox is one line; 1 TiB
// literals: bodies stream), far above a client's; set ones are kept.
func TestConfigLimitsDefaults(t *testing.T) {
	l := (&Config{}).limits()
	if l.MaxLine != DefaultMaxLine || l.MaxLiteral != DefaultMaxLiteral || DefaultMaxLine != 16<<20 || DefaultMaxLiteral != 1<<40 {
		t.Fatalf("zero Config's limits: line %d, literal %d", l.MaxLine, l.MaxLiteral)
	}
	c := Config{}
	c.Limits.MaxLine, c.Limits.MaxLiteral = 1000, 2000
	if l := c.limits(); l.MaxLine != 1000 || l.MaxLiteral != 2000 {
		t.Fatalf("set limits: line %d, literal %d", l.MaxLine, l.MaxLiteral)
	}
}
