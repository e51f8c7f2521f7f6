//go:build !unix

package testenv

import "testing"

// Freeze needs SIGSTOP, which only Unix systems have: the test is skipped.
func (p *Process) Freeze(t testing.TB) {
	t.Helper()
	t.Skip("stopping a process (SIGSTOP) needs a Unix system")
}

// Thaw resumes a process Freeze stopped.
func (p *Process) Thaw(t testing.TB) { t.Helper() }
