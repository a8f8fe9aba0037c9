package proxy

import "testing"

// TestBindStar: "*" in the UID set of a command that changes messages is
// the client's last UID; numbers the client names stay as they are.
func TestBindStar(t *testing.T) {
	for _, c := range []struct {
		set  string
		last uint32
		want string
	}{
		{"1:*", 3, "1:3"},
		{"*", 3, "3"},
		{"*:*", 3, "3"},
		{"5:*", 3, "3"},
		{"*:2", 3, "2:3"},
		{"2,4:*", 9, "2,4:9"},
		{"7,10:*", 3, "3,7"},
		{"1:2", 3, "1:2"},
		{"8", 3, "8"}, // named: the client may know it from APPENDUID
		{"1:*", 0, ""},
		{"4,*", 0, "4"},
	} {
		got, err := bindStar(c.set, c.last)
		if err != nil || got != c.want {
			t.Errorf("bindStar(%q, %d) = %q, %v; want %q", c.set, c.last, got, err, c.want)
		}
	}
	if _, err := bindStar("1:x", 3); err == nil {
		t.Error("bindStar of a bad set: no error")
	}
}
