package hub

import "testing"

// The upstream's recent messages are the last n of the watcher's view.
func TestFirstRecent(t *testing.T) {
	for _, tt := range []struct {
		view   []uint32
		n      int
		maxUID uint32
		want   uint32
	}{
		{[]uint32{3, 5, 9}, 2, 9, 5},
		{[]uint32{3, 5, 9}, 0, 9, 10},
		{[]uint32{3, 5, 9}, 0, 12, 13}, // 10..12 were expunged
		{[]uint32{3, 5, 9}, 7, 9, 3},
		{nil, 0, 0, 1},
		{nil, 0, 4, 5},
		{[]uint32{3, 5, 0}, 2, 5, 5}, // the last UID is not known yet
		{[]uint32{3, 0, 0}, 2, 3, 4},
	} {
		if got := firstRecent(tt.view, tt.n, tt.maxUID); got != tt.want {
			t.Errorf("firstRecent(%v, %d, %d) = %d, want %d", tt.view, tt.n, tt.maxUID, got, tt.want)
		}
	}
}
