package proxy

import (
	"errors"
	"slices"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// The view of RFC 3501's examples style: five messages the client knows,
// with gaps where messages were expunged.
var testView = seqView{3, 5, 9, 10, 20}

func TestSeqViewUIDSet(t *testing.T) {
	for _, tt := range []struct {
		seqs, uids string
	}{
		{"1", "3"},
		{"2:4", "5:10"},
		{"4:2", "5:10"},
		{"*", "20"},
		{"3:*", "9:20"},
		{"*:4", "10:20"},
		{"1,3,5", "3,9,20"},
		{"1:2,4:5", "3:5,10:20"},
		{"1:5", "3:20"},
	} {
		set, err := imapcodec.ParseNumSet(tt.seqs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := testView.uidSet(set)
		if err != nil || got.String() != tt.uids {
			t.Errorf("uidSet(%s) = %v, %v; want %s", tt.seqs, got, err, tt.uids)
		}
	}
	for _, bad := range []string{"6", "1:6", "6:*"} {
		set, _ := imapcodec.ParseNumSet(bad)
		if _, err := testView.uidSet(set); !errors.Is(err, errInvalidSeq) {
			t.Errorf("uidSet(%s): %v, want errInvalidSeq (beyond the client's last message)", bad, err)
		}
	}
	star, _ := imapcodec.ParseNumSet("*")
	if _, err := seqView(nil).uidSet(star); !errors.Is(err, errInvalidSeq) {
		t.Errorf("* in an empty mailbox: %v, want errInvalidSeq", err)
	}
}

func TestSeqViewSeqSet(t *testing.T) {
	for _, tt := range []struct {
		uids, seqs string
	}{
		{"3", "1"},
		{"4", ""},
		{"1:100", "1:5"},
		{"6:9", "3"},
		{"9:10,20", "3:5"},
		{"10:*", "4:5"},
		{"3,20", "1,5"},
	} {
		set, err := imapcodec.ParseUIDSet(tt.uids)
		if err != nil {
			t.Fatal(err)
		}
		if got := testView.seqSet(set).String(); got != tt.seqs {
			t.Errorf("seqSet(%s) = %q, want %q", tt.uids, got, tt.seqs)
		}
	}
}

func TestSeqViewLookups(t *testing.T) {
	for seq, uid := range map[uint32]uint32{0: 0, 1: 3, 5: 20, 6: 0} {
		if got := testView.uidOf(seq); got != uid {
			t.Errorf("uidOf(%d) = %d, want %d", seq, got, uid)
		}
	}
	for uid, seq := range map[uint32]uint32{3: 1, 4: 0, 20: 5, 21: 0} {
		if got := testView.seqOf(uid); got != seq {
			t.Errorf("seqOf(%d) = %d, want %d", uid, got, seq)
		}
	}
	if got := testView.seqs([]uint32{20, 4, 3}); !slices.Equal(got, []uint32{5, 1}) {
		t.Errorf("seqs = %v, want [5 1] (unknown UIDs left out, order kept)", got)
	}
	if testView.last() != 20 || seqView(nil).last() != 0 {
		t.Error("last")
	}
}

// FuzzSeqViewRoundTrip: any sequence set within the view maps to UIDs and
// back to exactly the sequence numbers it names.
func FuzzSeqViewRoundTrip(f *testing.F) {
	for _, s := range []string{"1", "2:4", "*", "1,3:*", "5:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := imapcodec.ParseNumSet(s)
		if err != nil {
			return
		}
		uids, err := testView.uidSet(set)
		if err != nil {
			return
		}
		var want imap.SeqSet
		for _, r := range set {
			a, z := r.Start, r.Stop
			if a == 0 {
				a = 5
			}
			if z == 0 {
				z = 5
			}
			want.AddRange(a, z)
		}
		if got := testView.seqSet(uids); got.String() != want.String() {
			t.Fatalf("%s -> %s -> %s, want %s", s, uids, got, want)
		}
	})
}
