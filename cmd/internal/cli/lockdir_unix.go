//go:build unix

package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockDir takes an exclusive lock on dir for this process (an flock on dir/name, which
// holds the process id), so that two daemons never share one data directory: two
// nats-servers on one JetStream store corrupt it. The lock goes with the process, however
// it ends; release closes it earlier. A directory locked by another process is an error
// that exits 3 and names the holder; a file system without locks gives ErrNoLocking (and a
// release that does nothing), for the caller to warn and go on.
func LockDir(dir, name, who string) (release func(), err error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		_ = f.Close()
		if errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.ENOLCK) || errors.Is(err, syscall.EOPNOTSUPP) {
			return func() {}, fmt.Errorf("%w: %s: %v", ErrNoLocking, dir, err)
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, Exit(ExitUnavailable, fmt.Errorf("%s is in use by another %s%s: stop it first, or give this one a directory of its own", dir, who, holder))
		}
		return nil, Exit(ExitUnavailable, fmt.Errorf("lock %s: %w", path, err))
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { _ = f.Close() }, nil
}
