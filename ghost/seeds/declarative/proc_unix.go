//go:build unix

package declarative

import (
	"os/exec"
	"syscall"
)

// killGroup runs the program in its own process group and, when the context ends, kills
// the whole group: a script's children do not outlive its timeout (nor, see endGroup, the
// script).
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	dieWithGhost(cmd.SysProcAttr)
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
