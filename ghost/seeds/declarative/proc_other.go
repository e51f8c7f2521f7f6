//go:build !unix

package declarative

import "os/exec"

// killGroup leaves the default: the program alone is killed when the context ends.
func killGroup(*exec.Cmd) {}
