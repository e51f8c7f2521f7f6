//go:build unix

package testenv

import (
	"syscall"
	"testing"
)

// Freeze stops the process (SIGSTOP), as a frozen host or VM would: its connections stay
// open and nothing on them is read or answered.
func (p *Process) Freeze(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// Thaw resumes a process Freeze stopped (SIGCONT).
func (p *Process) Thaw(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}
