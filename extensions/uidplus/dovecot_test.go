package uidplus_test

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// dovecotEnv is Dovecot with profile p, INBOX holding n messages and
// "meeting" one, and the proxy in front.
func dovecotEnv(t *testing.T, p dovecottest.Profile, n int) (*dovecottest.Server, *uidplus.Extension, *imaptest.Client) {
	srv := dovecottest.Start(t, p)
	for i := range n {
		srv.Append(t, "alice", "alicepass", "INBOX", nil, msg(fmt.Sprintf("inbox-%d", i+1)))
	}
	srv.Append(t, "alice", "alicepass", "meeting", nil, msg("meeting-1"))
	ext := uidplus.New()
	px := imaptest.StartProxy(t, srv.Addr, proxy.Config{Extensions: []proxy.Extension{ext, condstore.New()}})
	return srv, ext, imaptest.Login(t, px.Addr, "alice", "alicepass")
}

// TestDovecotLegacyMove: MOVE synthesized over UIDPLUS (RFC 6851 4.4).
func TestDovecotLegacyMove(t *testing.T) {
	_, ext, c := dovecotEnv(t, dovecottest.Legacy, 4)
	if caps := c.MustOK("CAPABILITY")[0] + " "; !strings.Contains(caps, " MOVE ") || !strings.Contains(caps, " UIDPLUS ") {
		t.Fatalf("%s", caps)
	}
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "UID MOVE", c.Do("a", "UID MOVE 2:3 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 2:3 2:3] Moved UIDs.", v),
		"* 3 EXPUNGE",
		"* 2 EXPUNGE",
		"* 2 RECENT", // the session's SELECT took the 4 messages as recent
		"a OK Move completed.",
	})
	c.MustOK("UNSELECT")
	c.MustOK("ENABLE QRESYNC")
	c.MustOK("SELECT INBOX")
	imaptest.AssertLines(t, "MOVE", c.Do("b", "MOVE 1 meeting"), []string{
		fmt.Sprintf("* OK [COPYUID %s 1 4] Moved UIDs.", v),
		"* VANISHED 1",
		"* OK [HIGHESTMODSEQ *",
		"b OK Move completed.",
	})
	c.MustOK("EXAMINE meeting")
	for uid, id := range map[string]string{"2": "<inbox-2@example>", "3": "<inbox-3@example>", "4": "<inbox-1@example>"} {
		if got := messageIDOf(t, c, uid); got != id {
			t.Errorf("meeting UID %s: %s, want %s", uid, got, id)
		}
	}
	if st := ext.Stats(); st.Moves != 2 {
		t.Errorf("%+v", st)
	}
}

// TestDovecotPlain: over Dovecot without UIDPLUS the proxy finds APPENDUID
// and COPYUID itself (Dovecot's own codes, sent unadvertised, are not
// trusted), with another client appending concurrently, and offers
// neither UIDPLUS nor MOVE.
func TestDovecotPlain(t *testing.T) {
	srv, ext, c := dovecotEnv(t, dovecottest.Plain, 3)
	if caps := c.MustOK("CAPABILITY")[0] + " "; strings.Contains(caps, " MOVE ") || strings.Contains(caps, " UIDPLUS ") {
		t.Fatalf("%s", caps)
	}
	v := uidValidity(t, c, "meeting")
	code := regexp.MustCompile(`^OK \[(APPENDUID|COPYUID) ([^\]]*)\]`)
	expect := func(cmd, got, want string) {
		t.Helper()
		m := code.FindStringSubmatch(got)
		if m == nil && want != "" || m != nil && m[2] != want {
			t.Fatalf("%s: %q, want code %q", cmd, got, want)
		}
	}
	m := string(msg("appended"))
	expect("APPEND", imaptest.Tagged(c.Cmd(fmt.Sprintf("APPEND meeting {%d}", len(m)), m)), v+" 2")
	uidplus.SetHook(ext, func(p string) {
		if p == "append:before" || p == "copy:before" {
			srv.Append(t, "alice", "alicepass", "meeting", nil, msg("other-"+p))
		}
	})
	m = string(msg("appended-2"))
	expect("APPEND", imaptest.Tagged(c.Cmd(fmt.Sprintf("APPEND meeting {%d}", len(m)), m)), v+" 4")
	c.MustOK("SELECT INBOX")
	expect("COPY", imaptest.Tagged(c.Cmd("COPY 2:3 meeting")), v+" 2:3 6:7")
	uidplus.SetHook(ext, nil)
	expect("UID COPY", imaptest.Tagged(c.Cmd("UID COPY 1 meeting")), v+" 1 8")
	if got := imaptest.Tagged(c.Cmd("UID MOVE 1 meeting")); !strings.HasPrefix(got, "BAD ") {
		t.Fatalf("UID MOVE: %q", got)
	}
	if got := imaptest.Tagged(c.Cmd("UID EXPUNGE 1")); !strings.HasPrefix(got, "BAD ") {
		t.Fatalf("UID EXPUNGE: %q", got)
	}
	c.MustOK("EXAMINE meeting")
	for uid, id := range map[string]string{"2": "<appended@example>", "4": "<appended-2@example>", "6": "<inbox-2@example>", "7": "<inbox-3@example>", "8": "<inbox-1@example>"} {
		if got := messageIDOf(t, c, uid); got != id {
			t.Errorf("meeting UID %s: %s, want %s", uid, got, id)
		}
	}
	if st := ext.Stats(); st.AppendUIDs != 2 || st.CopyUIDs != 2 || st.AppendOmitted+st.CopyOmitted != 0 {
		t.Errorf("%+v", st)
	}
}

// gappyMailbox fills user alice's mailbox Big with n/2 messages under
// the UIDs 1, 3, 5, ..., n-1, directly on Dovecot (dovecottest's
// FillWithGaps).
func gappyMailbox(t *testing.T, srv *dovecottest.Server, n int) {
	t.Helper()
	srv.FillWithGaps(t, "alice", "alicepass", "Big", n/2, func(i int) []byte { return msg(fmt.Sprintf("big-%d", 2*i+1)) })
}

// messages asks the proxy for a mailbox's message count.
func messages(t *testing.T, c *imaptest.Client, mailbox string) string {
	t.Helper()
	return statusItem(t, c, mailbox, "MESSAGES")
}

// checkCopyUID checks a COPYUID's source and target sets: n messages,
// the UIDs 1, 3, 5, ... of gappyMailbox copied to 2, 3, 4, ... (the
// target held one message before).
func checkCopyUID(t *testing.T, srcSet, dstSet string, n int) {
	t.Helper()
	src, dst := uidsOf(t, srcSet), uidsOf(t, dstSet)
	if len(src) != n || len(dst) != n {
		t.Fatalf("COPYUID of %d and %d UIDs, want %d", len(src), len(dst), n)
	}
	for i := range src {
		if src[i] != uint32(2*i+1) || dst[i] != uint32(i+2) {
			t.Fatalf("COPYUID pair %d: %d to %d", i, src[i], dst[i])
		}
	}
}

// TestDovecotPlainCopyLongSet: COPYs of a mailbox whose UIDs have many
// gaps, over Dovecot without UIDPLUS. The proxy resolves a set into the
// UIDs that exist to find COPYUID; it writes them upstream as ranges over
// the UIDs expunged between them (one range here), which single UIDs
// would not fit on Dovecot's command line (BAD Too long argument). Past
// 10,000 messages the COPY goes upstream as the client sent it and the
// code is omitted (RFC 4315 3 allows that): the copy itself works as it
// does directly.
func TestDovecotPlainCopyLongSet(t *testing.T) {
	srv, ext, c := dovecotEnv(t, dovecottest.Plain, 0)
	gappyMailbox(t, srv, 24000)
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT Big")
	got := imaptest.Tagged(c.Cmd("UID COPY 1:15999 meeting"))
	m := regexp.MustCompile(`^OK \[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\] `).FindStringSubmatch(got)
	if m == nil || m[1] != v {
		t.Fatalf("UID COPY of 8,000: %.200q, want COPYUID %s", got, v)
	}
	checkCopyUID(t, m[2], m[3], 8000)
	if got := imaptest.Tagged(c.Cmd("UID COPY 1:* meeting")); !strings.HasPrefix(got, "OK Copy completed") {
		t.Fatalf("UID COPY of 12,000: %q", got)
	}
	if got := messages(t, c, "meeting"); got != "20001" {
		t.Errorf("meeting has %s messages, want 20001", got)
	}
	if st := ext.Stats(); st.CopyUIDs != 1 || st.CopyOmitted != 1 {
		t.Errorf("%+v", st)
	}
}

// TestDovecotLegacyMoveLongSet: the same mailbox moved over Dovecot with
// UIDPLUS and without MOVE. MOVE must resolve the set (it expunges
// exactly what it copied), so it copies, flags and expunges in batches
// whose sets fit on a line; the client gets one COPYUID for all of them.
func TestDovecotLegacyMoveLongSet(t *testing.T) {
	srv, ext, c := dovecotEnv(t, dovecottest.Legacy, 0)
	gappyMailbox(t, srv, 24000)
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT Big")
	lines := c.Do("a", "UID MOVE 1:* meeting")
	if got := lines[len(lines)-1]; got != "a OK Move completed." {
		t.Fatalf("UID MOVE: %q", got)
	}
	m := regexp.MustCompile(`^\* OK \[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\] Moved UIDs\.$`).FindStringSubmatch(lines[0])
	if m == nil || m[1] != v {
		t.Fatalf("first answer %.200q..., want COPYUID %s", lines[0], v)
	}
	// Batch by batch: 1,3,...,23999 became 2, 3, ..., 12001.
	checkCopyUID(t, m[2], m[3], 12000)
	if len(lines) != 12002 {
		t.Fatalf("%d answers; want COPYUID, 12,000 expunges and OK", len(lines))
	}
	for i, l := range lines[1:12001] {
		if want := fmt.Sprintf("* %d EXPUNGE", 12000-i); l != want {
			t.Fatalf("answer %d: %q, want %q", i+1, l, want)
		}
	}
	if got := messages(t, c, "meeting"); got != "12001" {
		t.Errorf("meeting has %s messages, want 12001", got)
	}
	if got := messages(t, c, "Big"); got != "0" {
		t.Errorf("Big has %s messages, want 0", got)
	}
	if st := ext.Stats(); st.Moves != 1 {
		t.Errorf("%+v", st)
	}
}

// uidsOf lists the UIDs of a set of numbers and ranges, in its order.
func uidsOf(t *testing.T, set string) []uint32 {
	t.Helper()
	var out []uint32
	for _, r := range strings.Split(set, ",") {
		lo, hi, isRange := strings.Cut(r, ":")
		a, err := strconv.ParseUint(lo, 10, 32)
		b := a
		if err == nil && isRange {
			b, err = strconv.ParseUint(hi, 10, 32)
		}
		if err != nil || b < a {
			t.Fatalf("set %q: bad part %q", set, r)
		}
		for u := a; u <= b; u++ {
			out = append(out, uint32(u))
		}
	}
	return out
}

// TestDovecotLegacyMoveBatchCopiesNothing: a MOVE in batches, one of
// which names only messages another client expunged meanwhile. Its UID
// COPY copies nothing and Dovecot answers it without COPYUID; the MOVE's
// joined COPYUID was dropped for it (noticed in session 15), leaving the
// client without the UIDs of the messages that did move. A batch whose
// originals are all gone copied nothing and now adds nothing to the
// code.
func TestDovecotLegacyMoveBatchCopiesNothing(t *testing.T) {
	srv, ext, c := dovecotEnv(t, dovecottest.Legacy, 0)
	gappyMailbox(t, srv, 12000) // 1, 3, ..., 11999
	v := uidValidity(t, c, "meeting")
	c.MustOK("SELECT Big")
	var view, src []uint32
	for u := uint32(1); u < 12000; u += 2 {
		view = append(view, u)
		if u%4 == 1 {
			src = append(src, u) // every other message: one span each
		}
	}
	batches := uidset.Batches(uidset.Compact(view, src))
	if len(batches) < 3 {
		t.Fatalf("setup: %d batches, want at least 3", len(batches))
	}
	d := imaptest.Login(t, srv.Addr, "alice", "alicepass")
	d.MustOK("SELECT Big")
	gone := func(set string) {
		d.MustOK(`UID STORE ` + set + ` +FLAGS.SILENT (\Deleted)`)
		d.MustOK("UID EXPUNGE " + set)
	}
	fired := 0
	uidplus.SetHook(ext, func(p string) {
		if p == "move:copied" && fired == 0 {
			// The second batch's messages go before its COPY. The
			// first batch's UID EXPUNGE then brings the view of the
			// session's connection up to date, and Dovecot answers the
			// second COPY "OK No messages found" (a COPY on a view
			// that still has them is refused NO [EXPUNGEISSUED]).
			fired++
			gone(batches[1])
		}
	})
	defer uidplus.SetHook(ext, nil)
	set := strings.TrimSuffix(strings.Join(batches, ","), ",")
	lines := c.Do("a", "UID MOVE "+set+" meeting")
	if got := lines[len(lines)-1]; got != "a OK Move completed." {
		t.Fatalf("UID MOVE: %q", got)
	}
	m := regexp.MustCompile(`^\* OK \[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\] Moved UIDs\.$`).FindStringSubmatch(lines[0])
	if m == nil || m[1] != v {
		t.Fatalf("first answer %.200q..., want COPYUID %s", lines[0], v)
	}
	var want []uint32
	for i, b := range batches {
		if i != 1 {
			want = append(want, uidsOf(t, b)...)
		}
	}
	got, dst := uidsOf(t, m[2]), uidsOf(t, m[3])
	if !slices.Equal(got, want) || len(dst) != len(want) || dst[0] != 2 || dst[len(dst)-1] != uint32(len(want)+1) {
		t.Fatalf("COPYUID of %d UIDs to %d, want the %d of the other batches", len(got), len(dst), len(want))
	}
	if got := messages(t, c, "meeting"); got != strconv.Itoa(len(want)+1) {
		t.Errorf("meeting has %s messages, want %d", got, len(want)+1)
	}
}
