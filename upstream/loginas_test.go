package upstream

import (
	"errors"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
)

// TestLoginAsCommand checks what LoginAs sends: SASL PLAIN with the user
// as authorization identity, in the initial response where the server
// has SASL-IR and after its continuation request where it has not, and
// nothing where it has no AUTH=PLAIN (LOGIN has no authorization
// identity).
func TestLoginAsCommand(t *testing.T) {
	// base64("alice\x00master\x00m pw")
	const resp = "YWxpY2UAbWFzdGVyAG0gcHc="
	for _, tc := range []struct {
		caps    string
		want    []string
		wantErr error
	}{
		{"IMAP4rev1 AUTH=PLAIN SASL-IR", []string{"AUTHENTICATE PLAIN " + resp, "CAPABILITY"}, nil},
		{"IMAP4rev1 AUTH=PLAIN", []string{"AUTHENTICATE PLAIN", resp, "CAPABILITY"}, nil},
		{"IMAP4rev1 SASL-IR", nil, ErrUnavailable},
	} {
		t.Run(tc.caps, func(t *testing.T) {
			pending := ""
			basic := basicReply(tc.caps)
			f := startFake(t, "* OK [CAPABILITY "+tc.caps+"] hi\r\n", func(tag, cmd string) string {
				if pending != "" { // the continuation's line: the fake split it as a tag
					t := pending
					pending = ""
					return t + " OK logged in\r\n"
				}
				if cmd == "AUTHENTICATE PLAIN" {
					pending = tag
					return "+ \r\n"
				}
				return basic(tag, cmd)
			})
			c := dial(t, &Config{Addr: f.Addr})
			_, err := c.LoginAs(testCtx(t), "alice", "master", "m pw")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("LoginAs: %v; want %v", err, tc.wantErr)
			}
			c.Close()
			got := f.commands(t)
			if len(tc.want) == 0 {
				tc.want = nil
			}
			if len(got) != len(tc.want) {
				t.Fatalf("sent %q; want %q", got, tc.want)
			}
			for i := range got {
				// The fake records the continuation line as its tag.
				if got[i] != tc.want[i] && !(got[i] == "" && tc.want[i] == resp) {
					t.Fatalf("sent %q; want %q", got, tc.want)
				}
			}
		})
	}
}

// TestLoginAsDovecot logs in to a user's account as Dovecot's master
// user; a wrong master password, and a user that does not exist, are
// refused with ErrAuthFailed.
func TestLoginAsDovecot(t *testing.T) {
	for _, p := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(p.String(), func(t *testing.T) {
			dc := dovecottest.StartWith(t, p, dovecottest.Options{MasterUser: "pushmaster", MasterPassword: "masterpass"})
			c := dial(t, &Config{Addr: dc.Addr})
			if _, err := c.LoginAs(testCtx(t), "alice", "pushmaster", "masterpass"); err != nil {
				t.Fatalf("LoginAs: %v", err)
			}
			// The session is alice's: her INBOX, which bob's APPEND to
			// his own cannot reach.
			dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte("Subject: x\r\n\r\nx\r\n"))
			var exists bool
			if _, err := c.Exec(testCtx(t), "STATUS INBOX (MESSAGES)", func(r *Response) {
				exists = r.Head.Name == "STATUS" && string(r.Segments[0].Text) == "* STATUS INBOX (MESSAGES 1)"
			}); err != nil || !exists {
				t.Fatalf("STATUS as alice through the master user: %v, found %v", err, exists)
			}
			c.Logout()
			for _, tc := range []struct{ user, pass string }{{"alice", "wrong"}, {"nosuch", "masterpass"}} {
				c := dial(t, &Config{Addr: dc.Addr})
				if _, err := c.LoginAs(testCtx(t), tc.user, "pushmaster", tc.pass); !errors.Is(err, ErrAuthFailed) {
					t.Errorf("LoginAs(%q, %q): %v; want ErrAuthFailed", tc.user, tc.pass, err)
				}
				c.Close()
			}
		})
	}
}
