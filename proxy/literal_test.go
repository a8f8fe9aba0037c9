package proxy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// The proxy advertises LITERAL+ (RFC 7888) to every client, whatever the
// upstream: see the package documentation. These tests put it in front of
// upstreams without LITERAL+ and check that a client's non-synchronising
// literals work in every command that carries literals, and that no
// continuation request of the upstream's ever reaches the client.

// startLiteralMinus starts go-imap's in-memory server without LITERAL+
// (and without NAMESPACE): it advertises LITERAL- only, so the proxy
// sends literals of up to 4096 bytes non-synchronising and larger ones
// synchronising.
func startLiteralMinus(t *testing.T, userPass ...string) *memupstream.Server {
	t.Helper()
	return startUpstream(t, memupstream.Options{Caps: []imap.Cap{imap.CapUIDPlus}}, userPass...)
}

// TestLiteralPlusAdvertised: LITERAL+ before and after login, never
// LITERAL- beside it, even when the upstream advertises LITERAL- only.
func TestLiteralPlusAdvertised(t *testing.T) {
	t.Parallel()
	up := startLiteralMinus(t, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	for i, phase := range []string{"before login", "after login"} {
		if i == 1 {
			c.LoginTagged("alice", "secret")
		}
		got := c.Do("c", "CAPABILITY")
		caps := strings.Fields(strings.TrimPrefix(got[0], "* CAPABILITY "))
		if !slices.Contains(caps, "LITERAL+") || slices.Contains(caps, "LITERAL-") {
			t.Errorf("%s: %q, want LITERAL+ and no LITERAL-", phase, got[0])
		}
	}
}

// TestLiteralPlusRFC7888Examples runs RFC 7888 §3's examples through the
// proxy in front of an upstream without LITERAL+: a LOGIN whose user name
// and password are non-synchronising literals, and an unknown command with
// a non-synchronising literal of 102,856 bytes, answered BAD with the
// session still in step. After login the proxy does not know the command
// (it relays what it does not know), so its own limit on a literal held
// in memory answers first, NO [TOOBIG], as for any command the proxy
// reads whole; a small one goes upstream, whose BAD comes back.
func TestLiteralPlusRFC7888Examples(t *testing.T) {
	t.Parallel()
	up := startLiteralMinus(t, "FRED FOOBAR", "fat man")
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.WriteBytes([]byte("A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n"))
	c.Expect("A001 OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT UIDPLUS IDLE] *")
	c.WriteBytes(fmt.Appendf(nil, "A044 BLURDYBLOOP {102856+}\r\n%s\r\n", strings.Repeat("x", 102856)))
	c.Expect("A044 NO [TOOBIG] Literal of 102856 bytes exceeds the limit of 65536 bytes.")
	c.ExpectDo("A045", "NOOP", "A045 OK NOOP completed.")
	c.WriteBytes([]byte("A046 BLURDYBLOOP {3+}\r\nabc\r\n"))
	c.Expect("A046 BAD *")
	c.ExpectDo("A047", "NOOP", "A047 OK NOOP completed.")

	// Before login the proxy refuses the unknown command itself.
	c = imaptest.Dial(t, p.Addr)
	c.WriteBytes(fmt.Appendf(nil, "A044 BLURDYBLOOP {102856+}\r\n%s\r\n", strings.Repeat("x", 102856)))
	c.Expect("A044 BAD Unknown command BLURDYBLOOP.")
	c.ExpectDo("A045", "NOOP", "A045 OK NOOP completed.")
}

// TestLiteralPlusAppend: APPEND with non-synchronising literals, below and
// above LITERAL-'s 4096 bytes (the proxy synchronises the larger one with
// the upstream itself), the mailbox name a literal too; each answered by
// its tagged OK alone, and stored byte for byte.
func TestLiteralPlusAppend(t *testing.T) {
	t.Parallel()
	up := startLiteralMinus(t, "alice", "secret")
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	small, big := testMessage("small", 1000), testMessage("big", 50<<10)
	c.WriteBytes(fmt.Appendf(nil, "a APPEND INBOX {%d+}\r\n%s\r\n", len(small), small))
	c.Expect("a OK [APPENDUID 1 1] APPEND completed")
	c.WriteBytes(fmt.Appendf(nil, "b APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n", len(big), big))
	c.Expect("b OK [APPENDUID 1 2] APPEND completed")
	c.WriteBytes(fmt.Appendf(nil, "c APPEND {5+}\r\nINBOX {%d+}\r\n%s\r\n", len(big), big))
	c.Expect("c OK [APPENDUID 1 3] APPEND completed")
	c.ExpectDo("s", "SELECT INBOX", "* 3 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	c.ExpectDo("f", "FETCH 1:3 BODY.PEEK[]", fetchBody(1, small), fetchBody(2, big), fetchBody(3, big), "f OK FETCH completed")
}

// TestLiteralPlusSearch: a non-synchronising literal in a command read
// whole before it is relayed (SEARCH in the selected state) and in one
// streamed in the authenticated state (STATUS), in front of go-imap's
// LITERAL- server, which takes them as they are. (Above 4096 bytes the
// proxy would synchronise them, and go-imap, which takes at most 4096
// bytes in a literal outside APPEND, then answers nothing at all: a
// client of its own hangs too. TestLiteralPlusSynchronisedUpstream covers
// that path.)
func TestLiteralPlusSearch(t *testing.T) {
	t.Parallel()
	up := startLiteralMinus(t, "alice", "secret")
	for i, subj := range []string{"nonsync one", "other"} {
		if err := up.Append("alice", "INBOX", nil, testMessage(subj, 200+i)); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t, baseConfig(up.Addr))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.WriteBytes([]byte("a STATUS {5+}\r\nINBOX (MESSAGES)\r\n"))
	c.Expect("* STATUS INBOX (MESSAGES 2)", "a OK STATUS completed")
	c.ExpectDo("s", "SELECT INBOX", "* 2 EXISTS", "*", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	c.WriteBytes([]byte("b SEARCH SUBJECT {7+}\r\nnonsync\r\n"))
	c.Expect("* SEARCH 1", "b OK SEARCH completed")
	c.WriteBytes([]byte("c UID SEARCH CHARSET {5+}\r\nUTF-8 SUBJECT {5+}\r\nother\r\n"))
	c.Expect("* SEARCH 2", "c OK UID SEARCH completed")
}

// TestLiteralPlusSynchronisedUpstream: in front of an upstream with
// neither LITERAL+ nor LITERAL- every client literal goes upstream
// synchronising; the proxy waits for each continuation request itself
// and the client sees none of them, for a streamed APPEND and for a
// SEARCH read whole.
func TestLiteralPlusSynchronisedUpstream(t *testing.T) {
	t.Parallel()
	f := startFakeUpstream(t, "IMAP4rev1")
	p := startProxy(t, baseConfig(f.addr()))
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("u", "p")
	c.WriteBytes([]byte("a APPEND INBOX {10+}\r\n0123456789\r\n"))
	c.Expect("a OK [APPENDUID 1 1] APPEND done")
	c.ExpectDo("s", "SELECT INBOX", "* 1 EXISTS", "* 0 RECENT", "*", "*", "*", "s OK [READ-WRITE] *")
	c.WriteBytes([]byte("b SEARCH SUBJECT {3+}\r\nabc BODY {3+}\r\nxyz\r\n"))
	c.Expect("* SEARCH 1", "b OK SEARCH done")
	long := strings.Repeat("y", 5000) // beyond LITERAL-, not beyond LITERAL+
	c.WriteBytes([]byte("c SEARCH TEXT {5000+}\r\n" + long + "\r\n"))
	c.Expect("* SEARCH 1", "c OK SEARCH done")
	var got []string
	for _, conn := range f.connCommands() {
		for _, cmd := range conn {
			if strings.Contains(cmd, "{") {
				got = append(got, cmd)
			}
		}
	}
	want := []string{"APPEND INBOX {10}", "UID SEARCH SUBJECT {3}\r\nabc BODY {3}\r\nxyz", "UID SEARCH TEXT {5000}\r\n" + long}
	if !slices.Equal(got, want) {
		t.Errorf("the upstream got %q, want %q", got, want)
	}
}
