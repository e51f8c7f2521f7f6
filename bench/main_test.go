package bench

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a run leaves a goroutine behind: every server,
// connection, Mirage and Ghost a run starts must be stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
