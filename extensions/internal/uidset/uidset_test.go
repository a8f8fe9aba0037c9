package uidset

import (
	"slices"
	"testing"
)

func TestSpans(t *testing.T) {
	uids := []uint32{1, 2, 3, 7, 9, 10}
	spans := SpansOf(uids)
	if want := []Span{{1, 3}, {7, 7}, {9, 10}}; !slices.Equal(spans, want) {
		t.Fatalf("SpansOf(%v) = %v, want %v", uids, spans, want)
	}
	if got := string(AppendSpans([]byte("UID "), spans)); got != "UID 1:3,7,9:10" {
		t.Fatalf("AppendSpans = %q", got)
	}
	if SpansOf(nil) != nil || len(AppendSpans(nil, nil)) != 0 {
		t.Fatal("empty list: want no spans and no text")
	}
}

func TestMerge(t *testing.T) {
	got := Merge([]uint32{1, 3, 5, 9}, []uint32{2, 3, 9, 11})
	if want := []uint32{1, 2, 3, 5, 9, 11}; !slices.Equal(got, want) {
		t.Fatalf("Merge = %v, want %v", got, want)
	}
}

// TestRuns: spans run over the UIDs between two known ones, and break at
// a known UID not named.
func TestRuns(t *testing.T) {
	known := []uint32{1, 3, 5, 7, 9, 20, 21, 30}
	for _, c := range []struct {
		named []uint32
		want  string
	}{
		{nil, ""},
		{known, "1:30"},
		{[]uint32{1, 3, 5}, "1:5"},
		{[]uint32{1, 3, 7, 9, 20}, "1:3,7:20"},
		{[]uint32{2, 3, 4, 5, 31}, "3:5"}, // 2, 4 and 31 are not known
		{[]uint32{30}, "30"},
	} {
		if got := string(AppendSpans(nil, RunsOf(known, c.named))); got != c.want {
			t.Errorf("RunsOf(%v): %q, want %q", c.named, got, c.want)
		}
	}
}

// TestCompact: at or below the last known UID as RunsOf; above it as
// spans of consecutive UIDs, which known cannot tell about.
func TestCompact(t *testing.T) {
	known := []uint32{1, 3, 5, 7}
	for _, c := range []struct {
		uids []uint32
		want string
	}{
		{[]uint32{1, 3, 5, 7, 8, 9, 11}, "1:7,8:9,11"},
		{[]uint32{3, 5, 9}, "3:5,9"},
		{[]uint32{2, 4}, ""},
		{[]uint32{10, 11, 12}, "10:12"},
	} {
		if got := string(AppendSpans(nil, Compact(known, c.uids))); got != c.want {
			t.Errorf("Compact(%v): %q, want %q", c.uids, got, c.want)
		}
	}
	if got := string(AppendSpans(nil, Compact(nil, []uint32{4, 5, 7}))); got != "4:5,7" {
		t.Errorf("Compact with nothing known: %q", got)
	}
}
