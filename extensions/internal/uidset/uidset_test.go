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
