package cluster

import (
	"errors"
	"testing"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestLinkWrongSecret: a node without the cluster's secret cannot hand a
// session over: its link is refused and its client told to retry.
func TestLinkWrongSecret(t *testing.T) {
	url := newDB(t)
	a := startNode(t, url, "a", nil)
	if _, release, err := login(t, a, "x"); err != nil {
		t.Fatal(err)
	} else {
		defer release()
	}
	c := startNode(t, url, "c", func(c *Config) { c.Secret = []byte("another secret, as long as the right one") })
	if _, _, err := login(t, c, "x"); !errors.Is(err, proxy.ErrUnavailable) {
		t.Fatalf("login through a node with another secret: %v", err)
	}
	if st := a.Stats(); st.HandoffsIn != 0 || st.Sessions != 1 {
		t.Fatalf("a: %+v", st)
	}
}
