package load

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

func TestParseSources(t *testing.T) {
	ips, err := ParseSources("127.0.0.2-127.0.0.4, 10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1"}
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"127.0.0.9-127.0.0.2", "x", "127.0.0.1-::1", "10.0.0.0-10.0.255.255"} {
		if _, err := ParseSources(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestAccounts(t *testing.T) {
	a, err := PatternAccounts("u%05d", "secret", 3)
	if err != nil || len(a) != 3 || a[2] != (Account{"u00002", "secret"}) {
		t.Errorf("PatternAccounts: %v %v", a, err)
	}
	if _, err := PatternAccounts("u%s%d", "p", 2); err == nil {
		t.Error("bad pattern accepted")
	}
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("# comment\nalice alicepass\n\nbob:bobpass\n"), 0o600)
	a, err = ReadAccounts(path)
	if err != nil || !slices.Equal(a, []Account{{"alice", "alicepass"}, {"bob", "bobpass"}}) {
		t.Errorf("ReadAccounts: %v %v", a, err)
	}
	os.WriteFile(path, []byte("nopassword\n"), 0o600)
	if _, err := ReadAccounts(path); err == nil {
		t.Error("line without password accepted")
	}
}

func respOf(t *testing.T, line string) *resp {
	t.Helper()
	h, err := imapcodec.ParseResponseHead([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return &resp{head: h, segs: []imapcodec.Segment{{Text: []byte(line)}}}
}

func TestViewApply(t *testing.T) {
	v := view{msgs: []vmsg{{10, 0}, {11, fSeen}, {12, 0}}}
	for _, l := range []string{
		"* 5 EXISTS",
		`* 4 FETCH (UID 13 FLAGS (\Flagged \Recent))`,
		"* 2 EXPUNGE",
		"* VANISHED 12,14", // 14 is the message whose UID is not known yet
	} {
		if err := v.apply(respOf(t, l)); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
	}
	want := []vmsg{{10, 0}, {13, fFlagged}}
	if !slices.Equal(v.msgs, want) {
		t.Errorf("view %v, want %v", v.msgs, want)
	}
	// A message in the middle whose UID is not known yet vanishes.
	w := view{msgs: []vmsg{{1, 0}, {0, 0}, {13, 0}, {0, 0}}}
	w.vanish([]uint32{12, 2, 20})
	if want := []vmsg{{1, 0}, {13, 0}}; !slices.Equal(w.msgs, want) {
		t.Errorf("after VANISHED 2,12,20: %v, want %v", w.msgs, want)
	}
	w = view{msgs: []vmsg{{5, 0}, {0, 0}, {9, 0}}}
	w.vanish([]uint32{3, 10})
	if len(w.msgs) != 3 {
		t.Errorf("VANISHED of UIDs no unknown message can have removed one: %v", w.msgs)
	}
	for _, l := range []string{"* 1 EXISTS", "* 3 EXPUNGE", "* 3 FETCH (FLAGS ())", "* 2 FETCH (UID 99)"} {
		w := view{msgs: slices.Clone(want)}
		if err := w.apply(respOf(t, l)); err == nil {
			t.Errorf("%s: no error", l)
		}
	}
}

func TestQResyncReconstruction(t *testing.T) {
	old := view{uidValidity: 7, modseq: 5, msgs: []vmsg{{1, 0}, {2, 0}, {3, fSeen}}}
	q := qresyncSelect{exists: 3, uidValidity: 7, modseq: 9}
	for _, l := range []string{"* VANISHED (EARLIER) 2", `* 2 FETCH (UID 3 FLAGS (\Flagged) MODSEQ (8))`, `* 3 FETCH (UID 4 FLAGS () MODSEQ (9))`} {
		if err := q.collect(respOf(t, l)); err != nil {
			t.Fatal(err)
		}
	}
	nv, err := q.resynced(old)
	if err != nil {
		t.Fatal(err)
	}
	if want := []vmsg{{1, 0}, {3, fFlagged}, {4, 0}}; !slices.Equal(nv.msgs, want) || nv.modseq != 9 {
		t.Errorf("resynced %v (modseq %d)", nv.msgs, nv.modseq)
	}
	q.exists = 4
	if _, err := q.resynced(old); err == nil {
		t.Error("wrong EXISTS accepted")
	}
	q.exists = 3
	q.fetches[1].seq = 2
	if _, err := q.resynced(old); err == nil {
		t.Error("wrong sequence number accepted")
	}
}

func TestModelCheck(t *testing.T) {
	m := newAcctModel(0, view{msgs: []vmsg{{1, 0}}}, 2)
	at := func(s int) time.Duration { return time.Duration(s) * time.Second }
	m.begin(0, map[uint32]flagBits{2: fSeen}, nil) // version 1
	m.commit(at(10))
	m.begin(0, map[uint32]flagBits{1: fFlagged}, nil) // version 2
	m.commit(at(20))
	m.begin(0, nil, []uint32{2}) // version 3, in flight
	views := []view{
		{msgs: []vmsg{{1, 0}}},
		{msgs: []vmsg{{1, 0}, {2, fSeen}}},
		{msgs: []vmsg{{1, fFlagged}, {2, fSeen}}},
		{msgs: []vmsg{{1, fFlagged}}},
	}
	for i, tc := range []struct {
		v        int
		at       time.Duration
		prev     int
		kind     string
		matching int
	}{
		{0, at(5), 0, "", 0},
		{0, at(16), 0, "stale", 0}, // version 1 committed 6 s earlier
		{1, at(16), 0, "", 1},
		{1, at(30), 0, "stale", 1},
		{2, at(30), 0, "", 2},
		{3, at(30), 0, "", 3}, // the change in flight may already show
		{1, at(21), 2, "regress", 1},
	} {
		got := m.check(views[tc.v].hash(), len(views[tc.v].msgs), tc.at, 5*time.Second, tc.prev)
		if got.kind != tc.kind || got.matched != tc.matching {
			t.Errorf("case %d: %+v, want kind %q, version %d", i, got, tc.kind, tc.matching)
		}
	}
	// A state the mailbox never had: a flag the model never set.
	bad := view{msgs: []vmsg{{1, fSeen}}}
	if got := m.check(bad.hash(), 1, at(30), 5*time.Second, 0); got.kind != "mismatch" {
		t.Errorf("bad view: %+v", got)
	}
}

func TestUIDSets(t *testing.T) {
	u, err := parseUIDSet("1:3,7,9:8")
	if err != nil || !slices.Equal(u, []uint32{1, 2, 3, 7, 8, 9}) {
		t.Errorf("parseUIDSet: %v %v", u, err)
	}
	if s := formatUIDSet([]uint32{1, 2, 3, 7, 9, 10}); s != "1:3,7,9:10" {
		t.Errorf("formatUIDSet: %s", s)
	}
	if _, err := parseUIDSet("1:4000000000"); err == nil {
		t.Error("huge set accepted")
	}
}

func TestProcAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before := establishedTo(ln.Addr().String(), nil, 0)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	if n := establishedTo(ln.Addr().String(), nil, 0); n != before+1 {
		t.Errorf("establishedTo = %d, want %d", n, before+1)
	}
	if n := establishedTo(ln.Addr().String(), map[string]bool{localProcAddr(c): true}, 0); n != before {
		t.Errorf("establishedTo skipping the connection = %d, want %d", n, before)
	}
	if rssOf(os.Getpid()) <= 0 || cpuOf(os.Getpid()) < 0 {
		t.Error("no RSS for this process")
	}
	if pss, n := treeMem(os.Getpid()); pss <= 0 || n < 1 {
		t.Errorf("treeMem = %d, %d", pss, n)
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{1234567: "1,234,567", 0.1234: "0.123", 12.345: "12.35", 123.45: "123.5", -4500: "-4,500", 2500.6: "2,501"} {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestMessageDeterministic(t *testing.T) {
	a, b := message(3, 7, 5000, "x"), message(3, 7, 5000, "x")
	if string(a) != string(b) || len(a) < 4900 || len(a) > 5100 {
		t.Errorf("message: %d bytes, equal %v", len(a), string(a) == string(b))
	}
	if string(message(3, 8, 5000, "x")) == string(a) {
		t.Error("different serials, same message")
	}
}

// cpuDelta counts a process that ended between the snapshots by what it
// used after the first: its parent's figure then holds all of its CPU.
func TestCPUDelta(t *testing.T) {
	ms := time.Millisecond
	before := map[int]time.Duration{1: 10 * ms, 2: 5 * ms, 3: 7 * ms}
	// 2 ended after using 3 ms more, reaped by 1 (which used 1 ms itself);
	// 3 used 2 ms more; 4 started and used 4 ms.
	after := map[int]time.Duration{1: (10 + 1 + 5 + 3) * ms, 3: 9 * ms, 4: 4 * ms}
	if got, want := cpuDelta(before, after), (1+3+2+4)*ms; got != want {
		t.Errorf("cpuDelta = %v, want %v", got, want)
	}
}
