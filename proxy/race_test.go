//go:build race

package proxy_test

// raceDetector is true in a test binary built with -race, whose sync.Pool
// drops a share of what is put back: allocation bounds do not hold there.
const raceDetector = true
