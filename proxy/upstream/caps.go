package upstream

import "strings"

// Caps is a set of capability words, keyed upper-cased, valued as the server
// spelled them.
type Caps map[string]string

// ParseCaps parses a space-separated capability list.
func ParseCaps(s string) Caps {
	c := Caps{}
	for _, w := range strings.Fields(s) {
		c[strings.ToUpper(w)] = w
	}
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
