package integration

// Fault tests against Dovecot. proxy/faults_test.go runs the same faults
// (and more: upstream garbage, clients that vanish) against go-imap's
// in-memory server with goroutine, heap and bystander checks; these show
// the answers and the mailbox against a real server, which unlike go-imap
// stores nothing of an APPEND whose connection ends inside the literal.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

const faultLost = "NO [UNAVAILABLE] Lost the connection to the upstream server."

// faultProxy starts Dovecot, the fault relay in front of it and the proxy
// in front of the relay.
func faultProxy(t *testing.T, p dovecottest.Profile) (*dovecottest.Server, *faultnet.Relay, string) {
	t.Helper()
	dc := dovecottest.Start(t, p)
	fn := faultnet.Start(t, dc.Addr)
	addr, _ := startProxy(t, fn.Addr(), func(c *proxy.Config) { c.Upstream.Timeout = 3 * time.Second })
	return dc, fn, addr
}

func waitFault(t *testing.T, h *faultnet.Handle) *faultnet.Conn {
	t.Helper()
	select {
	case <-h.Fired():
		return h.Conn()
	case <-time.After(10 * time.Second):
		t.Fatalf("%v never fired", h)
		return nil
	}
}

// faultMessage is a message of about size bytes ending in marker.
func faultMessage(size int, marker string) []byte {
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	body := strings.Repeat(line, size/len(line))
	return append(sampleMessage(1, body), marker...)
}

// TestFaultAppendCut: the upstream connection breaks before the upstream
// invites the APPEND literal, in the middle of it, and after it (before
// the tagged answer). The client gets NO [UNAVAILABLE] each time and its
// session goes on; Dovecot holds the message only in the last case, where
// it stored it and only its answer was lost.
func TestFaultAppendCut(t *testing.T) {
	const marker = "\r\n-- end of the appended message --\r\n"
	msg := faultMessage(1<<20, marker)
	for _, p := range []dovecottest.Profile{dovecottest.Full, dovecottest.Legacy} {
		t.Run(p.String(), func(t *testing.T) {
			_, fn, addr := faultProxy(t, p)
			c := imaptest.Login(t, addr, "alice", "alicepass")
			cases := []struct {
				name   string
				fault  faultnet.Fault
				stored int
			}{
				{"before the continuation request", faultnet.Fault{Match: []byte("APPEND FaultBox"), MatchDir: faultnet.ToServer,
					Dir: faultnet.ToClient, Action: faultnet.Cut}, 0},
				{"mid-literal", faultnet.Fault{Match: []byte("APPEND FaultBox"), MatchDir: faultnet.ToServer,
					Dir: faultnet.ToServer, After: 256 << 10, Action: faultnet.Cut}, 0},
				{"after the literal", faultnet.Fault{Match: []byte(marker), MatchDir: faultnet.ToServer,
					Dir: faultnet.ToClient, Action: faultnet.Cut}, 1},
			}
			for _, tc := range cases {
				c.MustOK("CREATE FaultBox")
				h := fn.Add(tc.fault)
				got := c.Cmd(fmt.Sprintf("APPEND FaultBox {%d}", len(msg)), string(msg))
				if imaptest.Tagged(got) != faultLost {
					t.Errorf("%s: APPEND answered %q, want %q", tc.name, got[len(got)-1], faultLost)
				}
				waitFault(t, h)
				st := c.MustOK("STATUS FaultBox (MESSAGES)")
				if want := fmt.Sprintf("* STATUS FaultBox (MESSAGES %d)", tc.stored); st[0] != want {
					t.Errorf("%s: %q, want %q", tc.name, st[0], want)
				}
				c.MustOK("DELETE FaultBox")
			}
		})
	}
}

// TestFaultFetchCut: the upstream connection breaks 1 MiB into a 4 MiB
// FETCH body. The proxy has promised the client the whole literal, so it
// hangs up: the client gets a prefix of the real body and then the end of
// the connection, nothing else. It reconnects and gets the whole body.
func TestFaultFetchCut(t *testing.T) {
	dc, fn, addr := faultProxy(t, dovecottest.Full)
	msg := faultMessage(4<<20, "")
	dc.Append(t, "alice", "alicepass", "INBOX", nil, msg)

	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(nc)
	readLine := func() string {
		t.Helper()
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v (%q)", err, l)
		}
		return strings.TrimSuffix(l, "\r\n")
	}
	untilTagged := func(tag string) string {
		t.Helper()
		for {
			if l := readLine(); strings.HasPrefix(l, tag+" ") {
				return l
			}
		}
	}
	readLine() // greeting
	io.WriteString(nc, "a LOGIN alice alicepass\r\nb SELECT INBOX\r\n")
	untilTagged("a")
	if l := untilTagged("b"); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("SELECT: %q", l)
	}
	h := fn.Add(faultnet.Fault{Match: []byte("BODY.PEEK[]"), MatchDir: faultnet.ToServer,
		Dir: faultnet.ToClient, After: 1 << 20, Action: faultnet.Cut})
	io.WriteString(nc, "f FETCH 1 (BODY.PEEK[])\r\n")
	if l, want := readLine(), fmt.Sprintf("* 1 FETCH (BODY[] {%d}", len(msg)); l != want {
		t.Fatalf("FETCH: %q, want %q", l, want)
	}
	got, err := io.ReadAll(br)
	if err != nil && !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("reading the cut literal: %v after %d bytes", err, len(got))
	}
	if len(got) >= len(msg) || !bytes.Equal(got, msg[:len(got)]) {
		t.Fatalf("the client got %d bytes of a %d-byte literal, not a prefix of the body: it must get part of the real body and then the end of the connection",
			len(got), len(msg))
	}
	waitFault(t, h)

	c := imaptest.Login(t, addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	lines := c.MustOK("FETCH 1 (BODY.PEEK[])")
	if want := fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n%s)", len(msg), msg); len(lines) != 2 || lines[0] != want {
		t.Fatalf("FETCH after reconnecting: %d lines, first %d bytes, want %d", len(lines), len(lines[0]), len(want))
	}
}
