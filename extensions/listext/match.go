package listext

import (
	"strings"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// canonicalPattern joins reference and pattern as RFC 3501 6.3.8's
// examples do for a personal namespace: the reference is a prefix of the
// pattern.
func canonicalPattern(ref, pat, delim string) string {
	return proxy.CanonicalName(ref+pat, delim)
}

// match reports whether name matches the canonical pattern pat: "*"
// matches any run of characters, "%" any run without the hierarchy
// delimiter (RFC 3501 6.3.8). It runs in O(len(pat)·len(name)) time and
// O(len(name)) space whatever the wildcards, so a client cannot make it
// backtrack exponentially.
func match(pat, name, delim string) bool {
	var d byte
	if delim != "" {
		d = delim[0]
	}
	// prev[j]: pat[:i] matches name[:j].
	prev := make([]bool, len(name)+1)
	cur := make([]bool, len(name)+1)
	prev[0] = true
	for i := 0; i < len(pat); i++ {
		c := pat[i]
		switch c {
		case '*':
			cur[0] = prev[0]
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j] || cur[j-1]
			}
		case '%':
			cur[0] = prev[0]
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j] || cur[j-1] && (delim == "" || name[j-1] != d)
			}
		default:
			cur[0] = false
			for j := 1; j <= len(name); j++ {
				cur[j] = prev[j-1] && name[j-1] == c
			}
		}
		prev, cur = cur, prev
	}
	return prev[len(name)]
}

// matchAny reports whether name matches one of the canonical patterns.
func matchAny(pats []string, name, delim string) bool {
	for _, p := range pats {
		if match(p, name, delim) {
			return true
		}
	}
	return false
}

// ancestors returns the names of name's parents, nearest last ("a/b/c":
// "a", "a/b").
func ancestors(name, delim string) []string {
	if delim == "" {
		return nil
	}
	var out []string
	for i := 0; i < len(name); {
		j := strings.Index(name[i:], delim)
		if j < 0 {
			break
		}
		if i+j > 0 {
			out = append(out, name[:i+j])
		}
		i += j + len(delim)
	}
	return out
}
