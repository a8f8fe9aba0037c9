package dovecottest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sysProcAttr puts Dovecot in a process group of its own, so that Stop can
// signal all of its processes at once, and asks the kernel to SIGTERM the
// master if the test binary dies (a panic or a test timeout), so that an
// aborted run does not leave servers behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// PIDs returns the process IDs of all of the server's processes: the master
// and every process it started (login, auth, imap ...), for measuring what
// the server costs (e.g. the PSS in /proc/PID/smaps_rollup).
func (s *Server) PIDs() []int {
	return groupPIDs(s.cmd.Process.Pid)
}

// groupPIDs lists the processes in the process group pgid.
func groupPIDs(pgid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, path := range stats {
		stat, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		_, rest, ok := bytes.Cut(stat, []byte(") "))
		f := strings.Fields(string(rest))
		if !ok || len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// groupProcs describes the processes in the process group pgid, one line
// each, for error messages.
func groupProcs(pgid int) string {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var b strings.Builder
	for _, path := range stats {
		stat, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// The fields after the parenthesized command name are state,
		// ppid and pgrp.
		_, rest, ok := bytes.Cut(stat, []byte(") "))
		f := strings.Fields(string(rest))
		if !ok || len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cmdline"))
		cmdline = bytes.TrimRight(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}), " ")
		fmt.Fprintf(&b, "pid %s ppid %s state %s: %s\n", filepath.Base(filepath.Dir(path)), f[1], f[0], cmdline)
	}
	return b.String()
}

// CPU returns the CPU time (user and system) the server's processes have
// used: those alive now, and those that ended and were reaped by the
// master (imap processes of closed connections), for measuring what
// serving a workload costs Dovecot.
func (s *Server) CPU() time.Duration {
	master := s.cmd.Process.Pid
	var total time.Duration
	for _, pid := range groupPIDs(master) {
		own, reaped, ok := procCPU(pid)
		if !ok {
			continue
		}
		total += own
		if pid == master {
			total += reaped
		}
	}
	return total
}

// procCPU reads utime + stime and cutime + cstime from /proc/PID/stat.
func procCPU(pid int) (own, reaped time.Duration, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may contain anything.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0, 0, false
	}
	// state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
	// cmajflt utime stime cutime cstime ...
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 15 {
		return 0, 0, false
	}
	var v [4]int64
	for j := range v {
		v[j], _ = strconv.ParseInt(f[11+j], 10, 64)
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	const tick = 10 * time.Millisecond
	return time.Duration(v[0]+v[1]) * tick, time.Duration(v[2]+v[3]) * tick, true
}
