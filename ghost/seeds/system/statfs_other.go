//go:build !(linux || darwin || freebsd)

package system

import (
	"fmt"
	"runtime"
)

// statfs is not implemented on this system: disk_usage fails with a clear message
// instead of the Ghost failing to build.
func statfs(dir string) (total, free, used uint64, err error) {
	return 0, 0, 0, fmt.Errorf("not supported on %s (file system of %s)", runtime.GOOS, dir)
}
