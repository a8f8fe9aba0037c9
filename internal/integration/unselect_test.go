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
func TestUnselectWithoutReopening(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.LegacyNoIdle} {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.StartWith(t, p, dovecottest.Options{CommandEvents: true})
			dc.AddUser(t, "u", "pw")
			d := dialRaw(t, dc.Addr)
			mustOK(t, d.Cmd("LOGIN u pw"))
			mustOK(t, d.Cmd(`APPEND INBOX (\Deleted) {7+}`+"\r\nSubj: x"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := upstream.Dial(ctx, &upstream.Config{Addr: dc.Addr, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Login(ctx, "u", "pw"); err != nil {
				t.Fatal(err)
			}
			if c.Caps().Has("UNSELECT") {
				t.Fatalf("%s advertises UNSELECT: the test needs a server without", p)
			}
			if err := c.Select(ctx, "INBOX", false, nil); err != nil {
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
			if c.Selected != "" {
				t.Errorf("Selected = %q after Unselect", c.Selected)
			}
			_, err = c.Exec(ctx, "FETCH 1 (FLAGS)", nil)
			var se *upstream.StatusError
			if !errors.As(err, &se) || se.Head.Name != "BAD" {
				t.Errorf("FETCH after Unselect: %v, want Dovecot's BAD for no mailbox selected", err)
			}
			imaptest.AssertLines(t, "the deleted message kept", mustOK(t, d.Cmd("STATUS INBOX (MESSAGES)")), []string{"* STATUS INBOX (MESSAGES 1)", "*"})
			if err := c.Select(ctx, "INBOX", false, nil); err != nil {
				t.Fatalf("SELECT after Unselect: %v", err)
			}
			// Dovecot's own record: the mailbox was not opened again and
			// closed (EXAMINE, CLOSE); the probe's EXAMINE failed, and a
			// UID FETCH found nothing selected.
			names := commandNames(t, dc, 7)
			want := []string{"APPEND", "CAPABILITY", "SELECT", "EXAMINE", "UID FETCH", "FETCH", "STATUS", "SELECT"}
			if !slices.Equal(names, want) {
				t.Errorf("Dovecot ran %q, want %q", names, want)
			}
		})
	}
}

// commandNames returns the names of the commands dc has finished, waiting
// until there are more than n (Dovecot's log process writes them a little
// after the commands end).
func commandNames(t *testing.T, dc *dovecottest.Server, n int) []string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		evs, err := dc.CommandEvents()
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) > n || time.Now().After(deadline) {
			var names []string
			for _, e := range evs {
				names = append(names, e.Name)
			}
			return names
		}
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
