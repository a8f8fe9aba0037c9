package push

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
)

func TestWriteList(t *testing.T) {
	s := accountdata.NewMemory()
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	a, b := "imap.example:143\x00alice", "imap.example:143\x00bob"
	accountdata.Put(s, a, regKey("devicetoken", "d1"), encodeReg(Registration{Channel: "devicetoken", ID: "d1", Data: []byte("secret-token"), Created: at}))
	accountdata.Put(s, a, regKey("webpush", "w1"), encodeReg(Registration{Channel: "webpush", ID: "w1", Data: []byte("{}"), Mailboxes: []string{"INBOX", "Chats"}, Created: at}))
	accountdata.Put(s, a, pendingKey("devicetoken", "d1", 1), encodePending(pending{Event: Event{Mailbox: "INBOX"}, First: at}))
	accountdata.Put(s, a, credKey, []byte("sealed"))
	accountdata.Put(s, b, regKey("devicetoken", "d2"), []byte("{damaged"))
	accountdata.Put(s, "other\x00carol", "metadata/x", []byte("not push's"))
	var out bytes.Buffer
	if err := WriteList(&out, s, false); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		`"alice"  imap.example:143  devicetoken  d1  2026-12-06T10:00:00Z  default      1        sealed  (12 bytes)`,
		`"alice"  imap.example:143  webpush      w1  2026-12-06T10:00:00Z  INBOX,Chats  0        sealed  (2 bytes)`,
		`"bob"    imap.example:143  "devicetoken"  "d2"  UNREADABLE`,
	} {
		if !strings.Contains(strings.Join(strings.Fields(got), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("list lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "secret-token") || strings.Contains(got, "carol") {
		t.Errorf("list shows what it should not:\n%s", got)
	}
	out.Reset()
	WriteList(&out, s, true)
	if !strings.Contains(out.String(), `"secret-token"`) {
		t.Errorf("-show-data: %s", out.String())
	}
}
