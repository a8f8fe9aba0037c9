package integration

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestUIDStarUnchangedSince: "UID STORE * ... (UNCHANGEDSINCE m)"
// names the last message (RFC 3501 6.4.8/9: "*" is the largest UID in
// use); with m = the SELECT's HIGHESTMODSEQ nothing changed since, so the
// store must happen. Also "UID STORE 100:*" with 100 above every UID
// (RFC 3501 6.4.8: "559:*" always includes the last message). Both were
// answered OK with nothing stored (a reviewer's finding).
func TestUIDStarUnchangedSince(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			addr := csStartProxy(t, dc)
			u := csSeed(t, dc, "Star", 3)
			c := csLogin(t, addr, "QRESYNC")
			h := c.selectMailbox("SELECT Star", u).highestModSeq(t)
			r := c.run(fmt.Sprintf(`UID STORE * (UNCHANGEDSINCE %d) +FLAGS ($Star)`, h))
			t.Logf("UID STORE *: %q", r.lines)
			r = c.run(fmt.Sprintf(`UID STORE 100:* (UNCHANGEDSINCE %d) +FLAGS ($Range)`, h+100))
			t.Logf("UID STORE 100:*: %q", r.lines)
			flags := csDirectFlags(t, dc, "Star")
			csWantFlags(t, "last message on Dovecot after UID STORE * / 100:* (UNCHANGEDSINCE)", flags[u[2]], `$Star`, `$Range`)
		})
	}
}

// TestUIDStarChangedSince: "UID FETCH * (FLAGS) (CHANGEDSINCE m)"
// and "UID FETCH 100:* ..." after the last message changed must return
// it (RFC 7162 3.1.4.1 with RFC 3501 6.4.8); they were answered with
// nothing (a reviewer's finding).
func TestUIDStarChangedSince(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, p)
			addr := csStartProxy(t, dc)
			u := csSeed(t, dc, "StarF", 3)
			c := csLogin(t, addr, "QRESYNC")
			h := c.selectMailbox("SELECT StarF", u).highestModSeq(t)
			c.mustRun(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[2]))
			for _, cmd := range []string{
				fmt.Sprintf(`UID FETCH * (FLAGS) (CHANGEDSINCE %d)`, h),
				fmt.Sprintf(`UID FETCH 100:* (FLAGS) (CHANGEDSINCE %d)`, h),
				fmt.Sprintf(`UID FETCH * (FLAGS) (CHANGEDSINCE %d VANISHED)`, h),
			} {
				r := c.mustRun(cmd)
				if len(r.fetches) != 1 || r.fetches[0].uid != u[2] {
					t.Errorf("%s: want the FETCH of UID %d (changed after %d), got %q", cmd, u[2], h, r.lines)
				}
			}
		})
	}
}

// TestLiteralKeepsProxyModSeq: the proxy's mod-sequences are
// the only ones a client may see (docs/condstore.md); a STATUS whose
// mailbox name is a literal, or a FETCH whose items hold a literal, must
// still be answered with the proxy's HIGHESTMODSEQ / MODSEQ, not go
// upstream with the CONDSTORE item (Dovecot then answers its own
// numbers, and enables CONDSTORE on the pooled connection). Both went
// upstream as they were (a reviewer's finding).
func TestLiteralKeepsProxyModSeq(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr := csStartProxy(t, dc)
	u := csSeed(t, dc, "Lit", 2)
	c := csLogin(t, addr, "")
	h := c.selectMailbox("SELECT Lit", u).highestModSeq(t)
	c.MustOK("UNSELECT")
	st := c.MustOK("STATUS {3+}\r\nLit (HIGHESTMODSEQ)")
	t.Logf("STATUS literal: %q (SELECT said HIGHESTMODSEQ %d)", st, h)
	want := fmt.Sprintf("HIGHESTMODSEQ %d", h)
	if !strings.Contains(st[0], want) {
		t.Errorf("STATUS with the name as a literal: want %s (the proxy's, as SELECT said), got %q", want, st)
	}
	c.selectMailbox("SELECT Lit", u)
	plain := c.MustOK("FETCH 1 (MODSEQ)")
	m := regexp.MustCompile(`MODSEQ \((\d+)\)`).FindStringSubmatch(plain[0])
	if m == nil {
		t.Fatalf("FETCH 1 (MODSEQ): %q", plain)
	}
	lines := c.MustOK("FETCH 1 (MODSEQ BODY.PEEK[HEADER.FIELDS ({7+}\r\nSUBJECT)])")
	t.Logf("FETCH literal: %q", lines)
	if l := lines[0]; strings.Count(l, "MODSEQ") != 1 || !strings.Contains(l, "MODSEQ ("+m[1]+")") {
		t.Errorf("FETCH (MODSEQ ...literal...): want one MODSEQ (%s), the proxy's; got %q", m[1], l)
	}
}

// TestLiteralFetchLeavesUpstreamCondstoreOff: after one such FETCH the
// pooled connection has CONDSTORE enabled upstream, and a later STORE of
// a session that never enabled CONDSTORE gets Dovecot's MODSEQ in its
// answer (RFC 7162 3.1: no MODSEQ before a CONDSTORE-enabling command).
func TestLiteralFetchLeavesUpstreamCondstoreOff(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr := csStartProxy(t, dc)
	u := csSeed(t, dc, "Lit2", 2)
	a := csLogin(t, addr, "")
	a.selectMailbox("SELECT Lit2", u)
	a.MustOK("FETCH 1 (BODY.PEEK[HEADER.FIELDS ({7+}\r\nSUBJECT)] MODSEQ)")
	a.Close()
	b := csLogin(t, addr, "")
	b.selectMailbox("SELECT Lit2", u)
	lines := b.MustOK(`STORE 2 +FLAGS (\Seen)`)
	t.Logf("STORE of a session without CONDSTORE: %q", lines)
	for _, l := range lines {
		if strings.Contains(l, "MODSEQ") {
			t.Errorf("STORE without CONDSTORE enabled: the answer carries a MODSEQ (%q)", l)
		}
	}
	b.Close()
	c := csLogin(t, addr, "CONDSTORE")
	c.selectMailbox("SELECT Lit2", u)
	lines = c.MustOK(`STORE 1 +FLAGS (\Flagged)`)
	t.Logf("STORE of a session with CONDSTORE: %q", lines)
	for _, l := range lines {
		if strings.Contains(l, " FETCH ") && strings.Count(l, "MODSEQ") != 1 {
			t.Errorf("STORE with CONDSTORE enabled: want one MODSEQ, the proxy's; got %q", l)
		}
	}
}

// TestLongStringFetchWithModSeq: a FETCH with MODSEQ whose items hold a
// string of more than 1,024 bytes (a long header field name, as a
// literal or quoted) is a valid command Dovecot answers; the proxy
// rebuilt it with the long string as a synchronising literal, which it
// refuses to send upstream, and answered BAD (a reviewer's finding).
// IMAP sets no length on a quoted string: it must go upstream quoted.
func TestLongStringFetchWithModSeq(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr := csStartProxy(t, dc)
	u := csSeed(t, dc, "LongLit", 1)
	field := "X-" + strings.Repeat("A", 1200)
	// Dovecot takes the name quoted, on one line.
	d := csDirect(t, dc, "LongLit")
	direct := d.MustOK(`FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT "` + field + `")])`)
	d.Close()
	c := csLogin(t, addr, "")
	c.selectMailbox("SELECT LongLit", u)
	for _, cmd := range []string{
		fmt.Sprintf("FETCH 1 (MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT {%d+}\r\n%s)])", len(field), field),
		`FETCH 1 (MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT "` + field + `")])`,
		fmt.Sprintf("UID FETCH %d (BODY.PEEK[HEADER.FIELDS (SUBJECT {%d+}\r\n%s)]) (CHANGEDSINCE 1)", u[0], len(field), field),
	} {
		lines := c.Cmd(cmd)
		if !strings.HasPrefix(imaptest.Tagged(lines), "OK") {
			t.Errorf("%.60s...: want OK as Dovecot answers, got %q", cmd, lines)
			continue
		}
		all := strings.Join(lines, "\n")
		if !strings.Contains(all, " FETCH (UID 1 MODSEQ (") || !strings.Contains(all, "Subject: message 1") {
			t.Errorf("%.60s...: want the MODSEQ and the Subject header (Dovecot: %q), got %q", cmd, direct, lines)
		}
	}
}

// TestUIDStarIsClientsLast: "*" in a UID set is the last message of the
// session's view, the one the client has been told of: Dovecot, with a
// message delivered by another client since, stores on the last message
// its session knows, not the new one, of which it tells the session
// after the command (checked here directly first). The proxy's
// conditional STORE, which brings the hub's state up to date first,
// bound "*" to the state's last message: the new one, reported
// [MODIFIED] (a UID the client did not know), and the client's last one
// was left alone. The upstream has no IDLE and the watcher polls once an
// hour, so that the state learns of the new message at the STORE's Sync
// only, not before the command, when the proxy would tell the client of
// it first (and "*" would rightly be the new message).
func TestUIDStarIsClientsLast(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.LegacyNoIdle)
	addr := csStartProxy(t, dc, func(c *proxy.Config) { c.Hub.PollInterval = time.Hour })
	other := csDirect(t, dc, "")
	defer other.Close()

	// Dovecot itself.
	u := csSeed(t, dc, "StarD", 2)
	d := csDirect(t, dc, "StarD")
	defer d.Close()
	csAppend(t, other, "StarD", 1)
	d.MustOK(`UID STORE * +FLAGS ($Direct)`)
	flags := csDirectFlags(t, dc, "StarD")
	csWantFlags(t, "Dovecot: the session's last message after UID STORE *", flags[u[1]], `$Direct`)
	// The STORE told d of the first new message; a range leaves out the
	// one delivered since.
	later := csAppend(t, other, "StarD", 1)
	d.MustOK(`UID STORE 1:1000 (UNCHANGEDSINCE 4611686018427387904) +FLAGS ($Range)`)
	csWantFlags(t, "Dovecot: a message the session was not told of, after UID STORE 1:1000", csDirectFlags(t, dc, "StarD")[later[0]])

	u = csSeed(t, dc, "StarV", 2)
	c := csLogin(t, addr, "CONDSTORE")
	h := c.selectMailbox("SELECT StarV", u).highestModSeq(t)
	fresh := csAppend(t, other, "StarV", 1)
	// The conditional STORE brings the hub's state up to date
	// (Mailbox.Sync) before it reads it.
	r := c.Cmd(fmt.Sprintf(`UID STORE * (UNCHANGEDSINCE %d) +FLAGS ($Star)`, h))
	t.Logf("UID STORE * (UNCHANGEDSINCE): %q", r)
	if strings.Contains(imaptest.Tagged(r), "MODIFIED") {
		t.Errorf("UID STORE * (UNCHANGEDSINCE %d): [MODIFIED] for a message the client was not told of: %q", h, r)
	}
	flags = csDirectFlags(t, dc, "StarV")
	csWantFlags(t, "the client's last message after UID STORE * (UNCHANGEDSINCE)", flags[u[1]], `$Star`)
	csWantFlags(t, "the message delivered since, after UID STORE * (UNCHANGEDSINCE)", flags[fresh[0]])
	later = csAppend(t, other, "StarV", 1)
	c.MustOK(`UID STORE 1:1000 (UNCHANGEDSINCE 4611686018427387904) +FLAGS ($Range)`)
	flags = csDirectFlags(t, dc, "StarV")
	csWantFlags(t, "a message the client was told of, after UID STORE 1:1000 (UNCHANGEDSINCE)", flags[fresh[0]], `$Range`)
	csWantFlags(t, "a message the client was not told of, after UID STORE 1:1000 (UNCHANGEDSINCE)", flags[later[0]])
}

// syncFirst brings the selected mailbox's state up to date before each
// UID FETCH reaches condstore: what the watcher does at any moment, made
// to happen between the delivery that precedes the command and the
// command itself, where the change is in the state and not yet told.
type syncFirst struct{}

func (syncFirst) Name() string       { return "syncfirst" }
func (syncFirst) Commands() []string { return []string{"UID FETCH"} }
func (syncFirst) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	if m := x.Session().Mailbox(); m != nil {
		if err := m.Sync(ctx, 5*time.Second); err != nil {
			return err
		}
	}
	return next(ctx, x)
}

// TestChangedSinceVanishedNotTold: an expunge the client has not been
// told of yet, the message still in its view, is told by the VANISHED
// after the command, as Dovecot does (it fetches the message, then says
// "* VANISHED uid"; checked directly first). The proxy also put it in the
// command's VANISHED (EARLIER), so the client heard of it twice, the
// first time while the message still counted among its messages (a
// standing note: CHANGEDSINCE VANISHED reporting above the session's
// mod-sequence). The upstream has no IDLE and the watcher polls once an
// hour: the state learns of the expunge from syncFirst only.
func TestChangedSinceVanishedNotTold(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.LegacyNoIdle)

	// Dovecot itself.
	u := csSeed(t, dc, "VanD", 3)
	d := csDirect(t, dc, "")
	defer d.Close()
	d.MustOK("ENABLE QRESYNC")
	d.MustOK("SELECT VanD")
	other := csDirect(t, dc, "VanD")
	other.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Deleted)`, u[1]))
	other.MustOK("EXPUNGE")
	other.Close()
	r := csClassify(t, d.MustOK("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"))
	csWantUIDs(t, "Dovecot: VANISHED (EARLIER) for an expunge its session has not been told of", r.earlier)
	csWantUIDs(t, "Dovecot: VANISHED after the command", r.vanished, u[1])

	addr := csStartProxy(t, dc, func(c *proxy.Config) {
		c.Hub.PollInterval = time.Hour
		c.Extensions = []proxy.Extension{idle.New(), syncFirst{}, condstore.New()}
	})
	u = csSeed(t, dc, "Van", 3)
	c := csLogin(t, addr, "QRESYNC")
	h := c.selectMailbox("SELECT Van", u).highestModSeq(t)
	c.mustRun(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[0]))
	other = csDirect(t, dc, "Van")
	other.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Deleted)`, u[1]))
	other.MustOK("EXPUNGE")
	other.Close()
	r = c.mustRun(fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", h))
	csWantUIDs(t, "VANISHED (EARLIER) for an expunge the client has not been told of", r.earlier)
	csWantUIDs(t, "VANISHED after the command", r.vanished, u[1])
	csWantUIDs(t, "FETCH of the messages changed since", r.fetchUIDs(), u[0])
}

// TestUIDStarChangedSinceNewMessage: "UID FETCH * (FLAGS) (CHANGEDSINCE
// m)" names the client's last message even when the state has learnt of
// a newer one the client has not been told of yet (syncFirst makes that
// happen every time): Dovecot fetches its session's last message (checked
// directly first). The proxy bound "*" to the state's newest message,
// which the client does not know, and answered nothing.
func TestUIDStarChangedSinceNewMessage(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.LegacyNoIdle)
	other := csDirect(t, dc, "")
	defer other.Close()

	// Dovecot itself.
	u := csSeed(t, dc, "NewD", 2)
	d := csDirect(t, dc, "")
	defer d.Close()
	d.MustOK("ENABLE CONDSTORE")
	d.MustOK("SELECT NewD")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[1]))
	csAppend(t, other, "NewD", 1)
	r := csClassify(t, d.MustOK("UID FETCH * (FLAGS) (CHANGEDSINCE 1)"))
	csWantUIDs(t, "Dovecot: UID FETCH * (CHANGEDSINCE) with a message delivered since", r.fetchUIDs(), u[1])

	addr := csStartProxy(t, dc, func(c *proxy.Config) {
		c.Hub.PollInterval = time.Hour
		c.Extensions = []proxy.Extension{idle.New(), syncFirst{}, condstore.New()}
	})
	u = csSeed(t, dc, "New", 2)
	c := csLogin(t, addr, "CONDSTORE")
	h := c.selectMailbox("SELECT New", u).highestModSeq(t)
	c.mustRun(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[1]))
	csAppend(t, other, "New", 1)
	r = c.mustRun(fmt.Sprintf("UID FETCH * (FLAGS) (CHANGEDSINCE %d)", h))
	csWantUIDs(t, "UID FETCH * (CHANGEDSINCE) with a message delivered since", r.fetchUIDs(), u[1])
}

// TestESearchCountModSeq: an ESEARCH answer to a search with MODSEQ
// carries MODSEQ, the highest of every matching message when COUNT is
// asked for, with MIN or MAX or alone (RFC 4731 3.2: only MIN and/or
// MAX alone narrow it), as Dovecot answers (checked directly first).
// With the upstream's ESEARCH and no extensions/esearch in the chain,
// the proxy added MODSEQ from the MIN and MAX it saw, and none to COUNT
// alone.
func TestESearchCountModSeq(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr := csStartProxy(t, dc)
	u := csSeed(t, dc, "Count", 3)
	d := csDirect(t, dc, "")
	defer d.Close()
	d.MustOK("ENABLE CONDSTORE")
	d.MustOK("SELECT Count")
	d.MustOK(fmt.Sprintf(`UID STORE %d +FLAGS (\Seen)`, u[1]))
	highest := regexp.MustCompile(`\bMODSEQ (\d+)`)
	// The highest mod-sequence of all messages, and the one of message 1.
	modseqs := func(c *imaptest.Client) (all, first string) {
		all = highest.FindStringSubmatch(c.MustOK("SEARCH RETURN (ALL) MODSEQ 1")[0])[1]
		first = highest.FindStringSubmatch(c.MustOK("SEARCH RETURN (MIN) MODSEQ 1")[0])[1]
		return all, first
	}
	check := func(who string, c *imaptest.Client) {
		t.Helper()
		all, first := modseqs(c)
		for _, tc := range []struct{ cmd, want string }{
			{"SEARCH RETURN (COUNT) MODSEQ 1", "COUNT 3 MODSEQ " + all},
			{"SEARCH RETURN (MIN COUNT) MODSEQ 1", "MIN 1 COUNT 3 MODSEQ " + all},
			{"UID SEARCH RETURN (COUNT MAX) MODSEQ 1", fmt.Sprintf("UID COUNT 3 MAX %d MODSEQ %s", u[2], all)},
			{"SEARCH RETURN (MIN) MODSEQ 1", "MIN 1 MODSEQ " + first},
		} {
			got := c.MustOK(tc.cmd)[0]
			// The items in any order, Dovecot's or the proxy's.
			gf, wf := strings.Fields(got)[4:], strings.Fields(tc.want)
			slices.Sort(gf)
			slices.Sort(wf)
			if !slices.Equal(gf, wf) {
				t.Errorf("%s: %s: got %q, want the items %q", who, tc.cmd, got, tc.want)
			}
		}
	}
	check("Dovecot", d)
	c := csLogin(t, addr, "CONDSTORE")
	c.selectMailbox("SELECT Count", u)
	// Message 2 the last changed here too, so that the highest of all
	// is neither MIN's nor MAX's.
	c.mustRun(fmt.Sprintf(`UID STORE %d +FLAGS (\Flagged)`, u[1]))
	check("proxy", c.Client)
}
