package cli

import "errors"

// ErrNoLocking: the file system does not support locks; LockDir then locks nothing.
var ErrNoLocking = errors.New("file locks are not supported here")
