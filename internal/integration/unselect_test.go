package integration

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// TestUnselectWithoutReopening: on Dovecot without UNSELECT (the legacy
// profiles) a connection leaves its mailbox by an EXAMINE of a mailbox
// that does not exist and a check that nothing is selected after it
// (upstream.Conn.Unselect), not by opening the mailbox again (EXAMINE and
// CLOSE: a full sync of the maildir behind its locks, which under
// imaptest's stress every STATUS of another session's mailbox paid,
// docs/per-command.md, session 20). Dovecot then has no mailbox selected
// on the connection, the mailbox's \Deleted message is still there, and
// the connection selects the mailbox again as before.
//
// The same holds under a Courier-style namespace (all names below
// "INBOX.", as on servers migrated from Courier), where the probe's name,
// which lacks the prefix, is in no namespace: Dovecot closes the selected
// mailbox before it looks the name up, as RFC 3501 6.3.1 has it, so the
// probe costs two commands there too, and the mailbox a client of such a
// server selects (here INBOX.Sent) is not opened again either.
func TestUnselectWithoutReopening(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       dovecottest.Profile
		o       dovecottest.Options
		mailbox string
	}{
		{"Legacy", dovecottest.Legacy, dovecottest.Options{}, "INBOX"},
		{"LegacyNoIdle", dovecottest.LegacyNoIdle, dovecottest.Options{}, "INBOX"},
		{"CourierNamespace", dovecottest.Legacy, dovecottest.Options{CourierNamespace: true}, "INBOX.Sent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.CommandEvents = true
			dc := dovecottest.StartWith(t, tc.p, tc.o)
			dc.AddUser(t, "u", "pw")
			d := dialRaw(t, dc.Addr)
			mustOK(t, d.Cmd("LOGIN u pw"))
			var setup []string // the commands d sends before c connects, as Dovecot names them
			if tc.mailbox != "INBOX" {
				mustOK(t, d.Cmd("CREATE "+tc.mailbox))
				setup = append(setup, "CREATE")
			}
			mustOK(t, d.Cmd("APPEND "+tc.mailbox+` (\Deleted) {7+}`+"\r\nSubj: x"))
			setup = append(setup, "APPEND")
			ctx, c := dialUpstream(t, dc.Addr)
			if c.Caps().Has("UNSELECT") {
				t.Fatalf("%s advertises UNSELECT: the test needs a server without", tc.p)
			}
			if err := c.Select(ctx, tc.mailbox, false, nil); err != nil {
				t.Fatal(err)
			}
			before := c.NextTag()
			if err := c.Unselect(ctx); err != nil {
				t.Fatalf("Unselect: %v", err)
			}
			// Two commands: the EXAMINE that fails and the check, where
			// opening the mailbox again would have been more.
			if sent := tagNumber(t, c.NextTag()) - tagNumber(t, before) - 1; sent != 2 {
				t.Errorf("Unselect sent %d commands, want 2 (EXAMINE of a missing mailbox, the check)", sent)
			}
			expectNothingSelected(ctx, t, c)
			imaptest.AssertLines(t, "the deleted message kept", mustOK(t, d.Cmd("STATUS "+tc.mailbox+" (MESSAGES)")), []string{"* STATUS " + tc.mailbox + " (MESSAGES 1)", "*"})
			if err := c.Select(ctx, tc.mailbox, false, nil); err != nil {
				t.Fatalf("SELECT after Unselect: %v", err)
			}
			// Dovecot's own record: the mailbox was not opened again and
			// closed (EXAMINE, CLOSE); the probe's EXAMINE failed, and a
			// UID FETCH found nothing selected. Each connection's commands
			// on their own: two connections' events reach the log in no
			// set order (d's STATUS may come after c's SELECT).
			wantC := []string{"CAPABILITY", "SELECT", "EXAMINE", "UID FETCH", "FETCH", "SELECT"}
			wantD := append(setup, "STATUS")
			var gotC, gotD []string
			for _, names := range sessionCommands(t, dc, len(wantC)+len(wantD)) {
				if names[0] == "CAPABILITY" { // c's first command after LOGIN; d sends none
					gotC = append(gotC, names...)
				} else {
					gotD = append(gotD, names...)
				}
			}
			if !slices.Equal(gotC, wantC) {
				t.Errorf("Dovecot ran %q on the unselecting connection, want %q", gotC, wantC)
			}
			if !slices.Equal(gotD, wantD) {
				t.Errorf("Dovecot ran %q on the direct connection, want %q", gotD, wantD)
			}
		})
	}
}

// sessionCommands returns the names of the commands dc has finished, one
// list for each connection (Dovecot's session), waiting until there are n
// in all (Dovecot's log process writes them a little after the commands
// end). Only within one connection are they in the order they ran
// (dovecottest.CommandEvent.Session).
func sessionCommands(t *testing.T, dc *dovecottest.Server, n int) map[string][]string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		evs, err := dc.CommandEvents()
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) >= n || time.Now().After(deadline) {
			names := map[string][]string{}
			for _, e := range evs {
				names[e.Session] = append(names[e.Session], e.Name)
			}
			return names
		}
	}
}

// dialUpstream opens an upstream connection to addr logged in as u, the
// way the proxy does, and a context for its commands; both end with t.
func dialUpstream(t *testing.T, addr string) (context.Context, *upstream.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	c, err := upstream.Dial(ctx, &upstream.Config{Addr: addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login(ctx, "u", "pw"); err != nil {
		t.Fatal(err)
	}
	return ctx, c
}

// expectNothingSelected checks, after Unselect, that c records no mailbox
// selected and that Dovecot agrees: a FETCH is answered BAD.
func expectNothingSelected(ctx context.Context, t *testing.T, c *upstream.Conn) {
	t.Helper()
	if c.Selected != "" {
		t.Errorf("Selected = %q after Unselect", c.Selected)
	}
	_, err := c.Exec(ctx, "FETCH 1 (FLAGS)", nil)
	var se *upstream.StatusError
	if !errors.As(err, &se) || se.Head.Name != "BAD" {
		t.Errorf("FETCH after Unselect: %v, want Dovecot's BAD for no mailbox selected", err)
	}
}

// tagNumber reads the number of an upstream.Conn tag ("L" and base 36).
func tagNumber(t *testing.T, tag string) int {
	t.Helper()
	n, err := strconv.ParseUint(strings.TrimPrefix(tag, "L"), 36, 32)
	if err != nil {
		t.Fatalf("tag %q: %v", tag, err)
	}
	return int(n)
}

// TestUnselectProbeExists: when the mailbox the probe names exists after
// all (a user may create "lemonproxy-unselect-probe"), Dovecot opens it,
// read-only, and the connection leaves it by CLOSE: two commands still,
// and neither that mailbox's \Deleted message nor the one of the mailbox
// left is expunged.
func TestUnselectProbeExists(t *testing.T) {
	const probe = "lemonproxy-unselect-probe"
	dc := dovecottest.StartWith(t, dovecottest.Legacy, dovecottest.Options{CommandEvents: true})
	dc.AddUser(t, "u", "pw")
	d := dialRaw(t, dc.Addr)
	mustOK(t, d.Cmd("LOGIN u pw"))
	mustOK(t, d.Cmd("CREATE "+probe))
	for _, m := range []string{"INBOX", probe} {
		mustOK(t, d.Cmd("APPEND "+m+` (\Deleted) {7+}`+"\r\nSubj: x"))
	}
	ctx, c := dialUpstream(t, dc.Addr)
	if err := c.Select(ctx, "INBOX", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Unselect(ctx); err != nil {
		t.Fatalf("Unselect: %v", err)
	}
	expectNothingSelected(ctx, t, c)
	for _, m := range []string{"INBOX", probe} {
		imaptest.AssertLines(t, m+"'s deleted message kept", mustOK(t, d.Cmd("STATUS "+m+" (MESSAGES)")), []string{"* STATUS " + m + " (MESSAGES 1)", "*"})
	}
	wantC := []string{"CAPABILITY", "SELECT", "EXAMINE", "CLOSE", "FETCH"}
	var gotC []string
	for _, names := range sessionCommands(t, dc, len(wantC)+5) {
		if names[0] == "CAPABILITY" {
			gotC = names
		}
	}
	if !slices.Equal(gotC, wantC) {
		t.Errorf("Dovecot ran %q on the unselecting connection, want %q", gotC, wantC)
	}
}
