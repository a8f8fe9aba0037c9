package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
)

// TestOwnAdditionsTold: over Dovecot (whose APPENDUID and COPYUID name the
// new messages), an APPEND and a COPY into the selected mailbox get their
// EXISTS before the tagged OK without the watcher's round trip: the
// watcher's connection gets no EXISTS (in IDLE, or in the answer to any
// round trip) until both are answered. The hub takes the APPEND's flags
// and the copies' sources' flags for them: once the watcher has seen the
// messages nothing changes for the client (a flag the hub had wrong would
// come as a FETCH with the NOOP).
func TestOwnAdditionsTold(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p)
			mustOK(t, d.Cmd(`APPEND INBOX (\Seen $Work) {7+}`+"\r\nSubj: 1"))
			mustOK(t, d.Cmd(`APPEND INBOX (\Answered) {7+}`+"\r\nSubj: 2"))
			fn := faultnet.Start(t, dc.Addr)
			addr, _ := startProxy(t, fn.Addr())
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))   // connection 1
			mustOK(t, c.Cmd("SELECT INBOX")) // the watcher: connection 2
			if n := len(fn.Conns()); n != 2 {
				t.Fatalf("%d upstream connections after SELECT, want 2", n)
			}
			h := fn.Add(faultnet.Fault{Conn: 2, Match: []byte("EXISTS"), MatchDir: faultnet.ToClient, Dir: faultnet.ToClient, Action: faultnet.Hold})
			defer h.Release()

			r := mustOK(t, c.Cmd(`APPEND INBOX (\Flagged) {7+}`+"\r\nSubj: 3"))
			if len(r) != 3 || r[0] != "* 3 EXISTS" || r[1] != "* 3 RECENT" || !strings.Contains(r[2], "[APPENDUID ") {
				t.Fatalf("APPEND: %q", r)
			}
			r = mustOK(t, c.Cmd("COPY 1:2 INBOX"))
			if len(r) != 3 || r[0] != "* 5 EXISTS" || r[1] != "* 5 RECENT" || !strings.Contains(r[2], "[COPYUID ") {
				t.Fatalf("COPY: %q", r)
			}
			select {
			case <-h.Fired():
			case <-time.After(10 * time.Second):
				t.Fatal("the watcher's connection never got an EXISTS")
			}
			h.Release()
			// The watcher confirms the three messages (its round trip,
			// which a SELECT of another session waits for); the
			// client hears of nothing more.
			b := dialRaw(t, addr)
			mustOK(t, b.Cmd("LOGIN u pw"))
			mustOK(t, b.Cmd("EXAMINE INBOX"))
			if r := mustOK(t, c.Cmd("NOOP")); len(r) != 1 {
				t.Errorf("NOOP after the watcher confirmed: %q, want the tagged OK alone", r)
			}
			r = mustOK(t, c.Cmd("FETCH 1:5 (FLAGS)"))
			want := []string{
				`* 1 FETCH (FLAGS (\Seen \Recent $Work))`,
				`* 2 FETCH (FLAGS (\Answered \Recent))`,
				`* 3 FETCH (FLAGS (\Flagged \Recent))`,
				`* 4 FETCH (FLAGS (\Seen \Recent $Work))`,
				`* 5 FETCH (FLAGS (\Answered \Recent))`,
			}
			if !slices.Equal(untagged(r), want) {
				t.Errorf("FETCH FLAGS: %q, want %q", untagged(r), want)
			}
		})
	}
}

// TestPooledConnectionCatchesUp: commands that look as if they did not
// depend on the leased connection's view of the selected mailbox still
// need it brought up to date first (the catch-up NOOP, proxy/lease.go),
// because Dovecot runs a command on the view the connection had after its
// previous one: a STATUS of the selected mailbox counts from it, an
// EXPUNGE removes only the \Deleted messages it holds, and a CATENATE URL
// is looked up in it. Each case starts from a pooled connection that has
// not seen a message another client added since; a second reviewer found
// all three when the catch-up was skipped for such commands (session 11).
func TestPooledConnectionCatchesUp(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			dc, d := startDovecotUser(t, p) // d: another client, directly on Dovecot
			mustOK(t, d.Cmd(`APPEND INBOX {7+}`+"\r\nSubj: 1"))
			addr, _ := startProxy(t, dc.Addr)
			c := dialRaw(t, addr)
			mustOK(t, c.Cmd("LOGIN u pw"))
			mustOK(t, c.Cmd("SELECT INBOX"))
			// stale adds a message behind the session's pooled
			// connection's back, and the session hears of it from the
			// hub (its NOOP waits for the watcher's round trip).
			stale := func(flags string, exists string) {
				t.Helper()
				mustOK(t, d.Cmd(`APPEND INBOX (`+flags+`) {7+}`+"\r\nSubj: x"))
				if r := mustOK(t, c.Cmd("NOOP")); !slices.Contains(r, exists) {
					t.Fatalf("NOOP after another client's APPEND: %q, want %s", r, exists)
				}
			}

			stale("", "* 2 EXISTS")
			r := mustOK(t, c.Cmd("STATUS INBOX (MESSAGES UIDNEXT)"))
			if want := "* STATUS INBOX (MESSAGES 2 UIDNEXT 3)"; r[0] != want {
				t.Errorf("STATUS of the selected mailbox: %q, want %s", r, want)
			}

			stale(`\Deleted`, "* 3 EXISTS")
			r = mustOK(t, c.Cmd("EXPUNGE"))
			var expunges []string
			for _, l := range untagged(r) {
				if strings.HasSuffix(l, " EXPUNGE") {
					expunges = append(expunges, l)
				}
			}
			if !slices.Equal(expunges, []string{"* 3 EXPUNGE"}) {
				t.Errorf("EXPUNGE: %q, want * 3 EXPUNGE", r)
			}
			mustOK(t, d.Cmd("EXAMINE INBOX"))
			if r := mustOK(t, d.Cmd("UID SEARCH ALL")); r[0] != "* SEARCH 1 2" {
				t.Errorf("after the EXPUNGE the upstream has %q, want UIDs 1 and 2", r)
			}

			if p != dovecottest.Full {
				return // CATENATE is the proxy's own over legacy: its URLs are fetched through the hub's view
			}
			stale("", "* 3 EXISTS")
			r = mustOK(t, c.Cmd(`APPEND INBOX CATENATE (URL "/INBOX/;UID=4" TEXT {4+}`+"\r\nabcd)"))
			if !strings.Contains(r[len(r)-1], "[APPENDUID ") || !slices.Contains(r, "* 4 EXISTS") {
				t.Errorf("APPEND CATENATE of the message another client added: %q", r)
			}
		})
	}
}
