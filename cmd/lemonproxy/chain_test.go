package main

import (
	"log/slog"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/config"
)

// TestSpoolShareDefault: spool-max-bytes-per-user left at 0 is a quarter
// of spool-max-bytes, at least max-append and at most the total, so that
// settings made before the share existed still start (spool-max-bytes of
// 128 MiB with the 256 MiB share of the default total was refused: a
// second reviewer's finding).
func TestSpoolShareDefault(t *testing.T) {
	for _, tc := range []struct{ total, maxAppend, want int64 }{
		{1 << 30, 64 << 20, 256 << 20},
		{0, 64 << 20, 256 << 20},
		{128 << 20, 64 << 20, 64 << 20},
		{64 << 20, 64 << 20, 64 << 20},
		{1 << 30, 512 << 20, 512 << 20},
		{100, 1000, 100},
	} {
		if got := spoolShare(tc.total, tc.maxAppend); got != tc.want {
			t.Errorf("spoolShare(%d, %d) = %d, want %d", tc.total, tc.maxAppend, got, tc.want)
		}
	}
	s := config.Defaults()
	s.SpoolMaxBytes = 128 << 20
	if _, err := extensions(s, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("spool-max-bytes of 128 MiB with the default share: %v", err)
	}
}
