package accountdata_test

import (
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/accountdata/datatest"
)

func TestMemory(t *testing.T) {
	datatest.Run(t, func(t *testing.T) accountdata.Store { return accountdata.NewMemory() })
}
