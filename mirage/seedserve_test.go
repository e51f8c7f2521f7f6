package mirage

import (
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// The seed gate admits one read per Ghost at a time, and the next only bus.SeedEvery after
// the last ended, however long that read took; other Ghosts are not held up.
func TestSeedGate(t *testing.T) {
	g := newGhostGate(bus.SeedEvery, true)
	t0 := time.Unix(1_000_000, 0)
	steps := []struct {
		what  string
		id    string
		at    time.Duration // after t0
		enter bool          // enter, or leave
		want  bool
	}{
		{"first read", "a", 0, true, true},
		{"while it is served", "a", time.Millisecond, true, false},
		{"another Ghost meanwhile", "b", time.Millisecond, true, true},
		{"a's long read ends", "a", 5 * time.Second, false, true},
		{"right after", "a", 5*time.Second + time.Millisecond, true, false},
		{"just before the interval", "a", 5*time.Second + bus.SeedEvery - time.Millisecond, true, false},
		{"after the interval", "a", 5*time.Second + bus.SeedEvery, true, true},
		{"b ends", "b", 6 * time.Second, false, true},
		{"a ends", "a", 7 * time.Second, false, true},
		{"a, after the interval and a prune", "a", 7*time.Second + 2*time.Minute, true, true},
	}
	for _, s := range steps {
		if !s.enter {
			g.leave(s.id, t0.Add(s.at))
			continue
		}
		if got := g.enter(s.id, t0.Add(s.at)); got != s.want {
			t.Fatalf("%s: enter(%s) = %v, want %v", s.what, s.id, got, s.want)
		}
	}
	if len(g.ghosts) != 1 {
		t.Fatalf("the gate remembers %d Ghosts after pruning, want 1", len(g.ghosts))
	}
}
