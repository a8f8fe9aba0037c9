package statestore_test

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/statestore/storetest"
)

// TestBolt runs the behavioural tests every Store must pass.
func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) statestore.Store {
		s, err := statestore.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
