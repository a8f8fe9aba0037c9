package dovecottest

import (
	"slices"
	"testing"
	"time"
)

// TestCommandEvents checks that a server started with CommandEvents
// reports each command a client sends, by user, session and name, in
// order, and that one started without it refuses to.
func TestCommandEvents(t *testing.T) {
	t.Parallel()
	s := StartWith(t, Legacy, Options{CommandEvents: true})
	c := dialRaw(t, s)
	c.readLine()
	c.command("a1", "LOGIN alice alicepass")
	c.command("a2", "SELECT INBOX")
	c.command("a3", "UID FETCH 1:* (FLAGS)")
	c.command("a4", "NOOP")
	c.command("a5", "LOGOUT")

	want := []string{"SELECT", "UID FETCH", "NOOP", "LOGOUT"}
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := s.CommandEvents()
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, e := range evs {
			if e.User != "alice" {
				t.Errorf("event of user %q, want alice: %+v", e.User, e)
			}
			if e.Session == "" || e.Session != evs[0].Session {
				t.Errorf("event %+v: not of the one connection's session %q", e, evs[0].Session)
			}
			if e.Duration < e.LockWait || e.Duration <= 0 && e.Name != "LOGOUT" {
				t.Errorf("event %+v: duration and lock wait out of order", e)
			}
			got = append(got, e.Name)
		}
		if slices.Equal(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commands reported: %q, want %q", got, want)
	}

	plain := Start(t, Legacy)
	if _, err := plain.CommandEvents(); err == nil {
		t.Error("CommandEvents of a server started without them: no error")
	}
}
