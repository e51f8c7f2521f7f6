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
