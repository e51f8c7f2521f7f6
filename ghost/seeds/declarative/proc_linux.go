//go:build linux

package declarative

import (
	"errors"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// endGroup waits for the program, the leader of its process group, to exit without
// reaping it, then kills what is left of the group: a script's children outlive neither
// its timeout nor the script itself (a job sent to the background would otherwise run
// on, unbounded, and one holding the output open would fail the operation after
// waitDelay). The leader is reaped by cmd.Wait after this, so until then its pid, the
// group's id, cannot be taken by another process.
func endGroup(cmd *exec.Cmd) {
	pid := cmd.Process.Pid
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// dieWithGhost has the kernel kill the program when the Ghost dies, however it dies: a
// program must not run on, past its timeout, after a kill -9 of its Ghost, nor beside
// the one a restarted Ghost starts for the same idempotent command. (The signal follows
// the thread that started the program; Go ends a thread only when a goroutine locked to
// it exits, which the Ghost never does.) What the program started itself is reparented
// and runs on until it ends: a script should not leave jobs behind.
func dieWithGhost(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
