package proxy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestCommandLiteralTotal: the literals of one command together are bounded
// (MaxPreAuthCommandBytes before login, MaxCommandBytes for APPEND,
// MaxOtherCommandBytes for the rest; all set alike here), each staying within its own limit. Over it, the
// command is refused with NO [TOOBIG] as an oversize literal is, on every
// path that reads a command (into memory before login and in the selected
// state, streamed to the upstream in the authenticated state; synchronising
// and non-synchronising), and the session goes on.
func TestCommandLiteralTotal(t *testing.T) {
	t.Parallel()
	const limit = 10000
	_, p := badInputProxy(t, func(cfg *proxy.Config) {
		cfg.MaxCommandBytes, cfg.MaxOtherCommandBytes, cfg.MaxPreAuthCommandBytes = limit, limit, limit
	})
	toobig := func(tag string, total int) string {
		return fmt.Sprintf("%s NO [TOOBIG] Literals of %d bytes in one command exceed the limit of %d bytes.", tag, total, limit)
	}
	x := func(n int) string { return strings.Repeat("x", n) }

	c := imaptest.Dial(t, p.Addr)
	// Before login, read into memory, synchronising literals (each under
	// testMaxInline): the third is refused before it is invited.
	c.Send("a LOGIN {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " {4000}")
	c.Expect(toobig("a", 12000))
	c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	// Non-synchronising: the rest of the command is read and thrown away;
	// the next command in the same write is answered.
	c.WriteBytes([]byte("c LOGIN {4000+}\r\n" + x(4000) + " {4000+}\r\n" + x(4000) + " {4000+}\r\n" + x(4000) + "\r\nd NOOP\r\n"))
	c.Expect(toobig("c", 12000), "d OK NOOP completed.")

	c.LoginTagged("alice", "secret")
	// Authenticated, streamed to the upstream: an APPEND of two messages
	// (the MULTIAPPEND form) whose second brings the command over. The
	// first message is already upstream, so that connection is given up
	// and the session goes on with another.
	msg := string(testMessage("m", 6000)[:6000])
	c.Send("e APPEND INBOX {6000}")
	c.Expect("+ *")
	c.Send(msg + " {6000}")
	c.Expect(toobig("e", 12000))
	c.ExpectDo("f", `LIST "" INBOX`, `* LIST () "/" INBOX`, "f OK LIST completed")
	c.WriteBytes([]byte("g APPEND INBOX {6000+}\r\n" + msg + " {6000+}\r\n" + msg + "\r\nh NOOP\r\n"))
	c.Expect(toobig("g", 12000), "h OK NOOP completed.")
	// One message under max-append but over the command's limit.
	c.Send("i APPEND INBOX {12000}")
	c.Expect(toobig("i", 12000))
	c.ExpectDo("i2", "NOOP", "i2 OK NOOP completed.")

	// Selected, read into memory: exactly at the limit passes, one byte
	// more does not.
	if got := c.Do("j", "SELECT INBOX"); !strings.HasPrefix(got[len(got)-1], "j OK ") {
		t.Fatalf("SELECT INBOX: %q", got)
	}
	c.Send("k SEARCH TEXT {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " TEXT {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " TEXT {2000}")
	c.Expect("+ *")
	c.Send(x(2000))
	c.Expect("* SEARCH*", "k OK SEARCH*")
	c.Send("l SEARCH TEXT {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " TEXT {4000}")
	c.Expect("+ *")
	c.Send(x(4000) + " TEXT {2001}")
	c.Expect(toobig("l", 10001))
	if got := c.Do("m", "NOOP"); got[len(got)-1] != "m OK NOOP completed." {
		t.Fatalf("NOOP after a refused SEARCH: %q", got)
	}

	// The default: the largest message plus one literal of other
	// arguments.
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		_, p := badInputProxy(t, nil)
		c := imaptest.Dial(t, p.Addr)
		c.LoginTagged("alice", "secret")
		msg := testMessage("m", testMaxAppend)[:testMaxAppend]
		c.Send(fmt.Sprintf("a APPEND INBOX {%d}", len(msg)))
		c.Expect("+ *")
		c.WriteBytes(msg)
		c.Send(fmt.Sprintf(" {%d}", testMaxInline+1))
		c.Expect(fmt.Sprintf("a NO [TOOBIG] Literals of %d bytes in one command exceed the limit of %d bytes.",
			testMaxAppend+testMaxInline+1, testMaxAppend+testMaxInline))
		c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	})
}

// TestCommandBytesByState: by default, a command before login may carry
// only a few KiB of literals (8 KiB; LOGIN needs a name and a password),
// and a command after login other than APPEND 256 KiB: such commands are
// held in memory until they are answered (issue 16: 900 literals of
// 64 KiB in one ID before login made the proxy hold 57 MiB per
// connection). APPEND, which streams, keeps its own bound (the default
// subtest of TestCommandLiteralTotal).
func TestCommandBytesByState(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, nil)
	x := func(n int) string { return strings.Repeat("x", n) }
	// nonSync is head, n non-synchronising literals of size bytes, each
	// after prefix (with %d: the literal's index), then suffix, and the
	// next command.
	nonSync := func(head, prefix string, n, size int, suffix, next string) []byte {
		var b strings.Builder
		b.WriteString(head)
		for i := range n {
			if strings.Contains(prefix, "%d") {
				fmt.Fprintf(&b, prefix, i)
			} else {
				b.WriteString(prefix)
			}
			fmt.Fprintf(&b, "{%d+}\r\n%s", size, x(size))
		}
		b.WriteString(suffix + "\r\n" + next + "\r\n")
		return []byte(b.String())
	}
	c := imaptest.Dial(t, p.Addr)
	// Before login: at the limit is fine, one literal more is refused and
	// the rest of the command dropped.
	// (ID values are at most 1,024 octets, RFC 2971.)
	c.WriteBytes(nonSync(`a ID ("id" "x"`, ` "k%d" `, proxy.DefaultMaxPreAuthCommandBytes/1024, 1024, `)`, "b NOOP"))
	c.Expect("* ID *", "a OK *", "b OK NOOP completed.")
	c.WriteBytes(nonSync(`c ID ("id" "x"`, ` "k%d" `, 12, 1000, `)`, "d NOOP"))
	c.Expect(fmt.Sprintf("c NO [TOOBIG] Literals of 9000 bytes in one command exceed the limit of %d bytes.", proxy.DefaultMaxPreAuthCommandBytes),
		"d OK NOOP completed.")

	// After login, in the selected state: SEARCH with literals of 256 KiB
	// in all passes, one byte more does not.
	c.LoginTagged("alice", "secret")
	if got := c.Do("e", "SELECT INBOX"); !strings.HasPrefix(got[len(got)-1], "e OK ") {
		t.Fatalf("SELECT INBOX: %q", got)
	}
	n := proxy.DefaultMaxOtherCommandBytes / testMaxInline
	c.WriteBytes(nonSync("f SEARCH", ` TEXT `, n, testMaxInline, "", "g NOOP"))
	c.Expect("* SEARCH", "f OK SEARCH*", "g OK NOOP completed.")
	c.WriteBytes(nonSync("h SEARCH", ` TEXT `, n, testMaxInline, " TEXT {1+}\r\ny", "i NOOP"))
	c.Expect(fmt.Sprintf("h NO [TOOBIG] Literals of %d bytes in one command exceed the limit of %d bytes.",
		proxy.DefaultMaxOtherCommandBytes+1, proxy.DefaultMaxOtherCommandBytes), "i OK NOOP completed.")
}
