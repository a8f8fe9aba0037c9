package proxy_test

import (
	"fmt"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// TestRecentAppended: go-imap's server has no \Recent (it always says
// "* 0 RECENT"); messages appended through the proxy before anybody
// watched the mailbox are new all the same (their APPENDUID tells the
// hub), and recent in the first session that selects it; a message
// appended behind the proxy's back while nobody watched is not (the
// upstream's word decides, and it has none).
func TestRecentAppended(t *testing.T) {
	t.Parallel()
	up, p := newMemProxy(t)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.MustOK("CREATE Box")
	for i := range 2 {
		msg := testMessage(fmt.Sprint("m", i), 100)
		c.WriteBytes(fmt.Appendf(nil, "a%d APPEND Box {%d+}\r\n%s\r\n", i, len(msg), msg))
		c.Expect(fmt.Sprintf("a%d OK [APPENDUID 2 %d] APPEND completed", i, i+1)) // Box is the second mailbox
	}
	if err := up.Append("alice", "INBOX", nil, testMessage("outside", 100)); err != nil {
		t.Fatal(err)
	}
	c.ExpectDo("s", "SELECT Box", "* 2 EXISTS", "* 2 RECENT", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	c.ExpectDo("f", "FETCH 1:2 (FLAGS)", `* 1 FETCH (FLAGS (\Recent))`, `* 2 FETCH (FLAGS (\Recent))`, "f OK FETCH completed")
	c.ExpectDo("i", "SELECT INBOX", "* 1 EXISTS", "* 0 RECENT", "*", "*", "*", "*", "*", "i OK [READ-WRITE] *")
	d := imaptest.Dial(t, p.Addr)
	d.LoginTagged("alice", "secret")
	d.ExpectDo("s", "SELECT Box", "* 2 EXISTS", "* 0 RECENT", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
}
