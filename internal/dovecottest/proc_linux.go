package dovecottest

import "syscall"

// sysProcAttr puts Dovecot in a process group of its own, so that Stop can
// signal all of its processes at once, and asks the kernel to SIGTERM the
// master if the test binary dies (a panic or a test timeout), so that an
// aborted run does not leave servers behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
