package ghost

import (
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// A Ghost that stands down (another instance keeps its id) runs nothing more, even when
// the wait for answers to its start probes ends at the same moment (settled): a late
// answer from a running instance and the probe timer may come in either order, and the
// commands held until then must not run beside the other instance's.
func TestStandingDownGhostRunsNothingOnceSettled(t *testing.T) {
	nc, _ := replayConns(t)
	g, err := New(nc, Config{ID: "g1", Policy: PolicyHeadless}, NewRegistry(), NewMemoryStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	g.standDown(&DuplicateIDError{ID: "g1", Other: bus.Instance{GhostID: "g1", InstanceID: "ins_other", Phase: bus.InstanceRunning}})
	g.claim.markSettled()
	for i := range 100 {
		if g.settle() {
			t.Fatalf("settle %d: a Ghost standing down lets its held commands run", i)
		}
	}
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the Ghost standing down did not close")
	}
}
