package thread

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// message is one message to append: its INTERNALDATE and its text.
type message struct{ internal, text string }

// ours are mailboxes of our own, each a case of RFC 5256's REFERENCES
// or ORDEREDSUBJECT: references chains, truncated ones, loops,
// duplicate and missing Message-IDs, dummies, subject merging, reply
// subjects, dates from the Date header and from INTERNALDATE.
var ours = map[string][]message{
	"chain": {
		{"01-Mar-2024 10:00:00 +0000", "Message-ID: <r@x>\r\nSubject: plan\r\nDate: Fri, 1 Mar 2024 09:00:00 +0000\r\n"},
		{"01-Mar-2024 11:00:00 +0000", "Message-ID: <s@x>\r\nIn-Reply-To: <r@x>\r\nSubject: Re: plan\r\n"},
		{"01-Mar-2024 12:00:00 +0000", "Message-ID: <t@x>\r\nReferences: <r@x> <s@x>\r\nSubject: Re: plan\r\n"},
		{"01-Mar-2024 09:30:00 +0000", "Message-ID: <u@x>\r\nReferences: <r@x>\r\n <s@x>\r\nSubject: Re: Re: plan\r\n"},
		{"01-Mar-2024 08:00:00 +0000", "Message-ID: <v@x>\r\nReferences: <gone@x> <s@x>\r\nSubject: other\r\n"},
		{"02-Mar-2024 08:00:00 +0000", "Message-ID: <w@x>\r\nSubject: Fwd: plan\r\n"},
		{"02-Mar-2024 09:00:00 +0000", "Message-ID: <y@x>\r\nSubject: [list] plan (fwd)\r\n"},
		{"03-Mar-2024 08:00:00 +0000", "Message-ID: <z1@x>\r\nReferences: <lost@x>\r\nSubject: lost\r\n"},
		{"03-Mar-2024 09:00:00 +0000", "Message-ID: <z2@x>\r\nReferences: <lost@x>\r\nSubject: Re: lost\r\n"},
		{"03-Mar-2024 10:00:00 +0000", "Message-ID: <z3@x>\r\nSubject: lost\r\n"},
		{"03-Mar-2024 11:00:00 +0000", "Subject: =?UTF-8?Q?Re:_l=C3=B6st?=\r\n"},
		{"03-Mar-2024 12:00:00 +0000", "Message-ID: <z3@x>\r\nSubject: LOST\r\n"},
		{"04-Mar-2024 12:00:00 +0000", "Message-ID: <m1@x>\r\nReferences: <m2@x>\r\nSubject: ring\r\n"},
		{"04-Mar-2024 13:00:00 +0000", "Message-ID: <m2@x>\r\nReferences: <m1@x>\r\nSubject: ring\r\n"},
		{"04-Mar-2024 14:00:00 +0000", "Message-ID: <n1@x>\r\nIn-Reply-To: junk <m1@x> (comment)\r\nSubject: Re: ring\r\n"},
	},
}

// mboxes reads imaptest's thread*.mbox (Dovecot's own threading tests),
// where they are: LEMONPROXY_IMAPTEST_TESTS or
// ../shared/imaptest/src/tests beside the repository.
func mboxes(t *testing.T) map[string][]message {
	dir := os.Getenv("LEMONPROXY_IMAPTEST_TESTS")
	if dir == "" {
		dir = "../../../shared/imaptest/src/tests"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "thread*.mbox"))
	out := map[string][]message{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".mbox")] = parseMbox(t, string(b))
	}
	return out
}

// parseMbox splits an mbox into its messages, each From_ line's date
// made the INTERNALDATE.
func parseMbox(t *testing.T, s string) []message {
	var out []message
	for _, part := range strings.Split("\n"+s, "\nFrom ")[1:] {
		line, body, _ := strings.Cut(part, "\n")
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("bad From_ line %q", line)
		}
		zone := "+0000"
		if len(f) > 6 {
			zone = f[6]
		}
		d, err := time.Parse("Mon Jan _2 15:04:05 2006 -0700", strings.Join(f[1:6], " ")+" "+zone)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, message{d.Format("02-Jan-2006 15:04:05 -0700"), strings.ReplaceAll(body, "\n", "\r\n")})
	}
	return out
}

func fill(t *testing.T, dc *dovecottest.Server, boxes map[string][]message) {
	c := imaptest.Dial(t, dc.Addr)
	defer c.Close()
	c.MustGreetOK()
	c.MustOK("LOGIN alice alicepass")
	for name, msgs := range boxes {
		c.MustOK("CREATE " + name)
		for _, m := range msgs {
			c.MustOK(fmt.Sprintf(`APPEND %s () "%s" {%d}`, name, m.internal, len(m.text)), m.text)
		}
	}
}

// commands are run in each mailbox: both algorithms, with sequence
// numbers and UIDs, over all messages and over some.
var commands = []string{
	"THREAD REFERENCES US-ASCII ALL",
	"UID THREAD REFERENCES UTF-8 ALL",
	"THREAD ORDEREDSUBJECT US-ASCII ALL",
	"UID THREAD ORDEREDSUBJECT UTF-8 ALL",
	"THREAD ORDEREDSUBJECT UTF-8 NOT 1",
	"THREAD REFERENCES UTF-8 SUBJECT nothing-matches",
}

// TestDovecot compares the proxy's THREAD over the legacy profile (no
// THREAD: synthesized) with Dovecot's own, directly, on the same
// messages: imaptest's thread mailboxes and ours. It also checks that
// the proxy relays THREAD over the full profile.
func TestDovecot(t *testing.T) {
	boxes := mboxes(t)
	if len(boxes) == 0 {
		t.Log("imaptest's thread*.mbox not found: comparing on our mailboxes only")
	}
	for k, v := range ours {
		boxes[k] = v
	}
	full := dovecottest.Start(t, dovecottest.Full)
	legacy := dovecottest.Start(t, dovecottest.Legacy)
	fill(t, full, boxes)
	fill(t, legacy, boxes)

	direct := imaptest.Dial(t, full.Addr)
	direct.MustGreetOK()
	direct.MustOK("LOGIN alice alicepass")
	for _, tc := range []struct {
		name string
		dc   *dovecottest.Server
	}{{"legacy", legacy}, {"full", full}} {
		t.Run(tc.name, func(t *testing.T) {
			sorter := sortext.New(sortext.Config{})
			p := imaptest.StartProxy(t, tc.dc.Addr, proxy.Config{
				Extensions: []proxy.Extension{esearch.New(), sorter, New(sorter), condstore.New()},
			})
			c := imaptest.Login(t, p.Addr, "alice", "alicepass")
			caps := " " + c.MustOK("CAPABILITY")[0] + " "
			for _, w := range []string{" THREAD=REFERENCES ", " THREAD=ORDEREDSUBJECT "} {
				if !strings.Contains(caps, w) {
					t.Errorf("capabilities lack %s: %q", w, caps)
				}
			}
			for name := range boxes {
				c.MustOK("SELECT " + name)
				direct.MustOK("SELECT " + name)
				for i, cmd := range commands {
					tag := fmt.Sprintf("t%d", i)
					got, want := answer(c.Do(tag, cmd)), answer(direct.Do(tag, cmd))
					if got != want {
						t.Errorf("%s: %s:\nproxy   %q\nDovecot %q", name, cmd, got, want)
					}
				}
			}
			// REFS is Dovecot's: relayed over full, unknown over legacy.
			if tc.name == "full" {
				if got, want := answer(c.Do("r", "THREAD REFS UTF-8 ALL")), answer(direct.Do("r", "THREAD REFS UTF-8 ALL")); got != want {
					t.Errorf("THREAD REFS: proxy %q, Dovecot %q", got, want)
				}
			} else {
				c.ExpectDo("b", "THREAD REFS UTF-8 ALL", "b BAD *")
			}
			c.ExpectDo("b2", "THREAD NOSUCH UTF-8 ALL", "b2 BAD *")
		})
	}
}

// answer is a THREAD command's untagged lines and tagged status, for
// comparison: the tagged text differs, and Dovecot ends an empty THREAD
// response with a space RFC 5256's grammar does not have.
func answer(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	last := strings.Fields(lines[len(lines)-1])
	out := slices.Clone(lines[:len(lines)-1])
	for i, l := range out {
		out[i] = strings.TrimRight(l, " ")
	}
	if len(last) > 1 {
		out = append(out, last[1])
	}
	return strings.Join(out, "\n")
}
