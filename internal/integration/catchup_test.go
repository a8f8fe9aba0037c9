package integration

import (
	"fmt"
	"slices"
	"testing"
)

// TestCatchUpAfterSelect: a pooled connection that a SELECT moved from one
// mailbox to another must not carry over how far it had seen the first.
// Archive's mod-sequences run far above INBOX's (its state was made later:
// they start from the clock); after SELECT INBOX on the
// connection that served Archive, a message another client adds to INBOX
// must be there for the session's FETCH (the connection catches up first).
func TestCatchUpAfterSelect(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p)
			mustOK(t, d.Cmd("CREATE Archive"))
			mustOK(t, d.Cmd(`APPEND Archive {7+}`+"\r\nSubj: a"))
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 1"))
			addr, _ := startProxy(t, dc.Addr)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			mustOK(t, c.Cmd("SELECT Archive"))
			mustOK(t, c.Cmd(`STORE 1 +FLAGS (\Seen)`))
			mustOK(t, c.Cmd("SELECT INBOX"))
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 2"))
			if r := mustOK(t, c.Cmd("NOOP")); !slices.Contains(r, "* 2 EXISTS") {
				t.Fatalf("NOOP after another client's APPEND: %q, want * 2 EXISTS", r)
			}
			if r := mustOK(t, c.Cmd("FETCH 2 (UID RFC822.SIZE)")); !slices.Contains(r, "* 2 FETCH (UID 2 RFC822.SIZE 7)") {
				t.Errorf("FETCH of the new message: %q, want * 2 FETCH (UID 2 RFC822.SIZE 7)", r)
			}
		})
	}
}

// TestCatchUpForWhatCommandsNeed: a pooled connection that sat in the pool
// while another client changed the mailbox is brought up to date before a
// command that relies on what changed (proxy/catchup.go), over Dovecot,
// whose connections see nothing of others' changes until they sync. Each
// case makes the session's client hear of a change from the hub (its NOOP)
// while its pooled connection has not synced since, then asks for what
// depends on it.
func TestCatchUpForWhatCommandsNeed(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p)
			for i := range 3 {
				mustOK(t, d.Cmd(fmt.Sprintf(`APPEND INBOX {7+}`+"\r\nSubj: %d", i)))
			}
			mustOK(t, d.Cmd("CREATE Other"))
			mustOK(t, d.Cmd("SELECT INBOX"))
			addr, _ := startProxy(t, dc.Addr)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			mustOK(t, c.Cmd("FETCH 1:* (FLAGS)")) // the pooled connection has seen everything
			// heard makes the proxy's client hear of what d did.
			heard := func(want string) {
				t.Helper()
				if r := mustOK(t, c.Cmd("NOOP")); !slices.Contains(r, want) {
					t.Fatalf("NOOP after the other client's change: %q, want %s", r, want)
				}
			}

			// A message added behind the connection's back, fetched
			// with items that never change.
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 4"))
			heard("* 4 EXISTS")
			if r := mustOK(t, c.Cmd("FETCH 4 (UID RFC822.SIZE)")); !slices.Contains(r, "* 4 FETCH (UID 4 RFC822.SIZE 7)") {
				t.Errorf("FETCH of the message another client added: %q", r)
			}

			// Pipelined: the first FETCH needs no catch-up, the one
			// sent ahead of its turn behind it (proxy/ahead.go) does.
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 5"))
			heard("* 5 EXISTS")
			c.Write("p1 UID FETCH 1 (RFC822.SIZE)\r\np2 UID FETCH 5 (RFC822.SIZE)\r\n")
			if r := c.ReadUntilTagged("p1"); !slices.Contains(r, "* 1 FETCH (UID 1 RFC822.SIZE 7)") {
				t.Errorf("the first of two pipelined FETCHes: %q", r)
			}
			if r := c.ReadUntilTagged("p2"); !slices.Contains(r, "* 5 FETCH (UID 5 RFC822.SIZE 7)") {
				t.Errorf("the second of two pipelined FETCHes, of the message another client added: %q", r)
			}

			// Flags changed behind the connection's back, then
			// fetched, stored and copied. A FETCH of another message
			// first, which needs no catch-up, must not make the
			// connection look up to date.
			mustOK(t, d.Cmd(`STORE 2 +FLAGS ($Other)`))
			heard(`* 2 FETCH (FLAGS ($Other))`)
			if r := mustOK(t, c.Cmd("FETCH 1 (RFC822.SIZE)")); !slices.Contains(r, "* 1 FETCH (RFC822.SIZE 7)") {
				t.Errorf("FETCH 1 (RFC822.SIZE): %q", r)
			}
			if r := mustOK(t, c.Cmd("FETCH 2 (FLAGS)")); !slices.Contains(r, `* 2 FETCH (FLAGS ($Other))`) {
				t.Errorf("FETCH FLAGS of the message whose flags another client changed: %q", r)
			}

			mustOK(t, d.Cmd(`STORE 3 +FLAGS ($Other)`))
			heard(`* 3 FETCH (FLAGS ($Other))`)
			if r := mustOK(t, c.Cmd(`STORE 3 +FLAGS (\Flagged)`)); !slices.Contains(r, `* 3 FETCH (FLAGS (\Flagged $Other))`) {
				t.Errorf("STORE on the message whose flags another client changed: %q", r)
			}

			mustOK(t, d.Cmd(`STORE 1 +FLAGS ($Other)`))
			heard(`* 1 FETCH (FLAGS ($Other))`)
			mustOK(t, c.Cmd("COPY 1 Other"))
			mustOK(t, d.Cmd("EXAMINE Other"))
			// \Recent: d is the first to see the copy.
			if r := mustOK(t, d.Cmd("FETCH 1 (FLAGS)")); !slices.Contains(r, `* 1 FETCH (FLAGS (\Recent $Other))`) {
				t.Errorf("the copy of the message whose flags another client changed has %q", r)
			}
		})
	}
}
