package integration

// CONDSTORE and QRESYNC (RFC 7162) end to end: the proxy in front of a real
// Dovecot, with the upstream's extensions advertised (Full) or not
// (Legacy). The proxy's mod-sequences are its own, so no test here knows a
// mod-sequence in advance: each is read from the wire and checked against
// the RFC's rules (larger after a change, exactly the messages changed
// since, ...), and every change made directly on Dovecot is checked to
// arrive exactly once, in the form the client enabled.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

// csStartProxy runs the proxy with IDLE and CONDSTORE/QRESYNC and a
// bbolt state store (as lemonproxy serve has) in front of dc; opts edit
// the configuration after that.
func csStartProxy(t *testing.T, dc *dovecottest.Server, opts ...func(*proxy.Config)) string {
	t.Helper()
	return csStartProxyAt(t, dc.Addr, opts...)
}

// csStartProxyAt is csStartProxy in front of upstreamAddr (a faultnet
// relay to Dovecot).
func csStartProxyAt(t *testing.T, upstreamAddr string, opts ...func(*proxy.Config)) string {
	t.Helper()
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the proxy's cleanup, so it runs after the
	// proxy has shut down.
	t.Cleanup(func() { store.Close() })
	addr, _ := startProxy(t, upstreamAddr, append([]func(*proxy.Config){func(c *proxy.Config) {
		c.Extensions = []proxy.Extension{idle.New(), condstore.New()}
		c.Hub.Store = store
	}}, opts...)...)
	return addr
}

// csDirect logs in to Dovecot directly, bypassing the proxy: the changes it
// makes are "outside" changes the proxy learns of only through its watcher.
// The mailbox is selected unless it is "".
func csDirect(t *testing.T, dc *dovecottest.Server, mailbox string) *imaptest.Client {
	t.Helper()
	c := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	if mailbox != "" {
		c.MustOK("SELECT " + mailbox)
	}
	return c
}

// csSeed creates mailbox (unless INBOX) directly on Dovecot with n messages
// and returns their UIDs, from APPENDUID.
func csSeed(t *testing.T, dc *dovecottest.Server, mailbox string, n int) []uint32 {
	t.Helper()
	d := csDirect(t, dc, "")
	defer d.Close()
	if !strings.EqualFold(mailbox, "INBOX") {
		d.MustOK("CREATE " + mailbox)
	}
	return csAppend(t, d, mailbox, n)
}

var csAppendUIDRE = regexp.MustCompile(`\[APPENDUID \d+ (\d+)\]`)

// csAppend appends n messages to mailbox on the direct connection d.
func csAppend(t *testing.T, d *imaptest.Client, mailbox string, n int) []uint32 {
	t.Helper()
	var uids []uint32
	for i := 0; i < n; i++ {
		msg := sampleMessage(i+1, fmt.Sprintf("message %d of %s", i+1, mailbox))
		lines := d.MustOK(fmt.Sprintf("APPEND %s {%d+}\r\n%s", mailbox, len(msg), msg))
		m := csAppendUIDRE.FindStringSubmatch(imaptest.Tagged(lines))
		if m == nil {
			t.Fatalf("APPEND without APPENDUID: %q", lines)
		}
		uid, _ := strconv.ParseUint(m[1], 10, 32)
		uids = append(uids, uint32(uid))
	}
	return uids
}

// csFetch is one FETCH response.
type csFetch struct {
	seq, uid  uint32
	modseq    uint64
	flags     []string // lower case, sorted
	items     []string // data item names in order
	hasModSeq bool
	hasFlags  bool
	line      string
}

var csFetchRE = regexp.MustCompile(`^\* (\d+) FETCH \((.*)\)$`)

// csParseFetch parses "* n FETCH (...)" with flat or parenthesised values
// (no literals: the tests fetch only UID, FLAGS and MODSEQ).
func csParseFetch(line string) (csFetch, bool, error) {
	m := csFetchRE.FindStringSubmatch(line)
	if m == nil {
		return csFetch{}, false, nil
	}
	f := csFetch{line: line}
	seq, _ := strconv.ParseUint(m[1], 10, 32)
	f.seq = uint32(seq)
	s := m[2]
	for s != "" {
		name, rest, ok := strings.Cut(s, " ")
		if !ok {
			return f, true, fmt.Errorf("item %q without value in %q", name, line)
		}
		var val string
		if strings.HasPrefix(rest, "(") {
			depth, end := 0, -1
			for i, ch := range rest {
				if ch == '(' {
					depth++
				} else if ch == ')' {
					depth--
					if depth == 0 {
						end = i
						break
					}
				}
			}
			if end < 0 {
				return f, true, fmt.Errorf("unbalanced %q", line)
			}
			val, s = rest[1:end], strings.TrimPrefix(rest[end+1:], " ")
		} else {
			val, s, _ = strings.Cut(rest, " ")
		}
		name = strings.ToUpper(name)
		f.items = append(f.items, name)
		switch name {
		case "UID":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return f, true, fmt.Errorf("bad UID in %q", line)
			}
			f.uid = uint32(n)
		case "MODSEQ":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return f, true, fmt.Errorf("bad MODSEQ in %q", line)
			}
			f.modseq, f.hasModSeq = n, true
		case "FLAGS":
			f.hasFlags = true
			f.flags = csNormFlags(strings.Fields(val))
		}
	}
	return f, true, nil
}

// csNormFlags lower-cases (flags are case-insensitive), sorts and drops
// \Recent (per connection; the proxy's sessions never set it).
func csNormFlags(flags []string) []string {
	out := []string{}
	for _, f := range flags {
		if strings.EqualFold(f, `\Recent`) {
			continue
		}
		out = append(out, strings.ToLower(f))
	}
	slices.Sort(out)
	return out
}

// csParseSet expands a sequence set without "*" ("3,7:9").
func csParseSet(t *testing.T, s string) []uint32 {
	t.Helper()
	var out []uint32
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err1 := strconv.ParseUint(lo, 10, 32)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.ParseUint(hi, 10, 32)
		}
		if err1 != nil || err2 != nil || a == 0 || b == 0 {
			t.Fatalf("bad set %q", s)
		}
		if a > b {
			a, b = b, a
		}
		for n := a; n <= b; n++ {
			out = append(out, uint32(n))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// csUIDSet formats numbers as a set, for commands.
func csUIDSet(nums ...uint32) string {
	var parts []string
	for _, n := range nums {
		parts = append(parts, strconv.FormatUint(uint64(n), 10))
	}
	return strings.Join(parts, ",")
}

// csResp is a command's responses, classified.
type csResp struct {
	lines    []string
	tagged   string // without the tag
	fetches  []csFetch
	vanished []uint32 // from VANISHED without (EARLIER)
	earlier  []uint32 // from VANISHED (EARLIER)
	expunges []uint32 // sequence numbers of EXPUNGE, in order
	exists   int      // -1 if none
	codes    map[string][]string
	// indices into lines
	firstFetch, lastEarlier, closedAt int
}

var csCodeRE = regexp.MustCompile(`^\* OK \[([A-Z-]+)(?: ([^\]]*))?\]`)

func csClassify(t *testing.T, lines []string) csResp {
	t.Helper()
	r := csResp{lines: lines, tagged: imaptest.Tagged(lines), exists: -1, codes: map[string][]string{},
		firstFetch: -1, lastEarlier: -1, closedAt: -1}
	for i, l := range lines[:len(lines)-1] {
		if f, ok, err := csParseFetch(l); ok {
			if err != nil {
				t.Fatal(err)
			}
			r.fetches = append(r.fetches, f)
			if r.firstFetch < 0 {
				r.firstFetch = i
			}
			continue
		}
		if rest, ok := strings.CutPrefix(l, "* VANISHED (EARLIER) "); ok {
			r.earlier = append(r.earlier, csParseSet(t, rest)...)
			r.lastEarlier = i
			continue
		}
		if rest, ok := strings.CutPrefix(l, "* VANISHED "); ok {
			r.vanished = append(r.vanished, csParseSet(t, rest)...)
			continue
		}
		var n int
		var word string
		if _, err := fmt.Sscanf(l, "* %d %s", &n, &word); err == nil {
			switch word {
			case "EXPUNGE":
				r.expunges = append(r.expunges, uint32(n))
			case "EXISTS":
				r.exists = n
			}
			continue
		}
		if m := csCodeRE.FindStringSubmatch(l); m != nil {
			r.codes[m[1]] = append(r.codes[m[1]], m[2])
			if m[1] == "CLOSED" {
				r.closedAt = i
			}
		}
	}
	slices.Sort(r.vanished)
	slices.Sort(r.earlier)
	return r
}

// highestModSeq returns the value of the one [HIGHESTMODSEQ n] of r.
func (r csResp) highestModSeq(t *testing.T) uint64 {
	t.Helper()
	v := r.codes["HIGHESTMODSEQ"]
	if len(v) != 1 {
		t.Fatalf("want exactly one [HIGHESTMODSEQ], got %d in %q", len(v), r.lines)
	}
	n, err := strconv.ParseUint(v[0], 10, 64)
	if err != nil || n == 0 {
		t.Fatalf("bad HIGHESTMODSEQ %q (RFC 7162 3.1.2.1: a positive number) in %q", v[0], r.lines)
	}
	return n
}

// fetchUIDs returns the UIDs of r's FETCH responses, sorted.
func (r csResp) fetchUIDs() []uint32 {
	var out []uint32
	for _, f := range r.fetches {
		out = append(out, f.uid)
	}
	slices.Sort(out)
	return out
}

// byUID returns r's FETCH responses by UID; a UID twice fails the test.
func (r csResp) byUID(t *testing.T) map[uint32]csFetch {
	t.Helper()
	out := map[uint32]csFetch{}
	for _, f := range r.fetches {
		if _, dup := out[f.uid]; dup {
			t.Fatalf("UID %d reported twice: %q", f.uid, r.lines)
		}
		out[f.uid] = f
	}
	return out
}

// csClient is a proxy client that tracks its view of the selected mailbox
// (UIDs in sequence order) to check every sequence number it is sent.
type csClient struct {
	*imaptest.Client
	t         *testing.T
	view      []uint32
	condstore bool // CONDSTORE is enabled: every FETCH carries UID
}

func csLogin(t *testing.T, addr string, enable string) *csClient {
	t.Helper()
	c := &csClient{Client: imaptest.Login(t, addr, "alice", "alicepass"), t: t, condstore: enable != ""}
	if enable != "" {
		lines := c.MustOK("ENABLE " + enable)
		if lines[0] != "* ENABLED "+enable {
			t.Fatalf("ENABLE %s: %q", enable, lines)
		}
	}
	return c
}

// csTrace logs a command's responses when CS_TRACE is set (go test -v),
// to see the wire while debugging.
func csTrace(t *testing.T, cmd string, lines []string) {
	t.Helper()
	if os.Getenv("CS_TRACE") != "" {
		t.Logf("%s %s -> %q", time.Now().Format("15:04:05.000"), cmd, lines)
	}
}

// selectMailbox selects and sets the view to uids (which the test knows
// from seeding; the proxy's EXISTS must agree).
func (c *csClient) selectMailbox(cmd string, uids []uint32) csResp {
	c.t.Helper()
	lines := c.Cmd(cmd)
	csTrace(c.t, cmd, lines)
	if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
		c.t.Fatalf("%s: want OK, got %q", cmd, lines)
	}
	r := csClassify(c.t, lines)
	if strings.Contains(cmd, "(CONDSTORE") || strings.Contains(cmd, "(QRESYNC") {
		c.condstore = true
	}
	if r.exists != len(uids) {
		c.t.Fatalf("%s: EXISTS %d, want %d: %q", cmd, r.exists, len(uids), r.lines)
	}
	c.view = slices.Clone(uids)
	c.checkFetchSeqs(r)
	return r
}

// checkFetchSeqs checks that every FETCH names a message by its sequence
// number in the view.
func (c *csClient) checkFetchSeqs(r csResp) {
	c.t.Helper()
	for _, f := range r.fetches {
		if f.uid == 0 {
			c.t.Fatalf("FETCH without UID once CONDSTORE is enabled (RFC 7162 3.1.4): %q", f.line)
		}
		if int(f.seq) > len(c.view) || c.view[f.seq-1] != f.uid {
			c.t.Fatalf("FETCH %q: sequence number does not match UID in the client's view %v", f.line, c.view)
		}
	}
}

// run sends cmd and applies its untagged EXPUNGE, VANISHED and EXISTS to
// the view in order, checking each FETCH's sequence number on the way. New
// messages (EXISTS) get their UIDs from the FETCH responses that name them.
func (c *csClient) run(cmd string) csResp {
	c.t.Helper()
	lines := c.Cmd(cmd)
	csTrace(c.t, cmd, lines)
	for _, l := range lines[:len(lines)-1] {
		if f, ok, err := csParseFetch(l); ok {
			if err != nil {
				c.t.Fatal(err)
			}
			if f.seq == 0 || int(f.seq) > len(c.view) {
				c.t.Fatalf("%s: %q beyond the %d messages the client knows", cmd, l, len(c.view))
			}
			if f.uid == 0 && !c.condstore {
				continue // no UID asked for, none needed
			}
			if c.view[f.seq-1] == 0 {
				c.view[f.seq-1] = f.uid
			}
			if c.view[f.seq-1] != f.uid || f.uid == 0 {
				c.t.Fatalf("%s: %q does not match the client's view %v", cmd, l, c.view)
			}
			continue
		}
		if rest, ok := strings.CutPrefix(l, "* VANISHED "); ok && !strings.HasPrefix(rest, "(") {
			for _, uid := range csParseSet(c.t, rest) {
				i := slices.Index(c.view, uid)
				if i < 0 {
					c.t.Fatalf("%s: %q names UID %d the client does not have (RFC 7162 3.2.10): view %v", cmd, l, uid, c.view)
				}
				c.view = slices.Delete(c.view, i, i+1)
			}
			continue
		}
		var n int
		var word string
		if _, err := fmt.Sscanf(l, "* %d %s", &n, &word); err == nil {
			switch word {
			case "EXPUNGE":
				if n < 1 || n > len(c.view) {
					c.t.Fatalf("%s: %q out of range %d", cmd, l, len(c.view))
				}
				c.view = slices.Delete(c.view, n-1, n)
			case "EXISTS":
				if n < len(c.view) {
					c.t.Fatalf("%s: %q shrinks the mailbox from %d", cmd, l, len(c.view))
				}
				for len(c.view) < n {
					c.view = append(c.view, 0)
				}
			}
		}
	}
	return csClassify(c.t, lines)
}

// mustRun is run that fails the test unless the tagged response is OK.
func (c *csClient) mustRun(cmd string) csResp {
	c.t.Helper()
	r := c.run(cmd)
	if !strings.HasPrefix(r.tagged, "OK") {
		c.t.Fatalf("%s: want OK, got %q", cmd, r.lines)
	}
	return r
}

// modseqs returns the MODSEQ of every message, by FETCH 1:* (MODSEQ).
func (c *csClient) modseqs() map[uint32]uint64 {
	c.t.Helper()
	r := c.mustRun("FETCH 1:* (MODSEQ)")
	out := map[uint32]uint64{}
	for _, f := range r.fetches {
		if !f.hasModSeq {
			c.t.Fatalf("FETCH (MODSEQ) without MODSEQ: %q", f.line)
		}
		out[f.uid] = f.modseq
	}
	if len(out) != len(c.view) {
		c.t.Fatalf("FETCH 1:* (MODSEQ): %d messages, want %d: %q", len(out), len(c.view), r.lines)
	}
	return out
}

// csDirectFlags returns every message's flags as Dovecot has them.
func csDirectFlags(t *testing.T, dc *dovecottest.Server, mailbox string) map[uint32][]string {
	t.Helper()
	d := csDirect(t, dc, "")
	defer d.Close()
	d.MustOK("EXAMINE " + mailbox)
	out := map[uint32][]string{}
	for _, l := range d.MustOK("UID FETCH 1:* (FLAGS)") {
		if f, ok, err := csParseFetch(l); ok && err == nil {
			out[f.uid] = f.flags
		}
	}
	return out
}

func csWantFlags(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if w := csNormFlags(want); !slices.Equal(got, w) {
		t.Errorf("%s: flags %v, want %v", what, got, w)
	}
}

func csWantUIDs(t *testing.T, what string, got []uint32, want ...uint32) {
	t.Helper()
	w := slices.Sorted(slices.Values(want))
	if w == nil {
		w = []uint32{}
	}
	if got == nil {
		got = []uint32{}
	}
	if !slices.Equal(got, w) {
		t.Errorf("%s: %v, want %v", what, got, w)
	}
}

// TestCondstoreDovecot runs RFC 7162 through the proxy in front of Dovecot
// with CONDSTORE/QRESYNC advertised (Full) and without (Legacy): the
// client's view must be the same.
func TestCondstoreDovecot(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc := dovecottest.Start(t, p)
			addr := csStartProxy(t, dc)
			t.Run("HighestModSeq", func(t *testing.T) { csHighestModSeq(t, dc, addr) })
			t.Run("Changes", func(t *testing.T) { csChanges(t, dc, addr) })
			t.Run("Status", func(t *testing.T) { csStatus(t, dc, addr) })
			t.Run("Expunge", func(t *testing.T) { csExpunge(t, dc, addr) })
			t.Run("QResyncSelect", func(t *testing.T) { csQResyncSelect(t, dc, addr) })
			t.Run("BadInput", func(t *testing.T) { csBadInput(t, dc, addr) })
			t.Run("EnablingCommand", func(t *testing.T) { csEnablingCommand(t, dc, addr) })
			t.Run("TwoClients", func(t *testing.T) { csTwoClients(t, dc, addr) })
			t.Run("UnchangedSinceOutside", func(t *testing.T) { csUnchangedSinceOutside(t, dc, addr) })
			t.Run("HeldExpunge", func(t *testing.T) { csHeldExpunge(t, dc, addr) })
			t.Run("OwnExpunge", func(t *testing.T) { csOwnExpunge(t, dc, addr) })
		})
	}
}

// csHighestModSeq: SELECT reports the proxy's own HIGHESTMODSEQ, once,
// never 0 (RFC 7162 3.1.2.1), also for an empty mailbox; Dovecot's own
// value (made large here by many flag changes) never reaches the client.
func csHighestModSeq(t *testing.T, dc *dovecottest.Server, addr string) {
	uids := csSeed(t, dc, "Hms", 5)
	d := csDirect(t, dc, "Hms")
	for i := 0; i < 10; i++ {
		d.MustOK(`UID STORE 1:* +FLAGS.SILENT (\Seen)`)
		d.MustOK(`UID STORE 1:* -FLAGS.SILENT (\Seen)`)
	}
	d.MustOK("UNSELECT")
	// Dovecot answers CONDSTORE whether or not it advertises it.
	upstreamHighest := csClassify(t, d.MustOK("EXAMINE Hms (CONDSTORE)")).highestModSeq(t)
	d.Close()

	c := csLogin(t, addr, "QRESYNC")
	r := c.selectMailbox("SELECT Hms", uids)
	n := r.highestModSeq(t)
	if n == upstreamHighest {
		t.Errorf("SELECT reports HIGHESTMODSEQ %d, Dovecot's own value, not the proxy's", n)
	}
	if len(r.codes["NOMODSEQ"]) != 0 {
		t.Errorf("NOMODSEQ: %q", r.lines)
	}
	if len(r.fetches) != 0 || len(r.earlier) != 0 {
		t.Errorf("plain SELECT reported changes: %q", r.lines)
	}
	// Nothing was expunged in the proxy's state of Hms, so HIGHESTMODSEQ
	// is the largest mod-sequence of a message (RFC 7162 3.1.1).
	var largest uint64
	for uid, m := range c.modseqs() {
		if m == 0 || m > n {
			t.Errorf("UID %d: MODSEQ %d outside 1..%d", uid, m, n)
		}
		largest = max(largest, m)
	}
	if largest != n {
		t.Errorf("largest MODSEQ %d, HIGHESTMODSEQ %d", largest, n)
	}
	st := c.mustRun("STATUS Hms (HIGHESTMODSEQ)")
	if want := fmt.Sprintf("* STATUS Hms (HIGHESTMODSEQ %d)", n); len(st.lines) != 2 || st.lines[0] != want {
		t.Errorf("STATUS: %q, want %q", st.lines, want)
	}

	// An empty mailbox: HIGHESTMODSEQ is still at least 1.
	c.MustOK("CREATE Empty")
	r = c.selectMailbox("SELECT Empty", nil)
	if r.closedAt != 0 {
		t.Errorf("SELECT of another mailbox: [CLOSED] must come first (RFC 7162 3.2.11): %q", r.lines)
	}
	e := r.highestModSeq(t)
	if e == upstreamHighest {
		t.Errorf("empty mailbox: Dovecot's HIGHESTMODSEQ %d", e)
	}
	st = c.mustRun("STATUS Empty (HIGHESTMODSEQ)")
	if want := fmt.Sprintf("* STATUS Empty (HIGHESTMODSEQ %d)", e); len(st.lines) != 2 || st.lines[0] != want {
		t.Errorf("STATUS: %q, want %q", st.lines, want)
	}
	// And a client that enables CONDSTORE by SELECT (CONDSTORE) only.
	c2 := csLogin(t, addr, "")
	if got := c2.selectMailbox("EXAMINE Empty (CONDSTORE)", nil).highestModSeq(t); got != e {
		t.Errorf("EXAMINE (CONDSTORE): HIGHESTMODSEQ %d, want %d", got, e)
	}
}

// csChanges: outside flag changes and expunges reach a QRESYNC client with
// UID and MODSEQ; CHANGEDSINCE, VANISHED, UNCHANGEDSINCE and the MODSEQ
// search key give exactly the messages changed since the mod-sequence.
func csChanges(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Chg", 6)
	c := csLogin(t, addr, "QRESYNC")
	h0 := c.selectMailbox("SELECT Chg", u).highestModSeq(t)
	for uid, m := range c.modseqs() {
		if m > h0 {
			t.Fatalf("UID %d: MODSEQ %d above HIGHESTMODSEQ %d", uid, m, h0)
		}
	}

	d := csDirect(t, dc, "Chg")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[1]))
	// NOOP makes the watcher check the upstream: the change arrives as an
	// unsolicited FETCH with UID and MODSEQ (RFC 7162 3.1.4, 3.2.4).
	r := c.mustRun("NOOP")
	if len(r.lines) != 2 || len(r.fetches) != 1 {
		t.Fatalf("NOOP after an outside flag change: %q", r.lines)
	}
	f := r.fetches[0]
	if f.uid != u[1] || f.seq != 2 || !f.hasModSeq || !f.hasFlags || len(f.items) != 3 {
		t.Fatalf("want * 2 FETCH (UID %d MODSEQ (m) FLAGS (\\Flagged)), got %q", u[1], f.line)
	}
	csWantFlags(t, f.line, f.flags, `\Flagged`)
	m2 := f.modseq
	if m2 <= h0 {
		t.Fatalf("MODSEQ %d of a change after HIGHESTMODSEQ %d", m2, h0)
	}

	// More: a flag change, and expunges of a message in the middle and of
	// the one with the highest UID.
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS ($Work \Seen)`, u[3]))
	d.MustOK(fmt.Sprintf(`UID STORE %s +FLAGS.SILENT (\Deleted)`, csUIDSet(u[2], u[5])))
	d.MustOK(fmt.Sprintf("UID EXPUNGE %s", csUIDSet(u[2], u[5])))
	r = c.mustRun("NOOP")
	csWantUIDs(t, "NOOP: VANISHED", r.vanished, u[2], u[5])
	if len(r.expunges) != 0 || len(r.earlier) != 0 {
		t.Errorf("QRESYNC client got EXPUNGE or VANISHED (EARLIER): %q", r.lines)
	}
	var m4 uint64
	for _, f := range r.fetches {
		switch f.uid {
		case u[3]:
			if m4 != 0 || !f.hasModSeq || f.modseq <= m2 {
				t.Errorf("FETCH %q: want one, with MODSEQ above %d", f.line, m2)
			}
			csWantFlags(t, f.line, f.flags, `$Work`, `\Seen`)
			m4 = f.modseq
		case u[2], u[5]: // its \Deleted, before the VANISHED: allowed
		default:
			t.Errorf("NOOP: unexpected %q", f.line)
		}
	}
	if m4 == 0 {
		t.Fatalf("NOOP: no FETCH for UID %d: %q", u[3], r.lines)
	}
	if want := []uint32{u[0], u[1], u[3], u[4]}; !slices.Equal(c.view, want) {
		t.Fatalf("view after NOOP %v, want %v", c.view, want)
	}

	// CHANGEDSINCE (RFC 7162 3.1.4.1): exactly the messages changed after
	// the mod-sequence, each with UID, MODSEQ and FLAGS.
	r = c.mustRun("FETCH 1:* (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(h0, 10) + ")")
	csWantUIDs(t, "CHANGEDSINCE h0", r.fetchUIDs(), u[1], u[3])
	for uid, f := range r.byUID(t) {
		want := map[uint32]uint64{u[1]: m2, u[3]: m4}[uid]
		if !f.hasFlags || f.modseq != want {
			t.Errorf("%q: want FLAGS and MODSEQ (%d)", f.line, want)
		}
	}
	if len(r.vanished)+len(r.earlier)+len(r.expunges) != 0 {
		t.Errorf("FETCH CHANGEDSINCE without VANISHED reported expunges: %q", r.lines)
	}
	r = c.mustRun("FETCH 1:* (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(m2, 10) + ")")
	csWantUIDs(t, "CHANGEDSINCE m2", r.fetchUIDs(), u[3])
	r = c.mustRun("FETCH 1:* (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(max(m2, m4), 10) + ")")
	if len(r.lines) != 1 {
		t.Errorf("CHANGEDSINCE the latest change: %q", r.lines)
	}
	r = c.mustRun("FETCH 2:3 (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(h0, 10) + ")")
	csWantUIDs(t, "FETCH 2:3 CHANGEDSINCE h0", r.fetchUIDs(), u[1], u[3])
	r = c.mustRun("FETCH 1,4 (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(h0, 10) + ")")
	csWantUIDs(t, "FETCH 1,4 CHANGEDSINCE h0", r.fetchUIDs())

	// UID FETCH ... VANISHED (RFC 7162 3.2.6): the expunged UIDs first,
	// the highest UID of the mailbox included, then the changed messages.
	r = c.mustRun("UID FETCH 1:* (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(h0, 10) + " VANISHED)")
	csWantUIDs(t, "VANISHED (EARLIER)", r.earlier, u[2], u[5])
	csWantUIDs(t, "UID FETCH CHANGEDSINCE VANISHED", r.fetchUIDs(), u[1], u[3])
	if !strings.HasPrefix(r.lines[0], "* VANISHED (EARLIER) ") || r.lastEarlier > r.firstFetch {
		t.Errorf("VANISHED (EARLIER) must come before the FETCH responses: %q", r.lines)
	}
	if len(r.vanished) != 0 {
		t.Errorf("UID FETCH VANISHED sent VANISHED without EARLIER: %q", r.lines)
	}
	r = c.mustRun(fmt.Sprintf("UID FETCH %d:%d (FLAGS) (CHANGEDSINCE %d VANISHED)", u[0], u[4], h0))
	csWantUIDs(t, "VANISHED (EARLIER) in a range", r.earlier, u[2])
	csWantUIDs(t, "UID FETCH range CHANGEDSINCE VANISHED", r.fetchUIDs(), u[1], u[3])
	r = c.mustRun(fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", max(m2, m4)))
	for _, f := range r.fetches {
		t.Errorf("nothing changed after %d: %q", max(m2, m4), f.line)
	}

	// SEARCH MODSEQ (RFC 7162 3.1.5): the messages with a mod-sequence
	// of at least the one given, and (MODSEQ n), the highest of them.
	searchWant := func(cmd string, nums []uint32, modseq uint64) {
		t.Helper()
		r := c.mustRun(cmd)
		if len(r.lines) != 2 || !strings.HasPrefix(r.lines[0], "* SEARCH") {
			t.Errorf("%s: %q", cmd, r.lines)
			return
		}
		want := "* SEARCH"
		if len(nums) > 0 {
			want += " " + strings.ReplaceAll(csUIDSet(slices.Sorted(slices.Values(nums))...), ",", " ") + fmt.Sprintf(" (MODSEQ %d)", modseq)
		}
		fields := strings.Fields(r.lines[0])
		// Sort the numbers the server sent; their order is free.
		end := len(fields)
		if i := slices.IndexFunc(fields, func(s string) bool { return strings.HasPrefix(s, "(") }); i >= 0 {
			end = i
		}
		slices.SortFunc(fields[2:end], func(a, b string) int {
			x, _ := strconv.Atoi(a)
			y, _ := strconv.Atoi(b)
			return x - y
		})
		if got := strings.Join(fields, " "); got != want {
			t.Errorf("%s: %q, want %q", cmd, r.lines[0], want)
		}
	}
	all := c.modseqs()
	highestAll := slices.Max(slices.Collect(maps.Values(all)))
	searchWant(fmt.Sprintf("SEARCH MODSEQ %d", h0+1), []uint32{2, 3}, max(m2, m4))
	searchWant(fmt.Sprintf("UID SEARCH MODSEQ %d", h0+1), []uint32{u[1], u[3]}, max(m2, m4))
	searchWant(fmt.Sprintf(`SEARCH MODSEQ "/flags/\\Flagged" all %d`, h0+1), []uint32{2, 3}, max(m2, m4))
	searchWant(fmt.Sprintf("SEARCH MODSEQ %d", max(m2, m4)+1), nil, 0)
	searchWant("SEARCH MODSEQ 1", []uint32{1, 2, 3, 4}, highestAll)
	searchWant(fmt.Sprintf("SEARCH NOT MODSEQ %d", h0+1), []uint32{1, 4}, max(all[u[0]], all[u[4]]))

	// STORE (UNCHANGEDSINCE) (RFC 7162 3.1.3): messages changed after the
	// mod-sequence are left alone and named in [MODIFIED]; the others are
	// stored, each reported with its new MODSEQ.
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS ($Later)`, u[4]))
	r = c.mustRun("NOOP")
	if len(r.fetches) != 1 || r.fetches[0].uid != u[4] || r.fetches[0].modseq <= max(m2, m4) {
		t.Fatalf("NOOP after an outside flag change: %q", r.lines)
	}
	m5 := r.fetches[0].modseq
	r = c.run(fmt.Sprintf(`UID STORE %s (UNCHANGEDSINCE %d) +FLAGS (\Answered)`, csUIDSet(u[0], u[3], u[4]), h0))
	if !strings.HasPrefix(r.tagged, "OK [MODIFIED ") {
		t.Fatalf("UID STORE UNCHANGEDSINCE: want OK [MODIFIED ...], got %q", r.lines)
	}
	modified := strings.TrimSuffix(strings.Fields(r.tagged)[2], "]")
	csWantUIDs(t, "UID STORE [MODIFIED]", csParseSet(t, modified), u[3], u[4])
	if len(r.fetches) != 1 || r.fetches[0].uid != u[0] || r.fetches[0].seq != 1 || r.fetches[0].modseq <= m5 {
		t.Fatalf("UID STORE UNCHANGEDSINCE: want one FETCH for UID %d with MODSEQ above %d: %q", u[0], m5, r.lines)
	}
	csWantFlags(t, r.fetches[0].line, r.fetches[0].flags, `\Answered`)
	m1 := r.fetches[0].modseq
	// Sequence numbers in [MODIFIED] for STORE; .SILENT still reports MODSEQ.
	r = c.run(fmt.Sprintf(`STORE 2,3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\Draft)`, m2))
	if r.tagged[:min(len(r.tagged), len("OK [MODIFIED 3]"))] != "OK [MODIFIED 3]" {
		t.Fatalf("STORE UNCHANGEDSINCE: want OK [MODIFIED 3], got %q", r.lines)
	}
	if len(r.fetches) != 1 || r.fetches[0].seq != 2 || r.fetches[0].uid != u[1] || r.fetches[0].modseq <= m1 || r.fetches[0].hasFlags {
		t.Fatalf("STORE .SILENT UNCHANGEDSINCE: want * 2 FETCH (UID %d MODSEQ (>%d)) and no FLAGS: %q", u[1], m1, r.lines)
	}
	// UNCHANGEDSINCE 0 fails for every message (RFC 7162 3.1.3).
	r = c.run(`STORE 1:* (UNCHANGEDSINCE 0) +FLAGS ($Never)`)
	if !strings.HasPrefix(r.tagged, "OK [MODIFIED ") || len(r.lines) != 1 {
		t.Fatalf("STORE UNCHANGEDSINCE 0: %q", r.lines)
	}
	csWantUIDs(t, "STORE UNCHANGEDSINCE 0 [MODIFIED]", csParseSet(t, strings.TrimSuffix(strings.Fields(r.tagged)[2], "]")), 1, 2, 3, 4)
	r = c.run(`UID STORE 1:* (UNCHANGEDSINCE 0) +FLAGS.SILENT ($Never)`)
	if !strings.HasPrefix(r.tagged, "OK [MODIFIED ") || len(r.lines) != 1 {
		t.Fatalf("UID STORE UNCHANGEDSINCE 0: %q", r.lines)
	}
	csWantUIDs(t, "UID STORE UNCHANGEDSINCE 0 [MODIFIED]", csParseSet(t, strings.TrimSuffix(strings.Fields(r.tagged)[2], "]")), u[0], u[1], u[3], u[4])
	// What Dovecot has now.
	flags := csDirectFlags(t, dc, "Chg")
	csWantFlags(t, "UID 1", flags[u[0]], `\Answered`)
	csWantFlags(t, "UID 2", flags[u[1]], `\Flagged`, `\Draft`)
	csWantFlags(t, "UID 4", flags[u[3]], `$Work`, `\Seen`)
	csWantFlags(t, "UID 5", flags[u[4]], `$Later`)
	if len(flags) != 4 {
		t.Errorf("Dovecot has %v", flags)
	}
}

var csStatusRE = regexp.MustCompile(`^\* STATUS "?([^"]*)"? \((.*)\)$`)

// csStatusItems runs STATUS and returns its items.
func csStatusItems(t *testing.T, c *csClient, cmd string) map[string]uint64 {
	t.Helper()
	r := c.mustRun(cmd)
	if len(r.lines) != 2 {
		t.Fatalf("%s: %q", cmd, r.lines)
	}
	m := csStatusRE.FindStringSubmatch(r.lines[0])
	if m == nil {
		t.Fatalf("%s: %q", cmd, r.lines)
	}
	f := strings.Fields(m[2])
	out := map[string]uint64{}
	for i := 0; i+1 < len(f); i += 2 {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			t.Fatalf("%s: %q", cmd, r.lines)
		}
		out[f[i]] = n
	}
	return out
}

// csStatus: STATUS (HIGHESTMODSEQ) of a mailbox no session has selected
// follows outside changes (RFC 7162 3.1.6), and agrees with SELECT.
func csStatus(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Other", 3)
	c := csLogin(t, addr, "CONDSTORE")
	s1 := csStatusItems(t, c, "STATUS Other (HIGHESTMODSEQ)")
	if len(s1) != 1 || s1["HIGHESTMODSEQ"] == 0 {
		t.Fatalf("STATUS (HIGHESTMODSEQ): %v", s1)
	}
	d := csDirect(t, dc, "Other")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[0]))
	s2 := csStatusItems(t, c, "STATUS Other (MESSAGES HIGHESTMODSEQ)")
	if s2["MESSAGES"] != 3 || s2["HIGHESTMODSEQ"] <= s1["HIGHESTMODSEQ"] || len(s2) != 2 {
		t.Fatalf("after a flag change: %v, before %v", s2, s1)
	}
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[2]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[2]))
	s3 := csStatusItems(t, c, "STATUS Other (HIGHESTMODSEQ MESSAGES UIDNEXT)")
	if s3["MESSAGES"] != 2 || s3["HIGHESTMODSEQ"] <= s2["HIGHESTMODSEQ"] || s3["UIDNEXT"] != uint64(u[2]+1) || len(s3) != 3 {
		t.Fatalf("after an expunge: %v, before %v", s3, s2)
	}
	// A name that needs quoting, and a mailbox that does not exist: the
	// upstream's NO, at once.
	d.MustOK(`CREATE "Two Words"`)
	s4 := csStatusItems(t, c, `STATUS "Two Words" (HIGHESTMODSEQ MESSAGES)`)
	if s4["MESSAGES"] != 0 || s4["HIGHESTMODSEQ"] == 0 || len(s4) != 2 {
		t.Errorf(`STATUS "Two Words": %v`, s4)
	}
	start := time.Now()
	if r := c.run("STATUS Nonexistent (HIGHESTMODSEQ)"); !strings.HasPrefix(r.tagged, "NO") || len(r.lines) != 1 {
		t.Errorf("STATUS of a missing mailbox: %q", r.lines)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("STATUS (HIGHESTMODSEQ) of a missing mailbox took %v", el)
	}
	// Selecting another mailbox first, then Other: [CLOSED] before
	// Other's responses, and the HIGHESTMODSEQ STATUS gave.
	c.MustOK("CREATE Status2")
	c.selectMailbox("SELECT Status2", nil)
	r := c.selectMailbox("SELECT Other", u[:2])
	if r.closedAt != 0 || len(r.codes["CLOSED"]) != 1 {
		t.Errorf("want [CLOSED] first and once (RFC 7162 3.2.11): %q", r.lines)
	}
	if h := r.highestModSeq(t); h != s3["HIGHESTMODSEQ"] {
		t.Errorf("SELECT HIGHESTMODSEQ %d, STATUS said %d", h, s3["HIGHESTMODSEQ"])
	}
	// EXAMINE of the same mailbox closes it too.
	r = c.selectMailbox("EXAMINE Other", u[:2])
	if r.closedAt != 0 {
		t.Errorf("want [CLOSED] first: %q", r.lines)
	}
}

// csExpunge: an outside expunge reaches a QRESYNC client as VANISHED and a
// CONDSTORE-only client as EXPUNGE (RFC 7162 3.2.10).
func csExpunge(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Exp", 4)
	q := csLogin(t, addr, "QRESYNC")
	q.selectMailbox("SELECT Exp", u)
	cs := csLogin(t, addr, "CONDSTORE")
	cs.selectMailbox("SELECT Exp", u)
	cs2 := csLogin(t, addr, "")
	cs2.selectMailbox("SELECT Exp (CONDSTORE)", u)

	d := csDirect(t, dc, "Exp")
	for _, uid := range []uint32{u[1], u[3]} { // the second is the highest UID
		d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, uid))
		d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, uid))
		seq := uint32(slices.Index(q.view, uid) + 1)
		r := q.mustRun("NOOP")
		csWantUIDs(t, "QRESYNC client: VANISHED", r.vanished, uid)
		if len(r.expunges) != 0 || len(r.earlier) != 0 {
			t.Errorf("QRESYNC client: %q", r.lines)
		}
		if want := fmt.Sprintf("* VANISHED %d", uid); !slices.Contains(r.lines, want) {
			t.Errorf("QRESYNC client: want %q in %q", want, r.lines)
		}
		for _, c := range []*csClient{cs, cs2} {
			r := c.mustRun("NOOP")
			if !slices.Equal(r.expunges, []uint32{seq}) || len(r.vanished)+len(r.earlier) != 0 {
				t.Errorf("CONDSTORE client: want * %d EXPUNGE only, got %q", seq, r.lines)
			}
			for _, f := range r.fetches {
				if !f.hasModSeq {
					t.Errorf("CONDSTORE client: FETCH without MODSEQ: %q", f.line)
				}
			}
		}
	}
	for _, c := range []*csClient{q, cs, cs2} {
		if want := []uint32{u[0], u[2]}; !slices.Equal(c.view, want) {
			t.Errorf("view %v, want %v", c.view, want)
		}
	}
}

// csOwnExpunge: a QRESYNC client's own EXPUNGE and UID EXPUNGE are
// reported with VANISHED, and their tagged OK carries the new
// HIGHESTMODSEQ (RFC 7162 3.2.7, 3.2.9: "If at least one message got
// expunged and QRESYNC was enabled, the server MUST send the updated
// per-mailbox modification sequence using the HIGHESTMODSEQ response code
// in the tagged OK response"). A CONDSTORE-only client hears EXPUNGE.
func csOwnExpunge(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Own", 4)
	q := csLogin(t, addr, "QRESYNC")
	q.selectMailbox("SELECT Own", u)
	cs := csLogin(t, addr, "CONDSTORE")
	cs.selectMailbox("SELECT Own", u)

	taggedHighest := func(r csResp) uint64 {
		t.Helper()
		m := regexp.MustCompile(`^OK \[HIGHESTMODSEQ (\d+)\]`).FindStringSubmatch(r.tagged)
		if m == nil {
			t.Errorf("want OK [HIGHESTMODSEQ n] after an expunge with QRESYNC (RFC 7162 3.2.7/3.2.9), got %q", r.lines)
			return 0
		}
		n, _ := strconv.ParseUint(m[1], 10, 64)
		return n
	}
	for i, cmd := range []string{"EXPUNGE", fmt.Sprintf("UID EXPUNGE %d", u[2])} {
		uid := []uint32{u[0], u[2]}[i]
		r := q.mustRun(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, uid))
		if len(r.fetches) != 1 {
			t.Fatalf("STORE .SILENT: %q", r.lines)
		}
		stored := r.fetches[0].modseq
		seq := uint32(slices.Index(cs.view, uid) + 1)
		r = q.mustRun(cmd)
		// q, the first to select the mailbox, took its 4 messages as
		// recent: each expunge lowers the count (RFC 3501 7.3.2; #17).
		want := []string{fmt.Sprintf("* VANISHED %d", uid), fmt.Sprintf("* %d RECENT", 3-i)}
		if len(r.lines) != 3 || !slices.Equal(r.lines[:2], want) {
			t.Errorf("%s: want %q and the tagged OK, got %q", cmd, want, r.lines)
		}
		h := taggedHighest(r)
		if h != 0 && h <= stored {
			t.Errorf("%s: HIGHESTMODSEQ %d not above the \\Deleted change's %d", cmd, h, stored)
		}
		if h != 0 {
			if got := csStatusItems(t, csLogin(t, addr, ""), "STATUS Own (HIGHESTMODSEQ)")["HIGHESTMODSEQ"]; got != h {
				t.Errorf("%s: tagged HIGHESTMODSEQ %d, STATUS says %d", cmd, h, got)
			}
		}
		r = cs.mustRun("NOOP")
		if !slices.Equal(r.expunges, []uint32{seq}) || len(r.vanished) != 0 {
			t.Errorf("CONDSTORE client after %s: want * %d EXPUNGE, got %q", cmd, seq, r.lines)
		}
	}
}

// csQResyncSelect: a client that knew the mailbox at a mod-sequence and
// reconnects after outside appends, flag changes and expunges gets exactly
// the delta in its QRESYNC SELECT (RFC 7162 3.2.5).
func csQResyncSelect(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Rs", 8)
	c := csLogin(t, addr, "QRESYNC")
	r := c.selectMailbox("SELECT Rs", u)
	h0 := r.highestModSeq(t)
	uv := r.codes["UIDVALIDITY"][0]
	c.MustOK("LOGOUT")
	c.Close()

	d := csDirect(t, dc, "Rs")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[1]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS ($Work)`, u[4]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[6])) // then expunged
	d.MustOK(fmt.Sprintf(`UID STORE %s +FLAGS.SILENT (\Deleted)`, csUIDSet(u[2], u[6], u[7])))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %s`, csUIDSet(u[2], u[6], u[7]))) // u[7]: the highest UID
	added := csAppend(t, d, "Rs", 2)
	now := []uint32{u[0], u[1], u[3], u[4], u[5], added[0], added[1]}
	wantFlagsOf := map[uint32][]string{u[1]: {`\Seen`}, u[4]: {`$Work`}, added[0]: nil, added[1]: nil}

	c = csLogin(t, addr, "QRESYNC")
	check := func(t *testing.T, cmd string, closed bool, vanished []uint32, fetched []uint32) uint64 {
		t.Helper()
		c.t = t
		r := c.selectMailbox(cmd, now)
		h := r.highestModSeq(t)
		if closed != (r.closedAt == 0) || len(r.codes["CLOSED"]) > 1 {
			t.Errorf("%s: [CLOSED] first: %v: %q", cmd, closed, r.lines)
		}
		csWantUIDs(t, cmd+": VANISHED (EARLIER)", r.earlier, vanished...)
		csWantUIDs(t, cmd+": FETCH", r.fetchUIDs(), fetched...)
		if len(r.vanished) != 0 || len(r.expunges) != 0 {
			t.Errorf("%s: VANISHED without EARLIER or EXPUNGE: %q", cmd, r.lines)
		}
		if r.firstFetch >= 0 && r.lastEarlier > r.firstFetch {
			t.Errorf("%s: VANISHED (EARLIER) after FETCH: %q", cmd, r.lines)
		}
		for uid, f := range r.byUID(t) {
			if !f.hasFlags || !f.hasModSeq || f.modseq <= h0 || f.modseq > h {
				t.Errorf("%s: %q: want UID, FLAGS and a MODSEQ in %d..%d", cmd, f.line, h0+1, h)
			}
			csWantFlags(t, f.line, f.flags, wantFlagsOf[uid]...)
		}
		return h
	}
	q := func(modseq uint64, rest string) string {
		return fmt.Sprintf("SELECT Rs (QRESYNC (%s %d%s))", uv, modseq, rest)
	}
	// Without known UIDs the server acts as if they were 1:<UIDNEXT-1>:
	// the new messages are reported too (RFC 7162 3.2.5.1).
	h1 := check(t, q(h0, ""), false, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4], added[0], added[1]})
	if h1 <= h0 {
		t.Errorf("HIGHESTMODSEQ %d after changes, was %d", h1, h0)
	}
	check(t, fmt.Sprintf("EXAMINE Rs (QRESYNC (%s %d))", uv, h0), true, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4], added[0], added[1]})
	check(t, fmt.Sprintf("SELECT Rs (CONDSTORE QRESYNC (%s %d))", uv, h0), true, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4], added[0], added[1]})
	// With known UIDs, only changes of those messages: RFC 7162 3.2.5.1,
	// "If the list of known UIDs was also provided, the server should
	// only report flag changes and expunges for the specified messages",
	// as Dovecot does.
	t.Run("KnownUIDs", func(t *testing.T) {
		known := fmt.Sprintf(" %d:%d", u[0], u[7])
		check(t, q(h0, known), true, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4]})
		check(t, q(h0, fmt.Sprintf(" %d:%d", u[0], u[4])), true, []uint32{u[2]}, []uint32{u[1], u[4]})
		check(t, q(h0, known+fmt.Sprintf(" (1:8 %d:%d)", u[0], u[7])), true, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4]})
		// Known UIDs that include the new ones: those are reported.
		check(t, q(h0, fmt.Sprintf(" %d:%d", u[0], added[1])), true, []uint32{u[2], u[6], u[7]}, []uint32{u[1], u[4], added[0], added[1]})
	})
	c.t = t
	// Up to date: nothing.
	if h := check(t, q(h1, ""), true, nil, nil); h != h1 {
		t.Errorf("HIGHESTMODSEQ %d, was %d with nothing changed", h, h1)
	}
	// Another UIDVALIDITY: a plain SELECT, the client must resync in full.
	otherUV, _ := strconv.ParseUint(uv, 10, 32)
	if otherUV++; otherUV > 1<<32-1 {
		otherUV = 1
	}
	check(t, fmt.Sprintf("SELECT Rs (QRESYNC (%d %d %d:%d))", otherUV, h0, u[0], u[7]), true, nil, nil)
	// The session goes on as usual, and what the QRESYNC SELECT told is
	// not told again.
	if r := c.mustRun("NOOP"); len(r.lines) != 1 {
		t.Errorf("NOOP after the QRESYNC SELECT: %q", r.lines)
	}
	r = c.mustRun("FETCH 1:* (FLAGS) (CHANGEDSINCE " + strconv.FormatUint(h0, 10) + ")")
	csWantUIDs(t, "CHANGEDSINCE after the resync", r.fetchUIDs(), u[1], u[4], added[0], added[1])
}

// csBadInput: malformed RFC 7162 arguments get BAD and change nothing; the
// session and its selected mailbox survive.
func csBadInput(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Bad", 3)
	// QRESYNC not enabled (RFC 7162 3.2.5: BAD).
	n := csLogin(t, addr, "")
	r := n.selectMailbox("SELECT Bad", u)
	uv := r.codes["UIDVALIDITY"][0]
	bad := func(c *csClient, cmd string) {
		t.Helper()
		lines := c.Cmd(cmd)
		if !strings.HasPrefix(imaptest.Tagged(lines), "BAD ") || len(lines) != 1 {
			t.Errorf("%s: want BAD and nothing else, got %q", cmd, lines)
		}
	}
	bad(n, fmt.Sprintf("SELECT Bad (QRESYNC (%s 1))", uv))
	bad(n, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)") // RFC 7162 3.2.6
	n.mustRun("FETCH 1 (FLAGS)")                              // still selected

	c := csLogin(t, addr, "QRESYNC")
	h := c.selectMailbox("SELECT Bad", u).highestModSeq(t)
	for _, cmd := range []string{
		// Mod-sequences are 1 to 2^63-1 (RFC 7162 7: mod-sequence-value).
		fmt.Sprintf("SELECT Bad (QRESYNC (%s 0))", uv),
		fmt.Sprintf("SELECT Bad (QRESYNC (%s 9223372036854775808))", uv),
		"FETCH 1:* (FLAGS) (CHANGEDSINCE 0)",
		"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0 VANISHED)",
		// VANISHED needs CHANGEDSINCE and UID FETCH (RFC 7162 3.2.6).
		"UID FETCH 1:* (FLAGS) (VANISHED)",
		"FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
		// Garbage QRESYNC parameters.
		"SELECT Bad (QRESYNC (" + uv + "))",
		"SELECT Bad (QRESYNC ())",
		"SELECT Bad (QRESYNC)",
		"SELECT Bad (QRESYNC " + uv + " 1)",
		"SELECT Bad (QRESYNC (" + uv + " x))",
		"SELECT Bad (QRESYNC (0 1))",
		"SELECT Bad (QRESYNC (" + uv + " 1 1:x))",
		"SELECT Bad (QRESYNC (" + uv + " 1 1:3 (1:2)))",
		"SELECT Bad (QRESYNC (" + uv + " 1 1:3 (1:2 1:2) 5))",
		"SELECT Bad (QRESYNC ((" + uv + " 1)))",
		"SELECT Bad (QRESYNC (" + uv + " 1)",
		"SELECT Bad (QRESYNC (" + uv + " 1) QRESYNC (" + uv + " 1))",
		"EXAMINE Bad (QRESYNC (" + uv + " -1))",
		"STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)",
		"STORE 1 (UNCHANGEDSINCE x) +FLAGS (\\Seen)",
		"STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (\\Seen)",
		"SEARCH MODSEQ 0x10",
	} {
		bad(c, cmd)
		// The selected mailbox is still there, unchanged.
		if r := c.mustRun("FETCH 1 (FLAGS)"); len(r.fetches) != 1 {
			t.Fatalf("after %s: %q", cmd, r.lines)
		}
	}
	// Nothing was stored.
	for uid, f := range csDirectFlags(t, dc, "Bad") {
		csWantFlags(t, fmt.Sprintf("UID %d", uid), f)
	}
	// The session still answers QRESYNC.
	r = c.selectMailbox(fmt.Sprintf("SELECT Bad (QRESYNC (%s %d))", uv, h), u)
	if r.closedAt != 0 || len(r.fetches)+len(r.earlier) != 0 || r.highestModSeq(t) != h {
		t.Errorf("QRESYNC SELECT after bad input: %q", r.lines)
	}
	c.MustOK("NOOP")
	c.MustOK("LOGOUT")
}

// csEnablingCommand: a client that never enabled CONDSTORE sees no MODSEQ
// and plain EXPUNGE; after its first CONDSTORE-enabling command (FETCH
// MODSEQ) in the selected state every FETCH carries UID and MODSEQ (RFC
// 7162 3.1, 3.1.4).
func csEnablingCommand(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Enab", 3)
	c := csLogin(t, addr, "")
	// [HIGHESTMODSEQ] may come with every SELECT (RFC 7162 3.1.2.1);
	// if it does not, the first CONDSTORE-enabling command must send it.
	r := c.selectMailbox("SELECT Enab", u)
	toldOnSelect := len(r.codes["HIGHESTMODSEQ"]) > 0
	d := csDirect(t, dc, "Enab")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[0]))
	r = c.mustRun("NOOP")
	if len(r.fetches) != 1 || r.fetches[0].hasModSeq || r.fetches[0].seq != 1 {
		t.Errorf("NOOP without CONDSTORE: want * 1 FETCH (FLAGS (\\Seen)) without MODSEQ, got %q", r.lines)
	}
	r = c.mustRun("FETCH 2 (MODSEQ)")
	var h uint64
	if !toldOnSelect || len(r.codes["HIGHESTMODSEQ"]) > 0 {
		h = r.highestModSeq(t)
	} else {
		h = csStatusItems(t, csLogin(t, addr, ""), "STATUS Enab (HIGHESTMODSEQ)")["HIGHESTMODSEQ"]
	}
	c.condstore = true
	if len(r.fetches) != 1 || r.fetches[0].uid != u[1] || !r.fetches[0].hasModSeq || r.fetches[0].modseq > h {
		t.Errorf("FETCH (MODSEQ): %q", r.lines)
	}
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[2]))
	r = c.mustRun("NOOP")
	if len(r.fetches) != 1 || r.fetches[0].uid != u[2] || r.fetches[0].modseq <= h {
		t.Errorf("NOOP after CONDSTORE was enabled: want * 3 FETCH (UID %d MODSEQ (>%d) FLAGS (\\Flagged)), got %q", u[2], h, r.lines)
	}
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[1]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[1]))
	r = c.mustRun("NOOP")
	if !slices.Equal(r.expunges, []uint32{2}) || len(r.vanished) != 0 {
		t.Errorf("CONDSTORE without QRESYNC: want * 2 EXPUNGE, got %q", r.lines)
	}
}

// csTwoClients: a change one proxy client makes reaches the other with
// UID and MODSEQ, and makes the other's STORE (UNCHANGEDSINCE) of the same
// message fail (RFC 7162 3.1.3).
func csTwoClients(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Two", 3)
	a := csLogin(t, addr, "QRESYNC")
	ha := a.selectMailbox("SELECT Two", u).highestModSeq(t)
	b := csLogin(t, addr, "CONDSTORE")
	b.selectMailbox("SELECT Two", u)
	r := b.mustRun(fmt.Sprintf(`UID STORE %d FLAGS ($ByB)`, u[1]))
	if len(r.fetches) != 1 || r.fetches[0].modseq <= ha {
		t.Fatalf("STORE: %q", r.lines)
	}
	mb := r.fetches[0].modseq
	r = a.run(fmt.Sprintf(`UID STORE %s (UNCHANGEDSINCE %d) FLAGS ($ByA)`, csUIDSet(u[0], u[1]), ha))
	if !strings.HasPrefix(r.tagged, fmt.Sprintf("OK [MODIFIED %d]", u[1])) {
		t.Errorf("UID STORE UNCHANGEDSINCE after another client's change: want OK [MODIFIED %d], got %q", u[1], r.lines)
	}
	for _, f := range r.fetches {
		switch {
		case f.uid == u[0] && f.modseq > mb:
			csWantFlags(t, f.line, f.flags, `$ByA`)
		case f.uid == u[1] && f.modseq == mb: // b's change, told to a
			csWantFlags(t, f.line, f.flags, `$ByB`)
		default:
			t.Errorf("unexpected %q", f.line)
		}
	}
	flags := csDirectFlags(t, dc, "Two")
	csWantFlags(t, "UID 1", flags[u[0]], `$ByA`)
	csWantFlags(t, "UID 2", flags[u[1]], `$ByB`)
	// b hears of a's change, once.
	r = b.mustRun("NOOP")
	if len(r.fetches) != 1 || r.fetches[0].uid != u[0] || r.fetches[0].modseq <= mb {
		t.Errorf("NOOP: want the other client's change, got %q", r.lines)
	}
	if r := b.mustRun("NOOP"); len(r.lines) != 1 {
		t.Errorf("second NOOP: %q", r.lines)
	}
}

// csUnchangedSinceOutside: a change made directly on the upstream and
// completed before the client sends STORE (UNCHANGEDSINCE m) must make
// that STORE fail for the message (RFC 7162 3.1.3), even when the
// proxy's watcher has not heard of it yet (Dovecot tells IDLE about half
// a second later); otherwise the STORE silently overwrites it.
func csUnchangedSinceOutside(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Uso", 2)
	c := csLogin(t, addr, "QRESYNC")
	h := c.selectMailbox("SELECT Uso", u).highestModSeq(t)
	d := csDirect(t, dc, "Uso")
	d.MustOK(fmt.Sprintf(`UID STORE %d FLAGS ($Outside)`, u[0]))
	r := c.run(fmt.Sprintf(`UID STORE %d (UNCHANGEDSINCE %d) FLAGS ($Mine)`, u[0], h))
	if !strings.HasPrefix(r.tagged, fmt.Sprintf("OK [MODIFIED %d]", u[0])) {
		t.Errorf("UID STORE (UNCHANGEDSINCE %d) of a message changed upstream before the command: want OK [MODIFIED %d], got %q", h, u[0], r.lines)
	}
	flags := csDirectFlags(t, dc, "Uso")
	csWantFlags(t, "the outside change", flags[u[0]], `$Outside`)
}

// csHeldExpunge: an expunge the proxy knows of cannot be reported during
// FETCH (RFC 3501 7.4.1), while the FETCH responses carry MODSEQs above
// the expunge's. A client that follows RFC 7162 (section 6: at the tagged
// response, a HIGHESTMODSEQ response code wins, else the largest MODSEQ
// seen) and loses the connection right after the FETCH must still learn
// of the expunge when it resyncs (RFC 7162 3.2, errata 1809/1810).
func csHeldExpunge(t *testing.T, dc *dovecottest.Server, addr string) {
	u := csSeed(t, dc, "Held", 4)
	c := csLogin(t, addr, "QRESYNC")
	r := c.selectMailbox("SELECT Held", u)
	h0 := r.highestModSeq(t)
	uv := r.codes["UIDVALIDITY"][0]
	w := csLogin(t, addr, "QRESYNC")
	w.selectMailbox("SELECT Held", u)

	d := csDirect(t, dc, "Held")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[1]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[1]))
	// The other client's NOOPs make the watcher record the expunge and
	// then, with a larger mod-sequence, the flag change; c has not been
	// told.
	r = w.mustRun("NOOP")
	csWantUIDs(t, "other client: VANISHED", r.vanished, u[1])
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS ($After)`, u[2]))
	r = w.mustRun("NOOP")
	if len(r.fetches) != 1 || r.fetches[0].uid != u[2] {
		t.Fatalf("other client: NOOP: %q", r.lines)
	}

	r = c.run("FETCH 1:* (FLAGS)")
	if len(r.vanished)+len(r.expunges) != 0 {
		t.Fatalf("expunge reported during FETCH (RFC 3501 7.4.1): %q", r.lines)
	}
	cached := h0
	if v := r.codes["HIGHESTMODSEQ"]; len(v) > 0 {
		cached, _ = strconv.ParseUint(v[len(v)-1], 10, 64)
	} else {
		for _, f := range r.fetches {
			cached = max(cached, f.modseq)
		}
	}
	c.Close() // cut off before any later command could report the expunge

	c2 := csLogin(t, addr, "QRESYNC")
	now := []uint32{u[0], u[2], u[3]}
	r = c2.selectMailbox(fmt.Sprintf("SELECT Held (QRESYNC (%s %d))", uv, cached), now)
	if !slices.Contains(r.earlier, u[1]) {
		t.Errorf("a client cut off after %q resyncs from mod-sequence %d and never learns that UID %d was expunged: %q", "FETCH 1:* (FLAGS)", cached, u[1], r.lines)
	}
}

// TestImapFlowQResync: ImapFlow with qresync through the proxy in front
// of a Dovecot that offers neither CONDSTORE nor QRESYNC. It opens INBOX
// and keeps uidValidity and highestModseq; after outside changes it
// reopens with them and its expunge/flags events must be exactly those
// changes; then, still connected, it hears of live changes as
// exists/flags/expunge events.
func TestImapFlowQResync(t *testing.T) {
	node := requireImapFlow(t)
	dc := dovecottest.Start(t, dovecottest.Legacy)
	u := csSeed(t, dc, "INBOX", 5)
	addr := csStartProxy(t, dc)
	host, port, _ := net.SplitHostPort(addr)

	// First session: open, remember, leave.
	first := csRunFlowScript(t, node, host, port, "open")
	var opened struct {
		UIDValidity   string   `json:"uidValidity"`
		HighestModseq string   `json:"highestModseq"`
		Exists        int      `json:"exists"`
		UIDs          []uint32 `json:"uids"`
		Enabled       []string `json:"enabled"`
	}
	first.next(&opened)
	first.wait()
	if !slices.Contains(opened.Enabled, "QRESYNC") || opened.Exists != 5 || !slices.Equal(opened.UIDs, u) {
		t.Fatalf("first session: %+v", opened)
	}
	h0, err := strconv.ParseUint(opened.HighestModseq, 10, 64)
	if err != nil || h0 == 0 {
		t.Fatalf("highestModseq %q", opened.HighestModseq)
	}

	// Outside changes: 2 appended, 2 flagged, 1 expunged.
	d := csDirect(t, dc, "INBOX")
	added := csAppend(t, d, "INBOX", 2)
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[0]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged $Work)`, u[3]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[2]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[2]))
	view := []uint32{u[0], u[1], u[3], u[4], added[0], added[1]}

	// Second session: resync from the stored state.
	second := csRunFlowScript(t, node, host, port, "resync", opened.UIDValidity, opened.HighestModseq)
	var resynced csFlowReport
	second.next(&resynced)
	if resynced.Mailbox.UIDValidity != opened.UIDValidity || resynced.Mailbox.Exists != len(view) || !resynced.Mailbox.QResync {
		t.Fatalf("reopened mailbox: %+v, want uidValidity %s, %d messages, qresync", resynced.Mailbox, opened.UIDValidity, len(view))
	}
	h1, _ := strconv.ParseUint(resynced.Mailbox.HighestModseq, 10, 64)
	if h1 <= h0 {
		t.Errorf("highestModseq %d after changes, was %d", h1, h0)
	}
	wantExpunges := []csFlowEvent{{Event: "expunge", UID: u[2], Vanished: true, Earlier: true}}
	wantFlagEvents := map[uint32][]string{u[0]: {`\Seen`}, u[3]: {`$Work`, `\Flagged`}, added[0]: {}, added[1]: {}}
	csCheckFlowEvents(t, "resync", resynced.Events, view, h0, h1, wantExpunges, wantFlagEvents, -1, nil)

	// Live: one appended, one flagged, one expunged while it is connected.
	more := csAppend(t, d, "INBOX", 1)
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Answered)`, u[1]))
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, u[4]))
	d.MustOK(fmt.Sprintf(`UID EXPUNGE %d`, u[4]))
	second.send("noop")
	var live csFlowReport
	second.next(&live)
	second.wait()
	wantExpunges = []csFlowEvent{{Event: "expunge", UID: u[4], Vanished: true}}
	wantFlagEvents = map[uint32][]string{u[1]: {`\Answered`}}
	h2 := live.highest(t)
	if h2 <= h1 {
		t.Errorf("highestModseq %d after live changes, was %d", h2, h1)
	}
	csCheckFlowEvents(t, "live", live.Events, append(slices.Clone(view), more...), h1, h2, wantExpunges, wantFlagEvents, len(view), more)
}

// csFlowEvent is one event the ImapFlow script recorded.
type csFlowEvent struct {
	Event     string   `json:"event"`
	Seq       uint32   `json:"seq,omitempty"`
	UID       uint32   `json:"uid,omitempty"`
	Modseq    string   `json:"modseq,omitempty"`
	Flags     []string `json:"flags,omitempty"`
	Vanished  bool     `json:"vanished,omitempty"`
	Earlier   bool     `json:"earlier,omitempty"`
	Count     int      `json:"count,omitempty"`
	PrevCount int      `json:"prevCount,omitempty"`
}

type csFlowReport struct {
	Mailbox struct {
		UIDValidity   string `json:"uidValidity"`
		HighestModseq string `json:"highestModseq"`
		Exists        int    `json:"exists"`
		QResync       bool   `json:"qresync"`
	} `json:"mailbox"`
	HighestModseq string        `json:"highestModseq"`
	Events        []csFlowEvent `json:"events"`
}

// highest returns the mailbox's highestModseq after the live phase.
func (r csFlowReport) highest(t *testing.T) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(r.HighestModseq, 10, 64)
	if err != nil {
		t.Fatalf("highestModseq %q", r.HighestModseq)
	}
	return n
}

// csCheckFlowEvents compares ImapFlow's events with the changes made: each
// expunge once, with the right UID and form; each flag change once, with
// its UID, sequence number in view, flags and a MODSEQ above from (and at
// most to, unless to is 0). Live (count >= 0), exists events must follow
// the count from count messages on, one new message per event, and end at
// count again after as many expunges as new messages; new messages may be
// announced with their flags (newUIDs).
func csCheckFlowEvents(t *testing.T, phase string, events []csFlowEvent, view []uint32, from, to uint64, expunges []csFlowEvent, flags map[uint32][]string, count int, newUIDs []uint32) {
	t.Helper()
	var gotExpunges []csFlowEvent
	seenFlags := map[uint32]bool{}
	start := count
	for _, e := range events {
		switch e.Event {
		case "expunge":
			gotExpunges = append(gotExpunges, csFlowEvent{Event: e.Event, UID: e.UID, Vanished: e.Vanished, Earlier: e.Earlier})
			if !e.Earlier {
				count--
			}
		case "flags":
			want, ok := flags[e.UID]
			if !ok {
				if !slices.Contains(newUIDs, e.UID) {
					t.Errorf("%s: unexpected flags event %+v", phase, e)
				}
				continue
			}
			if seenFlags[e.UID] {
				t.Errorf("%s: flags event twice for UID %d", phase, e.UID)
			}
			seenFlags[e.UID] = true
			if i := slices.Index(view, e.UID); i < 0 || e.Seq != uint32(i+1) {
				t.Errorf("%s: flags event %+v: sequence number does not match view %v", phase, e, view)
			}
			if got, w := csNormFlags(e.Flags), csNormFlags(want); !slices.Equal(got, w) {
				t.Errorf("%s: UID %d flags %v, want %v", phase, e.UID, got, w)
			}
			m, err := strconv.ParseUint(e.Modseq, 10, 64)
			if err != nil || m <= from || to != 0 && m > to {
				t.Errorf("%s: UID %d modseq %q, want above %d and at most %d", phase, e.UID, e.Modseq, from, to)
			}
		case "exists":
			if start < 0 || e.PrevCount != count || e.Count != count+1 {
				t.Errorf("%s: exists event %+v; the client had %d messages", phase, e, count)
			}
			count = e.Count
		default:
			t.Errorf("%s: unexpected event %+v", phase, e)
		}
	}
	if fmt.Sprintf("%+v", gotExpunges) != fmt.Sprintf("%+v", expunges) {
		t.Errorf("%s: expunge events %+v, want %+v", phase, gotExpunges, expunges)
	}
	for uid := range flags {
		if !seenFlags[uid] {
			t.Errorf("%s: no flags event for UID %d; events %+v", phase, uid, events)
		}
	}
	if start >= 0 && count != start {
		t.Errorf("%s: the client counts %d messages after the events, want %d: %+v", phase, count, start, events)
	}
}

// csFlowScript is a running testdata/node/qresync_events.js.
type csFlowScript struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Scanner
	stderr *strings.Builder
	done   chan struct{}
}

func csRunFlowScript(t *testing.T, node, host, port string, args ...string) *csFlowScript {
	t.Helper()
	cmd := exec.Command(node, append([]string{"qresync_events.js", host, port, "alice", "alicepass"}, args...)...)
	cmd.Dir = "testdata/node"
	s := &csFlowScript{t: t, cmd: cmd, stderr: &strings.Builder{}, done: make(chan struct{})}
	cmd.Stderr = s.stderr
	var err error
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.out = bufio.NewScanner(stdout)
	s.out.Buffer(nil, 1<<20)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	t.Cleanup(func() {
		timer.Stop()
		cmd.Process.Kill()
		<-s.done
	})
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	return s
}

// next reads the script's next JSON line into v.
func (s *csFlowScript) next(v any) {
	s.t.Helper()
	if !s.out.Scan() {
		<-s.done
		s.t.Fatalf("imapflow script ended early: %v\n%s", s.cmd.ProcessState, s.stderr)
	}
	csTrace(s.t, "imapflow", []string{s.out.Text()})
	if err := json.Unmarshal(s.out.Bytes(), v); err != nil {
		s.t.Fatalf("imapflow script: %v: %s\n%s", err, s.out.Bytes(), s.stderr)
	}
}

func (s *csFlowScript) send(line string) {
	s.t.Helper()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		s.t.Fatal(err)
	}
}

// wait waits for the script to exit successfully.
func (s *csFlowScript) wait() {
	s.t.Helper()
	s.stdin.Close()
	<-s.done
	if !s.cmd.ProcessState.Success() {
		s.t.Fatalf("imapflow script: %v\n%s", s.cmd.ProcessState, s.stderr)
	}
}
