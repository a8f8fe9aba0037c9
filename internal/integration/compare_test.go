package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// script is one scripted session: every command a typical client uses, and
// some it gets wrong. It runs once directly against Dovecot and once through
// the proxy, each as a fresh user of the same server.
func script(c *imaptest.Client, user, pass string) []string {
	msg1 := string(sampleMessage(1, "first body\r\nwith two lines"))
	msg2 := string(sampleMessage(2, strings.Repeat("long body line\r\n", 200)))
	steps := []struct {
		cmd  string
		lits []string
	}{
		{cmd: fmt.Sprintf("LOGIN %s %s", user, pass)},
		{cmd: `LIST "" "*"`},
		// Brackets are valid in mailbox names (astring): not found, not
		// a syntax error (#16.13).
		{cmd: "SELECT a[b"},
		{cmd: "SELECT a]b"},
		{cmd: "CREATE cmp"},
		{cmd: "CREATE cmp.sub"},
		{cmd: `LIST "" "cmp*"`},
		{cmd: `LSUB "" "*"`},
		{cmd: "SUBSCRIBE cmp"},
		{cmd: `LSUB "" "*"`},
		{cmd: fmt.Sprintf(`APPEND cmp (\Seen) "02-Nov-2026 10:00:00 +0000" {%d}`, len(msg1)), lits: []string{msg1}},
		{cmd: fmt.Sprintf(`APPEND cmp () "02-Nov-2026 11:00:00 +0000" {%d+}`, len(msg2)), lits: []string{msg2}},
		{cmd: `APPEND nosuchbox {5}`, lits: []string{"hello"}},
		{cmd: "STATUS cmp (MESSAGES RECENT UNSEEN UIDNEXT)"},
		{cmd: "SELECT cmp"},
		{cmd: "FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)"},
		{cmd: "FETCH 1 BODY.PEEK[]"},
		{cmd: "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[TEXT]<0.20>)"},
		{cmd: "UID FETCH 1:* (FLAGS)"},
		{cmd: `STORE 1 +FLAGS (\Flagged)`},
		{cmd: `UID STORE 2 +FLAGS.SILENT (\Answered)`},
		{cmd: "SEARCH FLAGGED"},
		{cmd: `UID SEARCH SUBJECT "message 2"`},
		{cmd: "SEARCH CHARSET UTF-8 BODY {4}", lits: []string{"body"}},
		// Numbers beyond the last message match nothing (#16.12).
		{cmd: "SEARCH 1000"},
		{cmd: "SEARCH 2:1000 UNSEEN"},
		// A body fetch sets \Seen; the client is told in the answer and
		// not once more by the next NOOP (#16.14).
		{cmd: "FETCH 2 BODY[TEXT]<0.10>"},
		{cmd: "NOOP"},
		{cmd: "COPY 1 INBOX"},
		{cmd: "UID COPY 2 INBOX"},
		{cmd: "FETCH 99 FLAGS"},
		{cmd: "FETCH 1 (FLAGS"},
		{cmd: "STORE 2 +FLAGS (\\Deleted)"},
		{cmd: "EXPUNGE"},
		{cmd: "NOOP"},
		{cmd: "CHECK"},
		{cmd: "STATUS INBOX (MESSAGES UIDNEXT UNSEEN)"},
		{cmd: "EXAMINE INBOX"},
		{cmd: "FETCH 1:* (FLAGS UID)"},
		{cmd: "UNSELECT"},
		{cmd: "FETCH 1 FLAGS"},
		{cmd: "SELECT cmp"},
		{cmd: "CLOSE"},
		{cmd: "RENAME cmp.sub cmp.renamed"},
		{cmd: `LIST "" "cmp*"`},
		{cmd: "DELETE cmp.renamed"},
		{cmd: "UNSUBSCRIBE cmp"},
		{cmd: "DELETE cmp"},
		{cmd: "DELETE cmp"},
		{cmd: "CREATE empty"},
		{cmd: "SELECT empty"},
		{cmd: "FETCH 1:* (FLAGS)"},
		{cmd: "UID FETCH 1:* (FLAGS)"},
		{cmd: "SEARCH ALL"},
		{cmd: "SEARCH 1:*"},
		{cmd: "SEARCH *"},
		{cmd: "UID SEARCH ALL"},
		{cmd: "STORE 1 +FLAGS (\\Seen)"},
		{cmd: "CLOSE"},
		{cmd: "DELETE empty"},
		{cmd: "NAMESPACE"},
		{cmd: "XNOSUCHCOMMAND"},
		{cmd: "LOGOUT"},
	}
	var out []string
	for _, s := range steps {
		shown := s.cmd
		if strings.HasPrefix(shown, "LOGIN ") {
			shown = "LOGIN ***"
		}
		out = append(out, ">> "+shown)
		out = append(out, c.Cmd(s.cmd, s.lits...)...)
	}
	return out
}

var normalizers = []struct {
	re   *regexp.Regexp
	repl string
}{
	// Tags differ by construction.
	{regexp.MustCompile(`^c\d+ `), "TAG "},
	// Dovecot's timing note on tagged responses.
	{regexp.MustCompile(` \(\d+\.\d+ \+ \d+\.\d+( \+ \d+\.\d+)? secs\)\.`), "."},
	// UIDVALIDITY is per user and mailbox creation time.
	{regexp.MustCompile(`UIDVALIDITY \d+`), "UIDVALIDITY N"},
	{regexp.MustCompile(`(COPYUID|APPENDUID) \d+`), "$1 N"},
	// Capability lists are the proxy's own by design.
	{regexp.MustCompile(`\[CAPABILITY [^\]]*\] `), "[CAPABILITY ...] "},
	{regexp.MustCompile(`^\* CAPABILITY .*`), "* CAPABILITY ..."},
	// Continuation requests carry free text.
	{regexp.MustCompile(`^\+ .*`), "+ ..."},
}

// dropped are lines left out of both transcripts: Dovecot's RFC 7162
// [CLOSED] describes its connection's mailbox switch; the proxy does not
// offer QRESYNC yet and drops it (its client never saw that switch).
// RECENT and \Recent are compared: the session is the first, and the
// only one, to be told of its messages, directly and through the proxy
// (#17).
var dropped = regexp.MustCompile(`^\* OK \[CLOSED\]`)

// uidItem moves a FETCH response's UID item to the front: the order of
// FETCH data items carries no meaning (RFC 3501 7.4.2), and the proxy sends
// sequence-number FETCHes upstream as UID FETCH, whose answers put UID first.
var uidItem = regexp.MustCompile(`^(\* \d+ FETCH \()(.*) (UID \d+)(\)?)$`)

func normalize(lines []string) []string {
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if dropped.MatchString(l) {
			continue
		}
		for _, n := range normalizers {
			l = n.re.ReplaceAllString(l, n.repl)
		}
		if m := uidItem.FindStringSubmatch(l); m != nil && m[4] == ")" {
			l = m[1] + m[3] + " " + m[2] + ")"
		}
		out = append(out, l)
	}
	return out
}

// TestCompareDirectAndProxied runs the same session directly against Dovecot
// and through lemonproxy and expects the same responses, line for line, tags,
// capability lists, per-user identifiers and Dovecot's timing notes aside.
func TestCompareDirectAndProxied(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			dc.AddUser(t, "direct", "pw-direct")
			dc.AddUser(t, "proxied", "pw-proxied")
			addr, _ := startProxy(t, dc.Addr)

			direct := normalize(script(dialRaw(t, dc.Addr), "direct", "pw-direct"))
			proxied := normalize(script(dialRaw(t, addr), "proxied", "pw-proxied"))
			if len(direct) != len(proxied) {
				t.Errorf("direct: %d lines, proxied: %d lines", len(direct), len(proxied))
			}
			for i := 0; i < max(len(direct), len(proxied)); i++ {
				var d, q string
				if i < len(direct) {
					d = direct[i]
				}
				if i < len(proxied) {
					q = proxied[i]
				}
				if d == q {
					continue
				}
				t.Errorf("line %d differs:\n direct:  %q\n proxied: %q", i, d, q)
			}
			if t.Failed() {
				t.Logf("direct transcript:\n%s", strings.Join(direct, "\n"))
				t.Logf("proxied transcript:\n%s", strings.Join(proxied, "\n"))
			}
		})
	}
}
