// Package bench holds lemonproxy's load benchmarks: thousands of idle IMAP
// sessions through a proxy in front of a private Dovecot (and, for
// comparison, directly on Dovecot), measuring memory, goroutines and upstream
// connections per session and the latency of pushes to idling clients, plus
// micro-benchmarks of the hot paths (syncstate, imapcodec).
//
// Everything is in _test.go files and runs only with -bench; the clients
// run in a child process (the test binary re-executed) so that the proxy's
// process holds nothing but the proxy. See docs/benchmarks.md for the
// commands and the figures.
package bench
