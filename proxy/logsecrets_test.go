package proxy_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// lockedBuffer is a bytes.Buffer safe for the server's goroutines to log
// into while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogsNeverHoldSecrets drives every way a password or a message reaches
// the proxy (LOGIN with a quoted and a literal password, AUTHENTICATE PLAIN
// with and without an initial response, failed logins both ways, APPEND,
// FETCH BODY[], an APPEND the upstream refuses, a command with a syntax
// error) with logging at DEBUG, and checks that none of the distinctive
// passwords and message words, nor their base64 forms, is in the log.
func TestLogsNeverHoldSecrets(t *testing.T) {
	t.Parallel()
	const (
		pass      = "Pw-7f3c1e-unique-alice"
		wrongPass = "Pw-93ab42-unique-wrong"
		litPass   = "Pw-c0ffee-unique-literal"
		bodyWord  = "Body-5e1d7a-unique-content"
		errWord   = "Body-a11b0c-unique-refused"
	)
	up := startUpstream(t, memupstream.Options{}, "alice", pass, "bob", litPass)
	var logs lockedBuffer
	cfg := baseConfig(up.Addr)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := startProxy(t, cfg)

	plain := func(user, pw string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pw))
	}
	sasl, wrongSASL := plain("alice", pass), plain("alice", wrongPass)

	// LOGIN with a quoted password; APPEND and FETCH BODY[] of a message;
	// an APPEND the upstream refuses; a command with a syntax error.
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a1", fmt.Sprintf("LOGIN alice %q", pass), "a1 OK [CAPABILITY *")
	msg := "From: alice@example.org\r\nSubject: " + bodyWord + "\r\n\r\n" + bodyWord + "\r\n"
	c.Send(fmt.Sprintf("a2 APPEND INBOX {%d}", len(msg)))
	c.Expect("+ *")
	c.Send(msg)
	c.Expect("a2 OK *")
	if got := c.Do("a3", "SELECT INBOX"); got[len(got)-1] != "a3 OK [READ-WRITE] SELECT completed" {
		t.Fatalf("SELECT INBOX: %q", got)
	}
	got := c.Do("a4", "FETCH 1 BODY[]") // not PEEK: the answer carries \Seen too
	if !strings.Contains(strings.Join(got, "\n"), "BODY[] {"+fmt.Sprint(len(msg))+"}\r\n"+msg+")") || got[len(got)-1] != "a4 OK FETCH completed" {
		t.Fatalf("FETCH 1 BODY[]: %q", got)
	}
	refused := "Subject: " + errWord + "\r\n\r\n" + errWord + "\r\n"
	c.WriteBytes(fmt.Appendf(nil, "a5 APPEND NoSuchMailbox {%d+}\r\n%s\r\n", len(refused), refused))
	c.Expect("a5 NO *")
	c.ExpectDo("a6", `SEARCH TEXT "`+errWord, "a6 BAD *")
	c.ExpectDo("a7", "LOGOUT", "* BYE*", "a7 OK*")

	// A wrong password, then AUTHENTICATE PLAIN with an initial response.
	c = imaptest.Dial(t, p.Addr)
	c.ExpectDo("b1", fmt.Sprintf("LOGIN alice %q", wrongPass), "b1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.ExpectDo("b2", "AUTHENTICATE PLAIN "+sasl, "b2 OK [CAPABILITY *")

	// AUTHENTICATE PLAIN without an initial response, wrong then right.
	c = imaptest.Dial(t, p.Addr)
	c.Send("c1 AUTHENTICATE PLAIN")
	c.Expect("+ ")
	c.Send(wrongSASL)
	c.Expect("c1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.Send("c2 AUTHENTICATE PLAIN")
	c.Expect("+ ")
	c.Send(sasl)
	c.Expect("c2 OK [CAPABILITY *")

	// A password in a synchronising literal.
	c = imaptest.Dial(t, p.Addr)
	c.Send(fmt.Sprintf("d1 LOGIN bob {%d}", len(litPass)))
	c.Expect("+ *")
	c.Send(litPass)
	c.Expect("d1 OK [CAPABILITY *")

	// Shut down so that every session has logged its end.
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	var secrets []string
	for _, s := range []string{pass, wrongPass, litPass, bodyWord, errWord} {
		secrets = append(secrets, s, base64.StdEncoding.EncodeToString([]byte(s)))
	}
	secrets = append(secrets, sasl, wrongSASL)
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("the log holds %q", s)
		}
	}
	// The log is not simply empty: the test would catch a leak.
	for _, want := range []string{`level=INFO msg="logged in" .*user=alice`, `msg="login failed" .*user=alice`,
		`msg="logged in" .*user=bob`, `level=DEBUG msg=command .*name=APPEND`, `msg=command .*name=FETCH`,
		`msg=command .*name=AUTHENTICATE`, `msg="session end"`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("the log lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", out)
	}
}
