package push

import (
	"strings"
	"testing"
	"time"
)

func TestRecordsRoundTrip(t *testing.T) {
	reg := Registration{Channel: "webpush", ID: "abc", Data: []byte{0, 1, 2, 255}, Mailboxes: []string{"INBOX", "Work"}, Created: time.Unix(1765000000, 0).UTC()}
	got, err := decodeReg(encodeReg(reg))
	if err != nil || got.Channel != reg.Channel || got.ID != reg.ID || string(got.Data) != string(reg.Data) || len(got.Mailboxes) != 2 || !got.Created.Equal(reg.Created) {
		t.Fatalf("registration: %+v, %v", got, err)
	}
	p := pending{Event: Event{Mailbox: "INBOX", Messages: 3, New: 2, UIDNext: 9, At: time.Unix(1765000001, 5).UTC()}, First: time.Unix(1765000002, 0).UTC(), Attempts: 4}
	gp, err := decodePending(encodePending(p))
	if err != nil || gp.Event.Mailbox != "INBOX" || gp.New != 2 || gp.Messages != 3 || gp.UIDNext != 9 || !gp.At.Equal(p.At) || !gp.First.Equal(p.First) || gp.Attempts != 4 {
		t.Fatalf("pending: %+v, %v", gp, err)
	}
	if c, err := decodeCursor(encodeCursor(cursor{7, 42})); err != nil || c != (cursor{7, 42}) {
		t.Fatalf("cursor: %+v, %v", c, err)
	}
	ch, id, seq, ok := parsePendingKey(pendingKey("devicetoken", "x1", 0xabc)[len(pendingPrefix):])
	if !ok || ch != "devicetoken" || id != "x1" || seq != 0xabc {
		t.Fatalf("pending key: %q %q %x %v", ch, id, seq, ok)
	}
	if ch, id, ok := parseRegKey(regKey("devicetoken", "x1")[len(regPrefix):]); !ok || ch != "devicetoken" || id != "x1" {
		t.Fatalf("registration key: %q %q %v", ch, id, ok)
	}
	// Keys sort by sequence number.
	if pendingKey("c", "i", 9) >= pendingKey("c", "i", 10) || pendingKey("c", "i", 0xff) >= pendingKey("c", "i", 0x100) {
		t.Fatal("pending keys out of order")
	}
}

func TestCheckRegistration(t *testing.T) {
	ok := Registration{Channel: "devicetoken", ID: "0123abcd", Data: []byte("tok")}
	if err := checkRegistration(ok); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Registration{
		"no channel":      {ID: "x"},
		"channel case":    {Channel: "DeviceToken", ID: "x"},
		"channel NUL":     {Channel: "a\x00b", ID: "x"},
		"long channel":    {Channel: strings.Repeat("a", MaxChannelName+1), ID: "x"},
		"no ID":           {Channel: "c"},
		"ID with NUL":     {Channel: "c", ID: "a\x00b"},
		"ID with space":   {Channel: "c", ID: "a b"},
		"long ID":         {Channel: "c", ID: strings.Repeat("a", MaxID+1)},
		"big data":        {Channel: "c", ID: "x", Data: make([]byte, MaxData+1)},
		"empty mailbox":   {Channel: "c", ID: "x", Mailboxes: []string{""}},
		"mailbox CRLF":    {Channel: "c", ID: "x", Mailboxes: []string{"a\r\nb"}},
		"mailbox not utf": {Channel: "c", ID: "x", Mailboxes: []string{"\xff"}},
		"many mailboxes":  {Channel: "c", ID: "x", Mailboxes: make([]string, MaxMailboxes+1)},
	} {
		if err := checkRegistration(r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzRecords: no stored record, however damaged, makes a decoder panic,
// and what decodes is what checkRegistration accepts.
func FuzzRecords(f *testing.F) {
	f.Add(encodeReg(Registration{Channel: "devicetoken", ID: "abc", Data: []byte("tok"), Created: time.Unix(1, 0)}))
	f.Add(encodePending(pending{Event: Event{Mailbox: "INBOX", New: 1}, First: time.Unix(1, 0)}))
	f.Add(encodeCursor(cursor{1, 2}))
	f.Add([]byte(`{"channel":"a","id":"b","data":"!!"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeReg(b); err == nil {
			if err := checkRegistration(r); err != nil {
				t.Fatalf("decoded a registration that does not check: %v", err)
			}
		}
		decodePending(b)
		decodeCursor(b)
		parsePendingKey(string(b))
	})
}
