package bench

import (
	"os"
	"testing"
)

// TestMain runs the client side of the load benchmarks when the test binary
// was re-executed for it (see clients_test.go); otherwise the tests and
// benchmarks as usual. The package has no Test functions: without -bench,
// "go test" does nothing here.
func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		os.Exit(clientMain())
	}
	os.Exit(m.Run())
}
