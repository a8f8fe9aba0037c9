package proxy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestCommandLiteralTotal: the literals of one command together are bounded
// by MaxCommandBytes, each staying within its own limit. Over it, the
// command is refused with NO [TOOBIG] as an oversize literal is, on every
// path that reads a command (into memory before login and in the selected
// state, streamed to the upstream in the authenticated state; synchronising
// and non-synchronising), and the session goes on.
func TestCommandLiteralTotal(t *testing.T) {
	t.Parallel()
	const limit = 10000
	_, p := badInputProxy(t, func(cfg *proxy.Config) { cfg.MaxCommandBytes = limit })
	toobig := func(tag string, total int) string {
		return fmt.Sprintf("%s NO [TOOBIG] Literals of %d bytes in one command exceed the limit of %d bytes.", tag, total, limit)
	}
	x := func(n int) string { return strings.Repeat("x", n) }

	c := dial(t, p.addr)
	// Before login, read into memory, synchronising literals (each under
	// testMaxInline): the third is refused before it is invited.
	c.send("a LOGIN {4000}")
	c.expect("+ *")
	c.send(x(4000) + " {4000}")
	c.expect("+ *")
	c.send(x(4000) + " {4000}")
	c.expect(toobig("a", 12000))
	c.expectDo("b", "NOOP", "b OK NOOP completed.")
	// Non-synchronising: the rest of the command is read and thrown away;
	// the next command in the same write is answered.
	c.write([]byte("c LOGIN {4000+}\r\n" + x(4000) + " {4000+}\r\n" + x(4000) + " {4000+}\r\n" + x(4000) + "\r\nd NOOP\r\n"))
	c.expect(toobig("c", 12000), "d OK NOOP completed.")

	c.login("alice", "secret")
	// Authenticated, streamed to the upstream: an APPEND of two messages
	// (the MULTIAPPEND form) whose second brings the command over. The
	// first message is already upstream, so that connection is given up
	// and the session goes on with another.
	msg := string(testMessage("m", 6000)[:6000])
	c.send("e APPEND INBOX {6000}")
	c.expect("+ *")
	c.send(msg + " {6000}")
	c.expect(toobig("e", 12000))
	c.expectDo("f", `LIST "" INBOX`, `* LIST () "/" INBOX`, "f OK LIST completed")
	c.write([]byte("g APPEND INBOX {6000+}\r\n" + msg + " {6000+}\r\n" + msg + "\r\nh NOOP\r\n"))
	c.expect(toobig("g", 12000), "h OK NOOP completed.")
	// One message under max-append but over the command's limit.
	c.send("i APPEND INBOX {12000}")
	c.expect(toobig("i", 12000))
	c.expectDo("i2", "NOOP", "i2 OK NOOP completed.")

	// Selected, read into memory: exactly at the limit passes, one byte
	// more does not.
	if got := c.do("j", "SELECT INBOX"); !strings.HasPrefix(got[len(got)-1], "j OK ") {
		t.Fatalf("SELECT INBOX: %q", got)
	}
	c.send("k SEARCH TEXT {4000}")
	c.expect("+ *")
	c.send(x(4000) + " TEXT {4000}")
	c.expect("+ *")
	c.send(x(4000) + " TEXT {2000}")
	c.expect("+ *")
	c.send(x(2000))
	c.expect("* SEARCH*", "k OK SEARCH*")
	c.send("l SEARCH TEXT {4000}")
	c.expect("+ *")
	c.send(x(4000) + " TEXT {4000}")
	c.expect("+ *")
	c.send(x(4000) + " TEXT {2001}")
	c.expect(toobig("l", 10001))
	if got := c.do("m", "NOOP"); got[len(got)-1] != "m OK NOOP completed." {
		t.Fatalf("NOOP after a refused SEARCH: %q", got)
	}

	// The default: the largest message plus one literal of other
	// arguments.
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		_, p := badInputProxy(t, nil)
		c := dial(t, p.addr)
		c.login("alice", "secret")
		msg := testMessage("m", testMaxAppend)[:testMaxAppend]
		c.send(fmt.Sprintf("a APPEND INBOX {%d}", len(msg)))
		c.expect("+ *")
		c.write(msg)
		c.send(fmt.Sprintf(" {%d}", testMaxInline+1))
		c.expect(fmt.Sprintf("a NO [TOOBIG] Literals of %d bytes in one command exceed the limit of %d bytes.",
			testMaxAppend+testMaxInline+1, testMaxAppend+testMaxInline))
		c.expectDo("b", "NOOP", "b OK NOOP completed.")
	})
}
