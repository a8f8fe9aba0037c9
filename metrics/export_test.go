package metrics

import "time"

// SetIdleTimeout sets the metrics server's idle timeout for a test.
func SetIdleTimeout(d time.Duration) (restore func()) {
	old := idleTimeout
	idleTimeout = d
	return func() { idleTimeout = old }
}
