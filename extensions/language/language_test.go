package language_test

import (
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/language"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLanguage: RFC 5255 section 3.3's examples with the one language
// i-default, before and after login.
func TestLanguage(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{language.New()}})
	c := imaptest.Dial(t, p.Addr)
	c.MustGreetOK()
	if caps := c.Cmd("CAPABILITY")[0]; !strings.Contains(caps, " LANGUAGE") {
		t.Errorf("capabilities before login: %q", caps)
	}
	c.ExpectDo("B001", "LANGUAGE", "* LANGUAGE (i-default)", "B001 OK *")
	c.ExpectDo("A002", "LANGUAGE MUL", "A002 NO *")
	c.LoginTagged("alice", "secret")
	for _, tc := range []struct{ args, want string }{
		{"LANGUAGE", "* LANGUAGE (i-default)"},
		{"LANGUAGE i-default", "* LANGUAGE (i-default)"},
		{"LANGUAGE DE EN I-DEFAULT", "* LANGUAGE (i-default)"},
		{"LANGUAGE default", "* LANGUAGE (i-default)"},
		{`LANGUAGE "*"`, "* LANGUAGE (i-default)"},
	} {
		c.ExpectDo("t", tc.args, tc.want, "t OK *")
	}
	c.ExpectDo("D001", "LANGUAGE FR", "D001 NO *")
	c.ExpectDo("D002", "LANGUAGE DE-IT", "D002 NO *")
	c.ExpectDo("x", "LANGUAGE (EN)", "x BAD *")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("y", "LANGUAGE i-default", "* LANGUAGE (i-default)", "y OK *")
}
