package upstream

import (
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestExecRefusesLineBreaks: Exec writes a command whole, without waiting
// for a continuation, so a line break outside a non-synchronising literal
// (a client's value written into the proxy's own command) would make the
// rest a command of its own. It is refused before anything is sent, and
// the connection stays usable; a non-synchronising literal goes.
func TestExecRefusesLineBreaks(t *testing.T) {
	up := startMem(t, memupstream.Options{})
	c := dial(t, &Config{Addr: up.Addr, Security: SecurityNone})
	if _, err := c.Login(testCtx(t), "alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"NOOP\r\nCREATE Smuggled", `STATUS {14}` + "\r\n" + `INBOX (MESSAGES)`, "CREATE Smuggled\n"} {
		if _, err := c.Exec(testCtx(t), cmd, nil); err == nil || !strings.Contains(err.Error(), "line break") {
			t.Errorf("Exec(%q): %v, want it refused", cmd, err)
		}
	}
	if c.Broken() {
		t.Fatal("the connection broke")
	}
	var lists []string
	if _, err := c.Exec(testCtx(t), `LIST "" {1+}`+"\r\n*", func(r *Response) { lists = append(lists, string(r.Segments[0].Text)) }); err != nil {
		t.Fatalf("LIST with a non-synchronising literal: %v", err)
	}
	if strings.Contains(strings.Join(lists, "\n"), "Smuggled") {
		t.Errorf("a refused command reached the upstream: %q", lists)
	}
}
