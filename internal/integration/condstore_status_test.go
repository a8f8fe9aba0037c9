package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// csSelectHighest returns the [HIGHESTMODSEQ n] of a SELECT or EXAMINE
// (with CONDSTORE) through the proxy, and its [UIDVALIDITY n].
func csSelectHighest(t *testing.T, c *imaptest.Client, cmd string) (highest uint64, uidValidity uint32) {
	t.Helper()
	for _, l := range c.MustOK(cmd) {
		if _, rest, ok := strings.Cut(l, "[HIGHESTMODSEQ "); ok {
			v, _, _ := strings.Cut(rest, "]")
			highest, _ = strconv.ParseUint(v, 10, 64)
		}
		if _, rest, ok := strings.Cut(l, "[UIDVALIDITY "); ok {
			v, _, _ := strings.Cut(rest, "]")
			n, _ := strconv.ParseUint(v, 10, 32)
			uidValidity = uint32(n)
		}
	}
	if highest == 0 || uidValidity == 0 {
		t.Fatalf("%s: no HIGHESTMODSEQ or UIDVALIDITY", cmd)
	}
	return highest, uidValidity
}

// csRecreated makes mailbox name with two messages, has a session (a)
// keep it selected through the proxy at addr (so the hub watches it) and
// change a flag, then deletes and creates it again with two messages
// directly on Dovecot (d, left logged in). It returns the old mailbox's
// HIGHESTMODSEQ and UIDVALIDITY, as the proxy gave them, and the new
// one's UIDVALIDITY.
func csRecreated(t *testing.T, dc *dovecottest.Server, addr, name string) (a, d *imaptest.Client, oldHighest uint64, oldUV, newUV uint32) {
	t.Helper()
	csSeed(t, dc, name, 2)
	a = imaptest.Login(t, addr, "alice", "alicepass")
	oldHighest, oldUV = csSelectHighest(t, a, "SELECT "+name+" (CONDSTORE)")
	a.MustOK(`STORE 1 +FLAGS (\Seen)`)

	d = csDirect(t, dc, "")
	d.MustOK("DELETE " + name)
	d.MustOK("CREATE " + name)
	csAppend(t, d, name, 2)
	st := d.MustOK("STATUS " + name + " (UIDVALIDITY)")
	if _, err := fmt.Sscanf(st[0], "* STATUS "+name+" (UIDVALIDITY %d)", &newUV); err != nil || newUV == oldUV {
		t.Fatalf("direct STATUS: %q (old UIDVALIDITY %d)", st, oldUV)
	}
	return a, d, oldHighest, oldUV, newUV
}

// TestStatusHighestModSeqRecreated: a mailbox the proxy keeps state for
// (a session has it selected) is deleted and created again directly on
// Dovecot. STATUS (HIGHESTMODSEQ) through the proxy must give the new
// mailbox's mod-sequence, the one an EXAMINE of it then reports, never
// the old mailbox's beside the new UIDVALIDITY (RFC 7162 3.1.2.1: a
// HIGHESTMODSEQ belongs to its UIDVALIDITY; a client caching by both
// would take the new mailbox for the old one). Whatever the first STATUS
// after the change asks for: UIDVALIDITY, nothing else, or RECENT (the
// core then asks the upstream for UIDVALIDITY on its own behalf and
// takes it out after condstore's filter has read it).
func TestStatusHighestModSeqRecreated(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			// Under the default layout, Dovecot itself now and then
			// answers the new mailbox "NO Mailbox was deleted under
			// us" (see dovecottest.Options.IndexLayout).
			dc := dovecottest.StartWith(t, p, dovecottest.Options{IndexLayout: true})
			addr := csStartProxy(t, dc)
			for _, first := range []struct{ ask, want string }{
				{"UIDVALIDITY HIGHESTMODSEQ", "UIDVALIDITY %[1]d HIGHESTMODSEQ %[2]d"},
				{"HIGHESTMODSEQ", "HIGHESTMODSEQ %[2]d"},
				{"RECENT HIGHESTMODSEQ", "RECENT 2 HIGHESTMODSEQ %[2]d"},
			} {
				name := "box" + strconv.Itoa(len(first.ask))
				a, d, oldHighest, oldUV, newUV := csRecreated(t, dc, addr, name)

				c := imaptest.Login(t, addr, "alice", "alicepass")
				got := c.MustOK("STATUS " + name + " (" + first.ask + ")")
				gotAgain := c.MustOK("STATUS " + name + " (UIDVALIDITY HIGHESTMODSEQ)")
				b := imaptest.Login(t, addr, "alice", "alicepass")
				highest, uv := csSelectHighest(t, b, "EXAMINE "+name+" (CONDSTORE)")
				if uv != newUV || highest == oldHighest {
					t.Fatalf("EXAMINE of the new mailbox: UIDVALIDITY %d HIGHESTMODSEQ %d (old %d %d, new UIDVALIDITY %d)", uv, highest, oldUV, oldHighest, newUV)
				}
				imaptest.AssertLines(t, "first STATUS ("+first.ask+")", got,
					[]string{"* STATUS " + name + " (" + fmt.Sprintf(first.want, newUV, highest) + ")", "*"})
				imaptest.AssertLines(t, "STATUS (UIDVALIDITY HIGHESTMODSEQ) again", gotAgain,
					[]string{fmt.Sprintf("* STATUS %s (UIDVALIDITY %d HIGHESTMODSEQ %d)", name, newUV, highest), "*"})
				for _, c := range []*imaptest.Client{a, b, c, d} {
					c.Close()
				}
			}
		})
	}
}

// TestStatusHighestModSeqLiteralName: Dovecot writes the name of a
// mailbox with many quoted-specials as a literal in its STATUS answer;
// the proxy's HIGHESTMODSEQ is added to that answer as to any other.
func TestStatusHighestModSeqLiteralName(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	addr := csStartProxy(t, dc)
	d := csDirect(t, dc, "")
	name := `"q\"\"\"\"\\\\x"`
	d.MustOK("CREATE " + name)
	direct := d.MustOK("STATUS " + name + " (MESSAGES)")
	if !strings.HasPrefix(direct[0], "* STATUS {") || !strings.HasSuffix(direct[0], " (MESSAGES 0)") {
		t.Fatalf("Dovecot's answer: %q", direct)
	}
	head := strings.TrimSuffix(direct[0], "(MESSAGES 0)")

	c := imaptest.Login(t, addr, "alice", "alicepass")
	got1 := c.MustOK("STATUS " + name + " (MESSAGES HIGHESTMODSEQ)")
	got2 := c.MustOK("STATUS " + name + " (HIGHESTMODSEQ)")
	highest, _ := csSelectHighest(t, c, "EXAMINE "+name+" (CONDSTORE)")
	imaptest.AssertLines(t, "STATUS (MESSAGES HIGHESTMODSEQ)", got1,
		[]string{fmt.Sprintf("%s(MESSAGES 0 HIGHESTMODSEQ %d)", head, highest), "*"})
	imaptest.AssertLines(t, "STATUS (HIGHESTMODSEQ)", got2,
		[]string{fmt.Sprintf("%s(HIGHESTMODSEQ %d)", head, highest), "*"})
}

// TestStatusHighestModSeqRecreatedBudget: the account's connection budget
// is one, so the mailbox a session keeps selected has at most the
// account's one connection for its watcher, and the STATUS that finds the
// mailbox deleted and created again outside the proxy takes it from the
// watcher (which goes passive: it refreshes on a lent connection) and
// holds it when the upstream answers. The hub's resync needs that
// connection: the STATUS must give it back before it waits for the resync
// (as SELECT does) and answer the new mailbox's HIGHESTMODSEQ at once.
// Before, the wait kept the connection and ran out its 5 s: a NO
// [UNAVAILABLE], or (when the resync had come through on the watcher's
// connection before the reclaim) the right answer after 5 s of the
// state's sync waiting for a connection; hence the time bound, far from
// both the 5 s and a normal answer's milliseconds.
func TestStatusHighestModSeqRecreatedBudget(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{IndexLayout: true})
	addr := csStartProxy(t, dc, func(c *proxy.Config) { c.Pool.MaxConnsPerAccount = 1 })
	a, d, oldHighest, oldUV, newUV := csRecreated(t, dc, addr, "box")
	defer a.Close()
	defer d.Close()

	c := imaptest.Login(t, addr, "alice", "alicepass")
	start := time.Now()
	got := c.Cmd("STATUS box (UIDVALIDITY HIGHESTMODSEQ)")
	took := time.Since(start)
	b := imaptest.Login(t, addr, "alice", "alicepass")
	highest, uv := csSelectHighest(t, b, "EXAMINE box (CONDSTORE)")
	if uv != newUV || highest == oldHighest {
		t.Fatalf("EXAMINE of the new mailbox: UIDVALIDITY %d HIGHESTMODSEQ %d (old %d %d, new UIDVALIDITY %d)", uv, highest, oldUV, oldHighest, newUV)
	}
	if tagged := imaptest.Tagged(got); !strings.HasPrefix(tagged, "OK ") {
		t.Fatalf("STATUS (UIDVALIDITY HIGHESTMODSEQ): %q", got)
	}
	imaptest.AssertLines(t, "STATUS (UIDVALIDITY HIGHESTMODSEQ)", got,
		[]string{fmt.Sprintf("* STATUS box (UIDVALIDITY %d HIGHESTMODSEQ %d)", newUV, highest), "*"})
	if took > 3*time.Second {
		t.Fatalf("STATUS answered after %v: it waited with the budget's only connection held", took)
	}
}

// TestStatusHighestModSeqRecreatedUnavailable: the hub's resync of a
// mailbox created again outside the proxy does not finish (faultnet holds
// the greeting of the watcher's new connection): the STATUS that asked
// for its HIGHESTMODSEQ is answered NO [UNAVAILABLE] once the wait runs
// out, and no STATUS response reaches the client (its HIGHESTMODSEQ would
// be the old mailbox's). Once the EXAMINE's answer comes, the hub catches
// up and STATUS gives the new mailbox's.
func TestStatusHighestModSeqRecreatedUnavailable(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{IndexLayout: true})
	fn := faultnet.Start(t, dc.Addr)
	addr := csStartProxyAt(t, fn.Addr())
	a, d, oldHighest, oldUV, newUV := csRecreated(t, dc, addr, "box")
	defer a.Close()
	defer d.Close()

	// The next connection the proxy opens gets no greeting until
	// released: the watcher's reconnection, which the resync needs (the
	// STATUS runs on the session's connection from the pool, the login
	// is verified from the cache).
	h := fn.Add(faultnet.Fault{Dir: faultnet.ToClient, Action: faultnet.Hold})
	defer h.Release()
	c := imaptest.Login(t, addr, "alice", "alicepass")
	got := c.Cmd("STATUS box (UIDVALIDITY HIGHESTMODSEQ)")
	select {
	case <-h.Fired():
	default:
		t.Fatalf("no new connection was held (the resync did not run?); STATUS answered %q", got)
	}
	imaptest.AssertLines(t, "STATUS (UIDVALIDITY HIGHESTMODSEQ) while the resync is held", got,
		[]string{"c2 NO [UNAVAILABLE] The mailbox changed while its status was asked; try again."})

	h.Release()
	again := c.MustOK("STATUS box (UIDVALIDITY HIGHESTMODSEQ)")
	b := imaptest.Login(t, addr, "alice", "alicepass")
	highest, uv := csSelectHighest(t, b, "EXAMINE box (CONDSTORE)")
	if uv != newUV || highest == oldHighest {
		t.Fatalf("EXAMINE of the new mailbox: UIDVALIDITY %d HIGHESTMODSEQ %d (old %d %d, new UIDVALIDITY %d)", uv, highest, oldUV, oldHighest, newUV)
	}
	imaptest.AssertLines(t, "STATUS (UIDVALIDITY HIGHESTMODSEQ) once the resync came through", again,
		[]string{fmt.Sprintf("* STATUS box (UIDVALIDITY %d HIGHESTMODSEQ %d)", newUV, highest), "*"})
}
