package condstore_test

import (
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestSmoke(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser("alice", "secret")
	for i := 0; i < 3; i++ {
		up.Append("alice", "INBOX", nil, []byte("Subject: x\r\n\r\nhi\r\n"))
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{idle.New(), condstore.New()}})
	c := imaptest.Login(t, p.Addr, "alice", "secret")
	for _, cmd := range []string{"CAPABILITY", "ENABLE QRESYNC", "SELECT INBOX", "STORE 1 +FLAGS (\\Seen)", "FETCH 1:* (FLAGS) (CHANGEDSINCE 3)",
		"STORE 2 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)", "STORE 2 (UNCHANGEDSINCE 10) +FLAGS.SILENT (\\Flagged)", "UID SEARCH MODSEQ 4", "SEARCH MODSEQ 1", "STATUS INBOX (HIGHESTMODSEQ)", "STATUS INBOX (MESSAGES HIGHESTMODSEQ)",
		"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)", "STORE 3 +FLAGS (\\Deleted)", "EXPUNGE", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4 VANISHED)", "SELECT INBOX (QRESYNC (1 4 1:5))", "FETCH 1 (MODSEQ)"} {
		for _, l := range c.Cmd(cmd) {
			t.Logf("%s -> %s", cmd, l)
		}
	}
	_ = imap.CapIdle
}
