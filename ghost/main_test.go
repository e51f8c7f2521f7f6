package ghost

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every Ghost, server and
// connection a test starts must be stopped, and every seed a test leaves running must end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
