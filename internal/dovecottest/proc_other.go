//go:build unix && !linux

package dovecottest

import (
	"syscall"
	"time"
)

// sysProcAttr puts Dovecot in a process group of its own, so that Stop can
// signal all of its processes at once.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// groupProcs would describe the processes in the process group; there is
// no portable way to list them.
func groupProcs(pgid int) string {
	return "(process list not available on this system)\n"
}

// PIDs would return the server's process IDs; there is no portable way to
// list a process group, so it returns only the master's.
func (s *Server) PIDs() []int { return []int{s.cmd.Process.Pid} }

// CPU would return the CPU time of the server's processes; without /proc
// it returns 0.
func (s *Server) CPU() time.Duration { return 0 }
