package ghost

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// A live command waiting in the intake for a slot keeps the time it arrived for a copy of
// it read from EDGE_CMD meanwhile (a catch-up): should that copy get a slot first, its
// timeout runs from the live arrival, not from the catch-up. Once the live copy holds a
// slot the time is forgotten.
func TestReplayedCopyOfAQueuedCommandKeepsItsArrival(t *testing.T) {
	nc, _ := replayConns(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	g, err := New(nc, Config{ID: "g1", Policy: PolicyHeadless, MaxConcurrent: 1}, NewRegistry(), NewMemoryStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Close() }()
	g.slots <- struct{}{} // the one slot is busy

	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: "g1", SeedSelector: "seed.flow", Operation: "status",
		Args: map[string]string{}, DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 60_000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	g.onCommand(&nats.Msg{Subject: subjects.Command("g1"), Data: data})

	later := now.Add(10 * time.Second) // a catch-up reading it then
	if got := g.arrivedAt(cmd.CommandID, later); got.After(time.Now()) {
		t.Fatalf("a replayed copy of the queued command arrives at %s, %s after the live one arrived; want the live arrival", got.Format(time.RFC3339Nano), got.Sub(now))
	}
	if got := g.arrivedAt("cmd_other", later); !got.Equal(later) {
		t.Fatalf("a command not queued arrives at %s, want the time it is read", got)
	}

	<-g.slots // the live copy gets the slot
	deadline := time.Now().Add(5 * time.Second)
	for !g.arrivedAt(cmd.CommandID, later).Equal(later) {
		if time.Now().After(deadline) {
			t.Fatal("the live copy holds a slot, and its arrival is still kept")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
