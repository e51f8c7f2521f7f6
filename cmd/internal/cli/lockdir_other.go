//go:build !unix

package cli

// LockDir does nothing where flock is not available: one daemon per data directory is
// then the operator's to ensure.
func LockDir(dir, name, who string) (release func(), err error) { return func() {}, nil }
