package mirage

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
)

// replayGate admits one request of a Ghost at a time, whatever the time since its last:
// a request while one is served is refused even bus.ReplayEvery later, and admitted once
// it left. Other Ghosts are not held up.
func TestReplayGateServesOneRequestOfAGhostAtATime(t *testing.T) {
	g := newGhostGate(bus.ReplayEvery, false)
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		id    string
		at    time.Duration
		leave bool // the request admitted before ends first
		want  bool
	}{
		{"a", 0, false, true},
		{"a", 10 * time.Millisecond, false, false},              // within bus.ReplayEvery
		{"b", 10 * time.Millisecond, false, true},               // another Ghost
		{"a", 3 * bus.ReplayEvery, false, false},                // its first is still being served
		{"a", 30 * time.Second, false, false},                   // however long it takes
		{"a", 30*time.Second + time.Millisecond, true, true},    // it ended
		{"a", 30*time.Second + 2*time.Millisecond, true, false}, // ended, but within bus.ReplayEvery
	}
	for i, s := range steps {
		if s.leave {
			g.leave(s.id, t0.Add(s.at))
		}
		if got := g.enter(s.id, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d: %s at %s admitted %v, want %v", i, s.id, s.at, got, s.want)
		}
	}
}

// Mirage sends a replayed command with the stored headers a Ghost reads and no other: a
// Status stored on cmd.<id> must not reach the Ghost as a server status.
func TestStoredHeaderKeepsOnlyWhatTheGhostReads(t *testing.T) {
	stored := nats.Header{
		bus.HeaderMsgID: {"cmd_1"}, bus.HeaderTraceparent: {"00-abc-def-01"},
		bus.HeaderSignature: {"sig"}, bus.HeaderSigner: {"UKEY"},
		"Status": {"503"}, "Description": {"No Responders"}, "Nats-Stream": {"EDGE_CMD"},
		"Nats-Sequence": {"7"}, "Edge-Stream-Seq": {"1"}, "X-Other": {"x"},
	}
	got := storedHeader(stored)
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := slices.Clone(bus.ReplayedHeaders)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Fatalf("headers sent %v, want %v", keys, want)
	}
	for _, k := range want {
		if got.Get(k) != stored.Get(k) {
			t.Errorf("%s: %q, want %q", k, got.Get(k), stored.Get(k))
		}
	}
}
