package integration

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestStorePipelined: a client that pipelines FETCHes and STOREs by
// sequence numbers, as imaptest's stress does, with the proxy sending the
// STOREs upstream ahead of their turn (proxy/ahead.go) to Dovecot, which
// runs a batch's UID commands at once and may send a STORE's answers
// before the tagged response of the command before it. Whichever turn
// they come in: a STORE's answer shows the flags it set, a silent STORE's
// shows none (with CONDSTORE, its MODSEQ alone), a FETCH shows a message's
// flags as the STOREs before it left them, nothing the session did is
// told back to it afterwards, and Dovecot has every change. With the
// whole extension chain, whose STORE handlers must let them go ahead.
func TestStorePipelined(t *testing.T) {
	for _, p := range profiles {
		for _, condstore := range []bool{false, true} {
			name := p.String()
			if condstore {
				name += "/condstore"
			}
			t.Run(name, func(t *testing.T) {
				storePipelined(t, p, condstore)
			})
		}
	}
}

func storePipelined(t *testing.T, p dovecottest.Profile, condstore bool) {
	const n = 30
	d, c, srv := pipelineSession(t, p, n, condstore)

	// Message i (1-based): i%3 == 1 fetched, 2 flagged with a keyword of
	// its own, 0 marked \Answered silently; then each fetched again.
	var batch strings.Builder
	for i := 1; i <= n; i++ {
		switch i % 3 {
		case 1:
			fmt.Fprintf(&batch, "t%d FETCH %d (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])\r\n", i, i)
		case 2:
			fmt.Fprintf(&batch, "t%d STORE %d +FLAGS (\\Flagged k%d)\r\n", i, i, i)
		case 0:
			fmt.Fprintf(&batch, "t%d STORE %d +FLAGS.SILENT (\\Answered)\r\n", i, i)
		}
	}
	// A NOOP between the halves: no FETCH of the second is in flight in
	// the first (it would be told of the silent STOREs' flags it asks).
	fmt.Fprintf(&batch, "t%d NOOP\r\n", n+1)
	for i := 2; i <= n+1; i++ {
		fmt.Fprintf(&batch, "t%d FETCH %d (FLAGS)\r\n", n+i, i-1)
	}
	want := func(i int) string {
		switch i % 3 {
		case 2:
			return fmt.Sprintf(`\Flagged k%d`, i)
		case 0:
			return `\Answered`
		}
		return ""
	}

	before := srv.Stats().CommandsAhead
	c.WriteBytes([]byte(batch.String()))
	for tag := 1; tag <= 2*n+1; tag++ {
		got := c.ReadUntilTagged(fmt.Sprintf("t%d", tag))
		if !strings.HasPrefix(got[len(got)-1], fmt.Sprintf("t%d OK", tag)) {
			t.Fatalf("t%d: %q", tag, got)
		}
		for _, l := range got {
			f, ok := parseFetch(l)
			if !ok {
				continue
			}
			if f.seq%3 == 0 && tag <= n {
				// The silent STORE's answer, in whichever turn (no
				// FETCH of it in the first half).
				if f.hasFlags {
					t.Fatalf("t%d: %q tells the flags a silent STORE set", tag, l)
				}
				if condstore != strings.Contains(f.items, "MODSEQ") {
					t.Fatalf("t%d: %q, want the silent STORE's MODSEQ alone with CONDSTORE, nothing without", tag, l)
				}
				continue
			}
			if f.hasFlags && f.flags != want(f.seq) {
				t.Fatalf("t%d: %q, want message %d's flags %q", tag, l, f.seq, want(f.seq))
			}
		}
	}
	if srv.Stats().CommandsAhead-before < n/2 {
		t.Errorf("%d commands went upstream ahead of their turn, want at least %d", srv.Stats().CommandsAhead-before, n/2)
	}
	// Nothing of the session's own is told back to it.
	if got := c.Cmd("NOOP"); len(got) != 1 {
		t.Fatalf("NOOP after the batch: %q, want its OK alone", got)
	}
	// Dovecot has every change.
	mustOK(t, d.Cmd("SELECT INBOX"))
	got := d.Cmd("FETCH 1:* (FLAGS)")
	mustOK(t, got)
	for _, l := range got[:len(got)-1] {
		f, ok := parseFetch(l)
		if !ok {
			continue
		}
		if !f.hasFlags || f.flags != want(f.seq) {
			t.Fatalf("Dovecot: %q, want message %d's flags %q", l, f.seq, want(f.seq))
		}
	}
}

// fetchResponse is a "* n FETCH (...)" response read apart: its sequence
// number, its items, and its flags without \Recent (hasFlags false when
// it shows none).
type fetchResponse struct {
	seq          int
	items, flags string
	hasFlags     bool
}

// parseFetch reads l as a FETCH response (hub_test.go's fetchRe and
// flagsRe); ok is false for any other line.
func parseFetch(l string) (f fetchResponse, ok bool) {
	m := fetchRe.FindStringSubmatch(l)
	if m == nil {
		return f, false
	}
	f.seq, _ = strconv.Atoi(m[1])
	f.items = m[2]
	if fl := flagsRe.FindStringSubmatch(m[2]); fl != nil {
		f.flags, f.hasFlags = withoutRecent(fl[1]), true
	}
	return f, true
}

// withoutRecent is a flag list without \Recent (the proxy's is its own).
func withoutRecent(flags string) string {
	return strings.Join(slices.DeleteFunc(strings.Fields(flags), func(f string) bool { return f == `\Recent` }), " ")
}

// TestSilentStoreThenFetchPipelined: a client pipelines, for each
// message, a STORE .SILENT and a FETCH of its flags and size. Every
// message is last shown with the flags the STORE set, whichever order
// Dovecot runs and answers them in (it runs a batch's UID commands at
// once), and nothing is told after the batch: the FETCH keeps its turn
// behind the STORE (proxy/ahead.go, silentAhead). Sent ahead, its answer
// came before the STORE's, with the flags as before the STORE, and the
// client kept them. A STORE that is not silent, whose FETCH goes ahead
// beside it, and CONDSTORE alike.
func TestSilentStoreThenFetchPipelined(t *testing.T) {
	for _, p := range profiles {
		for _, tt := range []struct {
			item      string
			condstore bool
		}{{"+FLAGS.SILENT", false}, {"+FLAGS.SILENT", true}, {"+FLAGS", false}, {"+FLAGS", true}} {
			t.Run(fmt.Sprint(p, "/", tt.item, "/condstore=", tt.condstore), func(t *testing.T) {
				silentStoreThenFetch(t, p, tt.item, tt.condstore)
			})
		}
	}
}

func silentStoreThenFetch(t *testing.T, p dovecottest.Profile, item string, condstore bool) {
	const n = 20
	_, c, srv := pipelineSession(t, p, n, condstore)
	var batch strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&batch, "t%d STORE %d %s (\\Flagged)\r\n", 2*i-1, i, item)
		fmt.Fprintf(&batch, "t%d FETCH %d (FLAGS RFC822.SIZE)\r\n", 2*i, i)
	}
	before := srv.Stats().CommandsAhead
	c.WriteBytes([]byte(batch.String()))
	shown := map[int]bool{}
	last := map[int]string{} // the flags each message was last shown with
	for tag := 1; tag <= 2*n; tag++ {
		got := c.ReadUntilTagged(fmt.Sprintf("t%d", tag))
		if !strings.HasPrefix(got[len(got)-1], fmt.Sprintf("t%d OK", tag)) {
			t.Fatalf("t%d: %q", tag, got)
		}
		for _, l := range got {
			f, ok := parseFetch(l)
			if !ok {
				continue
			}
			if f.hasFlags {
				last[f.seq] = f.flags
			}
			if strings.Contains(f.items, "RFC822.SIZE") {
				shown[f.seq] = true
			}
		}
	}
	if len(shown) != n {
		t.Fatalf("the FETCHes answered %d messages, want %d", len(shown), n)
	}
	if got := c.Cmd("NOOP"); len(got) != 1 {
		t.Fatalf("NOOP after the batch: %q, want its OK alone", got)
	}
	for i := 1; i <= n; i++ {
		if last[i] != `\Flagged` {
			t.Errorf("message %d was last shown with flags %q, want %q (its STORE's)", i, last[i], `\Flagged`)
		}
	}
	if srv.Stats().CommandsAhead-before < n/2 {
		t.Errorf("%d commands went upstream ahead of their turn, want at least %d", srv.Stats().CommandsAhead-before, n/2)
	}
}

// TestExpungePipelined: a client that pipelines STORE \Deleted, EXPUNGE
// and FETCH by sequence numbers, five times over, as imaptest's stress
// does; the proxy sends an EXPUNGE upstream behind its STORE, ahead of its
// turn. Each EXPUNGE tells the client's message 1 expunged before its
// OK, each FETCH 1 after it shows the next message, nothing is told back
// afterwards, and Dovecot has the messages left.
func TestExpungePipelined(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			d, c, srv := pipelineSession(t, p, 8, false)
			var batch strings.Builder
			for i := 1; i <= 5; i++ {
				fmt.Fprintf(&batch, "d%d STORE 1 +FLAGS.SILENT (\\Deleted)\r\ne%d EXPUNGE\r\nf%d FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])\r\n", i, i, i)
			}
			before := srv.Stats().CommandsAhead
			c.WriteBytes([]byte(batch.String()))
			for i := 1; i <= 5; i++ {
				if got := c.ReadUntilTagged(fmt.Sprintf("d%d", i)); len(got) != 1 {
					t.Fatalf("d%d: %q, want the silent STORE's OK alone", i, got)
				}
				got := slices.DeleteFunc(c.ReadUntilTagged(fmt.Sprintf("e%d", i)), func(l string) bool { return strings.HasSuffix(l, " RECENT") })
				if len(got) != 2 || got[0] != "* 1 EXPUNGE" || !strings.HasPrefix(got[1], fmt.Sprintf("e%d OK", i)) {
					t.Fatalf("e%d: %q, want message 1 expunged before the OK", i, got)
				}
				got = c.ReadUntilTagged(fmt.Sprintf("f%d", i))
				if !strings.HasPrefix(got[len(got)-1], fmt.Sprintf("f%d OK", i)) || !strings.Contains(strings.Join(got, "\n"), fmt.Sprintf("Subject: message %d", i)) {
					t.Fatalf("f%d: %q, want message 1 to be the one of subject %q", i, got, fmt.Sprintf("message %d", i))
				}
			}
			// The first EXPUNGE goes behind its STORE; the later ones
			// follow a FETCH served on a connection caught up only for
			// it (catchup.go), behind which nothing goes ahead.
			if srv.Stats().CommandsAhead == before {
				t.Errorf("no EXPUNGE went upstream ahead of its turn")
			}
			if got := c.Cmd("NOOP"); len(got) != 1 {
				t.Fatalf("NOOP after the batch: %q, want its OK alone", got)
			}
			mustOK(t, d.Cmd("SELECT INBOX"))
			if got := d.Cmd("SEARCH ALL"); got[0] != "* SEARCH 1 2 3" {
				t.Fatalf("Dovecot: %q, want the three messages left", got)
			}
		})
	}
}

// pipelineSession starts a Dovecot user of profile p with n sample
// messages in INBOX, the proxy in front of it with the whole extension
// chain, and a client of the proxy logged in, with CONDSTORE enabled if
// asked, and INBOX selected. d is a client of Dovecot's own, logged in.
func pipelineSession(t *testing.T, p dovecottest.Profile, n int, condstore bool) (d, c *imaptest.Client, srv *proxy.Server) {
	t.Helper()
	dc, d := startDovecotUser(t, p)
	for i := range n {
		mustOK(t, d.Cmd(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(sampleMessage(i, "body")), sampleMessage(i, "body"))))
	}
	addr, srv := startProxy(t, dc.Addr, func(c *proxy.Config) { c.Extensions = chain.Extensions(chain.Config{}) })
	c = dialRaw(t, addr)
	mustOK(t, c.Cmd("LOGIN u pw"))
	if condstore {
		mustOK(t, c.Cmd("ENABLE CONDSTORE"))
	}
	mustOK(t, c.Cmd("SELECT INBOX"))
	return d, c, srv
}
