//go:build !linux

package declarative

import (
	"os/exec"
	"syscall"
)

// endGroup does nothing here: without waitid's WNOWAIT the group cannot be killed after
// its leader exits without racing the reuse of its id. The group is still killed when
// the operation's context ends (killGroup, on unix).
func endGroup(*exec.Cmd) {}

// dieWithGhost does nothing here: only Linux kills a child when its parent dies.
func dieWithGhost(*syscall.SysProcAttr) {}
