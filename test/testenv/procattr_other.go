//go:build !linux

package testenv

import "syscall"

// dieWithParent has nothing to ask of the system here: a child may outlive a test binary
// that is killed, though every test kills its processes when it ends.
func dieWithParent() *syscall.SysProcAttr { return nil }
