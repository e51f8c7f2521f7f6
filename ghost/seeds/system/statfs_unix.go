//go:build linux || darwin || freebsd

package system

import (
	"fmt"
	"syscall"
)

// statfs returns the size of the file system holding dir, the bytes an unprivileged
// process may still use, and the bytes in use, as df counts them.
func statfs(dir string) (total, free, used uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := uint64(st.Bsize)
	return uint64(st.Blocks) * bs, uint64(st.Bavail) * bs, (uint64(st.Blocks) - uint64(st.Bfree)) * bs, nil
}
