package filters

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestDovecot runs the FILTERS scenario in front of Dovecot's Legacy
// profile (filters kept in the proxy's store) and its Full profile
// (filters are Dovecot's METADATA entries; Dovecot has no FILTERS, so the
// proxy reads them with GETMETADATA and substitutes them).
func TestDovecot(t *testing.T) {
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		t.Run(profile.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, profile)
			p := imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: chain()})
			c := imaptest.Login(t, p.Addr, "alice", "alicepass")
			appendMessages(t, c)
			searchScript(t, c)
			if profile == dovecottest.Full {
				// The filter is Dovecot's own entry.
				direct := imaptest.Login(t, dc.Addr, "alice", "alicepass")
				direct.ExpectDo("t", `GETMETADATA "" /shared/filters/values/unread`, "* METADATA \"\" (/shared/filters/values/unread {6}\r\nUNSEEN)", "t OK *")
			}
		})
	}
}
