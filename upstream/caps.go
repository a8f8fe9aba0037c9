package upstream

import (
	"strings"
	"sync"
)

// Caps is a set of capability words, keyed upper-cased, valued as the server
// spelled them. A Caps returned by ParseCaps is shared and must not be
// modified.
type Caps map[string]string

// maxInterned bounds how many distinct capability lines ParseCaps keeps.
// An upstream sends a few (before and after login, with and without
// COMPRESS); anything beyond that is not worth sharing.
const maxInterned = 64

// interned maps capability lines to their parsed sets, so that the
// thousands of connections to one upstream share one map (and one copy of
// the line) instead of each holding its own: at 10,000 idle sessions that
// is 0.4 KiB per session with Dovecot's default list, 2.7 KiB with a long
// one.
var interned struct {
	mu sync.Mutex
	m  map[string]Caps
}

// ParseCaps parses a space-separated capability list. Connections that got
// the same list share the result, which must therefore not be modified.
func ParseCaps(s string) Caps {
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if c, ok := interned.m[s]; ok {
		return c
	}
	// The key is a copy: s usually points into a larger response, and the
	// words point into the key.
	s = strings.Clone(s)
	c := Caps{}
	for _, w := range strings.Fields(s) {
		c[strings.ToUpper(w)] = w
	}
	if interned.m == nil || len(interned.m) >= maxInterned {
		interned.m = make(map[string]Caps)
	}
	interned.m[s] = c
	return c
}

// Has reports whether the capability is present (case-insensitively).
func (c Caps) Has(name string) bool { _, ok := c[strings.ToUpper(name)]; return ok }

// WithPrefix returns the capabilities that start with prefix ("AUTH=").
func (c Caps) WithPrefix(prefix string) []string {
	var out []string
	prefix = strings.ToUpper(prefix)
	for k, v := range c {
		if strings.HasPrefix(k, prefix) {
			out = append(out, v)
		}
	}
	return out
}
