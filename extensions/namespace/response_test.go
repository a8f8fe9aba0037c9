package namespace

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestResponse: the synthesized answer for what LIST "" "" may say, with
// RFC 2342 §5's examples of a single personal namespace as vectors.
func TestResponse(t *testing.T) {
	for _, c := range []struct {
		h    proxy.Hierarchy
		want string
	}{
		// RFC 2342 §5, example 5.1: one personal namespace, "/" separated.
		{proxy.Hierarchy{Delim: "/"}, `* NAMESPACE (("" "/")) NIL NIL`},
		// RFC 2342 §5's personal namespace under "INBOX.", Courier-style.
		{proxy.Hierarchy{Delim: ".", Root: "INBOX."}, `* NAMESPACE (("INBOX." ".")) NIL NIL`},
		// A root reported without its delimiter gets one.
		{proxy.Hierarchy{Delim: ".", Root: "INBOX"}, `* NAMESPACE (("INBOX." ".")) NIL NIL`},
		// A flat namespace: NIL delimiter (RFC 2342 §6, nil).
		{proxy.Hierarchy{}, `* NAMESPACE (("" NIL)) NIL NIL`},
		// The delimiter is a QUOTED_CHAR: quoted-specials escaped.
		{proxy.Hierarchy{Delim: `\`}, `* NAMESPACE (("" "\\")) NIL NIL`},
		{proxy.Hierarchy{Delim: `"`, Root: `a"`}, `* NAMESPACE (("a\"" "\"")) NIL NIL`},
		// A prefix a quoted string cannot hold goes as a literal.
		{proxy.Hierarchy{Delim: "/", Root: "Post/"}, `* NAMESPACE (("Post/" "/")) NIL NIL`},
		{proxy.Hierarchy{Delim: "/", Root: "Bo\xc3\xaete/"}, "* NAMESPACE (({7}\r\nBo\xc3\xaete/ \"/\")) NIL NIL"},
	} {
		if got := string(response(c.h)); got != c.want+"\r\n" {
			t.Errorf("response(%+v) = %q, want %q", c.h, got, c.want+"\r\n")
		}
	}
}
