package contextsearch

import "testing"

// TestFlagSearchDecidedLocally: a context of a flag search is re-evaluated
// from the hub's state (flagMatcher), not by re-running the search
// upstream. (The criteria were once parsed one space too far, and every
// context went upstream.)
func TestFlagSearchDecidedLocally(t *testing.T) {
	for _, cmd := range []string{
		"t UID SEARCH UNSEEN", "t UID SEARCH DELETED KEYWORD $Junk", "t UID SEARCH CHARSET UTF-8 FLAGGED",
		"t UID SEARCH OR (UID 2:4 SEEN) NOT ANSWERED", "t UID SEARCH NOT ALL",
	} {
		m, err := NewSearchMatcher(nil, segments(cmd))
		if err != nil {
			t.Errorf("%s: %v", cmd, err)
			continue
		}
		if _, ok := m.(*flagMatcher); !ok {
			t.Errorf("%s: %T, want the flag matcher", cmd, m)
		}
	}
}
