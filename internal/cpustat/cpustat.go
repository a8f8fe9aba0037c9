// Package cpustat reads the CPU time this process has used, for the
// benchmarks and the load tool that report CPU per unit of work beside
// Dovecot's (which internal/dovecottest reads from /proc).
package cpustat

import (
	"syscall"
	"time"
)

// Self returns the CPU time (user and system) this process has used, or 0
// if the system does not tell.
func Self() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
