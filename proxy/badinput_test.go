package proxy_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Limits for the bad-input tests: small, so that exceeding them is cheap.
const (
	testMaxLine   = 1024
	testMaxInline = 4096
	testMaxAppend = 64 << 10
	testMaxLit    = 1 << 20
)

func badInputProxy(t *testing.T, tweak func(*proxy.Config)) (*memupstream.Server, *imaptest.Proxy) {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Limits = imapcodec.Limits{MaxLine: testMaxLine, MaxInlineLiteral: testMaxInline, MaxLiteral: testMaxLit}
	cfg.MaxAppendLiteral = testMaxAppend
	if tweak != nil {
		tweak(&cfg)
	}
	return up, startProxy(t, cfg)
}

func TestOverlongLine(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, nil)
	for _, state := range []string{"not authenticated", "authenticated"} {
		t.Run(state, func(t *testing.T) {
			c := imaptest.Dial(t, p.Addr)
			if state == "authenticated" {
				c.LoginTagged("alice", "secret")
			}
			c.Send("a NOOP " + strings.Repeat("x", testMaxLine))
			rest := c.ExpectClosed()
			imaptest.AssertLines(t, "over-long line", rest, []string{"* BYE Line too long."})
		})
	}
	// Exactly at the limit is fine.
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "LOGIN alice "+strings.Repeat("x", testMaxLine-len("a LOGIN alice ")), "a NO [AUTHENTICATIONFAILED] Authentication failed.")
	imaptest.WaitFor(t, "the failed sessions to end", func() bool { return p.Srv.Sessions() == 1 })
}

func TestSyntaxErrors(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, nil)
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", `LOGIN (alice secret`, "a BAD LOGIN needs a user name and a password.")
	c.ExpectDo("b", `LOGIN "alice secret`, "b BAD LOGIN needs a user name and a password.")
	c.ExpectDo("c", `LOGIN alice) secret`, "c BAD LOGIN needs a user name and a password.")
	c.ExpectDo("d", `LOGIN "al\ice" secret`, "d BAD LOGIN needs a user name and a password.")
	c.ExpectDo("e", `ENABLE (X`, "e BAD ENABLE not allowed before authentication; log in first.")
	// No tag, or a tag that cannot be one.
	c.Send("")
	c.Expect("* BAD Error in IMAP command: syntax error: missing or invalid tag")
	c.Send(`"x" NOOP`)
	c.Expect("* BAD Error in IMAP command: syntax error: missing or invalid tag")
	c.Send("f+ NOOP")
	c.Expect("* BAD Error in IMAP command: syntax error: missing or invalid tag")
	c.Send("f* NOOP")
	c.Expect("* BAD Error in IMAP command: syntax error: missing or invalid tag")
	c.Send(`f\ NOOP`)
	c.Expect("* BAD Error in IMAP command: syntax error: missing or invalid tag")
	c.ExpectDo("g", "", "g BAD Error in IMAP command: syntax error: missing command name")
	c.ExpectDo("h", "UID", "h BAD Error in IMAP command: syntax error: UID without a command")
	c.ExpectDo("i", "NOOP", "i OK NOOP completed.")
	c.LoginTagged("alice", "secret")
	c.ExpectDo("j", "SELECT (INBOX", "j BAD SELECT needs a mailbox name.")
	c.ExpectDo("k", `SELECT "INBOX`, "k BAD SELECT needs a mailbox name.")
	c.ExpectDo("l", `ENABLE (X`, "l BAD ENABLE needs at least one capability name.")
	c.ExpectDo("m", "ENABLE "+strings.Repeat("(", 40), "m BAD ENABLE needs at least one capability name.")
	c.ExpectDo("n", "NOOP", "n OK NOOP completed.")
}

func TestLiteralTooLarge(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, nil)
	toobig := func(tag string, size, limit int) string {
		return fmt.Sprintf("%s NO [TOOBIG] Literal of %d bytes exceeds the limit of %d bytes.", tag, size, limit)
	}

	c := imaptest.Dial(t, p.Addr)
	// Synchronising, pre-auth (inline limit): refused, never invited.
	c.Send(fmt.Sprintf("a LOGIN alice {%d}", testMaxInline+1))
	c.Expect(toobig("a", testMaxInline+1, testMaxInline))
	c.ExpectDo("b", "NOOP", "b OK NOOP completed.")
	// Non-synchronising: the literal is read and thrown away with the rest
	// of the command; the next command in the same write is answered.
	big := bytes.Repeat([]byte("y"), testMaxInline+1)
	c.WriteBytes(fmt.Appendf(nil, "c LOGIN alice {%d+}\r\n%s {3+}\r\nabc\r\nd NOOP\r\n", len(big), big))
	c.Expect(toobig("c", len(big), testMaxInline), "d OK NOOP completed.")
	// A literal within the limit followed by one over it.
	c.Send("e LOGIN {5}")
	c.Expect("+ *")
	c.Send(fmt.Sprintf("alice {%d}", testMaxInline+1))
	c.Expect(toobig("e", testMaxInline+1, testMaxInline))
	c.ExpectDo("f", "NOOP", "f OK NOOP completed.")

	c.LoginTagged("alice", "secret")
	// The second literal of a relayed command is over the limit: the
	// first is already upstream, so that connection is given up; in the
	// authenticated state the session goes on with another one.
	c.Send("ga LIST {3}")
	c.Expect("+ *")
	c.Send(fmt.Sprintf(`abc {%d}`, testMaxInline+1))
	c.Expect(toobig("ga", testMaxInline+1, testMaxInline))
	c.ExpectDo("gb", `LIST "" INBOX`, `* LIST () "/" INBOX`, "gb OK LIST completed")

	c.ExpectDo("g", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "g OK [READ-WRITE] SELECT completed")
	// APPEND has its own, larger limit.
	c.Send(fmt.Sprintf("h APPEND INBOX {%d}", testMaxAppend+1))
	c.Expect(toobig("h", testMaxAppend+1, testMaxAppend))
	c.ExpectDo("i", "NOOP", "i OK NOOP completed.")
	big = bytes.Repeat([]byte("z"), testMaxAppend+1)
	c.WriteBytes(fmt.Appendf(nil, "j APPEND INBOX {%d+}\r\n%s\r\nk NOOP\r\n", len(big), big))
	c.Expect(toobig("j", len(big), testMaxAppend), "k OK NOOP completed.")
	// An APPEND at the limit goes through.
	ok := testMessage("ok", testMaxAppend)[:testMaxAppend]
	c.WriteBytes(fmt.Appendf(nil, "l APPEND INBOX {%d+}\r\n%s\r\n", len(ok), ok))
	c.Expect("* 1 EXISTS", "* 1 RECENT", "l OK [APPENDUID 1 1] APPEND completed")
	// Other commands have the inline limit.
	c.Send(fmt.Sprintf("m SEARCH TEXT {%d}", testMaxInline+1))
	c.Expect(toobig("m", testMaxInline+1, testMaxInline))
	c.ExpectDo("o", "FETCH 1 (FLAGS)", `* 1 FETCH (FLAGS (\Recent))`, "o OK FETCH completed")
	// The same in the selected state: the session holds no upstream
	// connection of its own, so it goes on too.
	c.Send("n SEARCH TEXT {3}")
	c.Expect("+ *")
	c.Send(fmt.Sprintf("abc TEXT {%d}", testMaxInline+1))
	c.Expect(toobig("n", testMaxInline+1, testMaxInline))
	c.ExpectDo("n2", "FETCH 1 (FLAGS)", `* 1 FETCH (FLAGS (\Recent))`, "n2 OK FETCH completed")
	if n := p.Srv.Pool().Idle(); n != 1 {
		t.Errorf("%d idle upstream connections, want 1 (the broken ones closed)", n)
	}
	// Every refusal counts for the operator's metrics.
	if got := p.Srv.Stats().Errors[proxy.ErrLiteralTooLarge]; got != 8 {
		t.Errorf("Errors[ErrLiteralTooLarge] = %d after 8 TOOBIG refusals", got)
	}

	// Over the codec's absolute limit too: refused the same way, and the
	// session goes on (#16.9: it used to end with * BYE Literal too
	// large., and a phone saving an oversized draft reconnected and
	// retried in a loop).
	c = imaptest.Dial(t, p.Addr)
	c.Send(fmt.Sprintf("p LOGIN {%d}", testMaxLit+1))
	c.Expect(toobig("p", testMaxLit+1, testMaxInline))
	c.ExpectDo("q", "NOOP", "q OK NOOP completed.")
	c.LoginTagged("alice", "secret")
	c.Send(fmt.Sprintf("r APPEND INBOX {%d}", testMaxLit+1))
	c.Expect(toobig("r", testMaxLit+1, testMaxAppend))
	huge := bytes.Repeat([]byte("h"), testMaxLit+1)
	c.WriteBytes(fmt.Appendf(nil, "s APPEND INBOX {%d+}\r\n%s\r\nt NOOP\r\n", len(huge), huge))
	c.Expect(toobig("s", len(huge), testMaxAppend), "t OK NOOP completed.")
	if got := p.Srv.Stats().Errors[proxy.ErrLiteralTooLarge]; got != 11 {
		t.Errorf("Errors[ErrLiteralTooLarge] = %d after 11 refusals", got)
	}
}

func TestLiteralNeverArrives(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, func(cfg *proxy.Config) {
		cfg.PreAuthTimeout = 300 * time.Millisecond
		cfg.IdleTimeout = 300 * time.Millisecond
	})
	t.Run("pre-auth", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.Send("a LOGIN alice {6}")
		c.Expect("+ *")
		c.WriteBytes([]byte("sec"))
		start := time.Now()
		rest := c.ExpectClosed()
		imaptest.AssertLines(t, "literal never completed", rest, []string{"* BYE Autologout; idle for too long."})
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v to time out", d)
		}
	})
	t.Run("APPEND", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		c.LoginTagged("alice", "secret")
		c.Send("a APPEND INBOX {100}")
		c.Expect("+ *")
		c.WriteBytes([]byte("Subject: never finished\r\n"))
		rest := c.ExpectClosed()
		imaptest.AssertLines(t, "literal never completed", rest, []string{"* BYE Autologout; idle for too long."})
		imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })
		if n := p.Srv.Pool().Idle(); n != 0 {
			t.Errorf("%d idle upstream connections after an APPEND cut short, want 0", n)
		}
	})
	t.Run("idle client", func(t *testing.T) {
		c := imaptest.Dial(t, p.Addr)
		rest := c.ExpectClosed()
		imaptest.AssertLines(t, "silent client", rest, []string{"* BYE Autologout; idle for too long."})
	})
}

func TestDisconnectMidLiteral(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, nil)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	if n := p.Srv.Pool().Idle(); n != 1 {
		t.Fatalf("%d idle upstream connections after login, want 1", n)
	}
	c.Send("a APPEND INBOX {1000}")
	c.Expect("+ *")
	c.WriteBytes(bytes.Repeat([]byte("x"), 100))
	time.Sleep(20 * time.Millisecond) // let the proxy relay what it got
	c.Close()
	imaptest.WaitFor(t, "the session to end", func() bool { return p.Srv.Sessions() == 0 })
	// The upstream connection was mid-APPEND: it must not be reused.
	if n := p.Srv.Pool().Idle(); n != 0 {
		t.Fatalf("%d idle upstream connections after a client vanished mid-literal, want 0", n)
	}
	// A new session works normally. (go-imap stores the truncated message
	// when its connection closes mid-literal, so the mailbox is not
	// checked; Dovecot does not.)
	c2 := imaptest.Dial(t, p.Addr)
	c2.LoginTagged("alice", "secret")
	c2.ExpectDo("b", "NOOP", "b OK NOOP completed.")
}

// TestBinaryGarbage feeds random bytes, NULs and all, to a session in each
// state: every line gets a BAD (or the session ends with a BYE), nothing
// panics (a panic in a session would kill the test binary) and the server
// keeps serving. The seeds are fixed so that a failure is reproducible.
func TestBinaryGarbage(t *testing.T) {
	t.Parallel()
	_, p := badInputProxy(t, func(cfg *proxy.Config) {
		cfg.Limits = imapcodec.Limits{} // lines of random bytes can be long
		// Garbage relayed upstream can leave go-imap waiting for more
		// (the proxy then answers NO [UNAVAILABLE] and redials): keep
		// those waits short.
		cfg.Upstream.Timeout = 300 * time.Millisecond
	})
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 99))
			garbage := make([]byte, 8<<10)
			for i := range garbage {
				garbage[i] = byte(rnd.UintN(256))
			}
			if seed%4 == 2 {
				// Random tokens, literal headers among them.
				toks := []string{"{3}\r\n", "{2+}\r\n", "~{4}\r\n", "{0}\r\n", "a ", "UID ", "FETCH ", "APPEND ", "LOGIN ", "\x00", "\r\n", "(", ")", "\"", "* ", "+ ", "\xff"}
				garbage = garbage[:0]
				for len(garbage) < 8<<10 {
					garbage = append(garbage, toks[rnd.UintN(uint(len(toks)))]...)
				}
			}
			if seed%4 == 3 {
				// Mostly NULs and line ends.
				for i := range garbage {
					garbage[i] = []byte{0, 0, 0, '\n', '\r', '{', '}', '"', '('}[rnd.UintN(9)]
				}
			}
			c := imaptest.Dial(t, p.Addr)
			if (seed+seed/4)%2 == 1 { // each kind of garbage in both states
				c.LoginTagged("alice", "secret")
			}
			// The server may hang up half-way: write errors are expected.
			c.Conn.SetWriteDeadline(time.Now().Add(imaptest.IOTimeout))
			_, werr := c.Conn.Write(append(garbage, "\r\nzz9 NOOP\r\n"...))
			var lines []string
			for {
				c.Conn.SetReadDeadline(time.Now().Add(imaptest.IOTimeout))
				line, err := c.R.ReadString('\n')
				if err != nil {
					if imaptest.IsReset(err) {
						// Closed with our garbage unread: the
						// kernel may have dropped the BYE.
						t.Logf("connection reset after %d lines", len(lines))
						break
					}
					if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "* BYE ") {
						t.Fatalf("connection closed without BYE (%v, write %v) after %q", err, werr, lines)
					}
					break
				}
				line = strings.TrimSuffix(line, "\r\n")
				lines = append(lines, line)
				if strings.HasPrefix(line, "zz9 ") {
					if line != "zz9 OK NOOP completed." {
						t.Fatalf("NOOP after garbage: %q", line)
					}
					break
				}
			}
			for _, l := range lines {
				if strings.HasPrefix(l, "zz9 ") || strings.HasPrefix(l, "+ ") {
					continue
				}
				_, rest, _ := strings.Cut(l, " ")
				if !strings.HasPrefix(rest, "BAD ") && !strings.HasPrefix(rest, "BYE ") && !strings.HasPrefix(rest, "NO ") {
					t.Errorf("garbage answered with %q", l)
				}
			}
			t.Logf("%d responses, last %q", len(lines), lines[max(len(lines)-1, 0):])
			c.Close()
		})
	}
	imaptest.WaitFor(t, "the sessions to end", func() bool { return p.Srv.Sessions() == 0 })
	imaptest.Dial(t, p.Addr).ExpectDo("a", "NOOP", "a OK NOOP completed.")
}
