package devicetoken_test

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
)

// FuzzCheckToken: a token that passes is 1 to MaxToken bytes of printable
// ASCII without spaces; nothing panics.
func FuzzCheckToken(f *testing.F) {
	f.Add([]byte("fcm-chat.delta:abc"))
	f.Add([]byte("a b"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tok []byte) {
		if devicetoken.CheckToken(tok) != nil {
			return
		}
		if len(tok) == 0 || len(tok) > devicetoken.MaxToken {
			t.Fatalf("accepted a token of %d bytes", len(tok))
		}
		for _, c := range tok {
			if c <= ' ' || c > '~' {
				t.Fatalf("accepted %q", tok)
			}
		}
	})
}
