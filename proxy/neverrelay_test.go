package proxy_test

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
)

// TestConnectionCommandsNeverRelayed: commands that would change a pooled
// upstream connection (its encoding, its login, what it reports unasked) are
// not relayed when no extension implements them; the upstream connection
// stays usable.
func TestConnectionCommandsNeverRelayed(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, memupstream.Options{}, "alice", "secret")
	cfg := baseConfig(up.Addr)
	cfg.Extensions = nil // no IDLE, no COMPRESS
	p := startProxy(t, cfg)
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.ExpectDo("a1", "COMPRESS DEFLATE", "a1 BAD Unknown command COMPRESS.")
	c.ExpectDo("a2", "NOTIFY NONE", "a2 BAD Unknown command NOTIFY.")
	c.ExpectDo("a3", "UNAUTHENTICATE", "a3 BAD Unknown command UNAUTHENTICATE.")
	c.ExpectDo("a4", "IDLE", "a4 BAD Unknown command IDLE.")
	c.ExpectDo("a5", `LIST "" INBOX`, `* LIST () "/" INBOX`, "a5 OK *")
}
