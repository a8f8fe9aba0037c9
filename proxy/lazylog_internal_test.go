package proxy

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLazyAttrsAsWith: a session's logger writes what slog's With would
// have made it write, with the attributes added later (the user at login,
// a group) in their places, at every level the base handler allows and
// none other.
func TestLazyAttrsAsWith(t *testing.T) {
	for _, json := range []bool{false, true} {
		var want, got bytes.Buffer
		mk := func(w *bytes.Buffer) slog.Handler {
			opts := &slog.HandlerOptions{
				Level: slog.LevelInfo,
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}
			if json {
				return slog.NewJSONHandler(w, opts)
			}
			return slog.NewTextHandler(w, opts)
		}
		eager := slog.New(mk(&want)).With("session", uint64(7), "remote", "192.0.2.1:993")
		lazy := slog.New(newLazyAttrs(mk(&got), slog.Uint64("session", 7), slog.String("remote", "192.0.2.1:993")))
		for _, l := range []*slog.Logger{eager, lazy} {
			l.Debug("not shown")
			l.Info("session start", "tls", true)
			l = l.With("user", "alice")
			l.Warn("login", "n", 1)
			l.WithGroup("").Info("same")
			l.WithGroup("cmd").Error("failed", "name", "FETCH")
		}
		if got.String() != want.String() {
			t.Errorf("json=%v: lazy attributes wrote\n%s\nslog's With\n%s", json, got.String(), want.String())
		}
		if n := strings.Count(want.String(), "\n"); n != 4 {
			t.Errorf("json=%v: %d records, want 4:\n%s", json, n, want.String())
		}
	}
}
