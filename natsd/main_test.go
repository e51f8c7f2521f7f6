package natsd_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every server and
// connection a test starts must be shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
